"""Tables: anomaly detection against PyOD and imputation against scikit-learn, as markdown.

Two real tables that ship with scikit-learn (offline), neither tuned for here:

``breast-cancer``
    Wisconsin diagnostic breast cancer, 569 rows of 30 measurements; benign (357) is
    normal, malignant (212) anomalous.
``wine``
    UCI wine, 178 rows of 13 chemical measurements of three cultivars; cultivars 1 and 2
    (119) are normal, cultivar 0 (59) anomalous (the ODDS outlier benchmark's use of it).

**Anomaly detection.** Per seed, 70 % of the normal rows train (a seeded split); the
held-out 30 % and every anomalous row are scored. pyrovae trains a VAE with the
``columns`` likelihood (types inferred: log-normal for the strictly positive columns,
Gaussian on standardised ones otherwise; wine's magnesium and proline declared positive,
:data:`COLUMN_TYPES`) and scores by the IWAE negative log-likelihood
(``iwae-nll``) and the negative ELBO; PyOD's VAE, Isolation Forest, LOF and ECOD see the
same rows standardised with the training rows' mean and standard deviation. ROC-AUC and
average precision, mean ± sd over the seeds.

**Imputation.** Per seed, 20 % of all cells (the label included, as a categorical column)
are removed completely at random; pyrovae trains on the incomplete table (all rows) and
imputes from the posterior (:func:`pyrovae.inference.applications.impute`); scikit-learn's
``KNNImputer`` and ``IterativeImputer`` (``max_iter=10``; its non-convergence warning is
silenced) (and the column mean / mode) impute the numeric
columns standardised, the label as its integer code (rounded to a valid code). RMSE over
the removed numeric cells in standardised units (each column's observed mean and sd);
error rate over the removed label cells.

Results are appended to ``OUT/results.jsonl`` and a rerun skips what is there
(resumable); the tables are printed (and written to ``OUT/tables.md``).

Examples
--------
::

    OMP_NUM_THREADS=1 python benchmarks/tables.py --out /tmp/tables --num-threads 1
    python benchmarks/tables.py --out /tmp/tables-quick --quick   # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table
from pyrovae import VAE, Config, train
from pyrovae.data.tables import TableDataset, TableEncoding
from pyrovae.inference.applications import anomaly_scores, detection_metrics, impute

TABLES = ("breast-cancer", "wine")

#: declared column types: wine's magnesium (mg/l) and proline are integer-valued
#: concentrations, not counts (inferred as count and count-nb, a Poisson and a negative
#: binomial on values near 100 and 750 dominate the ELBO and the imputation fails)
COLUMN_TYPES = {"wine": {"magnesium": "positive", "proline": "positive"}}


def load(name: str) -> tuple[pd.DataFrame, np.ndarray, str]:
    """``(features, is_anomaly, label name)`` of a bundled table."""
    from sklearn import datasets

    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer(as_frame=True)
        return bunch.data, (bunch.target.to_numpy() == 0), "diagnosis"  # 0 = malignant
    bunch = datasets.load_wine(as_frame=True)
    return bunch.data, (bunch.target.to_numpy() == 0), "cultivar"


def fit_pyrovae(data: TableDataset, args: argparse.Namespace, seed: int) -> VAE:
    config = Config.from_flags(
        likelihood="columns",
        columns=data.table.column_types,
        latent_dim=args.latent_dim,
        hidden=tuple(args.hidden),
        num_epochs=args.epochs,
        batch_size=64,
        learning_rate=1e-3,
        seed=seed,
        diagnostic_items=0,
    )
    torch.manual_seed(seed)
    vae = VAE.from_section(config.model, data.shape)
    train(vae, data, config, progress=False)
    return vae.eval()


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return [(a - mean) / sd for a in (train, *others)]


def pyod_detectors(seed: int) -> dict[str, Callable]:
    """PyOD's detectors, or none (with a note) when PyOD is not installed."""
    try:
        import pyod  # noqa: F401
    except ImportError:
        print("PyOD is not installed (pip install 'pyrovae[benchmark]'): its rows are left out")
        return {}
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.lof import LOF
    from pyod.models.vae import VAE as PyODVAE

    return {
        "PyOD VAE": lambda: PyODVAE(random_state=seed, verbose=0, device="cpu"),
        "PyOD IForest": lambda: IForest(random_state=seed),
        "PyOD LOF": lambda: LOF(),
        "PyOD ECOD": lambda: ECOD(),
    }


