"""Guides q(z|x): amortized encoders and the posteriors they parameterize.

``GUIDES`` holds the registered guides: ``normal`` (diagonal Gaussian), ``lowrank``
(low-rank-plus-diagonal Gaussian) and ``iaf`` (Gaussian followed by inverse
autoregressive flow steps); :func:`make_guide` builds one with its encoder.
:mod:`~pyrovae.guides.quantizer` holds the VQ-VAE's codebook and nearest-neighbour
assignment (:class:`VectorQuantizer`).
"""

from pyrovae.guides.amortized import GUIDES, AmortizedGuide, AmortizedNormalGuide, make_guide
from pyrovae.guides.encoders import (
    ENCODERS,
    ClippedLogVar,
    ConvEncoder,
    GatedMLPEncoder,
    MLPEncoder,
    clip_log_var,
    diagonal_normal,
)
from pyrovae.guides.flows import IAFGuide
from pyrovae.guides.local import LocalNormalGuide
from pyrovae.guides.lowrank import LowRankNormalGuide
from pyrovae.guides.quantizer import VectorQuantizer, perplexity

__all__ = [
    "ENCODERS",
    "GUIDES",
    "AmortizedGuide",
    "AmortizedNormalGuide",
    "ClippedLogVar",
    "ConvEncoder",
    "GatedMLPEncoder",
    "IAFGuide",
    "LocalNormalGuide",
    "LowRankNormalGuide",
    "MLPEncoder",
    "VectorQuantizer",
    "clip_log_var",
    "diagonal_normal",
    "make_guide",
    "perplexity",
]
