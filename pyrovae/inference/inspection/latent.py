r"""The latent space: encode a data set, embed it in 2-D, and score the representation.

- :func:`encode_dataset`: posterior means :math:`\mu_\phi(x)` and log-variances
  :math:`\log\sigma^2_\phi(x)` of every train and held-out item (saved as ``.npz`` by
  :func:`save_codes`).
- :func:`embed`: 2-D coordinates of the means for a scatter plot; the latent itself
  when it is at most 2-D, otherwise the methods of :data:`EMBEDDINGS` (scikit-learn's
  PCA and t-SNE).
- :func:`linear_probe`: accuracy of a multinomial logistic regression trained on the
  train means and labels and scored on the held-out ones, a standard measure of how
  linearly decodable the classes are from the code.
- :func:`latent_report`: the probe together with the diagnostics of
  :mod:`pyrovae.inference.inspection.diagnostics` (KL per dimension, active units after Burda et
  al., mutual information) on the held-out items.

References
----------
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (active units).
- van der Maaten & Hinton (2008), Visualizing Data using t-SNE. JMLR 9.
- Alain & Bengio (2017), Understanding intermediate layers using linear classifier probes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyrovae.data import Dataset
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.evaluation.metrics import ACTIVE_THRESHOLD
from pyrovae.inference.inspection.diagnostics import diagnose, encode_all
from pyrovae.inference.sites import require, require_single_latent
from pyrovae.registry import Registry

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "EMBEDDINGS",
    "embed",
    "encode_dataset",
    "latent_report",
    "linear_probe",
    "save_codes",
]

logger = logging.getLogger(__name__)

#: 2-D embeddings of latent means ``(N, D) -> (N, 2)``, each called as ``fn(loc, seed)``
EMBEDDINGS: Registry[Callable[[np.ndarray, int], np.ndarray]] = Registry("embedding")


@EMBEDDINGS.register("pca")
def pca(loc: np.ndarray, seed: int = 0) -> np.ndarray:
    """The first two principal components (``sklearn.decomposition.PCA``)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(loc)


@EMBEDDINGS.register("tsne")
def tsne(loc: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE (``sklearn.manifold.TSNE``, PCA initialisation), perplexity ``min(30, (N-1)/3)``."""
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(loc) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        loc
    )


def embed(
    loc: np.ndarray, methods: Sequence[str] = ("pca", "tsne"), seed: int = 0
) -> dict[str, np.ndarray]:
    """2-D coordinates of the latent means: ``{"latent": loc}`` when ``D <= 2`` (a 1-D code
    gets a zero second coordinate), else ``{method: EMBEDDINGS[method](loc)}``."""
    loc = np.asarray(loc, dtype=np.float64)
    if loc.ndim != 2 or len(loc) < 2:
        raise DataError(f"need latent means of shape (N >= 2, D), got {loc.shape}")
    if loc.shape[1] <= 2:
        return {"latent": np.pad(loc, ((0, 0), (0, 2 - loc.shape[1])))}
    if len(loc) < 4 and "tsne" in methods:
        raise DataError(f"t-SNE needs at least 4 points, got {len(loc)}")
    return {name: EMBEDDINGS[name](loc, seed) for name in methods}


@torch.no_grad()
def encode_dataset(vae: VAE, data: Dataset, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Posterior means and log-variances of the train and held-out items (and labels).

    Returns a dict of NumPy arrays: ``train_loc``, ``train_log_var``, ``test_loc``,
    ``test_log_var`` (each ``(N, latent_dim)``) and, when the data set has labels,
    ``train_labels`` and ``test_labels``. Inside a :func:`pyrovae.progress.enabled` block,
    a bar on a terminal counts the items of each split.
    """
    require(vae, "posterior", "encoding a data set")
    require_single_latent(vae, "encoding a data set")
    codes: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x = getattr(data, split)
        loc, log_var = encode_all(vae, x.to(vae.device), batch_size, desc=f"encoding {split}")
        codes[f"{split}_loc"] = loc.cpu().numpy()
        codes[f"{split}_log_var"] = log_var.cpu().numpy()
        labels = getattr(data, f"{split}_labels")
        if labels is not None:
            codes[f"{split}_labels"] = labels.cpu().numpy()
    return codes


def save_codes(codes: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write :func:`encode_dataset`'s arrays to one ``.npz`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **codes)
    return path


def linear_probe(
    train_loc: np.ndarray,
    train_labels: np.ndarray,
    test_loc: np.ndarray,
    test_labels: np.ndarray,
    *,
    max_iter: int = 2000,
) -> float:
    """Held-out accuracy of a logistic regression on the (standardized) latent means.

    ``sklearn``: ``StandardScaler`` then ``LogisticRegression`` (L2, ``C=1``, lbfgs,
    multinomial for more than two classes), fit on the train means, scored with
    ``accuracy_score`` on the held-out means.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_labels)) < 2:
        raise DataError("the linear probe needs at least two classes among the train labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train_loc, train_labels)
    return float(accuracy_score(test_labels, probe.predict(test_loc)))


def latent_report(
    vae: VAE,
    data: Dataset,
    codes: dict[str, np.ndarray] | None = None,
    *,
    threshold: float = ACTIVE_THRESHOLD,
    batch_size: int = 500,
    max_probe_train: int | None = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Diagnostics of the held-out codes and the linear probe, as a JSON-ready dict.

    Keys: ``num_train``, ``num_test``, ``latent_dim``, and from
    :func:`pyrovae.inference.inspection.diagnostics.diagnose` on the held-out items ``kl`` (nats per
    item), ``kl_per_dim``, ``active_units`` (activity above ``threshold``),
    ``mutual_information``; ``activity`` (variance of each posterior mean over the held-out
    items); ``probe_accuracy`` (``None`` without labels) with ``probe_train_size``: the
    probe is fitted on at most ``max_probe_train`` train items (a random sample drawn with
    ``seed``; ``None`` for all), which bounds its time on large data sets (on
    Fashion-MNIST's 50-dim codes, 10000 items give the same accuracy as 60000 within 0.1%).
    """
    require(vae, "posterior", "the latent report")
    require_single_latent(vae, "the latent report")
    if not threshold > 0:
        raise ConfigError(f"the active-unit threshold must be > 0, got {threshold}")
    if max_probe_train is not None and max_probe_train < 2:
        raise ConfigError(f"the probe needs at least 2 train items, got {max_probe_train}")
    if codes is None:
        codes = encode_dataset(vae, data, batch_size)
    x = data.test.to(vae.device)
    report: dict[str, Any] = {
        "num_train": len(data.train),
        "num_test": len(data.test),
        "latent_dim": vae.latent_dim,
        **diagnose(vae, x, threshold=threshold, batch_size=batch_size),
        "activity": np.var(codes["test_loc"], axis=0, ddof=1).tolist(),
        "active_threshold": threshold,
        "probe_accuracy": None,
        "probe_train_size": None,
    }
    if "train_labels" in codes and "test_labels" in codes:
        train_loc, train_labels = codes["train_loc"], codes["train_labels"]
        if max_probe_train is not None and len(train_loc) > max_probe_train:
            keep = np.random.default_rng(seed).permutation(len(train_loc))[:max_probe_train]
            train_loc, train_labels = train_loc[keep], train_labels[keep]
        report["probe_accuracy"] = linear_probe(
            train_loc, train_labels, codes["test_loc"], codes["test_labels"]
        )
        report["probe_train_size"] = len(train_loc)
    return report
