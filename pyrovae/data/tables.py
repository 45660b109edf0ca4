r"""Tables with mixed column types: a CSV (or Parquet) file read with pandas.

Each column gets a type of :data:`~pyrovae.model.columns.COLUMN_TYPES`, inferred from its
non-missing values (:func:`infer_type`) unless the user names it:

- ``binary``: two distinct values (coded 0 and 1 in sorted order);
- ``categorical``: text or booleans, or whole numbers with at most
  :data:`MAX_INTEGER_CATEGORIES` distinct values (coded ``0 .. C-1`` in sorted order; a
  column with one value is a categorical column of one category);
- ``count``: non-negative whole numbers with more distinct values, Poisson; ``count-nb``
  (negative binomial) when their variance exceeds :data:`OVERDISPERSION` times their mean,
  as a Poisson's variance equals its mean;
- ``positive``: strictly positive numbers (log-normal), rescaled so that their logarithm is
  centred: :math:`x' = x\, e^{-m}` with the mean :math:`m` of :math:`\log x` over the
  training split (still positive, and log-normal if :math:`x` is). A scale, not a power:
  means, and so imputed and reconstructed values, map back to the table's units exactly
  (a power :math:`x^{1/s}` would not commute with the mean);
- ``real``: the rest, standardised with the training split's mean and standard deviation
  (``real-laplace`` by name).

A missing cell (empty, ``NA``, NaN) stays NaN in the encoded tensor; the ``columns``
likelihood gives it log-density 0 and the guide's input layer reads it as zero with an
observed flag. The :class:`TableEncoding` (the columns' names, types, category labels and
standardisation) turns a frame into a tensor and an imputed tensor back into a frame
with the original labels; :func:`load_table` returns a :class:`TableDataset` that holds it.

References
----------
- Nazábal, Olmos, Ghahramani & Valera (2020), Handling incomplete heterogeneous data using
  VAEs. Pattern Recognition 107.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrovae.data.dataset import Dataset, split_indices
from pyrovae.data.validation import validate_data, validate_labels
from pyrovae.errors import ConfigError, DataError
from pyrovae.registry import closest

__all__ = [
    "MAX_INTEGER_CATEGORIES",
    "OVERDISPERSION",
    "TABLE_FILE",
    "TABLE_ROWS_FILE",
    "TABLE_SUFFIXES",
    "TableColumn",
    "TableDataset",
    "TableEncoding",
    "infer_type",
    "is_table",
    "load_table",
    "parse_column_types",
    "read_table",
    "read_table_run",
    "write_table_run",
]

#: the file suffixes read as tables
TABLE_SUFFIXES = (".csv", ".parquet")

#: a table run's encoding in its run folder (plain JSON: :meth:`TableEncoding.to_dict`)
TABLE_FILE = "table.json"

#: a table run's encoded training and held-out rows in its run folder (``.npz``)
TABLE_ROWS_FILE = "table.npz"

#: the version of :data:`TABLE_FILE`'s format
TABLE_FORMAT = 1

#: whole-number columns with at most this many distinct values are categorical
MAX_INTEGER_CATEGORIES = 10

#: counts whose variance exceeds this many times their mean are negative binomial
OVERDISPERSION = 2.0

#: the types whose values must be numbers
_NUMERIC = ("real", "real-laplace", "positive", "count", "count-nb")


def is_table(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` names a table file (:data:`TABLE_SUFFIXES`)."""
    return path is not None and Path(path).suffix.lower() in TABLE_SUFFIXES


