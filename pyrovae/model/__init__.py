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
    LearnedNormalPrior,
    MixturePrior,
    NormalPrior,
    Prior,
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
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "LearnedNormalPrior",
    "Likelihood",
    "MLPDecoder",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "VAEModel",
    "make_likelihood",
    "make_prior",
]
