r"""The VAE-GAN (Larsen, Sønderby, Larochelle & Winther 2016): a VAE whose reconstruction
term is a likelihood on the features of a discriminator, trained next to a GAN.

.. math::

    z_n \sim p(z), \qquad \tilde x_n = E[x \mid \mathrm{decoder}_\theta(z_n)], \qquad
    \mathrm{Dis}_l(x_n) \mid z_n \sim \mathcal{N}\big(\mathrm{Dis}_l(\tilde x_n),\,
        \sigma^2 I\big), \qquad n = 1, \dots, N

:math:`\mathrm{Dis}_l` is the output of the ``feature_layer``-th layer of a discriminator
:math:`D` whose last layer gives one logit, :math:`D(x) = \sigma(\mathrm{logit}(x))`, the
probability that :math:`x` is real. The feature site is a Pyro likelihood site,
``pyro.sample("features", Normal(Dis_l(x~), sigma).to_event(...), obs=Dis_l(x))``, with
:math:`D`'s parameters frozen in that path (detached; the gradient still flows through
:math:`D` to :math:`\tilde x`), so the model and the guide :math:`q_\phi(z \mid x)` stay a
Pyro program and its ELBO a Pyro ELBO. A pixel likelihood :math:`p(x \mid z)` can be mixed
in with weight ``pixel_weight`` (``poutine.scale``; 0, masked out, by default).

Per minibatch, with :math:`\tilde x = \tilde x(z)`, :math:`z \sim q_\phi(z \mid x)` and
:math:`x_p = \tilde x(z_p)`, :math:`z_p \sim p(z)` (all per data point):

.. math::

    \mathcal{L}_\mathrm{prior} &= \beta\,\mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big),
    \qquad
    \mathcal{L}_\mathrm{llike} = -E_{q_\phi(z \mid x)}\big[\log \mathcal{N}\big(
        \mathrm{Dis}_l(x);\, \mathrm{Dis}_l(\tilde x), \sigma^2 I\big)
        + w \log p_\theta(x \mid z)\big],

    \mathcal{L}_\mathrm{GAN} &= \mathrm{BCE}(D(x), 1) + \mathrm{BCE}(D(\tilde x), 0)
        + \mathrm{BCE}(D(x_p), 0),

and the three parameter groups each descend their own objective:

.. math::

    \text{encoder } \phi \text{ (and the prior's parameters)}:&\quad
        \mathcal{L}_\mathrm{prior} + \mathcal{L}_\mathrm{llike}
        \quad (\text{minus the ELBO of the model above}),

    \text{decoder } \theta:&\quad \gamma\, \mathcal{L}_\mathrm{llike}
        + \mathrm{BCE}(D(\tilde x), 1) + \mathrm{BCE}(D(x_p), 1),

    \text{discriminator}:&\quad \mathcal{L}_\mathrm{GAN}.

The decoder's GAN term is the non-saturating form of :math:`-\mathcal{L}_\mathrm{GAN}`
(Goodfellow et al. 2014): its gradient is strong while :math:`D` rejects the fakes.
``fakes`` chooses which fakes :math:`D` sees (and the decoder's term then uses the same):
both, the reconstructions only, or the prior samples only. :math:`\mathrm{BCE}` is the
mean binary cross-entropy over the minibatch.

Each group's gradient is exactly the gradient of its own objective: one forward pass,
then ``torch.autograd.grad`` of each objective with respect to that group's parameters
alone, all at the same parameters, and only then the three optimizer steps (no group
receives another objective's gradient, and :math:`D` is not updated between the
decoder's forward and backward passes). The equilibrium rule of Larsen's code skips
:math:`D`'s update when its mean cross-entropy is below ``equilibrium - margin`` (it is
winning) and the decoder's update when it is above ``equilibrium + margin`` (it is losing).

This module holds the variant whole: the discriminator (:class:`Discriminator`), the model
(:class:`VAEGANModel`), its step (:class:`VAEGANStep`) and the variant (:class:`VAEGAN`).

References
----------
- Larsen, Sønderby, Larochelle & Winther (2016), Autoencoding beyond pixels using a learned
  similarity metric. ICML.
- Goodfellow et al. (2014), Generative Adversarial Nets (the non-saturating generator loss).
- Radford, Metz & Chintala (2016), Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks (Adam with beta1 = 0.5, LeakyReLU in D).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.inference.training.groups import (
    CANNOT,
    GroupStep,
    TraceRecorder,
    bce,
    check_partition,
    unique_parameters,
)
from pyrovae.model import Likelihood, Prior
from pyrovae.model.base import kl_weight
from pyrovae.networks import Discriminator
from pyrovae.variants.vae import VAE, VAEModel

if TYPE_CHECKING:
    from pyrovae.data import Dataset

__all__ = ["FAKES", "VAEGAN", "Discriminator", "VAEGANLosses", "VAEGANModel", "VAEGANStep"]

#: which fakes the discriminator sees (``fakes``)
FAKES = ("both", "reconstructions", "samples")


class VAEGANModel(VAEModel):
    r"""The model ``z -> x~ -> Dis_l``: a prior, a decoder, the likelihood whose mean is
    :math:`\tilde x`, and the discriminator whose features are observed.

    ``forward(x=None, *, num_data=None, batch_size=None, beta=1.0)`` shares the signature
    of :class:`~pyrovae.variants.vae.VAEModel` (without ``mask``: the VAE-GAN does not
    condition on some pixels) and returns the decoder's output (the likelihood's
    parameters). Its sites: ``z``; ``features``, :math:`\mathcal{N}(\mathrm{Dis}_l(\tilde
    x), \sigma^2 I)` observed at :math:`\mathrm{Dis}_l(x)`; ``x``, the pixel likelihood,
    scaled by ``pixel_weight`` (masked out when it is 0).

    Parameters
    ----------
    prior, decoder, likelihood, event_shape
        As for :class:`~pyrovae.variants.vae.VAEModel`.
    discriminator : Discriminator
        :math:`D`, whose parameters the step trains on :math:`\mathcal{L}_\mathrm{GAN}`.
    feature_layer : int
        :math:`l`, the layer whose output is observed (1-based, below the logit).
    feature_scale : float
        :math:`\sigma` of the feature likelihood.
    pixel_weight : float
        :math:`w`, the weight of the pixel likelihood (0: masked out).
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
        discriminator: Discriminator,
        *,
        feature_layer: int,
        feature_scale: float = 1.0,
        pixel_weight: float = 0.0,
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape)
        if not 1 <= feature_layer < discriminator.num_layers:
            raise ConfigError(
                f"feature_layer must be a layer of the discriminator below its logit, 1 to "
                f"{discriminator.num_layers - 1}, got {feature_layer}"
            )
        self.discriminator = discriminator
        self.feature_layer = feature_layer
        self.feature_scale = feature_scale
        self.pixel_weight = pixel_weight

    def features(self, images: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{Dis}_l` of ``images`` with the discriminator's parameters frozen."""
        return self.discriminator.frozen(images, self.feature_layer)

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        feature_dims = len(self.discriminator.feature_shape(self.feature_layer))
        with self.plate(x, num_data, batch_size):
            with kl_weight(beta):
                z = pyro.sample("z", self.prior())
            params = self.decoder(z)
            target = None
            if x is not None:
                with torch.no_grad():  # an observation: no gradient to anything
                    target = self.discriminator(x, self.feature_layer)
            loc = self.features(self.likelihood.mean(params))
            pyro.sample(
                "features",
                dist.Normal(loc, self.feature_scale).to_event(feature_dims),
                obs=target,
            )
            weight = (
                poutine.scale(scale=self.pixel_weight)
                if self.pixel_weight > 0
                else poutine.mask(mask=False)
            )
            with weight:
                self.observe(params, x)
        return params


@dataclass
class VAEGANLosses:
    r"""The losses of one minibatch (per data point unless said otherwise).

    Attributes
    ----------
    elbo_loss : torch.Tensor
        The Pyro ELBO's loss, scaled to the ``num_data`` training items:
        :math:`N (\mathcal{L}_\mathrm{prior} + \mathcal{L}_\mathrm{llike})`.
    prior, reconstruction : torch.Tensor
        :math:`\mathcal{L}_\mathrm{prior}` (the :math:`\beta`-weighted KL term) and
        :math:`\mathcal{L}_\mathrm{llike}` (minus the log-likelihood of the observed sites).
    gan : torch.Tensor
        :math:`\mathcal{L}_\mathrm{GAN}`, the discriminator's objective.
    fool : torch.Tensor
        The decoder's non-saturating GAN term, :math:`\mathrm{BCE}(D(\mathrm{fake}), 1)`
        summed over the fakes ``D`` sees.
    gamma : float
        The weight of :math:`\mathcal{L}_\mathrm{llike}` in the decoder's objective.
    bce : torch.Tensor
        ``D``'s mean cross-entropy over its terms (real and each kind of fake it sees):
        what the equilibrium rule reads.
    accuracy : dict of str to torch.Tensor
        ``D``'s accuracy on the real items, the reconstructions and the prior samples.
    """

    elbo_loss: torch.Tensor
    prior: torch.Tensor
    reconstruction: torch.Tensor
    gan: torch.Tensor
    fool: torch.Tensor
    gamma: float
    bce: torch.Tensor
    accuracy: dict[str, torch.Tensor]

    @property
    def objectives(self) -> dict[str, torch.Tensor]:
        """Each parameter group's objective, by the name of its optimizer."""
        return {
            "encoder": self.prior + self.reconstruction,
            "decoder": self.gamma * self.reconstruction + self.fool,
            "discriminator": self.gan,
        }


class VAEGANStep(GroupStep):
    r"""One VAE-GAN update: three parameter groups, each stepped on its own objective.

    Per minibatch: the Pyro ELBO (``objective``) on the model and the guide gives
    :math:`\mathcal{L}_\mathrm{prior} + \mathcal{L}_\mathrm{llike}` with draws
    :math:`z \sim q(z \mid x)` (first in the random stream), then
    :math:`z_p \sim p(z)` is drawn (``prior().sample``) and ``D`` judges the real items, the
    reconstructions :math:`\tilde x(z)` and the samples :math:`\tilde x(z_p)` in one pass
    (:meth:`losses`). The gradient of each group's objective with respect to that group
    alone is taken with ``torch.autograd.grad``, all at the same parameters
    (:meth:`gradients`); each gradient is written to its parameters' ``.grad`` (clipped per
    group with ``clip_norm``), and the optimizers step, the encoder always, ``D`` and the
    decoder unless the equilibrium rule skips them (:meth:`skips`).

    Parameters
    ----------
    vae : VAEGAN
        The variant; its options (``gamma``, ``fakes``, the equilibrium rule) apply.
    objective : ELBO
        ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (any number of particles).
    learning_rate : float
        The learning rate of the three Adam optimizers.
    clip_norm : float, optional
        Clip each group's gradient norm to this value.

    Attributes
    ----------
    groups : dict of str to list of nn.Parameter
        ``encoder``: the guide's and the prior's parameters; ``decoder``: the decoder's and
        the likelihood's; ``discriminator``: ``D``'s. Disjoint, and together every
        parameter of the VAE.
    optimizers : dict of str to torch.optim.Adam
        One per group, with :math:`\beta_1 = 0.5` (DCGAN's setting for adversarial
        training; Larsen et al. used RMSProp).
    """

    def __init__(
        self,
        vae: VAEGAN,
        objective: ELBO,
        *,
        learning_rate: float = 1e-3,
        clip_norm: float | None = None,
    ) -> None:
        self.vae = vae
        self.recorder = TraceRecorder(vae.model)
        self.elbo = objective(self.recorder, vae.guide)
        # the ELBO runs the model once per particle, or once for all of them (vectorized)
        self.num_particles = objective.num_particles
        self.runs = 1 if objective.vectorize_particles else objective.num_particles
        model = vae.model
        groups = {
            "encoder": unique_parameters([*vae.guide.parameters(), *model.prior.parameters()]),
            "decoder": unique_parameters(
                [*model.decoder.parameters(), *model.likelihood.parameters()]
            ),
            "discriminator": list(model.discriminator.parameters()),
        }
        check_partition(vae, groups, "the VAE-GAN")
        optimizers = {
            name: torch.optim.Adam(params, lr=learning_rate, betas=(0.5, 0.999))
            for name, params in groups.items()
        }
        super().__init__(groups, optimizers, clip_norm)

    def losses(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> VAEGANLosses:
        """The losses of a minibatch (``{"x": x}``), differentiable; nothing is updated."""
        vae, x = self.vae, batch["x"]
        self.recorder.traces.clear()
        elbo_loss = self.elbo(x, num_data=num_data, beta=beta)
        # the ELBO's own draws, one trace per particle (or one with a particle dimension)
        traces = self.recorder.traces[-self.runs :]
        reconstruction = sum(_observed_log_prob(t) for t in traces) / -self.num_particles
        shape = vae.model.likelihood.param_shape(x.shape[1:])  # the decoder's output
        params = torch.cat([t.nodes["_RETURN"]["value"].reshape(-1, *shape) for t in traces])
        with torch.no_grad():
            z_prior = vae.model.prior().sample((len(x),))
        fakes = {
            "reconstructed": vae.model.likelihood.mean(params),
            "sampled": vae.model.likelihood.mean(vae.model.decoder(z_prior)),
        }
        logits = vae.model.discriminator.logit(torch.cat([x, *fakes.values()]))
        real, reconstructed, sampled = logits.split([len(x), *(len(f) for f in fakes.values())])
        seen = {"reconstructed": reconstructed, "sampled": sampled}
        seen = {k: v for k, v in seen.items() if vae.fakes in ("both", _FAKE_NAMES[k])}
        bce_real = bce(real, 1.0)
        bce_fakes = [bce(v, 0.0) for v in seen.values()]
        gan = bce_real + sum(bce_fakes)
        fool = sum(bce(v, 1.0) for v in seen.values())
        with torch.no_grad():
            accuracy = {
                "real": (real > 0).float().mean(),
                "reconstructed": (reconstructed < 0).float().mean(),
                "sampled": (sampled < 0).float().mean(),
            }
            mean_bce = (bce_real + sum(bce_fakes)) / (1 + len(bce_fakes))
        return VAEGANLosses(
            elbo_loss=elbo_loss,
            prior=elbo_loss / num_data - reconstruction / num_data,
            reconstruction=reconstruction / num_data,
            gan=gan,
            fool=fool,
            gamma=vae.gamma,
            bce=mean_bce,
            accuracy=accuracy,
        )

    def skips(self, bce: torch.Tensor | float) -> dict[str, bool]:
        """Which updates the equilibrium rule skips, given ``D``'s mean cross-entropy:
        ``D``'s when it is below ``equilibrium - margin`` (``D`` is winning), the decoder's
        when it is above ``equilibrium + margin`` (``D`` is losing)."""
        vae = self.vae
        if not vae.equilibrium_rule:
            return {"discriminator": False, "decoder": False}
        bce = float(bce)
        return {
            "discriminator": bce < vae.equilibrium - vae.margin,
            "decoder": bce > vae.equilibrium + vae.margin,
        }

    def check(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> None:
        losses = self.losses(batch, num_data=num_data, beta=beta)
        for name, value in losses.objectives.items():
            if not torch.isfinite(value):
                raise ConfigError(f"the VAE-GAN's {name} objective is {value.item()} at the start")

    def __call__(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> dict[str, torch.Tensor]:
        with pyro.validation_enabled(False):
            losses = self.losses(batch, num_data=num_data, beta=beta)
        skips = self.skips(losses.bce)
        self.apply(self.gradients(losses), skips)
        objectives = losses.objectives
        device = losses.bce.device
        stats = {
            "loss": losses.elbo_loss.detach(),
            "prior_loss": losses.prior.detach(),
            "reconstruction_loss": losses.reconstruction.detach(),
            **{f"{name}_loss": value.detach() for name, value in objectives.items()},
            "discriminator_bce": losses.bce,
            **{f"accuracy_{k}": v for k, v in losses.accuracy.items()},
            **{f"{k}_skipped": torch.tensor(float(v), device=device) for k, v in skips.items()},
        }
        return stats


#: fakes option -> the kind of fake it names
_FAKE_NAMES = {"reconstructed": "reconstructions", "sampled": "samples"}


def _observed_log_prob(trace: poutine.Trace) -> torch.Tensor:
    """The scaled log-likelihood of a model trace's observed sites (the features and the
    weighted pixels), summed: what the ELBO adds for them."""
    trace.compute_log_prob()
    return sum(
        site["log_prob_sum"]
        for site in trace.nodes.values()
        if site["type"] == "sample" and site["is_observed"]
    )


class VAEGAN(VAE):
    r"""The VAE-GAN as a variant (``--model vaegan``): the model and step above, built from
    registered components.

    The ``prior``, the ``decoder`` and the guide (``guide`` with its ``encoder``) are the
    registered components, as for :class:`~pyrovae.variants.vae.VAE`, with convolutional
    networks by default (:attr:`component_defaults`; data that are not images need
    ``encoder="mlp", decoder="mlp"``, and the discriminator is then an MLP of ``hidden``).
    The ``likelihood`` turns the decoder's output into the image :math:`\tilde x` (its
    mean) that ``D`` sees, and is the pixel likelihood that ``pixel_weight`` mixes in. The
    discriminator is ``vae.model.discriminator``, so ``state_dict()`` holds it.

    The VAE-GAN has no likelihood of the data: its likelihood is on the features of a
    discriminator that moves during training. So there is no ELBO of :math:`x`, no IWAE
    :math:`\log p(x)`, no anomaly score or inpainting (:attr:`cannot`);
    :meth:`evaluate_heldout` reports the feature-space ELBO (labelled as such), the KL and
    the feature-space and pixel-space reconstruction errors. The posterior tools work:
    :math:`q(z \mid x)` is the registered guide's (a diagonal Gaussian by default).

    Parameters
    ----------
    event_shape, latent_dim, prior, likelihood, encoder, decoder, hidden, guide
        As for :class:`~pyrovae.variants.vae.VAE` (encoder and decoder default to ``conv``).
    gamma : float
        vaegan: weight of the feature reconstruction against the GAN term in the decoder's
        objective (Larsen et al.'s gamma).
    feature_layer : int, optional
        vaegan: the discriminator layer whose output is the learned similarity, 1-based and
        below the logit (default: the last convolution for images, the last hidden layer
        otherwise).
    feature_scale : float
        vaegan: standard deviation of the Gaussian likelihood on the discriminator's
        features.
    pixel_weight : float
        vaegan: weight of the pixel likelihood mixed into the reconstruction term (0: none).
    fakes : str
        vaegan: the fakes the discriminator sees: both, reconstructions or samples (from
        the prior).
    equilibrium : float
        vaegan: the discriminator's mean cross-entropy that the equilibrium rule aims at.
    margin : float
        vaegan: skip the discriminator's update below equilibrium - margin and the
        decoder's above equilibrium + margin.
    equilibrium_rule : bool
        vaegan: apply the equilibrium rule (off: update every group at every step).
    discriminator_channels : tuple of int
        vaegan: channels of the discriminator's stride-2 convolutions (images).

    Examples
    --------
    >>> vaegan = VAEGAN((1, 8, 8), latent_dim=4, hidden=(32,))
    >>> vaegan.spec["encoder"], vaegan.model.feature_layer
    ({'name': 'conv'}, 2)
    >>> vaegan.sample(3).shape
    torch.Size([3, 1, 8, 8])
    """

    name = "vaegan"
    component_defaults: ClassVar[Mapping[str, str]] = {"encoder": "conv", "decoder": "conv"}
    #: the pixel error of reconstructions: the feature-space ELBO moves with the discriminator
    monitor = ("test_pixel_mse", "min")
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {"fakes": FAKES}
    cannot: ClassVar[Mapping[str, str]] = {
        "likelihood": (
            "its likelihood is a Gaussian on the discriminator's features, which move "
            "during training, so it has no log p(x) (no ELBO of the data, IWAE bound, "
            "anomaly score or inference gap); pyrovae evaluate reports its feature-space "
            "ELBO and reconstruction errors instead"
        ),
        "inpainting": (
            "conditioning on some pixels needs a likelihood of the pixels; the VAE-GAN's "
            "is on the discriminator's features of the whole image"
        ),
        **CANNOT,
    }

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = 8,
        prior: Any = "normal",
        likelihood: Any = "bernoulli",
        encoder: str | Mapping = "conv",
        decoder: str | Mapping = "conv",
        hidden: Sequence[int] = (256, 128),
        guide: Any = "normal",
        *,
        gamma: float = 1.0,
        feature_layer: int | None = None,
        feature_scale: float = 0.1,
        pixel_weight: float = 0.0,
        fakes: str = "both",
        equilibrium: float = 0.68,
        margin: float = 0.35,
        equilibrium_rule: bool = True,
        discriminator_channels: tuple[int, ...] = (32, 64),
        **options: Any,
    ) -> None:
        if fakes not in FAKES:
            raise ConfigError(f"fakes must be one of {', '.join(FAKES)}, got {fakes!r}")
        checks = {
            "gamma": (gamma, gamma >= 0),
            "feature_scale": (feature_scale, feature_scale > 0),
            "pixel_weight": (pixel_weight, pixel_weight >= 0),
            "equilibrium": (equilibrium, equilibrium > 0),
            "margin": (margin, margin >= 0),
        }
        for key, (value, ok) in checks.items():
            if not (ok and math.isfinite(value)):
                raise ConfigError(f"{key} of --model vaegan is out of range: {value}")
        self.gamma = gamma
        self.feature_layer = feature_layer
        self.feature_scale = feature_scale
        self.pixel_weight = pixel_weight
        self.fakes = fakes
        self.equilibrium = equilibrium
        self.margin = margin
        self.equilibrium_rule = equilibrium_rule
        self.discriminator_channels = tuple(discriminator_channels)
        super().__init__(
            event_shape, latent_dim, prior, likelihood, encoder, decoder, hidden, guide, **options
        )
        self.spec["variant"].update(
            gamma=gamma,
            feature_layer=feature_layer,
            feature_scale=feature_scale,
            pixel_weight=pixel_weight,
            fakes=fakes,
            equilibrium=equilibrium,
            margin=margin,
            equilibrium_rule=equilibrium_rule,
            discriminator_channels=list(self.discriminator_channels),
        )

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The VAE's decoder, guide and prior (:meth:`VAE.build`), then the discriminator,
        and the model that observes its features."""
        super().build(parts)
        base = self.model
        discriminator = Discriminator(self.event_shape, self.discriminator_channels, self.hidden)
        layer = self.feature_layer
        if layer is None:  # the last convolution, or the last hidden layer
            layer = (
                len(self.discriminator_channels)
                if len(self.event_shape) == 3
                else (discriminator.num_layers - 1)
            )
        self.model = VAEGANModel(
            base.prior,
            base.decoder,
            base.likelihood,
            self.event_shape,
            discriminator,
            feature_layer=layer,
            feature_scale=self.feature_scale,
            pixel_weight=self.pixel_weight,
        )

    @property
    def discriminator(self) -> Discriminator:
        """:math:`D`, a submodule of the model."""
        return self.model.discriminator

    # -- the training step --

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> VAEGANStep:
        r"""The three-group step (:class:`VAEGANStep`); ``objective`` computes the encoder's
        :math:`\mathcal{L}_\mathrm{prior} + \mathcal{L}_\mathrm{llike}`, so it must be an
        ELBO of that form: ``Trace_ELBO`` or ``TraceMeanField_ELBO``."""
        if type(objective) not in (Trace_ELBO, TraceMeanField_ELBO):
            raise ConfigError(
                "--model vaegan trains its encoder on the KL plus the feature reconstruction, "
                "which Trace_ELBO and TraceMeanField_ELBO compute; drop --elbo "
                f"{type(objective).__name__}"
            )
        return VAEGANStep(self, objective, learning_rate=learning_rate, clip_norm=clip_norm)

    # -- evaluation: what is defined without a likelihood of the data --

    @torch.no_grad()
    def heldout_scores(self, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
        r"""Held-out scores, means over the items of ``x``:

        - ``feature_elbo``: :math:`E_q[\log \mathcal{N}(\mathrm{Dis}_l(x);
          \mathrm{Dis}_l(\tilde x), \sigma^2 I)] - \mathrm{KL}` with one draw of
          :math:`q(z \mid x)` per item (nats in the space of ``D``'s features: not a
          log-likelihood of :math:`x`, and it changes with ``D``);
        - ``feature_mse``: mean squared error between :math:`\mathrm{Dis}_l(x)` and
          :math:`\mathrm{Dis}_l` of the reconstruction :math:`\tilde x(\mu_\phi(x))`;
        - ``pixel_mse``: mean squared error between :math:`x` and that reconstruction;
        - ``accuracy_real``, ``accuracy_reconstructed``, ``accuracy_sampled``: ``D``'s
          accuracy on the items, their reconstructions and as many prior samples.
        """
        from pyrovae.inference.evaluation import batches, eval_mode

        totals: dict[str, float] = {}
        layer = self.model.feature_layer
        with eval_mode(self):
            for xb, _ in batches(x, batch_size):
                guide_trace = poutine.trace(self.guide).get_trace(xb)
                model = poutine.replay(self.model, trace=guide_trace)
                model_trace = poutine.trace(model).get_trace(xb)
                model_trace.compute_log_prob()
                guide_trace.compute_log_prob()
                elbo = (
                    model_trace.nodes["features"]["unscaled_log_prob"]
                    + model_trace.nodes["z"]["unscaled_log_prob"]
                    - guide_trace.nodes["z"]["unscaled_log_prob"]
                )
                reconstruction = self.reconstruct(xb)
                disc = self.discriminator
                feature_error = disc(reconstruction, layer) - disc(xb, layer)
                samples = self.sample(len(xb))
                scores = {
                    "feature_elbo": elbo,
                    "feature_mse": feature_error.pow(2).flatten(1).mean(1),
                    "pixel_mse": (reconstruction - xb).pow(2).flatten(1).mean(1),
                    "accuracy_real": (disc.logit(xb) > 0).float(),
                    "accuracy_reconstructed": (disc.logit(reconstruction) < 0).float(),
                    "accuracy_sampled": (disc.logit(samples) < 0).float(),
                }
                for key, value in scores.items():
                    totals[key] = totals.get(key, 0.0) + value.sum().item()
        return {key: value / len(x) for key, value in totals.items()}

    def evaluate_epoch(
        self, data: Dataset, *, batch_size: int = 500, probe_items: int = 1000
    ) -> dict[str, Any]:
        """The held-out scores of :meth:`heldout_scores` (as ``test_<name>``) and the
        collapse diagnostics of ``z`` on the first ``probe_items`` held-out items."""
        from pyrovae.inference import diagnose

        row: dict[str, Any] = {
            f"test_{k}": v for k, v in self.heldout_scores(data.test, batch_size).items()
        }
        probe = data.test[:probe_items]
        if len(probe) >= 2:
            row.update(diagnose(self, probe.to(self.device), batch_size=batch_size))
        return row

    def evaluate_heldout(
        self,
        x: torch.Tensor,
        *,
        num_samples: int = 1000,
        batch_size: int = 500,
        y: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """What is defined without a likelihood of the data (``evaluation.json``,
        ``pyrovae evaluate``): :meth:`heldout_scores` and the KL of :math:`q(z \\mid x)` to
        the prior (closed form where there is one). There is no IWAE bound to draw
        ``num_samples`` for; ``y`` is not read."""
        from pyrovae.inference import total_kl

        return {
            "num_data": len(x),
            **self.heldout_scores(x, batch_size),
            "kl": total_kl(self, x, batch_size=batch_size),
        }
