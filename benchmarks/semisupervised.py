"""Semi-supervised classification with the M2 model: held-out accuracy with few labels.

For each data set and number of labels per class, three classifiers see the same
labelled items (``pyrovae.variants.m2.labeled_subset``, seeded):

``M2``
    ``pyrovae train --model m2 --labels-per-class N --alpha A``: the classifier q(y|x) of
    the M2 model, trained with the labelled items and every other training item
    unlabelled; ``alpha`` is given as a multiple of the training set size N
    (``--alpha-factors``; the paper's 0.1 and a stronger 10).
``same network, labels only``
    The same classifier network (MLP 256-128) trained with cross-entropy and Adam on the
    labelled items alone (2000 steps of 64).
``logistic regression``
    scikit-learn's ``LogisticRegression`` on the pixels of the labelled items.

Accuracy is on the whole held-out split (digits: 360 items, Fashion-MNIST: 10000).
Fashion-MNIST is read offline (``--data-dir`` or Debian's ``dataset-fashion-mnist``); it
is skipped with a message when absent. ``--quick`` runs the digits with 10 labels per
class for a few epochs.

Examples
--------
::

    python benchmarks/semisupervised.py
    python benchmarks/semisupervised.py --quick
    python benchmarks/semisupervised.py --digits-epochs 100 --fashion-epochs 5
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, markdown_table, report
from pyrovae import Config, Dataset, load_dataset, train
from pyrovae.errors import DataError
from pyrovae.run import use_best
from pyrovae.variants import SemiSupervisedVAE
from pyrovae.variants.m2 import Classifier, labeled_subset, train_classifier

DATASETS = ("digits", "fashion-mnist")
HEADER = [
    "data set",
    "labels per class",
    "alpha / N",
    "M2",
    "same network, labels only",
    "logistic regression",
    "M2 epochs (best of)",
    "M2 seconds",
]


def _accuracy(predicted: torch.Tensor, y: torch.Tensor) -> float:
    return float((predicted.cpu() == y.cpu()).float().mean())


def compare(
    data: Dataset,
    per_class: int,
    epochs: int,
    seed: int,
    alpha_factor: float = 0.1,
    *,
    validation_fraction: float | None = None,
    patience: int | None = None,
    alpha_per_label: float | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Held-out accuracies of M2 (alpha = ``alpha_factor`` * N, or ``alpha_per_label``
    times the number of labelled items) and of the two supervised-only baselines.

    With ``validation_fraction`` a validation split is carved out of ``data``'s training
    items first (as ``pyrovae train --validation-fraction`` does; the labelled items are
    chosen among the rest, and the baselines see the same ones): the per-epoch accuracy is
    the validation split's, ``patience`` stops M2 early, and the best epoch's parameters
    are scored. ``settings`` are further config flags of the M2 run (``hidden``,
    ``latent_dim``, ``batch_size``, ``learning_rate``, ...).
    """
    from sklearn.linear_model import LogisticRegression

    validation = None
    if validation_fraction is not None:
        data, validation = data.split_validation(validation_fraction, seed)
    num_labeled = per_class * data.num_classes
    alpha = alpha_factor * len(data.train) if alpha_per_label is None else None
    config = Config.from_flags(
        model="m2",
        labels_per_class=per_class,
        num_classes=data.num_classes,
        num_epochs=epochs,
        seed=seed,
        alpha=alpha if alpha is not None else alpha_per_label * num_labeled,
        patience=patience,
        validation_fraction=validation_fraction,
        **(settings or {}),
    )
    torch.manual_seed(seed)
    m2 = SemiSupervisedVAE.from_section(config.model, data.shape)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:  # where best.pt is kept meanwhile
        history = train(m2, data, config, folder, progress=False, validation=validation)
        best = use_best(m2, Path(folder))
    seconds = time.perf_counter() - begin
    index = labeled_subset(data.train_labels, per_class, seed)
    x, y = data.train[index], data.train_labels[index]
    torch.manual_seed(seed)
    network = Classifier(data.shape, data.num_classes, config.model["hidden"])
    network = train_classifier(network, x, y, seed=seed)
    with torch.no_grad():
        supervised = network(data.test).argmax(-1)
    logistic = LogisticRegression(max_iter=5000).fit(x.flatten(1).numpy(), y.numpy())
    return {
        "m2": _accuracy(m2.predict(data.test), data.test_labels),
        "network": _accuracy(supervised, data.test_labels),
        "logistic": _accuracy(
            torch.as_tensor(logistic.predict(data.test.flatten(1).numpy())), data.test_labels
        ),
        "seconds": seconds,
        "epochs": len(history),
        "best_epoch": len(history) if best is None else best["epoch"],
        "alpha_factor": config.model["variant"]["alpha"] / len(data.train),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 10 labels, 5 epochs")
    parser.add_argument("--labels-per-class", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--alpha-factors",
        type=float,
        nargs="+",
        default=[0.1, 10.0],
        help="M2's alpha as multiples of N (default: the paper's 0.1, and 10)",
    )
    parser.add_argument("--digits-epochs", type=int, default=300)
    parser.add_argument("--fashion-epochs", type=int, default=3)
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="(both)"
    )
    parser.add_argument(
        "--alpha-per-label",
        type=float,
        help="M2's alpha as a multiple of the number of labelled items instead (Pyro's "
        "example: 46)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        help="carve a validation split out of the training items: M2's per-epoch accuracy "
        "is on it, and its best epoch is scored",
    )
    parser.add_argument(
        "--patience", type=int, help="stop M2 after this many epochs without a better one"
    )
    parser.add_argument(
        "--m2",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config flags of the M2 run, e.g. hidden=500 latent_dim=50 batch_size=200",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if min(args.digits_epochs, args.fashion_epochs, *args.labels_per_class) < 1:
        parser.error("epochs and --labels-per-class must be positive")
    if min(args.alpha_factors) < 0:
        parser.error("--alpha-factors must be >= 0")
    if args.patience is not None and args.validation_fraction is None:
        parser.error("--patience needs --validation-fraction")
    try:
        args.settings = _settings(args.m2)
    except ValueError as e:
        parser.error(str(e))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.num_threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``["hidden=500", "latent_dim=50", "labeled_schedule=paired"]`` as config flags
    (numbers parsed, a list of numbers for ``hidden``, other values kept as words)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--m2 takes KEY=VALUE pairs, got {pair!r}")
        if key == "hidden":
            settings[key] = tuple(_number(v) for v in value.split(","))
        else:
            settings[key] = _number(value)
    return settings


def _number(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _run(args: argparse.Namespace) -> int:
    begin = time.perf_counter()
    runs = []
    per_class, factors = args.labels_per_class, args.alpha_factors
    if args.quick:
        runs, per_class, factors = [("digits", load_dataset("digits"), 5)], [10], factors[:1]
    if "digits" in args.datasets and not args.quick:
        runs.append(("digits", load_dataset("digits", seed=args.seed), args.digits_epochs))
    if "fashion-mnist" in args.datasets and not args.quick:
        try:
            fashion = load_dataset("fashion-mnist", data_dir=args.data_dir)
            runs.append(("fashion-mnist", fashion, args.fashion_epochs))
        except DataError as e:
            print(f"skipping Fashion-MNIST: {e}", file=sys.stderr)
    rows = []
    if args.alpha_per_label is not None:
        factors = [None]
    for name, data, epochs in runs:
        for n, factor in itertools.product(per_class, factors):
            r = compare(
                data,
                n,
                epochs,
                args.seed,
                factor or 0.0,
                validation_fraction=args.validation_fraction,
                patience=args.patience,
                alpha_per_label=args.alpha_per_label,
                settings=args.settings,
            )
            rows.append(
                [
                    name,
                    str(n),
                    f"{r['alpha_factor']:.3g}",
                    f"{r['m2']:.3f}",
                    f"{r['network']:.3f}",
                    f"{r['logistic']:.3f}",
                    f"{r['best_epoch']} of {r['epochs']}",
                    f"{r['seconds']:.0f}",
                ]
            )
            print(f"{name}, {n} labels per class: {r}", file=sys.stderr)
    seconds = time.perf_counter() - begin
    lines = [
        f"held-out accuracy; {seconds:.0f} s in all, {torch.get_num_threads()} torch thread(s)"
    ]
    report("Semi-supervised M2", lines, markdown_table(HEADER, rows), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
