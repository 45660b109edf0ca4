r"""Sample quality: how close generated items are to the held-out data, in the feature space of
a classifier trained on the data set's labels (:mod:`~pyrovae.inference.evaluation.features`).

With :math:`\phi(x)` those features, the real items :math:`R = \{\phi(x_i)\}` and the generated
ones :math:`G = \{\phi(\tilde x_j)\}`:

**Fréchet distance** (Heusel et al. 2017): the 2-Wasserstein distance between the Gaussians
fitted to the two sets (means :math:`\mu`, covariances :math:`\Sigma`),

.. math::

    \mathrm{FD}(R, G) = \lVert \mu_R - \mu_G \rVert^2
    + \operatorname{tr}\bigl(\Sigma_R + \Sigma_G - 2 (\Sigma_R \Sigma_G)^{1/2}\bigr),

computed with torchmetrics' ``FrechetInceptionDistance`` given our feature network. Lower is
better; 0 for identical sets. With finitely many items it is biased upwards, so
:func:`score` reports the FD of the held-out items against as many training items
(``fd_train_test``): what a generator that reproduces the data would reach.

**Precision and recall** (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
around its points, each of radius the distance to its :math:`k`-th nearest neighbour in the
set, :math:`r_k(\phi)`; then

.. math::

    \mathrm{precision} = \frac{1}{|G|} \sum_{g \in G}
    \mathbf{1}\bigl[\exists\, r \in R: \lVert g - r \rVert \le r_k(r)\bigr], \qquad
    \mathrm{recall} = \frac{1}{|R|} \sum_{r \in R}
    \mathbf{1}\bigl[\exists\, g \in G: \lVert r - g \rVert \le r_k(g)\bigr].

Precision is the fraction of samples that look like data (quality), recall the fraction of the
data the samples cover (diversity). A few real outliers with large balls make precision
generous, so :func:`manifold_scores` also gives the **density** and **coverage** of Naeem et al.
(2020), which count the balls (expected values 1 and about :math:`1 - 2^{-k}` for samples of
the data's distribution).

**Sharpness**: the variance of the discrete Laplacian of an image, a classic focus measure
(Pech-Pacheco et al. 2000) that blur lowers,

.. math::

    S(x) = \frac{1}{C} \sum_{c=1}^C \operatorname{Var}_{i,j}\bigl[(\Delta x_c)_{ij}\bigr],
    \qquad (\Delta x)_{ij} = x_{i-1,j} + x_{i+1,j} + x_{i,j-1} + x_{i,j+1} - 4 x_{ij},

over the interior pixels (no padding). VAE samples, the decoded means
:math:`E[x \mid z]`, are typically blurrier than the data: compare ``sharpness_samples`` with
``sharpness_data``.

References
----------
- Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter (2017), GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium.
- Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), Improved Precision and Recall Metric for
  Assessing Generative Models.
- Naeem, Oh, Uh, Choi & Yoo (2020), Reliable Fidelity and Diversity Metrics for Generative
  Models.
- Pech-Pacheco, Cristóbal, Chamorro-Martínez & Fernández-Valdivia (2000), Diatom autofocusing
  in brightfield microscopy: a comparative study.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyrovae.data import Dataset
from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation.features import (
    ClassifierSettings,
    extract_features,
    feature_classifier,
    is_image,
)
from pyrovae.inference.evaluation.weights import batches, chunk_size, eval_mode, seeded
from pyrovae.progress import progress_bar

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "LAPLACIAN",
    "frechet_distance",
    "knn_radii",
    "manifold_scores",
    "precision_recall",
    "score",
    "sharpness",
]

#: the 3x3 kernel of the discrete Laplacian (4-neighbourhood)
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


class _Features(nn.Module):
    """What torchmetrics' FID is given: ``network.features`` (or the identity, for items that
    are features already) in float64, with the ``num_features`` attribute FID reads."""

    def __init__(self, num_features: int, network: nn.Module | None = None) -> None:
        super().__init__()
        self.num_features = num_features
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x if self.network is None else self.network.features(x)
        return features.double()


@torch.no_grad()
def frechet_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    feature: nn.Module | None = None,
    batch_size: int = 500,
) -> float:
    r"""The Fréchet distance between two sets of items, in the space of ``feature``.

    .. math::

        \mathrm{FD} = \lVert \mu_R - \mu_G \rVert^2
        + \operatorname{tr}\bigl(\Sigma_R + \Sigma_G - 2 (\Sigma_R \Sigma_G)^{1/2}\bigr)

    computed by torchmetrics' ``FrechetInceptionDistance(feature=...)`` in float64. Given a
    custom feature module, torchmetrics passes the items to it as they are (its
    ``normalize`` flag only rescales inputs of its own Inception network), so float images
    in [0, 1] reach the network unchanged.

    Parameters
    ----------
    real, fake : torch.Tensor
        Items ``(N, *event_shape)`` for ``feature``, or, without ``feature``, features
        ``(N, D)`` themselves. At least 2 of each.
    feature : nn.Module, optional
        A network with a ``features(x)`` method and a ``num_features`` attribute, such as a
        :class:`~pyrovae.inference.evaluation.features.FeatureClassifier` (on the items'
        device); ``None`` when ``real`` and ``fake`` are features.
    batch_size : int
        Items per pass through ``feature``.

    Returns
    -------
    float
        The distance (squared units of the features).

    Raises
    ------
    ConfigError
        If a set has fewer than 2 items, or features of different or missing dimensions.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ConfigError(
            f"a Fréchet distance needs at least 2 items in each set, got {len(real)} and "
            f"{len(fake)}"
        )
    if feature is None:
        if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
            raise ConfigError(
                "without a feature network, frechet_distance takes two (N, D) feature "
                f"tensors of one D, got shapes {tuple(real.shape)} and {tuple(fake.shape)}"
            )
        features = _Features(real.shape[1])
    else:
        features = _Features(int(feature.num_features), feature)
    # the network keeps the mode it is in: FID's own train()/eval() would reach it
    metric = FrechetInceptionDistance(feature=features, normalize=False).to(real.device)
    for items, is_real in ((real, True), (fake, False)):
        for xb, _ in batches(items, batch_size):
            metric.update(xb, real=is_real)
    return float(metric.compute())


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    r""":math:`r_k(\phi)`: each point's distance to its ``k``-th nearest neighbour among the
    other points of ``features`` ``(N, D)``, shape ``(N,)``, in float64."""
    if not 1 <= k < len(features):
        raise ConfigError(
            f"k-nearest-neighbour radii need 1 <= k < the number of items, got k={k} for "
            f"{len(features)} items"
        )
    radii = torch.empty(len(features), dtype=torch.float64, device=features.device)
    rows = chunk_size(len(features), len(features))
    for i in range(0, len(features), rows):
        d = torch.cdist(features[i : i + rows].double(), features.double())
        radii[i : i + rows] = d.kthvalue(k + 1, dim=1).values  # the (k+1)-th is past itself
    return radii


