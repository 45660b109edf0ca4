r"""Disentanglement metrics: how well each code dimension captures one ground-truth factor.

Every metric reads a **code** :math:`z \in \mathbb{R}^D` per item (typically the posterior
mean, ``vae.encode(x)[0]``) and the item's **factors** :math:`v \in \{0..K_k-1\}^F` (e.g. from
:class:`~pyrovae.data.dsprites.DSprites`, or ``Dataset.factors``). :func:`mig`, :func:`dci` and
:func:`sap` are functions of ``(codes, factors)`` arrays (draw them with :func:`sample_codes`
or take a data set's items); :func:`factor_vae_score` and :func:`beta_vae_score` intervene on
the factors, so they take an encoder function (items -> codes) and a
:class:`~pyrovae.data.factors.FactorSampler`. The defaults are those of disentanglement_lib
(Locatello et al. 2019, ``config/unsupervised_study_v1/metric_configs``), our own code:

**MIG** (Chen et al. 2018), 10 000 points. Each code dimension is discretised into 20
equal-width histogram bins (``np.histogram`` edges, ``np.digitize``); with :math:`I_n` the
discrete mutual information and :math:`H` the entropy, both in nats,

.. math::

    \mathrm{MIG} = \frac{1}{F} \sum_{k=1}^F \frac{1}{H(v_k)}
    \Bigl(I(z_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(z_j; v_k)\Bigr),
    \qquad j^{(k)} = \arg\max_j I(z_j; v_k).

**FactorVAE score** (Kim & Mnih 2018), 10 000 points to estimate each dimension's variance
:math:`s_j^2` (``ddof=1``); dimensions with :math:`s_j < 0.05` are pruned (collapsed to the
prior). A training point draws a factor :math:`k`, a batch of 64 items sharing :math:`v_k`, and
votes for :math:`(k, \arg\min_j \operatorname{Var}(z_j) / s_j^2)` over the active dimensions;
the majority-vote classifier maps each dimension to its most frequent factor. 10 000 training
and 5 000 evaluation points; the score is the evaluation accuracy. (disentanglement_lib files
the vote of active dimension :math:`i` under code dimension :math:`i`; we file it under its own
dimension; the accuracies are the same, the columns being only relabelled.)

**beta-VAE score** (Higgins et al. 2017), 10 000 training and 5 000 evaluation points. A point
draws a factor :math:`k` and two batches of 64 items that share :math:`v_k` pairwise; its
feature is :math:`\frac{1}{64}\sum |z^{(1)} - z^{(2)}|`, its label :math:`k`; scikit-learn's
``LogisticRegression`` (default settings, ``max_iter=1000`` so it converges) predicts the
label; the score is the evaluation accuracy. It stays at 1 when one factor is ignored (that
factor's class is the one without a zero feature), which is why Kim & Mnih proposed theirs.

**DCI** (Eastwood & Williams 2018), 10 000 training and 5 000 test points. For each factor a
``GradientBoostingClassifier()`` (scikit-learn's defaults: 100 trees of depth 3) predicts
:math:`v_k` from :math:`z`; its ``feature_importances_`` fill column :math:`k` of the
importance matrix :math:`R \in \mathbb{R}^{D \times F}`. With
:math:`P_{jk} = R_{jk} / \sum_k R_{jk}` and :math:`\tilde P_{jk} = R_{jk} / \sum_j R_{jk}`,

.. math::

    D = \sum_j \rho_j \Bigl(1 + \sum_k P_{jk} \log_F P_{jk}\Bigr), \qquad
    C = \sum_k \tilde\rho_k \Bigl(1 + \sum_j \tilde P_{jk} \log_D \tilde P_{jk}\Bigr),

weighted by :math:`\rho_j = \sum_k R_{jk} / \sum R` and :math:`\tilde\rho_k = \sum_j R_{jk}
/ \sum R`. A factor no dimension predicts (scikit-learn's importances are then 0/0, which we
read as 0) weighs nothing in :math:`D` and :math:`C`. The informativeness is the classifiers'
mean test **accuracy** (as disentanglement_lib reports it, not the paper's error).
``classifier=`` takes any other estimator factory with ``feature_importances_`` (e.g.
``RandomForestClassifier``, much faster than the default).

**SAP** (Kumar et al. 2018), 10 000 training and 5 000 test points. The score matrix
:math:`S_{jk}` is, for discrete factors (the default), the test accuracy of a
``LinearSVC(C=0.01, class_weight="balanced")`` predicting :math:`v_k` from :math:`z_j` alone;
for continuous factors the squared correlation of :math:`z_j` and :math:`v_k` (0 when
:math:`\operatorname{Var} z_j \le 10^{-12}`). SAP is the mean over factors of the gap between
the largest and second-largest :math:`S_{jk}` over :math:`j`. A one-dimensional linear
classifier separates only a few of many classes, so discrete SAP stays well below 1 even for a
perfect code.

The encoder is called on batches of ``batch_size`` items (16 for MIG, DCI and SAP points, 64
for FactorVAE's variance estimate, as disentanglement_lib); for a deterministic encoder these
do not change the scores. The intervention scores call it once per 64-item batch: 15 000 and
30 000 calls at the defaults.

References
----------
- Chen, Li, Grosse & Duvenaud (2018), Isolating Sources of Disentanglement in Variational
  Autoencoders.
- Kim & Mnih (2018), Disentangling by Factorising.
- Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed & Lerchner (2017), beta-VAE:
  Learning Basic Visual Concepts with a Constrained Variational Framework.
- Eastwood & Williams (2018), A Framework for the Quantitative Evaluation of Disentangled
  Representations.
- Kumar, Sattigeri & Balakrishnan (2018), Variational Inference of Disentangled Latent
  Concepts from Unlabeled Observations.
- Locatello, Bauer, Lucic, Rätsch, Gelly, Schölkopf & Bachem (2019), Challenging Common
  Assumptions in the Unsupervised Learning of Disentangled Representations
  (https://github.com/google-research/disentanglement_lib).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyrovae.data.factors import FactorSampler

__all__ = [
    "DCIScores",
    "InterventionScore",
    "beta_vae_score",
    "dci",
    "factor_vae_score",
    "mig",
    "mutual_information",
    "sample_codes",
    "sap",
    "sap_matrix",
]

#: An encoder for the metrics: items ``(n, *event_shape)`` -> codes ``(n, D)``.
Encode = Callable[[torch.Tensor], torch.Tensor | np.ndarray]

_RENDER_ITEMS = 4096  # items rendered at once by the intervention scores


@dataclass(frozen=True)
class InterventionScore:
    """The accuracy of a classifier that tells which factor was held fixed.

    ``num_active_dims`` counts the code dimensions the FactorVAE score kept (all of them for
    the beta-VAE score).
    """

    train_accuracy: float
    eval_accuracy: float
    num_active_dims: int


@dataclass(frozen=True)
class DCIScores:
    """Disentanglement, completeness and informativeness (mean test accuracy), with the
    per-factor test accuracies and the ``(D, F)`` importance matrix they come from."""

    disentanglement: float
    completeness: float
    informativeness: float
    informativeness_train: float
    informativeness_per_factor: np.ndarray
    importance: np.ndarray


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _encode(encode: Encode, items: torch.Tensor, batch_size: int) -> np.ndarray:
    parts = []
    for start in range(0, len(items), batch_size):
        codes = encode(items[start : start + batch_size])
        if isinstance(codes, torch.Tensor):
            codes = codes.detach().cpu().numpy()
        parts.append(np.asarray(codes, dtype=np.float64).reshape(len(codes), -1))
    return np.concatenate(parts)


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes (N, D) and factors (N, F) must be 2-D with as many rows, got shapes "
            f"{codes.shape} and {factors.shape}"
        )
    return codes, factors


def sample_codes(
    encode: Encode,
    sampler: FactorSampler,
    num_points: int = 10_000,
    rng: np.random.Generator | int | None = 0,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``num_points`` uniform factor draws and the codes of their items: ``(codes, factors)``,
    float64 ``(N, D)`` and int ``(N, F)``, the arrays :func:`mig`, :func:`dci` and :func:`sap`
    read."""
    rng = _rng(rng)
    codes, factors = [], []
    for start in range(0, num_points, _RENDER_ITEMS):
        part = sampler.sample_factors(min(_RENDER_ITEMS, num_points - start), rng)
        codes.append(_encode(encode, sampler.render(part), batch_size))
        factors.append(part)
    return np.concatenate(codes), np.concatenate(factors)


