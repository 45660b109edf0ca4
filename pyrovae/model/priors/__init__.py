r"""Priors :math:`p(z)` over the latent code: one module per prior, one ``PRIORS`` entry each.

:mod:`~pyrovae.model.priors.base` holds the interface (:class:`Prior`, ``PRIORS``,
:func:`make_prior`); the other modules each add priors to the registry when imported
here: ``normal``, ``learned-normal`` and ``mixture``
(:mod:`~pyrovae.model.priors.basic`), ``vamp`` (:mod:`~pyrovae.model.priors.vamp`)
and ``flow`` (:mod:`~pyrovae.model.priors.flow`).
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
from pyrovae.model.priors.flow import FlowPrior
from pyrovae.model.priors.vamp import VampPrior

__all__ = [
    "PRIORS",
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
