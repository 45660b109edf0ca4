r"""A likelihood for tables: every column its own distribution (HI-VAE).

A table of :math:`D` columns of mixed types is modelled as

.. math::

    p(x \mid z) = \prod_{d=1}^{D} p_d(x_d \mid \eta_d(z)),

each column :math:`d` with the family of its type (:data:`COLUMN_TYPES`) and parameters
:math:`\eta_d` read from its own slice of the decoder's output:

=================  ======================================================  ==========
type               :math:`p_d(x_d \mid \eta_d)`                            parameters
=================  ======================================================  ==========
``real``           :math:`\mathcal{N}(\mu, \sigma^2)` (standardised data)  2
``real-laplace``   :math:`\mathrm{Laplace}(\mu, b)` (standardised data)    2
``positive``       :math:`\log\mathcal{N}(\mu, \sigma^2)`                  2
``binary``         :math:`\mathrm{Bernoulli}(\sigma(\eta))`, codes 0, 1    1
``categorical:C``  :math:`\mathrm{Categorical}(\mathrm{softmax}(\eta))`,   C
                   codes :math:`0 .. C-1`
``count``          :math:`\mathrm{Poisson}(e^{\eta})`                      1
``count-nb``       negative binomial, :math:`r = e^{\eta_1}`,              2
                   :math:`\mathrm{logit}\,p = \eta_2`
=================  ======================================================  ==========

Scales are :math:`\sigma = \sigma_{min} + \mathrm{softplus}(\eta)`, so a column cannot
collapse onto a constant. A **missing cell** is a NaN in ``x``: its log-density is exactly 0,
so the ELBO sums over the observed cells only, :math:`\log p(x_{obs} \mid z) = \sum_{d:\,
x_d \text{ observed}} \log p_d(x_d \mid z)`, without a model site the guide lacks. The
guide reads the table through :class:`TableInput` (one-hot categories, zero-filled missing
cells and the observed mask), HI-VAE's input layer.

The column types are plain data: a comma-separated string such as
``"real,positive,binary,categorical:3,count"`` (the likelihood's ``columns`` option), which
a run's config stores, so a checkpoint rebuilds the likelihood.

References
----------
- Nazábal, Olmos, Ghahramani & Valera (2020), Handling incomplete heterogeneous data using
  VAEs. Pattern Recognition 107.
- Mattei & Frellsen (2019), MIWAE: Deep Generative Modelling and Imputation of Incomplete
  Data Sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import ConfigError, DataError
from pyrovae.model.likelihoods import LIKELIHOODS, Likelihood
from pyrovae.registry import Registry, closest

__all__ = [
    "COLUMN_TYPES",
    "ColumnType",
    "ColumnsDistribution",
    "ColumnsLikelihood",
    "TableInput",
    "parse_columns",
]


class ColumnType:
    """One column's family: how many decoder outputs it reads, its distribution, its
    encoder features and the value that stands in for a missing cell.

    Parameters
    ----------
    num_categories : int
        The number of categories (categorical columns; 2 for binary, 0 for the others).
    """

    #: decoder outputs per column
    num_params: int = 1
    #: a value inside the support, put in missing cells before the log-density is taken
    fill: float = 0.0
    #: whether values are category codes (the encoder one-hot encodes them)
    discrete_codes: bool = False
    #: the registered type name
    name: str = ""
    #: what the values must be, for the message refusing others
    need: str = ""
    #: the reconstruction error this column adds to (:meth:`cell_error`)
    error_name: str = "reconstruction_rmse_real"

    def cell_error(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """The error of a point prediction ``point`` of observed values ``x``: the squared
        error (in standardised units for a real column), whose mean over the cells is
        rooted for a ``reconstruction_rmse_*`` name."""
        return (x - point).pow(2)

    def __init__(self, num_categories: int = 0) -> None:
        self.num_categories = num_categories

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        """The elementwise distribution of ``k`` columns from ``params`` of shape
        ``(..., k, num_params)``; batch shape ``(..., k)``."""
        raise NotImplementedError  # abstract

    def mean(self, d: dist.TorchDistribution) -> torch.Tensor:
        """The column's point prediction :math:`E[x_d \\mid z]` (the mode for codes)."""
        return d.mean

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's features of observed values ``(..., k)`` -> ``(..., k * width)``."""
        return x

    def width(self) -> int:
        """Encoder features per column."""
        return 1

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean, the shape of ``x`` (observed values): those outside the support."""
        return torch.zeros_like(x, dtype=torch.bool)

    @property
    def spec(self) -> str:
        """The type as the ``columns`` option writes it: ``categorical:3``, ``real``."""
        return f"{self.name}:{self.num_categories}" if self.discrete_codes else self.name


def _scale(raw: torch.Tensor, min_scale: float) -> torch.Tensor:
    return min_scale + F.softplus(raw)


#: column type name -> :class:`ColumnType` subclass
COLUMN_TYPES: Registry[type[ColumnType]] = Registry("column type")


@COLUMN_TYPES.register("real")
class RealColumn(ColumnType):
    """Gaussian on a standardised real column."""

    name = "real"

    num_params = 2
    family = dist.Normal

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        return self.family(params[..., 0], _scale(params[..., 1], min_scale))


@COLUMN_TYPES.register("real-laplace")
class LaplaceColumn(RealColumn):
    """Laplace on a standardised real column (heavier tails than the Gaussian)."""

    name = "real-laplace"

    family = dist.Laplace


@COLUMN_TYPES.register("positive")
class PositiveColumn(ColumnType):
    """Log-normal on a strictly positive column; the encoder reads :math:`\\log x`."""

    name = "positive"

    num_params = 2
    fill = 1.0
    need = "strictly positive values"

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        return dist.LogNormal(params[..., 0], _scale(params[..., 1], min_scale))

    error_name = "reconstruction_rmse_positive_log"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.log()

    def check(self, x: torch.Tensor) -> torch.Tensor:
        return ~(x > 0)

    def cell_error(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        r"""Squared error of the logarithms (nats of :math:`\log x`)."""
        return (x.log() - point.log()).pow(2)


@COLUMN_TYPES.register("binary")
class BinaryColumn(ColumnType):
    """Bernoulli on codes 0 and 1."""

    name = "binary"

    need = "codes 0 and 1"
    error_name = "reconstruction_error_rate"

    def cell_error(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """1 where the more probable code (probability of 1 above 1/2) is not ``x``."""
        return ((point > 0.5).to(x.dtype) != x).to(x.dtype)

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params[..., 0])

    def check(self, x: torch.Tensor) -> torch.Tensor:
        return (x != 0) & (x != 1)


@COLUMN_TYPES.register("categorical")
class CategoricalColumn(ColumnType):
    """Categorical on codes ``0 .. C-1``; its point prediction is the mode (the most
    probable category), and the encoder reads it one-hot."""

    name = "categorical"

    discrete_codes = True
    error_name = "reconstruction_error_rate"

    def cell_error(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """1 where the most probable category ``point`` is not ``x``."""
        return (point != x).to(x.dtype)

    @property
    def num_params(self) -> int:  # type: ignore[override]
        return self.num_categories

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        return dist.Categorical(logits=params)

    def mean(self, d: dist.TorchDistribution) -> torch.Tensor:
        return d.probs.argmax(-1).to(d.probs.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(x.long(), self.num_categories).to(x.dtype)
        return one_hot.flatten(-2)

    def width(self) -> int:
        return self.num_categories

    def check(self, x: torch.Tensor) -> torch.Tensor:
        return (x != x.round()) | (x < 0) | (x >= self.num_categories)

    @property
    def need(self) -> str:  # type: ignore[override]
        return f"category codes 0..{self.num_categories - 1}"


class _CountColumn(ColumnType):
    need = "non-negative whole numbers"
    error_name = "reconstruction_rmse_count"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.log1p()

    def check(self, x: torch.Tensor) -> torch.Tensor:
        return (x != x.round()) | (x < 0)


#: largest log-rate of a count column: exp(20) ~ 5e8, beyond any count a table holds
MAX_LOG_RATE = 20.0


@COLUMN_TYPES.register("count")
class PoissonColumn(_CountColumn):
    """Poisson with rate :math:`e^{\\eta}` on a column of counts."""

    name = "count"

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        return dist.Poisson(params[..., 0].clamp(max=MAX_LOG_RATE).exp())


@COLUMN_TYPES.register("count-nb")
class NegativeBinomialColumn(_CountColumn):
    """Negative binomial (over-dispersed counts): total count :math:`e^{\\eta_1}`, logits
    :math:`\\eta_2`; mean :math:`r\\,e^{\\eta_2}`."""

    name = "count-nb"

    num_params = 2

    def distribution(self, params: torch.Tensor, min_scale: float) -> dist.TorchDistribution:
        total = params[..., 0].clamp(max=MAX_LOG_RATE).exp()
        return dist.NegativeBinomial(total_count=total, logits=params[..., 1])


def parse_columns(columns: str) -> list[ColumnType]:
    """``"real,binary,categorical:3"`` -> one :class:`ColumnType` per column.

    Raises
    ------
    ConfigError
        For an unknown type (naming the closest), a categorical column without its number
        of categories, or an empty list.
    """
    if not columns.strip():
        raise ConfigError(
            "--likelihood columns needs the type of each column, e.g. --columns "
            "real,binary,categorical:3 (a CSV table given as --data fills it in)"
        )
    parsed = []
    for item in columns.split(","):
        name, _, size = item.strip().partition(":")
        if name not in COLUMN_TYPES:
            raise ConfigError(
                f"unknown column type {name!r}{closest(name, COLUMN_TYPES)}; the types are: "
                f"{', '.join(COLUMN_TYPES)}"
            )
        if name == "categorical":
            if not size.isdigit() or int(size) < 1:
                raise ConfigError(
                    f"a categorical column needs its number of categories, e.g. "
                    f"categorical:3, got {item.strip()!r}"
                )
            parsed.append(COLUMN_TYPES[name](int(size)))
        elif size:
            raise ConfigError(f"only categorical columns take a size, got {item.strip()!r}")
        else:
            parsed.append(COLUMN_TYPES[name](2 if name == "binary" else 0))
    return parsed


@dataclass(frozen=True)
class _Group:
    """Columns of one family: their positions in ``x`` and their parameters' in the
    decoder's output (``(k, num_params)``)."""

    kind: ColumnType
    columns: torch.Tensor
    params: torch.Tensor


