"""The VAE variants, one module each: ``VARIANTS`` (``--model``) maps a name to its class.

- ``vae``: :class:`VAE`, :math:`p(z)\\,p(x \\mid z)` with :math:`q(z \\mid x)`.
- ``cvae``: :class:`ConditionalVAE`, :math:`p(z)\\,p(x \\mid z, y)` with
  :math:`q(z \\mid x, y)` (Sohn et al. 2015).
- ``m2``: :class:`SemiSupervisedVAE`, :math:`p(y)\\,p(z)\\,p(x \\mid y, z)` with
  :math:`q(y \\mid x)\\,q(z \\mid x, y)` (Kingma et al. 2014).
- ``hvae``: :class:`HierarchicalVAE`, :math:`p(z_2)\\,p(z_1 \\mid z_2)\\,p(x \\mid z_1, z_2)` with
  :math:`q(z_2 \\mid x)\\,q(z_1 \\mid x, z_2)` (Tomczak & Welling 2018).
- ``vaegan``: :class:`VAEGAN`, :math:`p(z)\\,p(\\mathrm{Dis}_l(x) \\mid z)`, a likelihood on
  the features of a discriminator trained next to it, with :math:`q(z \\mid x)` (Larsen
  et al. 2016).
- ``vqvae``: :class:`VQVAE`, :math:`p(k)\\,p(x \\mid e_k)` over a grid of discrete codes
  :math:`k` with the point-mass guide :math:`q(k \\mid x)` at the nearest codebook vectors
  (van den Oord et al. 2017).
- ``sentence``: :class:`SentenceVAE`, :math:`p(z)\\,\\prod_t p(x_t \\mid x_{<t}, z)` over the
  tokens of a sentence with a recurrent decoder, and a recurrent :math:`q(z \\mid x)`
  (Bowman et al. 2016).
- ``factorvae``: :class:`FactorVAE`, the plain VAE's model and guide trained with a penalty
  on the total correlation of the codes, which a discriminator on codes estimates (Kim &
  Mnih 2018).

A variant module holds the variant's model, its guide and what its training step needs;
its class subclasses :class:`VAE` and overrides what differs (``build`` for the networks,
``training_step``, ``training_batches``, ``evaluate_epoch``). Its options are the
keyword-only parameters of its constructor (``num_classes``, ``labels_per_class``, ...).
A new variant is one module and one ``VARIANTS.register`` line here.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from pyrovae.registry import Registry
from pyrovae.variants.cvae import ConditionalVAE
from pyrovae.variants.factorvae import FactorVAE
from pyrovae.variants.hvae import HierarchicalVAE
from pyrovae.variants.m2 import SemiSupervisedVAE
from pyrovae.variants.sentence import SentenceVAE
from pyrovae.variants.vae import VAE
from pyrovae.variants.vaegan import VAEGAN
from pyrovae.variants.vqvae import VQVAE

__all__ = [
    "VAE",
    "VAEGAN",
    "VARIANTS",
    "VQVAE",
    "ConditionalVAE",
    "FactorVAE",
    "SemiSupervisedVAE",
    "SentenceVAE",
    "build_variant",
]

#: ``--model``: name -> VAE class
VARIANTS: Registry[type[VAE]] = Registry("model")
VARIANTS.register("vae")(VAE)
VARIANTS.register("cvae")(ConditionalVAE)
VARIANTS.register("m2")(SemiSupervisedVAE)
VARIANTS.register("hvae")(HierarchicalVAE)
VARIANTS.register("vaegan")(VAEGAN)
VARIANTS.register("vqvae")(VQVAE)
VARIANTS.register("factorvae")(FactorVAE)
VARIANTS.register("sentence")(SentenceVAE)


def build_variant(section: Mapping[str, Any], event_shape: Sequence[int], seed: int = 0) -> VAE:
    """The variant a config's model section describes, for items of ``event_shape``."""
    return VARIANTS[section["variant"]["name"]].from_section(section, event_shape, seed=seed)
