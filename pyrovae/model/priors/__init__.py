r"""Priors :math:`p(z)` over the latent code: one module per prior, one ``PRIORS`` entry each.

:mod:`~pyrovae.model.priors.base` holds the interface (:class:`Prior`, ``PRIORS``,
:func:`make_prior`); the other modules each add priors to the registry when imported
here: ``normal``, ``learned-normal`` and ``mixture``
(:mod:`~pyrovae.model.priors.basic`).
"""

from pyrovae.model.priors.base import PRIORS, DistributionPrior, Prior, check_prior, make_prior
from pyrovae.model.priors.basic import LearnedNormalPrior, MixturePrior, NormalPrior

__all__ = [
    "PRIORS",
    "DistributionPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "check_prior",
    "make_prior",
]