def _ball_hits(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """In one chunked pass: per query, how many of the balls around ``centres`` of ``radii``
    hold it; per centre, whether its ball holds some query."""
    counts = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    covered = torch.zeros(len(centres), dtype=torch.bool, device=queries.device)
    rows = chunk_size(len(queries), len(centres))
    for i in range(0, len(queries), rows):
        inside = torch.cdist(queries[i : i + rows].double(), centres.double()) <= radii
        counts[i : i + rows] = inside.sum(dim=1)
        covered |= inside.any(dim=0)
    return counts, covered


def manifold_scores(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3
) -> dict[str, float]:
    r"""Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al.
    2020) of generated items against real ones, from the ``k``-nearest-neighbour balls.

    With :math:`B(r) = \{\phi: \lVert \phi - r \rVert \le r_k(r)\}` the ball of a real
    point (:func:`knn_radii`), ``precision`` and ``recall`` are as in the module's
    docstring, and

    .. math::

        \mathrm{density} = \frac{1}{k |G|} \sum_{g \in G} \sum_{r \in R}
        \mathbf{1}[g \in B(r)], \qquad
        \mathrm{coverage} = \frac{1}{|R|} \sum_{r \in R}
        \mathbf{1}[\exists\, g \in G: g \in B(r)].

    Precision counts a sample inside *one* real ball as real, and a few real outliers have
    large balls: in a classifier's feature space even uniform noise lands inside some of
    them (precision 0.4-0.6 on digits and Fashion-MNIST). Density counts the balls, so
    outliers weigh little: its expectation is 1 when the samples follow the data's
    distribution, whatever ``k`` (uniform noise scores 0.15-0.35). Coverage, the fraction of real
    balls that hold a sample, has expectation
    :math:`1 - \prod_{i=1}^{k} \frac{N - i}{N + M - i} \approx 1 - 2^{-k}` (0.875 for
    ``k = 3`` and ``M = N``) for samples of the data's distribution (Naeem et al. 2020).

    Distances are computed in chunks of at most
    :data:`~pyrovae.inference.evaluation.weights.CHUNK_ELEMENTS`, so 10 000 x 10 000 items
    fit in memory.

    Parameters
    ----------
    real_features, fake_features : torch.Tensor
        Features ``(N, D)`` and ``(M, D)``, each with more than ``k`` items.
    k : int
        The neighbour that sets the radii (3 in both papers).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``density``, ``coverage``.

    References
    ----------
    - Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), Improved Precision and Recall
      Metric for Assessing Generative Models.
    - Naeem, Oh, Uh, Choi & Yoo (2020), Reliable Fidelity and Diversity Metrics for
      Generative Models.
    """
    if real_features.dim() != 2 or fake_features.shape[1:] != real_features.shape[1:]:
        raise ConfigError(
            "precision and recall take two (N, D) feature tensors of one D, got shapes "
            f"{tuple(real_features.shape)} and {tuple(fake_features.shape)}"
        )
    real_radii, fake_radii = knn_radii(real_features, k), knn_radii(fake_features, k)
    counts, covered = _ball_hits(fake_features, real_features, real_radii)
    recall_counts, _ = _ball_hits(real_features, fake_features, fake_radii)
    return {
        "precision": (counts > 0).double().mean().item(),
        "recall": (recall_counts > 0).double().mean().item(),
        "density": counts.sum().item() / (k * len(fake_features)),
        "coverage": covered.double().mean().item(),
    }


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019) of generated items.

    Each set's manifold is the union of balls around its points with radii their distances
    to their ``k``-th nearest neighbour (:func:`knn_radii`); precision is the fraction of
    ``fake_features`` inside the real manifold, recall the fraction of ``real_features``
    inside the generated one (see :func:`manifold_scores`, which also gives the density and
    coverage that real outliers do not inflate).

    Parameters
    ----------
    real_features, fake_features : torch.Tensor
        Features ``(N, D)`` and ``(M, D)``, each with more than ``k`` items.
    k : int
        The neighbour that sets the radii (3 in the paper).

    Returns
    -------
    precision, recall : float
    """
    scores = manifold_scores(real_features, fake_features, k)
    return scores["precision"], scores["recall"]


def sharpness(x: torch.Tensor) -> torch.Tensor:
    r"""Per image :math:`S(x)`: the variance of the discrete Laplacian over the interior
    pixels, averaged over the channels; shape ``(N,)``.

    ``x`` holds images ``(N, C, H, W)`` with ``H, W >= 3``; the Laplacian is the 3x3
    convolution with :data:`LAPLACIAN` without padding, and the variance is the population
    variance (divided by the number of pixels).
    """
    if x.dim() != 4 or min(x.shape[-2:]) < 3:
        raise ConfigError(f"sharpness takes images (N, C, H, W) with H, W >= 3, got {x.shape}")
    channels = x.shape[1]
    kernel = torch.tensor(LAPLACIAN, dtype=x.dtype, device=x.device)
    laplacian = nn.functional.conv2d(x, kernel.expand(channels, 1, 3, 3), groups=channels)
    return laplacian.flatten(2).var(dim=-1, unbiased=False).mean(dim=1)


class _Summary:
    """Features (and sharpness) of one set of items, gathered batch by batch."""

    def __init__(self, network: nn.Module, images: bool) -> None:
        self.network, self.images = network, images
        self.features: list[torch.Tensor] = []
        self.sharpness: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        self.features.append(extract_features(self.network, x, len(x)))
        if self.images:
            self.sharpness.append(sharpness(x))

    def all_features(self) -> torch.Tensor:
        return torch.cat(self.features)

    def mean_sharpness(self) -> float | None:
        return torch.cat(self.sharpness).mean().item() if self.images else None


@torch.no_grad()
def score(
    vae: VAE,
    data: Dataset,
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    k: int = 3,
    cache_dir: str | os.PathLike | None = None,
    settings: ClassifierSettings | None = None,
) -> dict[str, Any]:
    r"""Sample-quality scores of ``vae`` on ``data``'s held-out items.

    The items compared with the held-out data are **prior samples**, the decoded means
    :math:`E[x \mid z]`, :math:`z \sim p(z)`, as :meth:`VAE.sample` returns them (a variant
    that needs labels draws the classes in turn), and **reconstructions** of the held-out
    items, :math:`E[x \mid z = \mu_\phi(x)]` (given their labels when the variant takes
    them). Everything runs in eval mode, without gradients, in batches; inside a
    :func:`pyrovae.progress.enabled` block, bars on a terminal count the classifier's
    training steps and the items of each pass.

    Parameters
    ----------
    vae : VAE
        A trained VAE, any variant.
    data : Dataset
        Its data set, labelled: the feature classifier trains on its labels
        (:func:`~pyrovae.inference.evaluation.features.feature_classifier`, cached).
    num_samples : int, optional
        Prior samples to draw (default: as many as held-out items); more than ``k``.
    batch_size : int
        Items per batch.
    seed : int
        Seeds the prior samples and the training subset of ``fd_train_test``; the global
        random state is left as it was.
    k : int
        The neighbour of the precision-and-recall radii.
    cache_dir : str or path-like, optional
        The classifier cache (default
        :func:`~pyrovae.inference.evaluation.features.default_cache_dir`).
    settings : ClassifierSettings, optional
        The feature classifier (default :class:`ClassifierSettings`).

    Returns
    -------
    dict
        ``num_data`` (held-out items), ``num_samples``;
        ``fd_samples``, ``fd_reconstructions``: Fréchet distances of the held-out items to the
        samples and to the reconstructions, and ``fd_train_test``: to as many training items
        (the floor of a perfect generator at this number of items; all three lower is better);
        ``precision``, ``recall``, ``density``, ``coverage`` of the samples against the
        held-out items with ``k`` (``precision_recall_k``) neighbours
        (:func:`manifold_scores`);
        ``sharpness_samples``, ``sharpness_reconstructions``, ``sharpness_data``: mean
        variance of the Laplacian (``None`` for items that are not images);
        ``reconstruction_mse``: the per-item mean squared error of the reconstructions,
        averaged (as in :func:`~pyrovae.inference.evaluation.evaluate`);
        ``classifier_accuracy``: the feature classifier's held-out accuracy, and
        ``feature_dim``.

    Raises
    ------
    ConfigError
        If ``num_samples``, ``batch_size`` or ``k`` is out of range, or the cache cannot
        be written.
    DataError
        If ``data`` has no labels.
    """
    test, device = data.test, vae.device
    num_samples = len(test) if num_samples is None else num_samples
    if batch_size < 1 or k < 1:
        raise ConfigError(f"batch_size and k must be >= 1, got {batch_size} and {k}")
    if num_samples <= k or len(test) <= k or len(data.train) < 2:
        raise ConfigError(
            f"precision and recall with k={k} neighbours need more than {k} samples and "
            f"held-out items, got num_samples={num_samples} and {len(test)} held-out items"
        )
    classifier = feature_classifier(
        data, cache_dir=cache_dir, settings=settings, batch_size=batch_size
    )
    network = classifier.network.to(device)
    images = is_image(data.shape)
    real, recon, fake, train = (_Summary(network, images) for _ in range(4))
    squared_errors = []
    with eval_mode(vae), seeded(seed, device):
        labels = data.test_labels if vae.requires_y else None
        for xb, yb in batches(test, batch_size, labels, desc="held-out and reconstructions"):
            xb = xb.to(device)
            real.add(xb)
            xr = vae.reconstruct(xb) if yb is None else vae.reconstruct(xb, y=yb.to(device))
            recon.add(xr)
            squared_errors.append((xr - xb).pow(2).flatten(1).mean(1))
        with progress_bar(total=num_samples, desc="prior samples", unit="item") as bar:
            for start in range(0, num_samples, batch_size):
                size = min(batch_size, num_samples - start)
                if vae.needs_labels:  # the classes in turn, continued across batches
                    y = torch.arange(start, start + size, device=device) % vae.num_classes
                    fake.add(vae.sample(size, y=y))
                else:
                    fake.add(vae.sample(size))
                bar.update(size)
        generator = torch.Generator(device=data.train.device).manual_seed(seed)
        subset = torch.randperm(len(data.train), generator=generator, device=data.train.device)
        subset = subset[: len(test)]
        with progress_bar(total=len(subset), desc="training items", unit="item") as bar:
            for xb in data.batches("train", batch_size, indices=subset, generator=generator):
                train.add(xb.to(device))
                bar.update(len(xb))
    real_features = real.all_features()
    manifold = manifold_scores(real_features, fake.all_features(), k)
    return {
        "num_data": len(test),
        "num_samples": num_samples,
        "fd_samples": frechet_distance(real_features, fake.all_features()),
        "fd_reconstructions": frechet_distance(real_features, recon.all_features()),
        "fd_train_test": frechet_distance(real_features, train.all_features()),
        **manifold,
        "precision_recall_k": k,
        "sharpness_samples": fake.mean_sharpness(),
        "sharpness_reconstructions": recon.mean_sharpness(),
        "sharpness_data": real.mean_sharpness(),
        "reconstruction_mse": torch.cat(squared_errors).mean().item(),
        "classifier_accuracy": classifier.accuracy,
        "feature_dim": network.num_features,
    }