def _discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """Each column's index among ``num_bins`` equal-width bins of its own range."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j, column in enumerate(codes.T):
        edges = np.histogram(column, num_bins)[1]
        out[:, j] = np.digitize(column, edges[:-1])
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """The ``(D, F)`` mutual information (nats) between each discretised code dimension and
    each factor."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _check(codes, factors)
    binned = _discretize(codes, num_bins)
    return np.array(
        [[mutual_info_score(v, z) for v in factors.T] for z in binned.T], dtype=np.float64
    ).reshape(codes.shape[1], factors.shape[1])


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """The mutual information gap of ``codes`` ``(N, D)`` for ``factors`` ``(N, F)``.

    Raises
    ------
    ValueError
        With fewer than two code dimensions, or a factor that takes a single value.
    """
    from sklearn.metrics import mutual_info_score

    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError(f"MIG needs at least two code dimensions, got {codes.shape[1]}")
    info = mutual_information(codes, factors, num_bins)
    entropy = np.array([mutual_info_score(v, v) for v in factors.T])
    if (entropy <= 0).any():
        raise ValueError(
            f"factors {np.flatnonzero(entropy <= 0).tolist()} take a single value; MIG "
            "divides by each factor's entropy"
        )
    top = np.sort(info, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))


def _column_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy (in base ``base``) of each column of non-negative weights, as scipy computes
    it after adding 1e-11 (so an all-zero column counts as uniform)."""
    from scipy.stats import entropy

    return entropy(p + 1e-11, base=base, axis=0)


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    *,
    classifier: Callable[[], Any] | None = None,
) -> DCIScores:
    """Disentanglement, completeness and informativeness from train and test codes.

    Parameters
    ----------
    codes, factors : numpy.ndarray
        Training codes ``(N, D)`` and factors ``(N, F)``.
    codes_test, factors_test : numpy.ndarray
        Test codes and factors, for the informativeness.
    classifier : callable, optional
        Makes a fresh scikit-learn classifier with ``feature_importances_`` per factor;
        ``GradientBoostingClassifier()`` by default (as disentanglement_lib).
    """
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors = _check(codes, factors)
    codes_test, factors_test = _check(codes_test, factors_test)
    make = GradientBoostingClassifier if classifier is None else classifier
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    importance = np.zeros((num_codes, num_factors))
    train_accuracy, test_accuracy = np.zeros(num_factors), np.zeros(num_factors)
    for k in range(num_factors):
        model = make()
        model.fit(codes, factors[:, k])
        with np.errstate(invalid="ignore"):
            # a model that never splits normalises zero importances to 0/0: no importance
            importance[:, k] = np.nan_to_num(np.abs(model.feature_importances_), nan=0.0)
        train_accuracy[k] = np.mean(model.predict(codes) == factors[:, k])
        test_accuracy[k] = np.mean(model.predict(codes_test) == factors_test[:, k])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    per_code = 1.0 - _column_entropy(importance.T, base=num_factors)
    per_factor = 1.0 - _column_entropy(importance, base=num_codes)
    return DCIScores(
        disentanglement=float(np.sum(per_code * weights.sum(axis=1) / weights.sum())),
        completeness=float(np.sum(per_factor * weights.sum(axis=0) / weights.sum())),
        informativeness=float(test_accuracy.mean()),
        informativeness_train=float(train_accuracy.mean()),
        informativeness_per_factor=test_accuracy,
        importance=importance,
    )


def sap_matrix(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
    *,
    continuous_factors: bool = False,
) -> np.ndarray:
    """The ``(D, F)`` SAP score matrix: per code dimension and factor, the test accuracy of a
    one-dimensional linear classifier (discrete factors; needs the test arrays) or the squared
    correlation on the training points (``continuous_factors``)."""
    codes, factors = _check(codes, factors)
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    if continuous_factors:
        for j, z in enumerate(codes.T):
            for k, v in enumerate(factors.T.astype(np.float64)):
                cov = np.cov(z, v, ddof=1)
                scores[j, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0
        return scores
    from sklearn.svm import LinearSVC

    if codes_test is None or factors_test is None:
        raise ValueError("SAP with discrete factors needs codes_test and factors_test")
    codes_test, factors_test = _check(codes_test, factors_test)
    for j in range(codes.shape[1]):
        for k in range(factors.shape[1]):
            model = LinearSVC(C=0.01, class_weight="balanced")
            model.fit(codes[:, j : j + 1], factors[:, k])
            predicted = model.predict(codes_test[:, j : j + 1])
            scores[j, k] = np.mean(predicted == factors_test[:, k])
    return scores


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    codes_test: np.ndarray | None = None,
    factors_test: np.ndarray | None = None,
    *,
    continuous_factors: bool = False,
) -> float:
    """The separated attribute predictability: the mean over factors of the gap between the
    two best code dimensions of :func:`sap_matrix`."""
    scores = sap_matrix(
        codes, factors, codes_test, factors_test, continuous_factors=continuous_factors
    )
    if scores.shape[0] < 2:
        raise ValueError(f"SAP needs at least two code dimensions, got {scores.shape[0]}")
    top = np.sort(scores, axis=0)
    return float(np.mean(top[-1] - top[-2]))


def _fixed_groups(
    sampler: FactorSampler, rng: np.random.Generator, num_points: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``num_points`` batches of ``batch_size`` factor rows, batch ``i`` sharing the value of
    factor ``index[i]`` (drawn uniformly): ``(index, factors)`` of shapes ``(P,)`` and
    ``(P, B, F)``."""
    index = rng.integers(0, len(sampler.factor_sizes), size=num_points)
    factors = sampler.sample_factors(num_points * batch_size, rng)
    factors = factors.reshape(num_points, batch_size, -1)
    rows = np.arange(num_points)
    factors[rows, :, index] = factors[rows, 0, index][:, None]
    return index, factors