def _groups(types: Sequence[ColumnType]) -> list[_Group]:
    """The columns grouped by family (and number of categories), so each group's
    log-density is one vectorised call."""
    keys: dict[tuple[str, int], list[int]] = {}
    for d, kind in enumerate(types):
        keys.setdefault((type(kind).__name__, kind.num_categories), []).append(d)
    starts = [0]
    for kind in types:
        starts.append(starts[-1] + kind.num_params)
    groups = []
    for columns in keys.values():
        kind = types[columns[0]]
        params = torch.tensor([list(range(starts[d], starts[d + 1])) for d in columns])
        groups.append(_Group(kind, torch.tensor(columns), params))
    return groups


class _GroupedColumns(nn.Module):
    """A module holding column groups (:func:`_groups`) whose index tensors move with it
    (``.to(device)``), so a step does not copy them to the device again."""

    groups: list[_Group]

    def _apply(self, fn, *args, **kwargs):
        self.groups = [_Group(g.kind, fn(g.columns), fn(g.params)) for g in self.groups]
        return super()._apply(fn, *args, **kwargs)


_NO_SHAPE = torch.Size()


class ColumnsDistribution(dist.TorchDistribution):
    """The elementwise distribution of a table row: batch shape ``(..., D)``, each column
    its own family; NaN values are missing and have log-density 0.

    Parameters
    ----------
    params : torch.Tensor
        The decoder's output ``(..., P)``, ``P`` the sum of the columns' parameter counts.
    types : sequence of ColumnType
        One per column.
    min_scale : float
        The lower bound of the real and positive columns' scales.
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real  # per column: the family's own support

    def __init__(
        self,
        params: torch.Tensor,
        types: Sequence[ColumnType],
        min_scale: float = 1e-2,
        groups: list[_Group] | None = None,
    ) -> None:
        self.params = params
        self.types = list(types)
        self.min_scale = min_scale
        self.groups = groups if groups is not None else _groups(self.types)
        batch_shape = (*params.shape[:-1], len(self.types))
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)

    def _parts(self) -> list[tuple[_Group, dist.TorchDistribution]]:
        index = [g.params.to(self.params.device) for g in self.groups]
        return [
            (g, g.kind.distribution(self.params[..., i], self.min_scale))
            for g, i in zip(self.groups, index)
        ]

    def expand(self, batch_shape, _instance=None) -> ColumnsDistribution:
        shape = (*torch.Size(batch_shape)[:-1], self.params.shape[-1])
        return ColumnsDistribution(
            self.params.expand(shape), self.types, self.min_scale, self.groups
        )

    def _assemble(self, shape: torch.Size, parts: list[tuple[_Group, torch.Tensor]]):
        out = None
        for g, values in parts:
            if out is None:
                out = values.new_zeros(shape)
            out = out.index_copy(-1, g.columns.to(values.device), values)
        return out

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        value = value.expand(shape)
        missing = torch.isnan(value)
        parts = []
        for g, d in self._parts():
            columns = g.columns.to(value.device)
            v = value.index_select(-1, columns)
            miss = missing.index_select(-1, columns)
            # a value in the support stands in for a missing cell, so neither the density
            # nor its gradient sees the NaN; its log-density is then dropped
            lp = d.log_prob(torch.where(miss, torch.full_like(v, g.kind.fill), v))
            parts.append((g, torch.where(miss, torch.zeros_like(lp), lp)))
        return self._assemble(shape, parts)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        shape = (*sample_shape, *self.batch_shape)
        parts = [(g, d.sample(sample_shape).to(self.params.dtype)) for g, d in self._parts()]
        return self._assemble(torch.Size(shape), parts)

    @property
    def mean(self) -> torch.Tensor:
        """Per column :math:`E[x_d \\mid z]`; the mode for categorical columns, the
        probability of code 1 for binary ones."""
        parts = [(g, g.kind.mean(d)) for g, d in self._parts()]
        return self._assemble(self.batch_shape, parts)


class TableInput(_GroupedColumns):
    """The guide's input layer for a table (HI-VAE's): each column's features (the value;
    :math:`\\log x` for positive columns, :math:`\\log(1 + x)` for counts; one-hot codes for
    categorical ones), zero for a missing cell, followed by the observed mask.

    ``(..., D)`` with NaN for missing cells -> ``(..., F)``, ``F`` = :attr:`num_features`.
    """

    def __init__(self, types: Sequence[ColumnType]) -> None:
        super().__init__()
        self.types = list(types)
        self.groups = _groups(self.types)
        self.num_features = sum(k.width() for k in self.types) + len(self.types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observed = ~torch.isnan(x)
        features = []
        for g in self.groups:
            columns = g.columns.to(x.device)
            v = x.index_select(-1, columns)
            seen = observed.index_select(-1, columns)
            f = g.kind.features(torch.where(seen, v, torch.full_like(v, g.kind.fill)))
            width = g.kind.width()
            seen = seen.repeat_interleave(width, dim=-1)
            features.append(torch.where(seen, f, torch.zeros_like(f)))
        return torch.cat([*features, observed.to(x.dtype)], dim=-1)


@LIKELIHOODS.register("columns")
class ColumnsLikelihood(Likelihood, _GroupedColumns):
    """Each column of a table its own distribution (see :mod:`pyrovae.model.columns`).

    Parameters
    ----------
    event_shape : tuple of int
        ``(D,)``, one value per column.
    columns : str
        columns: the type of each column in order, e.g. real,binary,categorical:3
        (filled in from a CSV table given as --data).
    min_scale : float
        columns: lower bound of the real and positive columns' scales.
    """

    name = "columns"

    def __init__(
        self, event_shape: tuple[int, ...], *, columns: str = "", min_scale: float = 1e-2
    ) -> None:
        super().__init__()
        self.types = parse_columns(columns)
        if tuple(event_shape) != (len(self.types),):
            raise ConfigError(
                f"--columns names {len(self.types)} columns, but the items have shape "
                f"{tuple(event_shape)}; give one type per column of a table of shape (N, D)"
            )
        if not min_scale > 0:
            raise ConfigError(f"min_scale must be > 0, got {min_scale}")
        self.min_scale = min_scale
        self.groups = _groups(self.types)

    #: NaN in the data marks a missing cell
    allows_missing = True

    #: what a table run cannot be used for (:func:`pyrovae.inference.sites.require`)
    cannot: ClassVar[dict[str, str]] = {
        "images": "its items are the rows of a table, not images (see pyrovae sample, "
        "evaluate, impute, anomaly and latent)",
    }

    def param_shape(self, event_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (sum(k.num_params for k in self.types),)

    def forward(self, params: torch.Tensor) -> ColumnsDistribution:
        return ColumnsDistribution(params, self.types, self.min_scale, self.groups)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self(params).mean

    def input_transform(self, event_shape: tuple[int, ...]) -> TableInput:
        return TableInput(self.types)

    def validate(self, x: torch.Tensor) -> None:
        for d, kind in enumerate(self.types):
            values = x[:, d]
            values = values[~torch.isnan(values)]
            bad = kind.check(values)
            if bool(bad.any()):
                raise DataError(
                    f"column {d} is {kind.spec} and needs {kind.need}, but "
                    f"{int(bad.sum())} values are not (e.g. {float(values[bad][0]):g})"
                )
