"""Guides q(z|x): amortized encoders and the posteriors they parameterize."""

from pyrovae.guides.amortized import AmortizedNormalGuide
from pyrovae.guides.encoders import ENCODERS, ConvEncoder, MLPEncoder
from pyrovae.guides.local import LocalNormalGuide

__all__ = ["ENCODERS", "AmortizedNormalGuide", "ConvEncoder", "LocalNormalGuide", "MLPEncoder"]