def anomaly_run(name: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    frame, is_anomaly, _ = load(name)
    normal = np.flatnonzero(~is_anomaly)
    train_rows, held_out = train_test_split(normal, test_size=0.3, random_state=seed)
    test_rows = np.concatenate([held_out, np.flatnonzero(is_anomaly)])
    labels = is_anomaly[test_rows].astype(int)
    encoding = TableEncoding.fit(frame, train_rows, COLUMN_TYPES.get(name))
    x, _ = encoding.encode(frame)
    data = TableDataset(name, x[train_rows], x[test_rows], None, None, table=encoding)
    results = {}
    vae = fit_pyrovae(data, args, seed)
    torch.manual_seed(seed)
    scores = anomaly_scores(vae, data.test, num_samples=args.num_samples)
    for score, label in (
        ("iwae-nll", "pyrovae columns (iwae-nll)"),
        ("neg-elbo", "pyrovae columns (neg-elbo)"),
    ):
        metrics = detection_metrics({score: scores[score]}, labels)[score]
        results[label] = metrics
    train_x, test_x = standardise(
        frame.to_numpy(np.float64)[train_rows], frame.to_numpy(np.float64)[test_rows]
    )
    for label, make in pyod_detectors(seed).items():
        torch.manual_seed(seed)
        detector = make()
        detector.fit(train_x)
        s = detector.decision_function(test_x)
        results[label] = {
            "roc_auc": float(roc_auc_score(labels, s)),
            "average_precision": float(average_precision_score(labels, s)),
        }
    return results


def imputation_run(name: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from sklearn import datasets
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    features, _, label_name = load(name)
    target = (
        datasets.load_breast_cancer() if name == "breast-cancer" else datasets.load_wine()
    ).target
    frame = features.copy()
    frame[label_name] = [f"class{t}" for t in target]
    rng = np.random.default_rng(seed)
    removed = rng.random(frame.shape) < 0.2
    removed[removed.all(1), 0] = False  # every row keeps at least one cell
    incomplete = frame.mask(removed)
    numeric = list(features.columns)
    truth = features.to_numpy(np.float64)
    observed_mean = np.nanmean(incomplete[numeric].to_numpy(np.float64), 0)
    observed_sd = np.nanstd(incomplete[numeric].to_numpy(np.float64), 0)
    miss_num, miss_lab = removed[:, :-1], removed[:, -1]
    categories = sorted(frame[label_name].unique())
    codes = np.array([categories.index(v) for v in frame[label_name]])

    def score(numbers: np.ndarray, label_codes: np.ndarray) -> dict[str, float]:
        err = ((numbers - truth) / observed_sd)[miss_num]
        return {
            "rmse": float(np.sqrt(np.mean(err**2))),
            "error_rate": float(np.mean(label_codes[miss_lab] != codes[miss_lab])),
        }

    results = {}
    # pyrovae: trains on every row of the incomplete table, imputes from the posterior
    all_rows = np.arange(len(frame))
    declared = {**COLUMN_TYPES.get(name, {}), label_name: "categorical"}
    encoding = TableEncoding.fit(incomplete, all_rows, declared)
    x, _ = encoding.encode(incomplete)
    data = TableDataset(name, x, x, None, None, table=encoding)
    vae = fit_pyrovae(data, args, seed)
    torch.manual_seed(seed)
    completed = encoding.decode(impute(vae, x, num_samples=args.num_samples))
    results["pyrovae columns"] = score(
        completed[numeric].to_numpy(np.float64),
        np.array([categories.index(v) for v in completed[label_name]]),
    )
    # scikit-learn: numeric columns standardised by their observed statistics, the label as
    # its code
    matrix = (incomplete[numeric].to_numpy(np.float64) - observed_mean) / observed_sd
    label_codes = np.where(miss_lab, np.nan, codes.astype(np.float64))
    matrix = np.column_stack([matrix, label_codes])
    imputers = {
        "column mean / mode": None,
        "sklearn KNNImputer": lambda: KNNImputer(n_neighbors=5),
        "sklearn IterativeImputer": lambda: IterativeImputer(max_iter=10, random_state=seed),
    }
    for label, make in imputers.items():
        if make is None:
            numbers = SimpleImputer(strategy="mean").fit_transform(matrix[:, :-1])
            mode = SimpleImputer(strategy="most_frequent").fit_transform(matrix[:, -1:])[:, 0]
            filled = np.column_stack([numbers, mode])
        else:
            with warnings.catch_warnings():  # IterativeImputer stops at max_iter, as set
                warnings.simplefilter("ignore", ConvergenceWarning)
                filled = make().fit_transform(matrix)
        numbers = filled[:, :-1] * observed_sd + observed_mean
        label_codes = np.clip(np.round(filled[:, -1]), 0, len(categories) - 1).astype(int)
        results[label] = score(numbers, label_codes)
    return results


def summarise(records: list[dict], task: str, keys: Sequence[tuple[str, str]]) -> str:
    rows = []
    for table in TABLES:
        found = [r for r in records if r["task"] == task and r["table"] == table]
        if not found:
            continue
        methods = list(found[0]["results"])
        for method in methods:
            cells = [table, method]
            for key, _ in keys:
                values = np.array([r["results"][method][key] for r in found])
                sd = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():.3f} ± {sd:.3f}")
            cells.append(str(len(found)))
            rows.append(cells)
    return markdown_table(["table", "method", *(h for _, h in keys), "seeds"], rows)


TASKS = {"anomaly": anomaly_run, "imputation": imputation_run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 32])
    parser.add_argument("-k", "--num-samples", type=int, default=100)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument(
        "--quick", action="store_true", help="wine, 1 seed, 5 epochs, K=5 (a smoke run)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tables, args.seeds, args.epochs, args.num_samples = ["wine"], 1, 5, 5
    torch.set_num_threads(args.num_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {(r["task"], r["table"], r["seed"]) for r in records}
    begin = time.perf_counter()
    for task, run in TASKS.items():
        for table in args.tables:
            for seed in range(args.seeds):
                if (task, table, seed) in done:
                    continue
                start = time.perf_counter()
                record = {
                    "task": task,
                    "table": table,
                    "seed": seed,
                    "results": run(table, seed, args),
                    "seconds": time.perf_counter() - start,
                }
                records.append(record)
                with path.open("a") as file:
                    file.write(json.dumps(record) + "\n")
                print(f"{task} {table} seed {seed}: {record['seconds']:.1f} s", flush=True)
    text = "\n\n".join(
        [
            "## Anomaly detection (train on 70 % of the normal rows; ROC-AUC and AP, mean ± sd)",
            summarise(records, "anomaly", [("roc_auc", "ROC-AUC"), ("average_precision", "AP")]),
            "## Imputation (20 % of cells removed at random; RMSE in sd units, label error rate)",
            summarise(records, "imputation", [("rmse", "RMSE"), ("error_rate", "label error")]),
            f"pyrovae: columns likelihood, latent {args.latent_dim}, hidden {args.hidden}, "
            f"{args.epochs} epochs, K={args.num_samples}; this session "
            f"{time.perf_counter() - begin:.0f} s",
        ]
    )
    print("\n" + text)
    (args.out / "tables.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
