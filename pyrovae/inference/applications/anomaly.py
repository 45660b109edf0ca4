r"""Anomaly and out-of-distribution detection with a trained VAE: per-item scores.

A VAE trained on normal data gives every item a score; higher is more anomalous. From one
pass of ``K`` guide samples :math:`z_k \sim q(z \mid x)` with log weights
:math:`\log w_k = \log p(x \mid z_k) + \log p(z_k) - \log q(z_k \mid x)`:

.. math::

    \mathrm{neg\text{-}elbo}(x) &= -\frac{1}{K}\sum_k \log w_k, \qquad
    \mathrm{iwae\text{-}nll}(x) = -\log \frac{1}{K}\sum_k w_k \;(\ge -\log p(x)
        \text{ in expectation}),\\
    \mathrm{kl}(x) &= \frac{1}{K}\sum_k \log q(z_k \mid x) - \log p(z_k)
        \approx \mathrm{KL}(q(z \mid x) \,\|\, p(z)),

and ``reconstruction`` is the mean squared error of the reconstruction
:math:`E[x \mid z = \mu_\phi(x)]`; for a table, whose category codes have no distance,
the negative log-likelihood of the row under it, :math:`-\log p(x_{obs} \mid z =
\mu_\phi(x))` (:func:`~pyrovae.inference.evaluation.reconstruction_error`). A threshold
is a chosen percentile of the scores of the training (normal) data; items above it are
flagged. With labelled normal and anomalous items, :func:`detection_metrics` reports the
area under the ROC curve and the average precision of every score (scikit-learn).

References
----------
- An & Cho (2015), Variational Autoencoder based Anomaly Detection using Reconstruction
  Probability.
- Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan (2019), Do Deep Generative Models
  Know What They Don't Know?
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.evaluation import (
    batches,
    chunk_size,
    eval_mode,
    importance_weights,
    log_mean_exp,
    reconstruction_error,
)

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "SCORES",
    "anomaly_scores",
    "detection_metrics",
    "threshold",
]

#: every score, higher = more anomalous
SCORES = ("neg-elbo", "iwae-nll", "reconstruction", "kl")


@torch.no_grad()
def anomaly_scores(
    vae: VAE,
    x: torch.Tensor,
    *,
    num_samples: int = 100,
    batch_size: int = 500,
    y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every score of :data:`SCORES` for each item of ``x`` (higher = more anomalous).

    Parameters
    ----------
    vae : VAE
        A trained VAE (its guide gives :math:`q(z \\mid x)`).
    x : torch.Tensor
        Items of shape ``(N, *event_shape)``.
    num_samples : int
        :math:`K`, guide samples per item for ``neg-elbo``, ``iwae-nll`` and ``kl``.
    batch_size : int
        Items per pass.
    y : torch.Tensor, optional
        Labels, for a VAE that conditions on them (scores are then of :math:`p(x \\mid y)`).

    Returns
    -------
    dict of str to torch.Tensor
        Score name -> shape ``(N,)`` tensor, in nats (``reconstruction``: squared error
        per pixel; for a table, nats too).
    """
    if num_samples < 1 or batch_size < 1:
        raise ConfigError("num_samples and batch_size must be >= 1")
    x = x.to(vae.device)
    y = None if y is None else y.to(vae.device)
    chunk = chunk_size(batch_size, num_samples * math.prod(x.shape[1:]))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SCORES}
    with eval_mode(vae):
        for xb, yb in batches(x, chunk, y, desc="anomaly scores"):
            weights = importance_weights(vae, xb, num_samples, yb)
            log_w = weights.log_weight
            parts["neg-elbo"].append(-log_w.mean(0))
            parts["iwae-nll"].append(-log_mean_exp(log_w))
            parts["kl"].append(-weights.log_ratio.mean(0))
        parts["reconstruction"] = [reconstruction_error(vae, x, batch_size, y)]
    return {name: torch.cat(values) for name, values in parts.items()}


def threshold(reference: torch.Tensor | np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile`` of the reference (normal, training) scores: items scoring above
    it are flagged, so about ``100 - percentile`` % of normal items are false alarms."""
    if not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"percentile must be in [0, 100], got {percentile}")
    reference = np.asarray(torch.as_tensor(reference).cpu())
    if reference.size == 0:
        raise DataError("no reference scores to take a percentile of")
    return float(np.percentile(reference, percentile))


def detection_metrics(
    scores: dict[str, torch.Tensor], is_anomaly: torch.Tensor | np.ndarray
) -> dict[str, dict[str, float]]:
    """ROC-AUC and average precision of each score, anomalies being the positive class.

    ``sklearn.metrics.roc_auc_score`` (0.5 = chance, 1 = every anomaly scores above every
    normal item) and ``average_precision_score`` (chance = the share of anomalies).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(torch.as_tensor(is_anomaly).cpu()).astype(int)
    if labels.ndim != 1 or set(np.unique(labels)) != {0, 1}:
        raise DataError(
            "anomaly labels must be 0 (normal) and 1 (anomalous), one per item, and both "
            "kinds must occur"
        )
    results = {}
    for name, values in scores.items():
        values = np.asarray(values.cpu(), dtype=np.float64)
        if len(values) != len(labels):
            raise DataError(f"{len(labels)} anomaly labels for {len(values)} scored items")
        results[name] = {
            "roc_auc": float(roc_auc_score(labels, values)),
            "average_precision": float(average_precision_score(labels, values)),
        }
    return results
