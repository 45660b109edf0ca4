r"""The two-layer hierarchical VAE: model :math:`p(z_2)\,p(z_1 \mid z_2)\,p(x \mid z_1, z_2)` and
guide :math:`q(z_2 \mid x)\,q(z_1 \mid x, z_2)`.

.. math::

    z_2 \sim p_\lambda(z_2), \qquad
    z_1 \mid z_2 \sim \mathcal{N}\big(\mu_\theta(z_2),
        \operatorname{diag}\exp(\log\sigma^2_\theta(z_2))\big),
    \qquad x \mid z_1, z_2 \sim p_\theta(x \mid \mathrm{decoder}_\theta([z_1, z_2])),

    q_\phi(z_1, z_2 \mid x) = q_\phi(z_2 \mid x)\, q_\phi(z_1 \mid x, z_2),

    \mathrm{ELBO}_\beta(x) = E_q\Big[\log p(x \mid z_1, z_2) - \beta \big(
        \log q(z_2 \mid x) + \log q(z_1 \mid x, z_2) - \log p(z_2) - \log p(z_1 \mid z_2)\big)\Big]

Both latent sites, ``z2`` (top) and ``z1`` (next to ``x``), are drawn inside the data
plate and weighted by :math:`\beta` with :func:`~pyrovae.model.base.kl_weight`
in the model and the guide alike, so a Pyro ELBO computes the line above (scaled by
:math:`N / B` for a minibatch of :math:`B` out of :math:`N`). The top prior is any
:class:`~pyrovae.model.priors.Prior` over ``top_dim`` dimensions; with the
:class:`~pyrovae.model.priors.VampPrior`, build it with the guide's ``encoder``
(the :math:`q(z_2 \mid x)` network), as the paper does.

The decoder reads :math:`z_1` and :math:`z_2`, as in the paper's HVAE: any registered
decoder serves, built for ``latent_dim + top_dim`` inputs and reading the concatenation
:math:`[z_1, z_2]` (the paper's gated network passes :math:`z_1` and :math:`z_2` through a
gated layer each before a joint one; ``gated-mlp`` here starts with one gated layer on
both). ``decoder_reads_z2=False`` (``--no-decoder-reads-z2``) gives the Markov chain
:math:`p(x \mid z_1)`, whose decoder is built for ``latent_dim``; run folders written before
this option existed decoded :math:`z_1` only and load that way.

The paper clamps every log-variance to [-6, 2] and uses gated layers: the guide's
``log_var_min``/``log_var_max`` clamp all three Gaussians' log-variances here
(:math:`q(z_2 \mid x)`, :math:`q(z_1 \mid x, z_2)` and :math:`p(z_1 \mid z_2)`), and
``encoder="gated-mlp"`` (``decoder="gated-mlp"``) makes the guide's (the model's) inner
networks gated like the paper's.

References
----------
- Tomczak & Welling (2018), VAE with a VampPrior. AISTATS (Section 3.2, the HVAE).
- Sønderby, Raiko, Maaløe, Sønderby & Winther (2016), Ladder Variational Autoencoders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.guides.encoders import (
    ENCODERS,
    ClippedLogVar,
    check_log_var_bounds,
    clip_log_var,
    diagonal_normal,
)
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.model.decoders import DECODERS
from pyrovae.model.likelihoods import Likelihood
from pyrovae.model.priors import Prior
from pyrovae.networks import GatedDense, gated_mlp, he_normal_, mlp
from pyrovae.variants.vae import VAE, VAEModel

__all__ = [
    "HierarchicalGuide",
    "HierarchicalModel",
    "HierarchicalVAE",
    "TopDownNet",
    "Z1PosteriorNet",
]


def _check_sizes(latent_dim: int, top_dim: int, hidden: Sequence[int]) -> None:
    if latent_dim < 1 or top_dim < 1:
        raise ConfigError(
            f"the hierarchical VAE needs latent_dim >= 1 and top_dim >= 1, "
            f"got {latent_dim} and {top_dim}"
        )
    if not hidden or min(hidden) < 1:
        raise ConfigError(
            f"the hierarchical VAE needs one or more hidden layers of width >= 1, "
            f"got {tuple(hidden)}"
        )


class TopDownNet(nn.Module):
    r"""``z2 -> (loc, log_var)`` of :math:`p(z_1 \mid z_2)`, an MLP
    ``top_dim -> hidden -> 2 latent_dim`` (ReLUs, or gated layers with ``gated``)."""

    def __init__(
        self, latent_dim: int, top_dim: int, hidden: Sequence[int], *, gated: bool = False
    ) -> None:
        super().__init__()
        self.net = (gated_mlp if gated else mlp)([top_dim, *hidden, 2 * latent_dim])

    def forward(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.net(z2).chunk(2, dim=-1)
        return loc, log_var


class Z1PosteriorNet(nn.Module):
    r"""``(x, z2) -> (loc, log_var)`` of :math:`q(z_1 \mid x, z_2)`.

    Features of ``x`` (flattened; one ReLU layer of ``hidden[0]`` units) and of ``z2``
    (likewise) are joined and read by an MLP ``2 hidden[0] -> hidden[1:] -> 2 latent_dim``,
    as in the paper's HVAE. ``z2`` may carry leading particle dimensions that ``x`` lacks.
    With ``gated`` every layer but the linear head is a
    :class:`~pyrovae.networks.GatedDense`, with He-normal weights (the paper's network).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        top_dim: int,
        hidden: Sequence[int],
        *,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.event_dim = len(event_shape)
        width = hidden[0]
        if gated:
            self.x_features: nn.Module = he_normal_(GatedDense(prod(event_shape), width))
            self.z2_features: nn.Module = he_normal_(GatedDense(top_dim, width))
            self.joint = gated_mlp([2 * width, *hidden[1:], 2 * latent_dim])
        else:
            self.x_features = nn.Sequential(mlp([prod(event_shape), width]), nn.ReLU())
            self.z2_features = nn.Sequential(mlp([top_dim, width]), nn.ReLU())
            self.joint = mlp([2 * width, *hidden[1:], 2 * latent_dim])

    def forward(self, x: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hx = self.x_features(x.flatten(-self.event_dim) if self.event_dim else x.unsqueeze(-1))
        hz = self.z2_features(z2)
        batch = torch.broadcast_shapes(hx.shape[:-1], hz.shape[:-1])
        h = torch.cat([hx.expand(*batch, -1), hz.expand(*batch, -1)], dim=-1)
        loc, log_var = self.joint(h).chunk(2, dim=-1)
        return loc, log_var


class HierarchicalModel(VAEModel):
    r"""The model ``z2 -> z1 -> x`` (and ``z2 -> x`` with ``decoder_reads_z2``): top prior,
    Gaussian top-down layer, decoder, likelihood.

    ``forward`` shares the signature of :class:`~pyrovae.variants.vae.VAEModel`
    (without ``mask``) and returns the decoder's output (the likelihood's parameters).

    Parameters
    ----------
    prior : Prior
        :math:`p(z_2)`, over ``top_dim = prior.latent_dim`` dimensions.
    decoder : nn.Module
        ``[z1, z2] -> likelihood parameters``, built for ``latent_dim + top_dim`` inputs
        (``z1 -> ...``, built for ``latent_dim``, without ``decoder_reads_z2``).
    likelihood : Likelihood
        ``parameters -> p(x | z1, z2)`` (elementwise over pixels).
    event_shape : tuple of int
        Shape of one data point.
    latent_dim : int
        Dimension of :math:`z_1`.
    hidden : tuple of int
        Hidden layer widths of the top-down network p(z1 | z2).
    gated : bool
        Whether the top-down network has gated layers (:class:`TopDownNet`).
    log_var_min, log_var_max : float, optional
        Clamp the top-down network's log-variance output (none by default).
    decoder_reads_z2 : bool
        Whether the decoder reads ``[z1, z2]`` (the paper's HVAE) or ``z1`` alone.
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: Sequence[int],
        latent_dim: int,
        *,
        hidden: tuple[int, ...] = (300, 300),
        gated: bool = False,
        log_var_min: float | None = None,
        log_var_max: float | None = None,
        decoder_reads_z2: bool = True,
    ) -> None:
        _check_sizes(latent_dim, prior.latent_dim, hidden)
        super().__init__(prior, decoder, likelihood, tuple(event_shape))
        self.top_down = TopDownNet(latent_dim, prior.latent_dim, hidden, gated=gated)
        self.latent_dim = latent_dim
        self.top_dim = prior.latent_dim
        self.log_var_bounds = check_log_var_bounds(log_var_min, log_var_max)
        self.decoder_reads_z2 = decoder_reads_z2

    def decoder_input(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """What the decoder reads: ``[z1, z2]`` (broadcast to common leading dimensions),
        or ``z1`` without ``decoder_reads_z2``."""
        if not self.decoder_reads_z2:
            return z1
        batch = torch.broadcast_shapes(z1.shape[:-1], z2.shape[:-1])
        return torch.cat([z1.expand(*batch, -1), z2.expand(*batch, -1)], dim=-1)

    def z1_dist(self, z2: torch.Tensor) -> dist.TorchDistribution:
        r""":math:`p(z_1 \mid z_2)`, a diagonal Gaussian with ``event_shape == (latent_dim,)``."""
        loc, log_var = self.top_down(z2)
        return diagonal_normal(loc, clip_log_var(log_var, *self.log_var_bounds))

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """Run the generative story; with ``x=None`` draw ``batch_size`` new data points."""
        with self.plate(x, num_data, batch_size):
            with kl_weight(beta, "z2"):
                z2 = pyro.sample("z2", self.prior())
            with kl_weight(beta, "z1"):
                z1 = pyro.sample("z1", self.z1_dist(z2))
            params = self.decoder(self.decoder_input(z1, z2))
            self.observe(params, x)
        return params


class HierarchicalGuide(LocalPyroModule):
    r"""The guide :math:`q(z_2 \mid x)\,q(z_1 \mid x, z_2)`, both diagonal Gaussians.

    ``forward`` shares the model's signature; with ``x=None`` it samples nothing and
    returns None. Otherwise it returns ``(loc, log_var)`` of :math:`q(z_2 \mid x)`, the
    top site's Gaussian (the code of ``x``), as :meth:`encode` does.

    Parameters
    ----------
    encoder : nn.Module
        The :math:`q(z_2 \mid x)` network (an ``ENCODERS`` network built for ``top_dim``),
        ``x -> (loc, log_var, ...)``; a VampPrior over ``z2`` shares it.
    event_shape : tuple of int
        Shape of one data point.
    latent_dim : int
        Dimension of :math:`z_1`.
    top_dim : int
        Dimension of :math:`z_2`.
    hidden : tuple of int
        Widths of the q(z1 | x, z2) network: hidden[0] for the x and z2 features, the rest joint.
    gated : bool
        Whether the q(z1 | x, z2) network has gated layers (:class:`Z1PosteriorNet`).
    log_var_min, log_var_max : float, optional
        Clamp the log-variances of both q(z2 | x) and q(z1 | x, z2) (none by default).
    """

    def __init__(
        self,
        encoder: nn.Module,
        event_shape: Sequence[int],
        latent_dim: int,
        top_dim: int,
        *,
        hidden: tuple[int, ...] = (300, 300),
        gated: bool = False,
        log_var_min: float | None = None,
        log_var_max: float | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(latent_dim, top_dim, hidden)
        self.encoder = encoder
        self.z1_net = Z1PosteriorNet(event_shape, latent_dim, top_dim, hidden, gated=gated)
        self.latent_dim = latent_dim
        self.top_dim = top_dim
        self.log_var_bounds = check_log_var_bounds(log_var_min, log_var_max)

    @property
    def gaussian_encoder(self) -> nn.Module:
        r"""The :math:`q(z_2 \mid x)` network as a VampPrior over ``z2`` should read it,
        clamped like the guide's (the encoder itself when there are no bounds)."""
        if self.log_var_bounds == (None, None):
            return self.encoder
        return ClippedLogVar(self.encoder, *self.log_var_bounds)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(loc, log_var)`` of :math:`q(z_2 \mid x)`, shape ``(..., top_dim)``."""
        outputs = self.encoder(x)
        return outputs[0], clip_log_var(outputs[1], *self.log_var_bounds)

    def encode_z1(
        self, x: torch.Tensor, z2: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(loc, log_var)`` of :math:`q(z_1 \mid x, z_2)`; ``z2`` defaults to the mean of
        :math:`q(z_2 \mid x)` (what a reconstruction decodes)."""
        if z2 is None:
            z2 = self.encode(x)[0]
        loc, log_var = self.z1_net(x, z2)
        return loc, clip_log_var(log_var, *self.log_var_bounds)

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None:
            return None
        with data_plate(len(x), num_data, x.device):
            loc, log_var = self.encode(x)
            with kl_weight(beta, "z2"):
                z2 = pyro.sample("z2", diagonal_normal(loc, log_var))
            with kl_weight(beta, "z1"):
                pyro.sample("z1", diagonal_normal(*self.encode_z1(x, z2)))
        return loc, log_var


class HierarchicalVAE(VAE):
    r"""The two-layer hierarchical VAE as a variant (``--model hvae``): the model and guide
    above, built from registered components.

    The ``prior`` is the top prior :math:`p(z_2)` (any registered prior; ``vamp`` mixes the
    :math:`q(z_2 \mid x)` network's posteriors at its pseudo-inputs), the ``encoder`` is
    that network, the ``decoder`` reads :math:`[z_1, z_2]` (:math:`z_1` alone with
    ``decoder_reads_z2=False``) and ``hidden``
    sizes every network, the top-down :math:`p(z_1 \mid z_2)` and :math:`q(z_1 \mid x, z_2)`
    ones included. The guide is the model's own (``guide`` must stay ``"normal"``); it
    takes the ``normal`` guide's ``log_var_min``/``log_var_max``, which clamp the
    log-variances of :math:`q(z_2 \mid x)`, :math:`q(z_1 \mid x, z_2)` and
    :math:`p(z_1 \mid z_2)` (the paper clamps all three to [-6, 2]). With
    ``encoder="gated-mlp"`` the :math:`q(z_1 \mid x, z_2)` network is gated too, with
    ``decoder="gated-mlp"`` the top-down one, as in the paper's HVAE.

    Parameters
    ----------
    top_dim : int, optional
        hvae: dimension of the top latent z2 (default: latent_dim).
    decoder_reads_z2 : bool
        hvae: the decoder reads z2 besides z1, p(x | z1, z2) as in the paper's HVAE (off:
        p(x | z1)).

    Examples
    --------
    >>> hvae = HierarchicalVAE((1, 8, 8), latent_dim=4, prior="vamp", num_pseudo_inputs=10)
    >>> hvae.latent_sites
    ('z2', 'z1')
    >>> hvae.sample(3).shape
    torch.Size([3, 1, 8, 8])
    """

    name = "hvae"
    latent_sites = ("z2", "z1")

    own_guide = "q(z2|x) q(z1|x,z2), diagonal Gaussians"
    own_guide_options = ("log_var_min", "log_var_max")
    #: before this option the decoder read z1 alone
    legacy_options: ClassVar[Mapping[str, Any]] = {"decoder_reads_z2": False}

    def __init__(
        self,
        event_shape: Sequence[int],
        *args: Any,
        top_dim: int | None = None,
        decoder_reads_z2: bool = True,
        **kwargs: Any,
    ) -> None:
        self.top_dim = top_dim
        self.decoder_reads_z2 = decoder_reads_z2
        super().__init__(event_shape, *args, **kwargs)
        self.spec["variant"].update(top_dim=top_dim, decoder_reads_z2=decoder_reads_z2)

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The q(z2|x) encoder, the guide, the top prior (sharing that encoder), the
        top-down layer and the decoder of [z1, z2] (or z1)."""
        if self.top_dim is None:  # the default: as wide as z1
            self.top_dim = self.latent_dim
        shape = {"event_shape": self.event_shape, "hidden": self.hidden}
        bounds = parts["guide"][1]  # log_var_min, log_var_max (own_guide_options)
        encoder = ENCODERS.build(*parts["encoder"], latent_dim=self.top_dim, **shape)
        self.guide = HierarchicalGuide(
            encoder,
            self.event_shape,
            self.latent_dim,
            self.top_dim,
            hidden=self.hidden,
            gated=parts["encoder"][0] == "gated-mlp",
            **bounds,
        )
        likelihood = self.build_likelihood(parts["likelihood"])
        prior = self.make_prior(
            parts["prior"], self.top_dim, self.guide.gaussian_encoder, likelihood
        )
        decoder = DECODERS.build(
            *parts["decoder"],
            latent_dim=self.latent_dim + (self.top_dim if self.decoder_reads_z2 else 0),
            hidden=self.hidden,
            event_shape=likelihood.param_shape(self.event_shape),
        )
        self.model = HierarchicalModel(
            prior,
            decoder,
            likelihood,
            self.event_shape,
            self.latent_dim,
            hidden=self.hidden,
            gated=parts["decoder"][0] == "gated-mlp",
            decoder_reads_z2=self.decoder_reads_z2,
            **bounds,
        )

    @torch.no_grad()
    def decode(self, z1: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`E[x \mid z_1, z_2]` under the likelihood; ``z2`` is needed when the decoder
        reads it (``decoder_reads_z2``) and ignored otherwise."""
        if z2 is None and self.decoder_reads_z2:
            raise ConfigError("this hvae's decoder reads z2 too: call decode(z1, z2)")
        return super().decode(z1 if z2 is None else self.model.decoder_input(z1, z2))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""Decode :math:`E[z_1]` under :math:`q(z_1 \mid x, z_2 = E[z_2 \mid x])`, with
        :math:`z_2 = E[z_2 \mid x]`."""
        z2 = self.guide.encode(x)[0]
        return self.decode(self.guide.encode_z1(x, z2)[0], z2)