def read_table(path: str | os.PathLike[str]) -> Any:
    """The file as a :class:`pandas.DataFrame` (Parquet needs the ``tables`` extra,
    pyarrow); :class:`DataError` for a file that is missing, unreadable or has no rows."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"table file {path} does not exist or is not a file; check the path")
    try:
        if path.suffix.lower() == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError(
                    f"reading {path.name} needs pyarrow: pip install 'pyrovae[tables]', or "
                    "save the table as CSV"
                ) from None
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, skipinitialspace=True)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot read {path.name} as a table ({reason}); save it as a CSV file with a "
            "header row and one row per item"
        ) from None
    if len(frame) == 0 or frame.shape[1] == 0:
        raise DataError(f"{path.name} has no rows of data; it needs a header and one row per item")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def parse_column_types(text: str | None, names: Sequence[str]) -> dict[str, str]:
    """``"age=count,sex=categorical"`` -> ``{"age": "count", "sex": "categorical"}``,
    every name a column of the table and every type a known one (else a
    :class:`ConfigError` naming the closest)."""
    from pyrovae.model.columns import COLUMN_TYPES

    if not text:
        return {}
    types = {}
    for item in text.split(","):
        name, sep, kind = (part.strip() for part in item.partition("="))
        if not sep or not name or not kind:
            raise ConfigError(
                f"--column-types takes NAME=TYPE pairs separated by commas, e.g. "
                f"age=count,sex=categorical; got {item.strip()!r}"
            )
        if name not in names:
            raise ConfigError(
                f"--column-types names a column {name!r} that the table does not have"
                f"{closest(name, names)}; its columns are: {', '.join(names)}"
            )
        if kind not in COLUMN_TYPES:
            raise ConfigError(
                f"unknown column type {kind!r} for {name!r}{closest(kind, COLUMN_TYPES)}; the "
                f"types are: {', '.join(COLUMN_TYPES)}"
            )
        types[name] = kind
    return types


def infer_type(values: Any) -> str:
    """The type of a column from its non-missing values (a :class:`pandas.Series`); see
    the module docstring for the rules."""
    import pandas as pd

    distinct = values.nunique()
    if distinct == 2:
        return "binary"
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "categorical"
    numbers = values.to_numpy(dtype=np.float64)
    if distinct <= 1:
        return "categorical"
    if np.all(numbers == np.round(numbers)) and numbers.min() >= 0:
        if distinct <= MAX_INTEGER_CATEGORIES:
            return "categorical"
        # a Poisson's variance is its mean; far more spread needs the negative binomial
        return "count" if numbers.var() <= OVERDISPERSION * numbers.mean() else "count-nb"
    if numbers.min() > 0:
        return "positive"
    return "real"


@dataclass(frozen=True)
class TableColumn:
    """One column of a table: its name, type, category labels (binary and categorical
    columns, in code order) and the standardisation of a real column (a positive column is
    divided by :math:`e^{m}`, ``mean`` being the mean of its logarithm; its ``std``, that of
    the logarithm, is recorded but not applied)."""

    name: str
    type: str
    categories: tuple = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def spec(self) -> str:
        """The type as the ``columns`` likelihood option writes it."""
        return f"categorical:{len(self.categories)}" if self.type == "categorical" else self.type


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _sorted_labels(values: Any) -> tuple:
    labels = [_python(v) for v in values.unique()]
    try:
        return tuple(sorted(labels))
    except TypeError:  # mixed types: by their text
        return tuple(sorted(labels, key=str))


def _check_numeric(name: str, kind: str, values: Any) -> np.ndarray:
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        example = values.iloc[0]
        raise DataError(
            f"column {name!r} is declared {kind}, but it holds text such as {example!r}; "
            f"declare it categorical (--column-types {name}=categorical)"
        )
    numbers = values.to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise DataError(f"column {name!r} holds infinite values; remove or replace them")
    whole = numbers == np.round(numbers)
    if kind == "positive" and numbers.min() <= 0:
        raise DataError(
            f"column {name!r} is declared positive, but its smallest value is "
            f"{numbers.min():g}; declare it real"
        )
    if kind.startswith("count") and (numbers.min() < 0 or not whole.all()):
        raise DataError(
            f"column {name!r} is declared {kind}, but it holds values that are not "
            "non-negative whole numbers; declare it real or positive"
        )
    return numbers


@dataclass(frozen=True)
class TableEncoding:
    """How a table's columns become a float tensor and back.

    Parameters
    ----------
    columns : tuple of TableColumn
        The modelled columns, in order.
    label : TableColumn, optional
        The label column (categorical), read as class indices rather than modelled.
    """

    columns: tuple[TableColumn, ...]
    label: TableColumn | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def column_types(self) -> str:
        """The ``columns`` option of the likelihood, e.g. ``"real,binary,categorical:3"``."""
        return ",".join(c.spec for c in self.columns)

    @classmethod
    def fit(
        cls,
        frame: Any,
        train_rows: np.ndarray,
        column_types: Mapping[str, str] | None = None,
        label_column: str | None = None,
    ) -> TableEncoding:
        """Infer (or take from ``column_types``) every column's type from ``frame``; the
        category labels come from all rows, a real column's mean and standard deviation
        from the training rows ``train_rows`` alone."""
        column_types = dict(column_types or {})
        names = list(frame.columns)
        if label_column is not None and label_column not in names:
            raise ConfigError(
                f"--label-column {label_column!r} is not a column of the table"
                f"{closest(label_column, names)}; its columns are: {', '.join(names)}"
            )
        columns, label = [], None
        for name in names:
            values = frame[name].dropna()
            if len(values) == 0:
                raise DataError(f"column {name!r} has only missing values; drop it from the table")
            if name == label_column:
                if len(values) < len(frame):
                    raise DataError(
                        f"the label column {name!r} has {len(frame) - len(values)} missing "
                        "values; every row needs a label"
                    )
                label = TableColumn(name, "categorical", _sorted_labels(values))
                continue
            kind = column_types.get(name) or infer_type(values)
            if kind in _NUMERIC:
                _check_numeric(name, kind, values)
            if kind in ("real", "real-laplace", "positive"):
                train = frame[name].iloc[train_rows].to_numpy(dtype=np.float64)
                train = np.log(train) if kind == "positive" else train
                if np.isnan(train).all():  # no mean or deviation to standardise with
                    raise DataError(
                        f"column {name!r} has no values in the training rows (its "
                        f"{len(values)} values all fell in the held-out split); drop the "
                        "column, or fill in more of it"
                    )
                mean, std = float(np.nanmean(train)), float(np.nanstd(train))
                columns.append(TableColumn(name, kind, (), mean, std if std > 0 else 1.0))
            elif kind in ("binary", "categorical"):
                labels = _sorted_labels(values)
                if kind == "binary" and len(labels) != 2:
                    raise DataError(
                        f"column {name!r} is declared binary, but it has {len(labels)} "
                        "distinct values; declare it categorical"
                    )
                columns.append(TableColumn(name, kind, labels))
            else:
                columns.append(TableColumn(name, kind))
        if not columns:
            raise DataError("the table has no columns to model besides the label column")
        return cls(tuple(columns), label)

    def to_dict(self) -> dict[str, Any]:
        """The encoding as plain JSON data (:meth:`from_dict` reads it back)."""

        def column(c: TableColumn) -> dict[str, Any]:
            return {"name": c.name, "type": c.type, "categories": list(c.categories),
                    "mean": c.mean, "std": c.std}  # fmt: skip

        return {
            "format_version": TABLE_FORMAT,
            "columns": [column(c) for c in self.columns],
            "label": None if self.label is None else column(self.label),
        }

    @classmethod
    def from_dict(cls, value: Any) -> TableEncoding:
        """The encoding :meth:`to_dict` wrote; ``ValueError`` (or ``KeyError``,
        ``TypeError``) for anything else."""
        from pyrovae.model.columns import COLUMN_TYPES

        if not isinstance(value, dict) or value.get("format_version") != TABLE_FORMAT:
            raise ValueError(f"not a table encoding of format {TABLE_FORMAT}")

        def column(c: dict[str, Any]) -> TableColumn:
            kind = str(c["type"])
            if kind not in COLUMN_TYPES:
                raise ValueError(f"unknown column type {kind!r}")
            mean, std = float(c["mean"]), float(c["std"])
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError(f"column {c['name']!r} has no valid standardisation")
            categories = tuple(c["categories"])
            if kind in ("binary", "categorical") and not categories:
                raise ValueError(f"column {c['name']!r} has no categories")
            return TableColumn(str(c["name"]), kind, categories, mean, std)

        columns = tuple(column(c) for c in value["columns"])
        if not columns:
            raise ValueError("no columns")
        label = value["label"]
        return cls(columns, None if label is None else column(label))

    def _codes(self, column: TableColumn, values: Any, what: str) -> np.ndarray:
        index = {label: code for code, label in enumerate(column.categories)}
        codes = np.full(len(values), np.nan)
        present = values.notna().to_numpy()
        mapped = [index.get(_python(v)) for v in values[present]]
        unknown = [v for v, c in zip(values[present], mapped) if c is None]
        if unknown:
            raise DataError(
                f"{what} column {column.name!r} holds {unknown[0]!r}, which is not one of "
                f"its categories {list(column.categories)}"
            )
        codes[present] = mapped
        return codes

    def encode(
        self, frame: Any, what: str = "the table", labels: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, y)``: float32 ``(N, D)`` with NaN in missing cells (codes for binary and
        categorical columns, standardised real columns), and the labels' class indices
        (``None`` without a label column, or with ``labels=False``: then the label column
        is not read at all)."""
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            raise DataError(
                f"{what} lacks the column {missing[0]!r} the run was trained on; its "
                f"columns must include: {', '.join(self.names)}"
            )
        cells = []
        for column in self.columns:
            values = frame[column.name]
            if column.type in ("binary", "categorical"):
                cells.append(self._codes(column, values, what))
                continue
            observed = values.dropna()
            if len(observed):
                _check_numeric(column.name, column.type, observed)
            numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
            if column.type in ("real", "real-laplace"):
                numbers = (numbers - column.mean) / column.std
            elif column.type == "positive":  # still positive, its logarithm centred
                numbers = numbers * np.exp(-column.mean)
            cells.append(numbers)
        x = torch.from_numpy(np.stack(cells, axis=1).astype(np.float32))
        y = None
        if labels and self.label is not None and self.label.name in frame.columns:
            codes = self._codes(self.label, frame[self.label.name], what)
            if np.isnan(codes).any():
                raise DataError(f"{what}: the label column {self.label.name!r} has missing values")
            y = torch.from_numpy(codes.astype(np.int64))
        return x, y

    def decode(self, x: torch.Tensor) -> Any:
        """A :class:`pandas.DataFrame` of ``x`` ``(N, D)`` in the table's own units and
        labels: real columns unstandardised, counts rounded, codes mapped to their
        labels (binary probabilities at 0.5)."""
        import pandas as pd

        values = x.detach().cpu().double().numpy()
        data = {}
        for d, column in enumerate(self.columns):
            v = values[:, d]
            if column.type in ("real", "real-laplace"):
                data[column.name] = v * column.std + column.mean
            elif column.type == "positive":
                data[column.name] = v * np.exp(column.mean)
            elif column.type in ("binary", "categorical"):
                codes = np.clip(np.round(v), 0, len(column.categories) - 1)
                labels = np.array(column.categories, dtype=object)
                data[column.name] = pd.Series(
                    np.where(np.isnan(v), None, labels[np.nan_to_num(codes).astype(int)])
                )
            elif column.type.startswith("count"):
                data[column.name] = pd.array(np.round(v), dtype="Float64").round().astype("Int64")
            else:
                data[column.name] = v
        return pd.DataFrame(data)