def _group_codes(
    encode: Encode, sampler: FactorSampler, factors: np.ndarray, batch_size: int
) -> np.ndarray:
    """The codes of ``(P, B, F)`` factor rows, ``(P, B, D)``, rendered a few thousand at a time
    and encoded one batch of ``B`` at a time."""
    flat = factors.reshape(-1, factors.shape[-1])
    step = max(1, _RENDER_ITEMS // batch_size) * batch_size  # whole batches per render
    codes = []
    for start in range(0, len(flat), step):
        part = flat[start : start + step]
        codes.append(_encode(encode, sampler.render(part), batch_size))
    return np.concatenate(codes).reshape(*factors.shape[:2], -1)


def _factor_vae_votes(
    encode: Encode,
    sampler: FactorSampler,
    rng: np.random.Generator,
    num_points: int,
    batch_size: int,
    variances: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    votes = np.zeros((len(sampler.factor_sizes), len(variances)), dtype=np.int64)
    chunk = max(1, _RENDER_ITEMS // batch_size)
    dims = np.flatnonzero(active)
    for start in range(0, num_points, chunk):
        index, factors = _fixed_groups(sampler, rng, min(chunk, num_points - start), batch_size)
        codes = _group_codes(encode, sampler, factors, batch_size)
        local = np.var(codes, axis=1, ddof=1)[:, active] / variances[active]
        np.add.at(votes, (index, dims[np.argmin(local, axis=1)]), 1)
    return votes


def factor_vae_score(
    encode: Encode,
    sampler: FactorSampler,
    rng: np.random.Generator | int | None = 0,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
) -> InterventionScore:
    """The FactorVAE score: how often the least varying (normalised) code dimension of a batch
    that holds one factor fixed tells, by majority vote, which factor it was.

    Returns zeros when every dimension is pruned (standard deviation below
    ``prune_threshold``).
    """
    rng = _rng(rng)
    codes, _ = sample_codes(encode, sampler, num_variance_estimate, rng, batch_size=64)
    variances = np.var(codes, axis=0, ddof=1)
    active = np.sqrt(variances) >= prune_threshold
    if not active.any():
        return InterventionScore(0.0, 0.0, 0)
    train = _factor_vae_votes(encode, sampler, rng, num_train, batch_size, variances, active)
    classifier = np.argmax(train, axis=0)  # each dimension's most voted factor
    columns = np.arange(train.shape[1])
    evaluation = _factor_vae_votes(encode, sampler, rng, num_eval, batch_size, variances, active)
    return InterventionScore(
        train_accuracy=float(train[classifier, columns].sum() / train.sum()),
        eval_accuracy=float(evaluation[classifier, columns].sum() / evaluation.sum()),
        num_active_dims=int(active.sum()),
    )


def _beta_vae_points(
    encode: Encode,
    sampler: FactorSampler,
    rng: np.random.Generator,
    num_points: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    chunk = max(1, _RENDER_ITEMS // (2 * batch_size))
    for start in range(0, num_points, chunk):
        count = min(chunk, num_points - start)
        index = rng.integers(0, len(sampler.factor_sizes), size=count)
        first = sampler.sample_factors(count * batch_size, rng).reshape(count, batch_size, -1)
        second = sampler.sample_factors(count * batch_size, rng).reshape(count, batch_size, -1)
        rows = np.arange(count)
        second[rows, :, index] = first[rows, :, index]
        z1 = _group_codes(encode, sampler, first, batch_size)
        z2 = _group_codes(encode, sampler, second, batch_size)
        features.append(np.mean(np.abs(z1 - z2), axis=1))
        labels.append(index)
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(
    encode: Encode,
    sampler: FactorSampler,
    rng: np.random.Generator | int | None = 0,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
) -> InterventionScore:
    """The beta-VAE score: the accuracy of a logistic regression that tells, from the mean
    absolute code difference of batch pairs sharing one factor, which factor they share."""
    from sklearn.linear_model import LogisticRegression

    rng = _rng(rng)
    x_train, y_train = _beta_vae_points(encode, sampler, rng, num_train, batch_size)
    model = LogisticRegression(random_state=int(rng.integers(2**31)), max_iter=1000)
    model.fit(x_train, y_train)
    x_eval, y_eval = _beta_vae_points(encode, sampler, rng, num_eval, batch_size)
    return InterventionScore(
        train_accuracy=float(np.mean(model.predict(x_train) == y_train)),
        eval_accuracy=float(np.mean(model.predict(x_eval) == y_eval)),
        num_active_dims=x_train.shape[1],
    )
