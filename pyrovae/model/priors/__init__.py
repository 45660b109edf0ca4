r"""Priors :math:`p(z)` over the latent code: one module per prior, one ``PRIORS`` entry each.

:mod:`~pyrovae.model.priors.base` holds the interface (:class:`Prior`, ``PRIORS``,
:func:`make_prior`); the other modules each add priors to the registry when imported
here: ``normal``, ``learned-normal`` and ``mixture``
(:mod:`~pyrovae.model.priors.basic`), ``vamp`` (:mod:`~pyrovae.model.priors.vamp`)
and ``flow`` (:mod:`~pyrovae.model.priors.flow`).

:mod:`~pyrovae.model.priors.codes` holds the priors over grids of discrete codes that the
VQ-VAE fits after training (``CODE_PRIORS``: ``categorical``, ``autoregressive``).
"""

from pyrovae.model.priors.base import (
    PRIORS,
    DiagonalNormalMixture,
    DistributionPrior,
    Prior,
    check_prior,
    make_prior,
)
from pyrovae.model.priors.basic import LearnedNormalPrior, MixturePrior, NormalPrior
from pyrovae.model.priors.codes import (
    CODE_PRIORS,
    AutoregressiveCodePrior,
    CategoricalCodePrior,
    CodePrior,
)
from pyrovae.model.priors.flow import FlowPrior
from pyrovae.model.priors.vamp import VampPrior

__all__ = [
    "CODE_PRIORS",
    "PRIORS",
    "AutoregressiveCodePrior",
    "CategoricalCodePrior",
    "CodePrior",
    "DiagonalNormalMixture",
    "DistributionPrior",
    "FlowPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "VampPrior",
    "check_prior",
    "make_prior",
]