@dataclass(frozen=True, eq=False)
class TableDataset(Dataset):
    """A :class:`~pyrovae.data.Dataset` of a table: NaN marks a missing cell, and
    ``table`` is the :class:`TableEncoding` of its columns."""

    table: TableEncoding | None = None

    def __post_init__(self) -> None:
        if self.binarize != "none":
            raise ConfigError("--binarize applies to images; a table is modelled as it is")
        for split, x, y in (
            ("train", self.train, self.train_labels),
            ("test", self.test, self.test_labels),
        ):
            what = f"{self.name} {split} data"
            # NaN is a missing cell; what else validate_data checks must hold
            validate_data(
                torch.nan_to_num(x, nan=0.0, posinf=torch.inf, neginf=-torch.inf),
                event_shape=None if split == "train" else self.shape,
                what=what,
            )
            if y is not None:
                validate_labels(y, len(x), what=f"{self.name} {split} labels")


def load_table(
    path: str | os.PathLike[str],
    *,
    column_types: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    encoding: TableEncoding | None = None,
) -> TableDataset:
    """Read a CSV or Parquet table as a :class:`TableDataset` split into train and test
    rows (seeded; stratified by the label column when there is one).

    Parameters
    ----------
    path : path-like
        The table file, with a header row.
    column_types : str, optional
        Overrides of the inferred types, ``"age=count,sex=categorical"``.
    label_column : str, optional
        A column read as class labels rather than modelled.
    test_fraction, seed, limit
        As :func:`~pyrovae.data.load_dataset`.
    encoding : TableEncoding, optional
        The encoding to apply (a trained run's, :func:`read_table_run`) instead of one
        fitted to this file.
    """
    path = Path(path)
    frame = read_table(path)
    overrides = parse_column_types(column_types, list(frame.columns))
    if label_column is not None and label_column in overrides:
        raise ConfigError(f"{label_column!r} is the label column; drop it from --column-types")
    stratify = None
    if label_column is not None and label_column in frame.columns:
        stratify = frame[label_column].astype(str).to_numpy()
        if frame[label_column].isna().any():
            stratify = None  # the encoding refuses it with its own message
    train_index, test_index = split_indices(len(frame), test_fraction, seed, stratify, path.name)
    if encoding is None:
        encoding = TableEncoding.fit(frame, train_index, overrides, label_column)
    x, y = encoding.encode(frame, path.name)
    train_index, test_index = train_index[:limit], test_index[:limit]
    return TableDataset(
        name=path.stem,
        train=x[train_index],
        test=x[test_index],
        train_labels=None if y is None else y[train_index],
        test_labels=None if y is None else y[test_index],
        table=encoding,
    )


