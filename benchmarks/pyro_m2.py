"""Pyro's own M2 example (``examples/vae/ss_vae_M2.py``) on pyrovae's Fashion-MNIST split.

The anchor for ``--model m2``: the example's model, guide, losses, optimizer and
training loop run unchanged, imported from a Pyro checkout the user names with
``--pyro-examples`` (its ``examples/vae`` folder; nothing of it is copied here). Only
its data loading is replaced, through the module's names ``setup_data_loaders`` and
``MNISTCached``, by Fashion-MNIST from :func:`pyrovae.data.load_dataset` with the split
of ``pyrovae train --model m2 --labels-per-class N --seed S``
(:func:`pyrovae.variants.m2.split_labeled`): the same labelled items, every other
training item unlabelled, the official test set held out. Pixels are gray values in
[0, 1], as the example's MNIST loader gives them (no binarization).

With ``--validation-fraction F`` the validation split of ``pyrovae train
--validation-fraction F`` is carved out of the training items first (the labelled items
are then chosen among the rest, as our M2 chooses them), and the example's "validation"
loader reads it: the number to report is the test accuracy at the epoch of the best
validation accuracy (the example's own "corresponding testing accuracy", and what our
early stopping's ``best.pt`` scores). Without it the example's "validation" loader is the
test set, its best-validation line is test-selected, and the last epoch's test accuracy
is the number to report (printed last, with the wall clock).

The settings are the example's ``EXAMPLE_RUN`` (:data:`SETTINGS`): the auxiliary
classification loss times 46, parallel enumeration, z of 50, one hidden layer of 500,
Adam with learning rate 4.2e-4 and beta_1 0.95, batches of 200.

Get the example from the Pyro release that is installed::

    git clone --depth 1 --branch "$(python -c 'import pyro; print(pyro.__version__)')" \\
        https://github.com/pyro-ppl/pyro /tmp/pyro
    python benchmarks/pyro_m2.py --pyro-examples /tmp/pyro/examples/vae \\
        --labels-per-class 100 --num-epochs 50

The example's accuracy divides the correct predictions by the number of batches times the
batch size, so a loader whose last batch is partial (the validation split of 10 002 items
in batches of 200 is read as 10 200) is under-reported, by 2 % there; the accuracies here
are rescaled to the fraction of the items. The test set (10 000 items) is not affected.

The example imports ``visdom`` (used only by its ``--visualize``); a stand-in module is
put in its place when it is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):  # run as a script: make `pyrovae` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyrovae.data import DEBIAN_FASHION_MNIST, load_dataset
from pyrovae.errors import DataError
from pyrovae.variants.m2 import split_labeled

#: the example's ``EXAMPLE_RUN`` settings (all but its -sup, -n and --seed, which are ours)
SETTINGS = {
    "aux_loss": True,
    "aux_loss_multiplier": 46.0,
    "enum_discrete": "parallel",
    "z_dim": 50,
    "hidden_layers": [500],
    "learning_rate": 0.00042,
    "beta_1": 0.95,
    "batch_size": 200,
    "jit": False,
    "cuda": False,
    "visualize": False,
    "logfile": None,
}
#: the files of ``examples/vae`` the runner needs
NEEDED = ("ss_vae_M2.py", "utils/custom_mlp.py", "utils/mnist_cached.py")


class ExampleError(Exception):
    """The example cannot be found or imported from the folder given."""


def import_example(folder: Path) -> types.ModuleType:
    """Import ``ss_vae_M2`` from ``folder`` (a checkout's ``examples/vae``)."""
    hint = (
        "give the examples/vae folder of a Pyro checkout (git clone --depth 1 --branch "
        "<installed Pyro version> https://github.com/pyro-ppl/pyro)"
    )
    if not folder.is_dir():
        raise ExampleError(f"--pyro-examples {folder}: no such folder; {hint}")
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        raise ExampleError(f"--pyro-examples {folder}: no {', '.join(missing)} there; {hint}")
    try:
        importlib.import_module("visdom")
    except ImportError:  # only its --visualize uses visdom
        sys.modules["visdom"] = types.SimpleNamespace(Visdom=None)  # type: ignore[assignment]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("ss_vae_M2")
    except Exception as exc:  # an example of another Pyro version: say which, no traceback
        raise ExampleError(
            f"cannot import {folder / 'ss_vae_M2.py'}: {type(exc).__name__}: {exc}"
        ) from None


def fashion_loaders(
    data_dir: str,
    per_class: int,
    seed: int,
    batch_size: int,
    validation_fraction: float | None = None,
) -> tuple[dict[str, DataLoader], int]:
    """The example's four loaders on pyrovae's split, and the number of training items.

    Items are flattened gray values, labels one-hot, as the example's ``MNISTCached``
    gives them; every loader shuffles, as the example's do.
    """
    data = load_dataset("fashion-mnist", data_dir=data_dir, binarize="none", seed=seed)
    validation = None
    if validation_fraction is not None:
        data, validation = data.split_validation(validation_fraction, seed)
    labeled, unlabeled = split_labeled(data.train_labels, per_class, seed)

    def one_hot(y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y.long(), data.num_classes).float()

    x_train, x_test = data.train.flatten(1), data.test.flatten(1)
    test = TensorDataset(x_test, one_hot(data.test_labels))
    valid = test
    if validation is not None:
        valid = TensorDataset(validation.test.flatten(1), one_hot(validation.test_labels))
    parts = {
        "sup": TensorDataset(x_train[labeled], one_hot(data.train_labels[labeled])),
        # the labels stay hidden, as in the example (NaN targets)
        "unsup": TensorDataset(x_train[unlabeled], torch.full((len(unlabeled), 1), torch.nan)),
        "valid": valid,
        "test": test,
    }
    loaders = {k: DataLoader(v, batch_size=batch_size, shuffle=True) for k, v in parts.items()}
    return loaders, len(data.train)


def item_accuracy(
    accuracy: Any, loader: DataLoader, classifier: Any, batch_size: int
) -> float:
    """The example's ``get_accuracy`` as a fraction of the loader's items.

    The example divides the correct predictions by the number of batches times
    ``batch_size``, counting a last, partial batch as full; the factor is the same every
    epoch for a loader, so the example's choice of its best epoch is unchanged.
    """
    value = accuracy(loader, classifier, batch_size)
    return value * len(loader) * batch_size / len(loader.dataset)


def run(example: types.ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """Train the example with its own ``main`` on pyrovae's split; the per-epoch test
    accuracies, seconds per epoch and the last test accuracy."""
    loaders, num_train = fashion_loaders(
        args.data_dir,
        args.labels_per_class,
        args.seed,
        SETTINGS["batch_size"],
        args.validation_fraction,
    )
    num_labeled = len(loaders["sup"].dataset)
    result: dict[str, Any] = {"test_accuracy": [], "valid_accuracy": [], "epoch_seconds": []}

    class Cached:  # what main() reads of MNISTCached
        train_data_size = num_train
        validation_size = len(loaders["valid"].dataset)
        test_size = len(loaders["test"].dataset)

    def setup_data_loaders(*_: Any, **__: Any) -> dict[str, DataLoader]:
        return loaders

    train_epoch, accuracy = example.run_inference_for_epoch, example.get_accuracy

    def timed_epoch(*a: Any, **k: Any) -> Any:
        begin = time.perf_counter()
        out = train_epoch(*a, **k)
        result["epoch_seconds"].append(time.perf_counter() - begin)
        return out

    def get_accuracy(loader: DataLoader, classifier: Any, batch_size: int) -> float:
        value = item_accuracy(accuracy, loader, classifier, batch_size)
        if loader is loaders["test"]:
            result["last"] = value
        if loader is loaders["valid"]:
            result["last_valid"] = value
        return value

    def print_and_log(logger: Any, text: str) -> None:
        if result["epoch_seconds"] and len(result["test_accuracy"]) < len(result["epoch_seconds"]):
            result["test_accuracy"].append(result["last"])
            result["valid_accuracy"].append(result.get("last_valid", result["last"]))
            text += f" ({result['epoch_seconds'][-1]:.1f} s)"
        print(text, flush=True)

    patches = {
        "setup_data_loaders": setup_data_loaders,
        "MNISTCached": Cached,
        "run_inference_for_epoch": timed_epoch,
        "get_accuracy": get_accuracy,
        "print_and_log": print_and_log,
    }
    saved = {name: getattr(example, name) for name in patches}
    namespace = argparse.Namespace(
        **SETTINGS, num_epochs=args.num_epochs, seed=args.seed, sup_num=num_labeled
    )
    begin = time.perf_counter()
    try:
        for name, value in patches.items():
            setattr(example, name, value)
        example.main(namespace)
    finally:
        for name, value in saved.items():
            setattr(example, name, value)
    result["seconds"] = time.perf_counter() - begin
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pyro-examples",
        type=Path,
        required=True,
        help="the examples/vae folder of a Pyro checkout (of the installed version)",
    )
    parser.add_argument("--labels-per-class", type=int, default=100)
    parser.add_argument("--num-epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="also chooses the labelled items")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--validation-fraction",
        type=float,
        help="carve the validation split of pyrovae train --validation-fraction F out of "
        "the training items; the reported accuracy is then the test accuracy at the best "
        "validation epoch",
    )
    parser.add_argument(
        "--data-dir",
        default=DEBIAN_FASHION_MNIST,
        help="folder with the Fashion-MNIST IDX files (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if min(args.labels_per_class, args.num_epochs, args.num_threads) < 1:
        parser.error("--labels-per-class, --num-epochs and --num-threads must be positive")
    try:
        example = import_example(args.pyro_examples.expanduser())
    except ExampleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.num_threads)
    try:
        result = run(example, args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    epochs = result["epoch_seconds"]
    if args.validation_fraction is not None:  # the first epoch of the best validation accuracy
        valid = result["valid_accuracy"]
        best = max(range(len(valid)), key=lambda i: (valid[i], -i))
        chosen = (
            f"test accuracy {result['test_accuracy'][best]:.4f} at the best validation "
            f"accuracy {valid[best]:.4f} (epoch {best + 1} of {len(epochs)})"
        )
    else:
        chosen = f"test accuracy {result['last']:.4f} after {len(epochs)} epochs"
    print(
        f"Pyro ss_vae_M2 on fashion-mnist, {args.labels_per_class} labels per class, "
        f"seed {args.seed}: {chosen}; {result['seconds']:.0f} s in all, "
        f"{sum(epochs) / len(epochs):.1f} s per training epoch, {args.num_threads} torch "
        "thread(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
