r"""The VQ-VAE (van den Oord et al. 2017): discrete codes on a grid, a codebook, and a prior
over codes fitted after training.

As a Pyro program, with :math:`P` grid positions and a codebook
:math:`e_0, \dots, e_{K-1} \in \mathbb{R}^D`:

.. math::

    k_n \sim p(k) \;\; \big(k_n \in \{0, \dots, K-1\}^P\big), \qquad
    x_n \mid k_n \sim p_\theta\big(x \mid \mathrm{decoder}_\theta(e_{k_{n,1}}, \dots,
        e_{k_{n,P}})\big),

    q_\phi(k \mid x) = \delta\big(k - k^*(x)\big), \qquad
    k^*_p(x) = \operatorname*{arg\,min}_j \lVert z_{e,p}(x) - e_j \rVert^2 ,

with :math:`z_e(x)` the encoder's grid of :math:`D`-dimensional outputs. The guide is a
point mass (one-hot in :math:`k`), so :math:`\log q = 0`, its entropy is 0, and with the
uniform prior :math:`p(k) = K^{-P}` that the model uses while it trains

.. math::

    \mathrm{ELBO}(x) = \log p(x \mid k^*(x)) + \log p(k^*(x)) - \log q(k^*(x) \mid x)
    = \log p(x \mid k^*(x)) - P \log K ,

the KL term being the constant :math:`\mathrm{KL}(q \,\|\, p) = P \log K`. It is a valid
lower bound on :math:`\log p(x)` under the model, and
:func:`~pyrovae.inference.evaluation.importance_weights` computes it from the traces like
any other variant's; so does ``pyrovae evaluate``. After :meth:`VQVAE.finish_training`
the model's prior is the one fitted to the training codes and the same formula bounds
:math:`\log p(x)` of the model "fitted prior + decoder". Every draw of a point-mass guide
is the same, so the IWAE bound with :math:`K` draws equals the ELBO, and the bound is
loose: it credits one code grid where :math:`p(x) = \sum_k p(k)\,p(x \mid k)` sums over
all of them.

**Training** does not run a Pyro ELBO: the argmin has no gradient. :class:`VQVAEStep`
minimises, per item,

.. math::

    -\log p(x \mid z_q) + \lVert \mathrm{sg}[z_e] - e_{k^*} \rVert^2
    + \beta_c \lVert z_e - \mathrm{sg}[e_{k^*}] \rVert^2 ,

summed over the grid positions, with the straight-through decoder input :math:`z_q` (value
:math:`e_{k^*}`, gradient passed to :math:`z_e`), :math:`\beta_c` the commitment weight,
and the codebook term only when the codebook learns by its loss (with ``codebook="ema"``
moving averages move it; see :mod:`pyrovae.guides.quantizer`). Its reconstruction term is
the model's :math:`\log p(x \mid k)` at the guide's codes (the tests check this), so the
model and guide above are what evaluation, ``Predictive`` and ``pyro.render_model`` read.

This module holds the variant whole: its networks, model, guide, training step and the
class :class:`VQVAE`; the codebook is :class:`~pyrovae.guides.quantizer.VectorQuantizer`
and the priors over codes are in :mod:`pyrovae.model.priors.codes`.

References
----------
- van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning.
- Germain, Gregor, Murray & Larochelle (2015), MADE: Masked Autoencoder for Distribution
  Estimation (the autoregressive prior over codes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.guides.quantizer import VectorQuantizer, perplexity
from pyrovae.inference.training.numerics import clip_gradients
from pyrovae.inference.training.step import _is_one
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.model.likelihoods import Likelihood
from pyrovae.model.priors.codes import CODE_PRIORS, CodePrior
from pyrovae.variants.vae import VAE, VAEModel

if TYPE_CHECKING:
    from pyrovae.data import Dataset

__all__ = ["VQVAE", "CodeDecoder", "CodeEncoder", "VQGuide", "VQModel", "VQVAEStep"]

logger = logging.getLogger(__name__)


class CodeEncoder(nn.Module):
    r"""``x (..., C, H, W) -> z_e (..., P, D)``: the grid of continuous codes, raster order.

    ``Conv(4x4, stride 2)`` per entry of ``channels`` (each halves the image), a
    ``Conv(3x3)`` and a ``Conv(1x1)`` to ``code_dim`` channels, ReLUs between them; the
    grid is :math:`H / 2^n \times W / 2^n` for :math:`n` = ``len(channels)``.
    """

    def __init__(self, event_shape: Sequence[int], code_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.code_dim = code_dim
        layers: list[nn.Module] = []
        for c_in, c_out in zip([self.event_shape[0], *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(channels[-1], channels[-1], kernel_size=3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(channels[-1], code_dim, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[: x.dim() - 3]
        h = self.net(x.reshape(-1, *self.event_shape))  # (B, D, h, w)
        return h.permute(0, 2, 3, 1).reshape(*batch_shape, -1, self.code_dim)


class CodeDecoder(nn.Module):
    r"""``z_q (..., P, D) -> likelihood parameters (..., C, H, W)``, mirroring
    :class:`CodeEncoder`: a ``Conv(3x3)`` from ``code_dim`` channels, then a
    ``ConvTranspose(4x4, stride 2)`` per entry of ``channels``, ReLUs between them."""

    def __init__(
        self,
        event_shape: Sequence[int],
        code_dim: int,
        channels: Sequence[int],
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.grid = grid
        layers: list[nn.Module] = [
            nn.Conv2d(code_dim, channels[-1], kernel_size=3, padding=1),
            nn.ReLU(),
        ]
        outs = [*reversed(channels[:-1]), self.event_shape[0]]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-2]
        h = z.reshape(-1, *self.grid, z.shape[-1]).permute(0, 3, 1, 2)
        return self.net(h).reshape(*batch_shape, *self.event_shape)


class VQModel(VAEModel):
    r"""The model ``k -> x``: a prior over code grids, the codebook, a decoder, a likelihood.

    ``forward`` shares the signature of :class:`~pyrovae.variants.vae.VAEModel` (without
    ``mask``) and returns the decoder's output (the likelihood's parameters).

    Parameters
    ----------
    prior : CodePrior
        :math:`p(k)` over ``P`` positions (uniform until fitted).
    quantizer : VectorQuantizer
        Holds the codebook :math:`e_j` that the decoder reads (the guide shares it).
    decoder : nn.Module
        ``(..., P, D) -> likelihood parameters``.
    likelihood : Likelihood
        ``parameters -> p(x | k)`` (elementwise over pixels).
    event_shape : tuple of int
        Shape of one data point.
    """

    def __init__(
        self,
        prior: CodePrior,
        quantizer: VectorQuantizer,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape)  # type: ignore[arg-type]
        self.quantizer = quantizer

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
            with kl_weight(beta, "k"):
                k = pyro.sample("k", self.prior())
            params = self.decoder(self.quantizer.lookup(k))
            self.observe(params, x)
        return params

    def log_likelihood(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x \mid \text{params})` per item, as the site ``x`` scores it."""
        likelihood = self.likelihood(params)
        pixel_dims = len(self.event_shape) - len(likelihood.event_shape)
        return likelihood.to_event(pixel_dims).log_prob(x)