def write_table_run(folder: str | os.PathLike[str], data: TableDataset) -> None:
    """Write a table run's :data:`TABLE_FILE` (the encoding) and :data:`TABLE_ROWS_FILE`
    (the encoded training and held-out rows and labels, float32 with NaN in missing
    cells) into its run folder, each atomically: with them the run no longer reads its
    training file (:func:`read_table_run`)."""
    from pyrovae.runfolder import atomic_write, write_json

    folder = Path(folder)
    assert data.table is not None
    write_json(data.table.to_dict(), folder / TABLE_FILE)
    arrays = {"train": data.train.cpu().numpy(), "test": data.test.cpu().numpy()}
    for split, y in (("train", data.train_labels), ("test", data.test_labels)):
        if y is not None:
            arrays[f"{split}_labels"] = y.cpu().numpy()
    atomic_write(folder / TABLE_ROWS_FILE, lambda f: np.savez(f, **arrays))


def read_table_run(
    folder: str | os.PathLike[str], name: str = "table"
) -> tuple[TableEncoding, TableDataset | None] | None:
    """A table run's encoding and its rows (:func:`write_table_run`) from its run folder:
    ``(encoding, data)``, ``data`` ``None`` when :data:`TABLE_ROWS_FILE` is absent;
    ``None`` when the folder has no :data:`TABLE_FILE` (a run of pyrovae before they were
    written). One :class:`DataError` for a file that cannot be read."""
    folder = Path(folder)
    path = folder / TABLE_FILE
    if not path.exists():
        return None
    try:
        encoding = TableEncoding.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not a table encoding pyrovae can read ({exc}); it is written when "
            "the run trains: restore it, or train the run again"
        ) from None
    rows = folder / TABLE_ROWS_FILE
    if not rows.exists():
        return encoding, None
    try:
        with rows.open("rb") as file, np.load(file, allow_pickle=False) as f:
            arrays = {k: torch.from_numpy(f[k]) for k in f.files}
        data = TableDataset(
            name=name,
            train=arrays["train"],
            test=arrays["test"],
            train_labels=arrays.get("train_labels"),
            test_labels=arrays.get("test_labels"),
            table=encoding,
        )
    except (OSError, ValueError, KeyError, TypeError, DataError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{rows} is not the table rows pyrovae wrote ({exc}); it is written when the run "
            "trains: restore it, or train the run again"
        ) from None
    if data.shape != (len(encoding.columns),):
        raise DataError(
            f"{rows} holds rows of {data.shape} cells, but {path} names "
            f"{len(encoding.columns)} columns; restore the run's own files"
        )
    return encoding, data
