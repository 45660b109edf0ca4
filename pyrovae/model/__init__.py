"""Reusable parts of generative models: priors, likelihoods, decoders, the data plate and
the KL weight. The variants' models are in :mod:`pyrovae.variants`."""

from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.model.columns import COLUMN_TYPES, ColumnsDistribution, ColumnsLikelihood, TableInput
from pyrovae.model.decoders import DECODERS, ConvDecoder, GatedMLPDecoder, MLPDecoder
from pyrovae.model.discretized import (
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureLikelihood,
)
from pyrovae.model.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DistributionLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
    make_likelihood,
)
from pyrovae.model.priors import (
    PRIORS,
    DistributionPrior,
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    NormalPrior,
    Prior,
    VampPrior,
    make_prior,
)

__all__ = [
    "COLUMN_TYPES",
    "DECODERS",
    "LIKELIHOODS",
    "PRIORS",
    "BernoulliLikelihood",
    "ColumnsDistribution",
    "ColumnsLikelihood",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogisticMixture",
    "DiscretizedLogisticMixtureLikelihood",
    "DistributionLikelihood",
    "DistributionPrior",
    "FlowPrior",
    "GatedMLPDecoder",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "LearnedNormalPrior",
    "Likelihood",
    "LocalPyroModule",
    "MLPDecoder",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "TableInput",
    "VampPrior",
    "data_plate",
    "kl_weight",
    "make_likelihood",
    "make_prior",
]