class VQGuide(LocalPyroModule):
    r"""The guide :math:`q(k \mid x) = \delta(k - k^*(x))`: the encoder, then the nearest
    codebook vectors; a ``Delta`` site with :math:`\log q = 0`.

    ``forward`` shares the model's signature; with ``x=None`` it samples nothing and
    returns None, otherwise it returns the encoder's outputs :math:`z_e(x)`, ``(N, P, D)``.

    Parameters
    ----------
    encoder : CodeEncoder
        ``x -> z_e(x)``.
    quantizer : VectorQuantizer
        The model's codebook, held but not registered (the model owns it, so a
        checkpoint holds it once).
    """

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer) -> None:
        super().__init__()
        self.encoder = encoder
        object.__setattr__(self, "quantizer", quantizer)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`k^*(x)`, the nearest code at every position: ``(N, P)`` indices."""
        return self.quantizer.nearest(self.encoder(x))

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor | None:
        if x is None:
            return None
        with data_plate(len(x), num_data, x.device):
            z_e = self.encoder(x)
            k = self.quantizer.nearest(z_e)
            log_density = torch.zeros(k.shape[:-1], dtype=z_e.dtype, device=k.device)
            with kl_weight(beta, "k"):
                pyro.sample("k", dist.Delta(k, log_density, event_dim=1))
        return z_e


class VQVAEStep:
    r"""One update of a VQ-VAE: the loss of the module docstring, one backward pass and one
    Adam step over the encoder, decoder, likelihood and (with the codebook loss) codebook
    (the optimizer ``"vqvae"``); then, with EMA, the codebook's moving averages.

    Before the loss, codes unused for ``restart_after`` steps move onto encoder outputs of
    the batch; after it, the step counts which codes the batch used. It logs, per item,
    ``reconstruction`` (:math:`-\log p(x \mid z_q)`), ``commitment``
    (:math:`\beta_c \lVert z_e - \mathrm{sg}[e] \rVert^2`), ``codebook``
    (:math:`\lVert \mathrm{sg}[z_e] - e \rVert^2`, with the codebook loss only) and the
    batch's code ``perplexity``; ``elbo`` is the uniform-prior ELBO of the batch (scaled
    to the training set, as the trainer expects). The loss is scaled by :math:`N / B` like
    a Pyro ELBO in the data plate.

    Parameters
    ----------
    vae : VQVAE
        The variant whose networks and codebook the step trains.
    learning_rate : float
        Adam's learning rate.
    clip_norm : float, optional
        Clip the gradient norm to this value.
    """

    def __init__(
        self, vae: VQVAE, *, learning_rate: float = 1e-3, clip_norm: float | None = None
    ) -> None:
        self.vae = vae
        modules = (vae.guide.encoder, vae.model.decoder, vae.model.likelihood, vae.quantizer)
        self.parameters = [p for module in modules for p in module.parameters()]
        self.optimizers = {"vqvae": torch.optim.Adam(self.parameters, lr=learning_rate)}
        self.clip_norm = clip_norm

    def terms(
        self, x: torch.Tensor, *, num_data: int, restart: bool = False
    ) -> dict[str, torch.Tensor]:
        """The loss and its terms on ``x`` (per item, shape ``(B,)``), the codes ``k`` and
        the encoder outputs ``z_e``; with ``restart``, dead codes move first."""
        vae, quantizer = self.vae, self.vae.quantizer
        z_e = vae.guide.encoder(x)
        if restart:
            quantizer.restart_dead(z_e)
        k, e, z_q = quantizer(z_e)
        log_likelihood = vae.model.log_likelihood(vae.model.decoder(z_q), x)
        commitment = vae.commitment * (z_e - e.detach()).pow(2).sum((-2, -1))
        per_item = commitment - log_likelihood
        terms = {"reconstruction": -log_likelihood, "commitment": commitment}
        if not quantizer.ema:
            terms["codebook"] = (z_e.detach() - e).pow(2).sum((-2, -1))
            per_item = per_item + terms["codebook"]
        terms["loss"] = num_data / len(x) * per_item.sum()
        terms["log_likelihood"] = log_likelihood
        return {**terms, "k": k, "z_e": z_e}

    def check(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> None:
        """The loss once, and the model replayed on the guide's codes once (with the
        trainer's validation on), updating nothing; a KL weight other than 1 is refused."""
        if not _is_one(beta):
            raise ConfigError(
                "--model vqvae has the constant KL P log K (a point-mass guide under a "
                "uniform prior), so a KL weight does not apply; drop --beta, --kl-schedule "
                "and --kl-site-weights"
            )
        x = batch["x"]
        with torch.no_grad():
            self.terms(x, num_data=num_data)
            guide = poutine.trace(self.vae.guide).get_trace(x, num_data=num_data)
            model = poutine.replay(self.vae.model, trace=guide)
            poutine.trace(model).get_trace(x, num_data=num_data).compute_log_prob()

    def __call__(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> dict[str, torch.Tensor]:
        x = batch["x"]
        quantizer = self.vae.quantizer
        with pyro.validation_enabled(False):
            terms = self.terms(x, num_data=num_data, restart=True)
        optimizer = self.optimizers["vqvae"]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.clip_norm is not None:
            clip_gradients(self.parameters, self.clip_norm)
        optimizer.step()
        k, z_e = terms.pop("k"), terms.pop("z_e")
        if quantizer.ema:
            quantizer.ema_update(z_e, k)
        quantizer.record_usage(k)
        scale = num_data / len(x)
        grid = self.vae.num_positions * math.log(quantizer.num_codes)
        stats = {
            "loss": terms.pop("loss").detach(),
            "elbo": (scale * terms.pop("log_likelihood").sum() - num_data * grid).detach(),
            "perplexity": perplexity(quantizer.usage(k)),
        }
        stats.update({name: value.detach().mean() for name, value in terms.items()})
        return stats


@dataclass(frozen=True)
class _Heldout:
    """Sums over the items of a data set (:meth:`VQVAE._heldout`), and the code usage."""

    num_data: int
    log_likelihood: float
    log_prior: float
    squared_error: float
    usage: torch.Tensor


class VQVAE(VAE):
    r"""The VQ-VAE as a variant (``--model vqvae``): the model and guide of the module
    docstring, trained by :class:`VQVAEStep`, with a prior over codes fitted after the
    epochs (:meth:`finish_training`).

    Its networks are its own: a convolutional encoder of images ``(C, H, W)`` to a grid of
    ``latent_dim``-dimensional codes (each of ``encoder_channels`` a stride-2 convolution
    that halves the image: 8x8 digits give a 2x2 grid, 28x28 images a 7x7 one) and a
    transposed-convolution decoder; ``latent_dim`` is the code dimension :math:`D` and
    ``hidden`` the hidden layers of the autoregressive code prior. The ``prior``,
    ``encoder``, ``decoder`` and ``guide`` components must stay at their defaults (it
    refuses others with one message); ``likelihood`` is any registered one.

    Parameters
    ----------
    num_codes : int
        vqvae: K, the number of codebook vectors.
    commitment : float
        vqvae: the commitment weight, on ||z_e - sg[e]||^2 (the paper's beta).
    codebook : str
        vqvae: how the codebook learns, ema (moving averages) or loss (the codebook loss).
    decay : float
        vqvae: the decay of the codebook's moving averages (codebook ema).
    epsilon : float
        vqvae: the Laplace smoothing of the moving-average counts (codebook ema).
    restart_after : int
        vqvae: restart a code unused for this many steps at an encoder output (0: never).
    code_prior : str
        vqvae: the prior over codes fitted after training, categorical or autoregressive.
    prior_epochs : int
        vqvae: at most this many passes of the autoregressive code prior's fit (early-stopped).
    prior_smoothing : float
        vqvae: add-alpha smoothing of the categorical code prior's counts.
    encoder_channels : tuple of int
        vqvae: channels of the encoder's stride-2 convolutions (the decoder mirrors them).

    Attributes
    ----------
    seed : int
        Seeds the code prior's fit (the run's ``--seed``; 0 for a VQVAE built directly).

    Examples
    --------
    >>> vq = VQVAE((1, 8, 8), latent_dim=4, num_codes=16)
    >>> vq.num_positions, vq.latent_sites
    (4, ('k',))
    >>> vq.sample(3).shape
    torch.Size([3, 1, 8, 8])

    References
    ----------
    - van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning.
    """

    name = "vqvae"
    latent_sites = ("k",)
    own_guide = "q(k|x), a point mass on the nearest codebook vectors"
    cannot: ClassVar[Mapping[str, str]] = {
        "posterior": (
            "its guide q(k|x) is a point mass on discrete codes, not a diagonal Gaussian "
            "q(z|x) with a mean and a variance to inspect"
        ),
        "latent_ops": (
            "its codes are indices into a codebook; the model puts no mass between "
            "codebook vectors, so interpolating, traversing or adding codes has no meaning "
            "under it"
        ),
        "inpainting": (
            "its guide is a point mass at the codes of a whole image, so importance sampling "
            "over completions of missing pixels has a single proposal to weigh (denoising "
            "shares this path)"
        ),
        "distributed": (
            "its step moves the codebook by moving averages and restarts dead codes from "
            "each batch, which every rank would do on its own shard and let the codebooks "
            "drift apart; train it in one process (without torchrun)"
        ),
        "compile": (
            "its step moves the codebook and restarts dead codes in Python between the "
            "losses, and --compile compiles the one-loss SVI step"
        ),
    }
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "codebook": ("ema", "loss"),
        "code_prior": tuple(CODE_PRIORS.names()),
    }

    def __init__(
        self,
        event_shape: Sequence[int],
        *args: Any,
        num_codes: int = 64,
        commitment: float = 0.25,
        codebook: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_after: int = 50,
        code_prior: str = "autoregressive",
        prior_epochs: int = 100,
        prior_smoothing: float = 1.0,
        encoder_channels: tuple[int, ...] = (32, 64),
        **kwargs: Any,
    ) -> None:
        if commitment < 0:
            raise ConfigError(f"commitment must be >= 0, got {commitment}")
        for name, value in (("codebook", codebook), ("code_prior", code_prior)):
            if value not in self.option_choices[name]:
                raise ConfigError(
                    f"{name} must be one of {', '.join(self.option_choices[name])}, got {value!r}"
                )
        if not encoder_channels or min(encoder_channels) < 1:
            raise ConfigError(
                f"encoder_channels must list one or more positive widths, got {encoder_channels}"
            )
        options = {
            "num_codes": num_codes,
            "commitment": commitment,
            "codebook": codebook,
            "decay": decay,
            "epsilon": epsilon,
            "restart_after": restart_after,
            "code_prior": code_prior,
            "prior_epochs": prior_epochs,
            "prior_smoothing": prior_smoothing,
            "encoder_channels": tuple(encoder_channels),
        }
        for name, value in options.items():
            setattr(self, name, value)
        super().__init__(event_shape, *args, **kwargs)
        self.spec["variant"].update(options)

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The codebook, the conv encoder and decoder of the code grid, the likelihood and
        the (uniform until fitted) prior over codes."""
        for role, default, instead in (
            ("prior", "normal", "its prior over codes is --code-prior"),
            ("encoder", "mlp", "it builds its own conv networks (--encoder-channels)"),
            ("decoder", "mlp", "it builds its own conv networks (--encoder-channels)"),
        ):
            chosen = parts[role][0]
            if chosen != default:
                shown = chosen if isinstance(chosen, str) else f"a custom {type(chosen).__name__}"
                raise ConfigError(f"--model vqvae takes no --{role} ({instead}); drop {shown}")
        self.grid = self._grid()
        self.num_positions = self.grid[0] * self.grid[1]
        quantizer = VectorQuantizer(
            self.num_codes,
            self.latent_dim,
            ema=self.codebook == "ema",
            decay=self.decay,
            epsilon=self.epsilon,
            restart_after=self.restart_after,
        )
        channels = self.encoder_channels
        encoder = CodeEncoder(self.event_shape, self.latent_dim, channels)
        likelihood = self.build_likelihood(parts["likelihood"])
        decoder = CodeDecoder(
            likelihood.param_shape(self.event_shape), self.latent_dim, channels, self.grid
        )
        prior = CODE_PRIORS.build(
            self.code_prior,
            num_positions=self.num_positions,
            num_codes=self.num_codes,
            hidden=self.hidden,
            epochs=self.prior_epochs,
            smoothing=self.prior_smoothing,
        )
        self.model = VQModel(prior, quantizer, decoder, likelihood, self.event_shape)
        self.guide = VQGuide(encoder, quantizer)

    def _grid(self) -> tuple[int, int]:
        factor = 2 ** len(self.encoder_channels)
        if len(self.event_shape) != 3:
            raise ConfigError(
                "--model vqvae encodes images (channels, height, width) to a grid of codes; "
                f"these data have items of shape {self.event_shape}"
            )
        _, height, width = self.event_shape
        if height % factor or width % factor:
            raise ConfigError(
                f"--model vqvae with {len(self.encoder_channels)} encoder_channels halves the "
                f"image {len(self.encoder_channels)} times: height and width must be "
                f"divisible by {factor}, got {height}x{width}; give fewer --encoder-channels"
            )
        return height // factor, width // factor

    @property
    def quantizer(self) -> VectorQuantizer:
        """The codebook (the model's; the guide shares it)."""
        return self.model.quantizer

    # -- training --

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> VQVAEStep:
        """:class:`VQVAEStep`; the VQ-VAE trains on its own loss, so ``objective`` must be
        the default one-particle ``Trace_ELBO``."""
        if type(objective) is not Trace_ELBO or objective.num_particles != 1:
            raise ConfigError(
                "--model vqvae trains on its own loss (reconstruction, codebook and "
                "commitment terms through the straight-through gradient), not a Pyro ELBO; "
                "drop --elbo and --num-particles"
            )
        return VQVAEStep(self, learning_rate=learning_rate, clip_norm=clip_norm)

    def finish_training(self, data: Dataset) -> bool:
        """Fit the prior over codes to the codes of the training items (``code_prior``);
        the encoding (a dynamic binarization's draws) and the fit draw from generators
        seeded with :attr:`seed`, so the run's random streams are untouched and a resumed
        run fits the same prior. Returns True: the prior's parameters changed."""
        from pyrovae.inference.evaluation import eval_mode

        batches = data.batches(
            "train",
            500,
            shuffle=False,
            generator=torch.Generator(data.train.device).manual_seed(self.seed),
        )
        with eval_mode(self), torch.no_grad():
            codes = torch.cat([self.encode(x.to(self.device)) for x in batches])
        begin = time.perf_counter()
        self.model.prior.fit(codes, generator=torch.Generator(self.device).manual_seed(self.seed))
        seconds = time.perf_counter() - begin
        heldout = self._heldout(data.test.to(self.device), 500)
        passes = getattr(self.model.prior, "passes", 0)
        logger.info(
            "%s code prior (%s%.1f s): held-out log-likelihood of the codes %.3f nats per "
            "item (uniform: %.3f)",
            self.code_prior,
            f"{passes} passes, " if passes else "",
            seconds,
            heldout.log_prior / heldout.num_data,
            -self.num_positions * math.log(self.num_codes),
        )
        return True

    # -- evaluation --

    @torch.no_grad()
    def _heldout(self, x: torch.Tensor, batch_size: int) -> _Heldout:
        """Sums over ``x`` of the model's :math:`\\log p(x \\mid k^*)` and
        :math:`\\log p(k^*)` (from the importance weights of one draw: every draw of the
        point-mass guide is the same), the squared error of :math:`E[x \\mid k^*]`, and
        the code usage."""
        from pyrovae.inference.evaluation import batches, eval_mode, importance_weights

        log_likelihood = log_prior = squared_error = 0.0
        usage = torch.zeros(self.num_codes, device=x.device)
        with eval_mode(self):
            for xb, _ in batches(x, batch_size):
                weights = importance_weights(self, xb, 1, mean=True)
                log_likelihood += float(weights.log_likelihood.sum())
                log_prior += float(weights.log_prior.sum())
                squared_error += float((weights.mean[0] - xb).pow(2).flatten(1).mean(1).sum())
                usage += self.quantizer.usage(self.encode(xb))
        return _Heldout(len(x), log_likelihood, log_prior, squared_error, usage)

    def evaluate_epoch(
        self, data: Dataset, *, batch_size: int = 500, probe_items: int = 1000
    ) -> dict[str, Any]:
        r"""After each epoch: the held-out ELBO under the uniform prior
        (:math:`\log p(x \mid k^*) - P \log K`, whether or not a prior was fitted), the
        held-out reconstruction :math:`-\log p(x \mid k^*)` (nats per item) and its mean
        squared error, the held-out code perplexity and codes used, and the codes restarted
        during the epoch."""
        t = self._heldout(data.test, batch_size)
        uniform = self.num_positions * math.log(self.num_codes)
        return {
            "test_elbo": t.log_likelihood / t.num_data - uniform,
            "test_reconstruction": -t.log_likelihood / t.num_data,
            "test_reconstruction_mse": t.squared_error / t.num_data,
            "test_perplexity": float(perplexity(t.usage)),
            "test_codes_used": int((t.usage > 0).sum()),
            "codes_restarted": self.quantizer.take_restarts(),
        }

    def evaluate_heldout(
        self,
        x: torch.Tensor,
        *,
        num_samples: int = 1000,
        batch_size: int = 500,
        y: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        r"""The held-out summary, nats per item: ``elbo`` under the model's prior (the fitted
        one after :meth:`finish_training`), ``log_likelihood`` (the IWAE bound with
        ``num_samples`` draws, equal to the ELBO: the draws of a point-mass guide are all
        the same), ``elbo_uniform_prior`` (:math:`\log p(x \mid k^*) - P \log K`),
        ``reconstruction_nll`` (:math:`-\log p(x \mid k^*)`), ``reconstruction_mse``,
        ``code_log_likelihood`` (:math:`\log p(k^*)` under the model's prior, the fitted
        prior's held-out score), the held-out ``perplexity`` and ``codes_used``."""
        t = self._heldout(x, batch_size)
        elbo = (t.log_likelihood + t.log_prior) / t.num_data
        return {
            "num_data": t.num_data,
            "num_samples": num_samples,
            "elbo": elbo,
            "log_likelihood": elbo,
            "elbo_uniform_prior": t.log_likelihood / t.num_data
            - self.num_positions * math.log(self.num_codes),
            "reconstruction_nll": -t.log_likelihood / t.num_data,
            "reconstruction_mse": t.squared_error / t.num_data,
            "code_prior": self.code_prior if bool(self.model.prior.fitted) else "uniform",
            "code_log_likelihood": t.log_prior / t.num_data,
            "perplexity": float(perplexity(t.usage)),
            "codes_used": int((t.usage > 0).sum()),
        }

    # -- codes --

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The codes :math:`k^*(x)`: ``(N, P)`` indices, the grid in raster order."""
        return self.guide.codes(x)

    @torch.no_grad()
    def decode(self, k: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid k]` for code grids ``k`` (``(N, P)`` indices)."""
        return self.model.likelihood.mean(self.model.decoder(self.quantizer.lookup(k)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid k^*(x)]`."""
        return self.decode(self.encode(x))

    def sample(self, num_samples: int, *, return_latents: bool = False) -> torch.Tensor | tuple:
        """Generate: code grids from the model's prior, decoded to :math:`E[x \\mid k]` (and
        the codes, if ``return_latents``). After :meth:`finish_training` the prior is the
        fitted one (ancestral sampling for the autoregressive prior); before, the uniform
        one, whose draws are grids of codes that no image combined."""
        return super().sample(num_samples, return_latents=return_latents)
