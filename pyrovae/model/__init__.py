"""The generative model: priors, likelihoods, decoders and the model function."""

from pyrovae.model.decoders import DECODERS, ConvDecoder, MLPDecoder
from pyrovae.model.generative import VAEModel
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
    "DECODERS",
    "LIKELIHOODS",
    "PRIORS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "ConvDecoder",
    "DistributionLikelihood",
    "DistributionPrior",
    "FlowPrior",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "LearnedNormalPrior",
    "Likelihood",
    "MLPDecoder",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "VAEModel",
    "VampPrior",
    "make_likelihood",
    "make_prior",
]
