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

:func:`evaluate_disentanglement` computes them all for a VAE (its posterior means as codes),
with one set of ``num_points`` training and ``num_test_points`` test codes shared by MIG,
DCI and SAP, and reports which factor each code dimension is most informative about
(:math:`I(z_j; v_k) / H(v_k)`, the normalised mutual information MIG reads) and whether it is
active (the standard deviation of its posterior means at least FactorVAE's prune threshold).
When the factor space has fewer items than the metrics would draw (``dsprites-small``: 46 080
against about 2.9 million at the defaults), it encodes every item once and the metrics then
draw codes instead of items, by lookup: the same distribution, as the encoder is
deterministic, for a fraction of the renders.

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

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pyrovae.data.factors import DataFactorSampler, FactorSampler, GridSampler
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.evaluation.metrics import is_active

if TYPE_CHECKING:
    from pyrovae.data.dataset import Dataset
    from pyrovae.variants import VAE

__all__ = [
    "DCI_CLASSIFIERS",
    "METRICS",
    "DCIScores",
    "DisentanglementReport",
    "InterventionScore",
    "beta_vae_score",
    "dci",
    "encode_factor_space",
    "evaluate_disentanglement",
    "factor_entropy",
    "factor_traversals",
    "factor_vae_score",
    "mig",
    "mig_from",
    "mutual_information",
    "sample_codes",
    "sap",
    "sap_matrix",
]

#: items per group of the intervention scores (and per encoder call for FactorVAE's
#: variance estimate), disentanglement_lib's
INTERVENTION_BATCH = 64

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
    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError(f"MIG needs at least two code dimensions, got {codes.shape[1]}")
    info = mutual_information(codes, factors, num_bins)
    return mig_from(info, factor_entropy(factors))


def factor_entropy(factors: np.ndarray) -> np.ndarray:
    """Each factor's entropy :math:`H(v_k)` in nats over the points, shape ``(F,)``."""
    from sklearn.metrics import mutual_info_score

    return np.array([mutual_info_score(v, v) for v in factors.T])


def mig_from(info: np.ndarray, entropy: np.ndarray) -> float:
    """MIG from the ``(D, F)`` mutual information matrix and the factors' entropies.

    Raises
    ------
    ValueError
        If a factor takes a single value (zero entropy).
    """
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
    values = factors.reshape(num_points, batch_size, -1)[np.arange(num_points), 0, index]
    factors = sampler.fix_factor(
        factors, np.repeat(index, batch_size), np.repeat(values, batch_size), rng
    )
    return index, factors.reshape(num_points, batch_size, -1)


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
    batch_size: int = INTERVENTION_BATCH,
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
    codes, _ = sample_codes(
        encode, sampler, num_variance_estimate, rng, batch_size=INTERVENTION_BATCH
    )
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
        second = sampler.fix_factor(
            sampler.sample_factors(count * batch_size, rng),
            np.repeat(index, batch_size),
            first[np.arange(count), :, index].reshape(-1),
            rng,
        ).reshape(count, batch_size, -1)
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
    batch_size: int = INTERVENTION_BATCH,
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


# --- all metrics for a VAE ------------------------------------------------------------------

#: the metrics :func:`evaluate_disentanglement` computes, in the order it reports them
METRICS = ("mig", "factor_vae", "beta_vae", "dci", "sap")


def _gradient_boosting(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    # disentanglement_lib's: scikit-learn's defaults; the seed breaks ties between features
    # alike, so that a seed gives one score
    return GradientBoostingClassifier(random_state=seed)


def _random_forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    # shallow trees: importances of fully grown trees credit noise dimensions too
    return RandomForestClassifier(n_estimators=50, max_depth=8, random_state=seed, n_jobs=1)


#: DCI's classifier per factor, by name: seed -> a scikit-learn classifier with
#: ``feature_importances_``. ``gbt`` is disentanglement_lib's (100 boosted trees of depth 3);
#: ``forest`` (a random forest of 50 trees of depth 8) is several times faster.
DCI_CLASSIFIERS: dict[str, Callable[[int], Any]] = {
    "gbt": _gradient_boosting,
    "forest": _random_forest,
}


@dataclass(frozen=True)
class DisentanglementReport:
    """What :func:`evaluate_disentanglement` measured.

    ``scores`` maps ``mig``, ``factor_vae``, ``beta_vae``, ``dci_disentanglement``,
    ``dci_completeness``, ``dci_informativeness`` and ``sap`` (those computed) to values in
    [0, 1]; ``details`` holds the training accuracies and DCI's importance matrix;
    ``seconds`` the time of each step; ``settings`` the settings used.
    ``mutual_information`` is the ``(D, F)`` matrix (nats) of the training codes,
    ``factor_entropy`` each factor's entropy :math:`H(v_k)` and ``code_std`` each code
    dimension's standard deviation over them.
    """

    scores: dict[str, float]
    details: dict[str, Any]
    seconds: dict[str, float]
    settings: dict[str, Any]
    factor_names: tuple[str, ...]
    mutual_information: np.ndarray
    factor_entropy: np.ndarray
    code_std: np.ndarray
    dim_order: list[int] = field(init=False)

    def __post_init__(self) -> None:
        # the most varied dimensions first: the active ones, by their spread
        order = sorted(range(len(self.code_std)), key=lambda j: -self.code_std[j])
        object.__setattr__(self, "dim_order", order)

    @property
    def active(self) -> np.ndarray:
        """Whether each code dimension is an active unit: the variance of its posterior means
        above :data:`~pyrovae.inference.evaluation.metrics.ACTIVE_THRESHOLD` (Burda et al.)."""
        return is_active(self.code_std**2)

    @property
    def normalized_mutual_information(self) -> np.ndarray:
        """:math:`I(z_j; v_k) / H(v_k)`, ``(D, F)``."""
        entropy = np.where(self.factor_entropy > 0, self.factor_entropy, np.inf)
        return self.mutual_information / entropy

    def dims(self) -> list[dict[str, Any]]:
        """Per code dimension (in :attr:`dim_order`): its standard deviation, whether it is
        active, the factor it is most informative about and that normalised MI."""
        nmi = self.normalized_mutual_information
        rows = []
        for j in self.dim_order:
            k = int(np.argmax(nmi[j]))
            rows.append(
                {
                    "dim": j,
                    "std": float(self.code_std[j]),
                    "active": bool(self.active[j]),
                    "factor": self.factor_names[k],
                    "normalized_mi": float(nmi[j, k]),
                }
            )
        return rows

    def dim_label(self, row: dict[str, Any]) -> str:
        """``z3: posX (0.61)``, or ``z3: inactive``, for a row of :meth:`dims`."""
        if not row["active"]:
            return f"z{row['dim']}: inactive"
        return f"z{row['dim']}: {row['factor']} ({row['normalized_mi']:.2f})"

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready values."""
        return {
            "scores": self.scores,
            "settings": self.settings,
            "seconds": self.seconds,
            "factors": list(self.factor_names),
            "dims": self.dims(),
            "mutual_information": self.mutual_information.tolist(),
            "factor_entropy": self.factor_entropy.tolist(),
            "details": self.details,
        }


def _on_demand_draws(metrics: Sequence[str], num_points: int, num_test: int) -> int:
    """How many items the metrics render and encode when they draw items, not codes."""
    draws = num_points + (num_test if {"dci", "sap"} & set(metrics) else 0)
    if "factor_vae" in metrics:
        draws += num_points + INTERVENTION_BATCH * (num_points + num_test)
    if "beta_vae" in metrics:
        draws += 2 * INTERVENTION_BATCH * (num_points + num_test)
    return draws


def encode_factor_space(
    encode: Encode,
    sampler: GridSampler | DataFactorSampler,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> DataFactorSampler:
    """Every item of a finite factor space encoded once: a :class:`DataFactorSampler` whose
    items are the codes (``(N, D)`` float64), for the metrics to draw with the identity as
    encoder. A grid's items are every combination of :meth:`GridSampler.product`, rendered
    a few thousand at a time; a data sampler's are its items."""
    if isinstance(sampler, DataFactorSampler):
        factors = sampler.factors
        items = lambda rows: sampler.items[rows.start : rows.stop]  # noqa: E731
    elif isinstance(sampler, GridSampler):
        factors = sampler.product()
        items = lambda rows: sampler.render(factors[rows])  # noqa: E731
    else:
        raise TypeError(f"cannot list the items of a {type(sampler).__name__}")
    codes = [
        _encode(encode, items(slice(start, start + _RENDER_ITEMS)), batch_size)
        for start in range(0, len(factors), _RENDER_ITEMS)
    ]
    return DataFactorSampler(
        torch.from_numpy(np.concatenate(codes)),
        factors,
        sampler.factor_names,
        sampler.factor_sizes,
        seed=seed,
    )


def _identity(codes: torch.Tensor) -> torch.Tensor:
    return codes


def _stream(seed: int, index: int) -> np.random.Generator:
    """The random stream of one step of :func:`evaluate_disentanglement`."""
    return np.random.default_rng([seed, index])


def evaluate_disentanglement(
    vae: VAE,
    data: FactorSampler | Dataset,
    *,
    metrics: Sequence[str] = METRICS,
    num_points: int = 10_000,
    num_test_points: int = 5_000,
    num_bins: int = 20,
    dci_classifier: str = "gbt",
    prune_threshold: float = 0.05,
    seed: int = 0,
    binarize: str = "none",
    code_table: bool | None = None,
) -> DisentanglementReport:
    """Every disentanglement metric of ``vae``, its posterior means
    (``vae.encode(x)[0]``) being the codes.

    Parameters
    ----------
    vae : VAE
        A variant with one diagonal Gaussian latent site whose guide reads ``x`` alone.
    data : FactorSampler or Dataset
        Where the items come from: a sampler (e.g. ``DSprites.small()``, exact), or a data set
        with factors (:meth:`DataFactorSampler.from_dataset`, by lookup).
    metrics : sequence of str
        A subset of :data:`METRICS`.
    num_points, num_test_points : int
        Training and test (evaluation) points of every metric; FactorVAE's variance estimate
        uses ``num_points`` items too (10 000 and 5 000: disentanglement_lib's).
    num_bins : int
        MIG's histogram bins (20).
    dci_classifier : str
        A name of :data:`DCI_CLASSIFIERS`.
    prune_threshold : float
        FactorVAE's: its score ignores code dimensions whose standard deviation is below
        it. (The report's ``active`` flags are the library's active units instead.)
    seed : int
        Seeds every draw (each metric its own stream) and the classifiers.
    binarize : str
        The run's binarization, applied to every item before it is encoded as to a test set
        (:func:`~pyrovae.data.binarization.binarize_draw`: a threshold, or one Bernoulli
        draw for ``static`` and ``dynamic``).
    code_table : bool, optional
        Encode every item of the factor space once and let the metrics draw codes
        (:func:`encode_factor_space`); by default when that is fewer items than the metrics
        would draw.

    Raises
    ------
    ConfigError
        For a variant without a Gaussian posterior (its reason), bad settings, MIG or
        SAP asked of a one-dimensional latent, or too few points for every factor to vary.
    DataError
        For data without factors, or with a factor that takes a single value.
    """
    from pyrovae.data.binarization import binarize_draw
    from pyrovae.data.dataset import Dataset
    from pyrovae.inference.evaluation.weights import eval_mode
    from pyrovae.inference.sites import require, require_single_latent

    require(vae, "posterior", "the disentanglement metrics")
    require_single_latent(vae, "the disentanglement metrics")
    vae.require_unconditional("the disentanglement metrics")
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(
            f"unknown metrics {unknown}; choose from {', '.join(METRICS)}"
            if unknown
            else "no metric asked for"
        )
    if dci_classifier not in DCI_CLASSIFIERS:
        raise ConfigError(
            f"unknown DCI classifier {dci_classifier!r}; choose one of: "
            f"{', '.join(DCI_CLASSIFIERS)}"
        )
    if num_points < 2 or num_test_points < 2 or num_bins < 2:
        raise ConfigError(
            "the numbers of points and of bins must be >= 2, got "
            f"{num_points}, {num_test_points} and {num_bins}"
        )
    if vae.latent_dim < 2 and {"mig", "sap"} & set(metrics):
        raise ConfigError(
            "MIG and SAP compare the two most informative code dimensions; this latent has "
            "one: leave them out (--metrics)"
        )
    sampler = DataFactorSampler.from_dataset(data, seed=seed) if isinstance(data, Dataset) else data
    constant = [n for n, size in zip(sampler.factor_names, sampler.factor_sizes) if size < 2]
    if constant:
        raise DataError(
            f"factors {constant} take a single value; every factor must vary for the metrics"
        )
    generator = torch.Generator().manual_seed(seed)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(binarize_draw(x, binarize, generator).to(vae.device))[0]

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    draws = _on_demand_draws(metrics, num_points, num_test_points)
    size = getattr(sampler, "num_items", None)
    if code_table is None:
        code_table = isinstance(sampler, GridSampler | DataFactorSampler) and size <= draws
    scores: dict[str, float] = {}
    details: dict[str, Any] = {}
    with eval_mode(vae), torch.no_grad():
        if code_table:
            sampler = encode_factor_space(encode, sampler, seed=seed)
            encode = _identity
            lap("code_table")
        codes, factors = sample_codes(encode, sampler, num_points, _stream(seed, 0))
        if {"dci", "sap"} & set(metrics):
            test_codes, test_factors = sample_codes(
                encode, sampler, num_test_points, _stream(seed, 1)
            )
        lap("points")
        info = mutual_information(codes, factors, num_bins)
        entropy = factor_entropy(factors)
        if (entropy <= 0).any():
            names = [sampler.factor_names[k] for k in np.flatnonzero(entropy <= 0)]
            raise ConfigError(
                f"the {num_points} points drew a single value of {', '.join(names)}: the "
                "metrics need every factor to vary; use more points (--num-points)"
            )
        if "mig" in metrics:
            scores["mig"] = mig_from(info, entropy)
        lap("mig")
        if "factor_vae" in metrics:
            result = factor_vae_score(
                encode,
                sampler,
                _stream(seed, 2),
                num_train=num_points,
                num_eval=num_test_points,
                num_variance_estimate=num_points,
                prune_threshold=prune_threshold,
            )
            scores["factor_vae"] = result.eval_accuracy
            details["factor_vae"] = dataclasses.asdict(result)
            lap("factor_vae")
        if "beta_vae" in metrics:
            result = beta_vae_score(
                encode, sampler, _stream(seed, 3), num_train=num_points, num_eval=num_test_points
            )
            scores["beta_vae"] = result.eval_accuracy
            details["beta_vae"] = dataclasses.asdict(result)
            lap("beta_vae")
        if "dci" in metrics:
            make = DCI_CLASSIFIERS[dci_classifier]
            result = dci(codes, factors, test_codes, test_factors, classifier=lambda: make(seed))
            scores |= {
                "dci_disentanglement": result.disentanglement,
                "dci_completeness": result.completeness,
                "dci_informativeness": result.informativeness,
            }
            details["dci"] = {
                "informativeness_train": result.informativeness_train,
                "informativeness_per_factor": result.informativeness_per_factor.tolist(),
                "importance": result.importance.tolist(),
            }
            lap("dci")
        if "sap" in metrics:
            scores["sap"] = sap(codes, factors, test_codes, test_factors)
            lap("sap")
    settings = {
        "metrics": metrics,
        "num_points": num_points,
        "num_test_points": num_test_points,
        "num_bins": num_bins,
        "dci_classifier": dci_classifier,
        "prune_threshold": prune_threshold,
        "batch_size": INTERVENTION_BATCH,
        "seed": seed,
        "binarize": binarize,
        "code_table": bool(code_table),
        "factor_space_items": size,
    }
    return DisentanglementReport(
        scores=scores,
        details=details,
        seconds=seconds,
        settings=settings,
        factor_names=tuple(sampler.factor_names),
        mutual_information=info,
        factor_entropy=entropy,
        code_std=np.std(codes, axis=0, ddof=1),
    )


@torch.no_grad()
def factor_traversals(
    vae: VAE,
    sampler: FactorSampler,
    report: DisentanglementReport,
    *,
    span: float = 2.5,
    steps: int = 9,
    seed: int = 0,
    binarize: str = "none",
) -> tuple[torch.Tensor, np.ndarray]:
    """Traversals of a base item drawn from ``sampler`` (seeded by ``seed``), one row per code
    dimension in ``report.dim_order`` (active dimensions first): the decoded means of its
    posterior mean with that dimension set to ``linspace(-span, span, steps)``
    (:func:`~pyrovae.inference.applications.latent_ops.traverse`). Returns ``(grid,
    factors)``: ``(D, steps, *event_shape)`` and the base item's factors ``(F,)``."""
    from pyrovae.data.binarization import binarize_draw
    from pyrovae.inference.applications.latent_ops import traverse

    factors = sampler.sample_factors(1, _stream(seed, 4))
    x = binarize_draw(sampler.render(factors), binarize, torch.Generator().manual_seed(seed))
    grid = traverse(vae, x[0].to(vae.device), report.dim_order, span, steps)
    return grid, factors[0]
