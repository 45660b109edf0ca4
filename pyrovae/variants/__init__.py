"""Model variants: each a model and guide pair (and, later, its variant class), one module each.

:mod:`~pyrovae.variants.hvae`: the two-layer hierarchical VAE of Tomczak & Welling (2018).
"""
