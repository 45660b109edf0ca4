r"""The feature space of the sample-quality scores: a classifier trained by pyrovae on the data
set's own labels, read at its penultimate layer, and cached per data set.

The Fréchet Inception Distance (Heusel et al. 2017) and the improved precision and recall
(Kynkäänniemi et al. 2019) compare real and generated items in the feature space of a network
trained to tell classes apart: Inception-v3 on ImageNet photographs. Its features fit 8x8 or
28x28 grey images poorly (they are resized to 299x299 RGB first), and its weights cannot be
downloaded offline. So pyrovae does what the MNIST literature does: it trains a small classifier
:math:`f = h \circ \phi` on the data set's labels and uses its penultimate activations
:math:`\phi(x) \in \mathbb{R}^{128}` as the features,

.. math::

    \phi(x) = \mathrm{ReLU}(W \, \mathrm{body}(x) + b), \qquad
    p(y \mid x) = \mathrm{softmax}(h(\phi(x))),

with ``body`` two 3x3 convolution + max-pooling blocks for images ``(C, H, W)`` and a hidden
layer for other items. It is trained once per data set with Adam on the training split
(seeded), scored on the held-out split, and saved to a cache folder
(:func:`default_cache_dir`) under a hash of the data's tensors, labels and the classifier's
settings: every run on that data set, of every variant, is scored in the same feature space.

Scores in this space compare runs on the *same* data set with each other; they are not
comparable with published Inception-based FIDs.

References
----------
- Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter (2017), GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium (the Fréchet Inception Distance).
- Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), Improved Precision and Recall Metric for
  Assessing Generative Models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pyrovae.data import Dataset
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.evaluation.weights import eval_mode, seeded
from pyrovae.progress import progress_bar
from pyrovae.runfolder import RunFolderError, atomic_write

__all__ = [
    "CACHE_FORMAT",
    "ClassifierSettings",
    "FeatureClassifier",
    "TrainedClassifier",
    "classifier_accuracy",
    "default_cache_dir",
    "extract_features",
    "feature_classifier",
    "is_image",
    "train_classifier",
]

logger = logging.getLogger(__name__)

#: the version of the cached classifier files; a file of another version is retrained
CACHE_FORMAT = 1


def is_image(event_shape: tuple[int, ...]) -> bool:
    """Items of shape ``(C, H, W)`` with ``H, W >= 4`` (two 2x2 poolings leave a pixel)."""
    return len(event_shape) == 3 and min(event_shape[1:]) >= 4


@dataclass(frozen=True)
class ClassifierSettings:
    """How the feature classifier is built and trained (part of its cache key).

    Parameters
    ----------
    feature_dim : int
        Width of the penultimate layer: the dimension of the feature space.
    channels : tuple of int
        Channels of the two convolution blocks (image items).
    hidden : int
        Width of the hidden layer before the features (non-image items).
    num_steps : int
        Adam steps of ``batch_size`` training items: about 5 epochs of Fashion-MNIST (about
        90 % held-out accuracy, about a minute on one CPU core), about 200 epochs of the 1437
        training digits (a few seconds).
    batch_size : int
        Training items per step.
    learning_rate : float
        Adam's initial step size, decayed to 0 on a cosine over the ``num_steps``
        (``torch.optim.lr_scheduler.CosineAnnealingLR``).
    seed : int
        Seeds the initial weights and the order of the training items.
    """

    feature_dim: int = 128
    channels: tuple[int, int] = (16, 32)
    hidden: int = 256
    num_steps: int = 2400
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = (self.feature_dim, *self.channels, self.hidden, self.num_steps, self.batch_size)
        if len(self.channels) != 2 or min(sizes) < 1 or not self.learning_rate > 0:
            raise ConfigError(
                "classifier settings need two channel counts and positive sizes, steps and "
                f"learning rate, got {self}"
            )


class FeatureClassifier(nn.Module):
    r"""A small classifier whose penultimate activations :math:`\phi(x)` are the features.

    Parameters
    ----------
    event_shape : tuple of int
        The shape of one item: ``(C, H, W)`` images get two blocks of a 3x3 convolution
        (padding 1), a ReLU and a 2x2 max-pooling; other items are flattened into an MLP.
    num_classes : int
        Number of labels (the logits' width).
    settings : ClassifierSettings
        Layer widths.

    Attributes
    ----------
    num_features : int
        The dimension of :meth:`features`, as torchmetrics' ``FrechetInceptionDistance``
        reads it from a custom feature network.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        num_classes: int,
        settings: ClassifierSettings | None = None,
    ) -> None:
        super().__init__()
        settings = settings or ClassifierSettings()
        self.event_shape = tuple(event_shape)
        self.num_classes = num_classes
        self.num_features = settings.feature_dim
        if is_image(self.event_shape):
            channels, height, width = self.event_shape
            c1, c2 = settings.channels
            layers: list[nn.Module] = [
                nn.Conv2d(channels, c1, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
            ]
            width_in = c2 * (height // 4) * (width // 4)
        else:
            width_in = settings.hidden
            size = 1
            for n in self.event_shape:
                size *= n
            layers = [nn.Flatten(), nn.Linear(size, settings.hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width_in, settings.feature_dim), nn.ReLU())
        self.head = nn.Linear(settings.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\phi(x)`, shape ``(N, num_features)``: the penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits, shape ``(N, num_classes)``."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainedClassifier:
    """What :func:`feature_classifier` returns.

    Attributes
    ----------
    network : FeatureClassifier
        The trained classifier, in eval mode, on the data's device.
    accuracy : float
        Its accuracy on the held-out split.
    seconds : float
        How long its training took (when it was trained, even if loaded from the cache now).
    path : Path
        The cache file.
    """

    network: FeatureClassifier
    accuracy: float
    seconds: float
    path: Path


def default_cache_dir() -> Path:
    """``$PYROVAE_CACHE``, else ``$XDG_CACHE_HOME/pyrovae``, else ``~/.cache/pyrovae``."""
    if os.environ.get("PYROVAE_CACHE"):
        return Path(os.environ["PYROVAE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "pyrovae"
    return Path.home() / ".cache" / "pyrovae"


@torch.no_grad()
def extract_features(
    network: FeatureClassifier, x: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    r""":math:`\phi(x)` of every item, in batches, on ``x``'s device."""
    with eval_mode(network):
        return torch.cat(
            [network.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )


@torch.no_grad()
def classifier_accuracy(
    network: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
) -> float:
    """The fraction of items whose most probable class is their label."""
    with eval_mode(network):
        hits = sum(
            int((network(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    return hits / len(x)


def _require_labels(data: Dataset) -> None:
    if data.train_labels is None or data.test_labels is None:
        raise DataError(
            f"sample-quality scores read the features of a classifier trained on the data's "
            f"labels, but {data.name} has no train and test labels; use a labelled data set "
            "(digits, mnist, fashion-mnist, or an .npz file with y / y_train and y_test)"
        )


def train_classifier(
    data: Dataset, settings: ClassifierSettings | None = None
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on ``data``'s training split and labels.

    ``settings.num_steps`` Adam steps on the cross-entropy (the step size decayed on a cosine),
    with batches from
    :meth:`Dataset.cycle <pyrovae.data.Dataset.cycle>` (fresh Bernoulli draws for
    ``binarize="dynamic"``, as the VAE sees them). The weights and the order come from
    ``settings.seed``; the global random state is left as it was. A progress bar counts
    the steps (:mod:`pyrovae.progress`).

    Raises
    ------
    DataError
        If ``data`` has no labels.
    """
    settings = settings or ClassifierSettings()
    _require_labels(data)
    device = data.train.device
    # enable_grad: scoring (under no_grad) trains the classifier when the cache has none
    with seeded(settings.seed, device), torch.enable_grad():
        network = FeatureClassifier(data.shape, data.num_classes, settings).to(device)
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        batches = data.cycle("train", settings.batch_size, labels=True, generator=generator)
        optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.num_steps)
        network.train()
        for _ in progress_bar(range(settings.num_steps), desc="feature classifier", unit="step"):
            x, y = next(batches)
            loss = nn.functional.cross_entropy(network(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return network.eval()


def _cache_key(data: Dataset, settings: ClassifierSettings) -> str:
    """sha256 of the classifier's settings and of the data's tensors (bytes, dtype, shape)."""
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "settings": dataclasses.asdict(settings),
        "binarize": data.binarize,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for t in (data.train, data.test, data.train_labels, data.test_labels):
        array = t.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _load(path: Path, key: str) -> dict | None:
    """The cached entry at ``path`` if it is one of this format and key, else ``None``."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        logger.warning("ignoring the unreadable classifier cache %s (%s)", path, type(e).__name__)
        return None
    current = isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT
    if not current or entry.get("key") != key:
        logger.warning("ignoring the classifier cache %s: another format or data set", path)
        return None
    return entry


def _save(entry: dict, path: Path) -> None:
    """Write ``entry`` atomically (:func:`pyrovae.runfolder.atomic_write`); raises the
    ``OSError`` of a failed write."""
    try:
        atomic_write(path, lambda f: torch.save(entry, f))
    except RunFolderError as e:
        raise e.__cause__ if isinstance(e.__cause__, OSError) else e from None


def feature_classifier(
    data: Dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    settings: ClassifierSettings | None = None,
    batch_size: int = 500,
) -> TrainedClassifier:
    """The feature classifier of ``data``: loaded from the cache, or trained and cached.

    Parameters
    ----------
    data : Dataset
        A labelled data set; the classifier trains on its training split and is scored on
        its held-out split.
    cache_dir : str or path-like, optional
        Where trained classifiers are kept (default :func:`default_cache_dir`), one file per
        data set and settings: ``classifier-<name>-<hash>.pt``, whose hash covers the data's
        train and test tensors and labels, the binarization and ``settings``. Written
        atomically, read with ``torch.load(weights_only=True)``; an unreadable file is
        retrained and replaced.
    settings : ClassifierSettings, optional
        The architecture and training (default :class:`ClassifierSettings`).
    batch_size : int
        Items per batch when scoring the held-out accuracy.

    Returns
    -------
    TrainedClassifier
        The network (on ``data``'s device, in eval mode) and its held-out accuracy.

    Raises
    ------
    DataError
        If ``data`` has no labels.
    ConfigError
        If the cache folder cannot be created or written.
    """
    settings = settings or ClassifierSettings()
    _require_labels(data)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the classifier cache folder {folder} ({e.strerror}); give another "
            "with --cache-dir (or $PYROVAE_CACHE)"
        ) from None
    if not folder.is_dir():
        raise ConfigError(f"the classifier cache {folder} is not a folder; give a --cache-dir")
    key = _cache_key(data, settings)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name)
    path = folder / f"classifier-{name}-{key[:16]}.pt"
    entry = _load(path, key)
    if entry is not None:
        # built on the meta device: no random initialization (the global RNG is untouched)
        with torch.device("meta"):
            network = FeatureClassifier(data.shape, data.num_classes, settings)
        network.load_state_dict(entry["state_dict"], assign=True)
        network = network.to(data.train.device).eval()
        logger.info("feature classifier of %s loaded from %s", data.name, path)
        return TrainedClassifier(network, entry["accuracy"], entry["seconds"], path)
    start = time.perf_counter()
    network = train_classifier(data, settings)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(network, data.test, data.test_labels, batch_size)
    logger.info(
        "feature classifier of %s trained in %.1f s: held-out accuracy %.4f; cached in %s",
        data.name,
        seconds,
        accuracy,
        path,
    )
    entry = {
        "format": CACHE_FORMAT,
        "key": key,
        "settings": dataclasses.asdict(settings),
        "event_shape": list(data.shape),
        "num_classes": data.num_classes,
        "accuracy": accuracy,
        "seconds": seconds,
        "state_dict": {k: v.cpu() for k, v in network.state_dict().items()},
    }
    try:
        _save(entry, path)
    except OSError as e:
        raise ConfigError(
            f"cannot write the classifier cache {path} ({e.strerror}); give another folder "
            "with --cache-dir (or $PYROVAE_CACHE)"
        ) from None
    return TrainedClassifier(network, accuracy, seconds, path)
