"""The VAE: a Pyro model and its amortized guide, built together from names or objects.

:class:`VAE` holds ``model`` (:class:`~pyrovae.model.VAEModel`) and ``guide``
(:class:`~pyrovae.guides.AmortizedNormalGuide`) as submodules, so one
``state_dict()`` carries every parameter, and adds the everyday operations:
encode, decode, reconstruct and generate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Predictive, Trace_ELBO
from pyro.nn import PyroModule
from torch import nn

from pyrovae.data import validate_data
from pyrovae.errors import ConfigError, DataError
from pyrovae.guides import AmortizedGuide, make_guide
from pyrovae.model import DECODERS, Likelihood, Prior, VAEModel, make_likelihood, make_prior

if TYPE_CHECKING:
    from pyrovae.config import Config
    from pyrovae.data import Dataset

__all__ = ["VAE"]


#: options recorded in ``VAE.spec`` next to the component names
SPEC_OPTIONS = ("num_components", "scale", "learn_scale", "guide_rank", "num_flows")


def network_options(config: Config) -> dict[str, object]:
    """The config keys every VAE variant is built from: latent size, prior, likelihood,
    networks and their options (a variant adds its own, e.g. the number of classes)."""
    keys = ("latent_dim", "prior", "likelihood", "encoder", "decoder", "hidden")
    options = ("num_components", "scale", "learn_scale")
    return {k: getattr(config, k) for k in (*keys, *options)}


def _spec_name(component: object) -> str:
    return component if isinstance(component, str) else f"custom {type(component).__name__}"


class VAE(PyroModule):
    """A variational autoencoder as a Pyro model ``vae.model`` and guide ``vae.guide``.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one data point, e.g. ``(1, 28, 28)``.
    latent_dim : int
        Dimension of :math:`z`.
    prior : str, Prior, distribution or callable
        A registered name (``"normal"``, ``"learned-normal"``, ``"mixture"``), a
        :class:`~pyrovae.model.Prior`, or any ``pyro.distributions`` distribution with
        ``event_shape == (latent_dim,)`` (or a callable returning one).
    likelihood : str, Likelihood or callable
        A registered name (``"bernoulli"``, ``"continuous-bernoulli"``,
        ``"gaussian"``, ``"laplace"``), a :class:`~pyrovae.model.Likelihood`, or a
        callable from the decoder's output to an elementwise distribution.
    encoder, decoder : str
        Registered network names (``"mlp"``, ``"conv"``).
    guide : str or AmortizedGuide
        A registered guide (``"normal"``: diagonal Gaussian, ``"lowrank"``: low-rank
        plus diagonal Gaussian, ``"iaf"``: Gaussian followed by inverse autoregressive
        flow steps; see :data:`pyrovae.guides.GUIDES`), built with the ``encoder``
        network, or a guide object of your own.
    hidden : sequence of int
        Hidden layer sizes in encoder order; the decoder mirrors them.
    **options
        Extra options for the prior, likelihood and guide (``num_components``,
        ``scale``, ``learn_scale``, ``guide_rank``, ``num_flows``).

    Examples
    --------
    >>> vae = VAE((1, 8, 8), latent_dim=4, prior="mixture", likelihood="continuous-bernoulli")
    >>> vae.sample(16).shape
    torch.Size([16, 1, 8, 8])
    """

    #: the training data must carry labels (conditional and semi-supervised variants)
    needs_labels: bool = False
    #: the model and guide take the label ``y`` as an input, so evaluation needs labels too
    requires_y: bool = False

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = 8,
        prior: str | Prior | dist.Distribution | Callable[[], dist.Distribution] = "normal",
        likelihood: str | Likelihood | Callable[[torch.Tensor], dist.Distribution] = "bernoulli",
        encoder: str = "mlp",
        decoder: str = "mlp",
        hidden: Sequence[int] = (256, 128),
        guide: str | AmortizedGuide = "normal",
        **options: object,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.latent_dim = latent_dim
        #: what this VAE is, in config keys (objects that are not registered names are
        #: recorded as "custom <type>"); checkpoints store it so load_run rebuilds the same
        self.spec: dict[str, object] = {
            "latent_dim": latent_dim,
            "prior": _spec_name(prior),
            "likelihood": _spec_name(likelihood),
            "encoder": encoder,
            "decoder": decoder,
            "hidden": list(hidden),
            "guide": _spec_name(guide),
            **{k: v for k, v in options.items() if k in SPEC_OPTIONS},
        }
        net = {"latent_dim": latent_dim, "event_shape": self.event_shape, "hidden": tuple(hidden)}
        self.model = VAEModel(
            make_prior(prior, latent_dim, **options),
            DECODERS.build(decoder, **net),
            make_likelihood(likelihood, self.event_shape, **options),
            self.event_shape,
        )
        if isinstance(guide, str):
            guide = make_guide(guide, encoder, **net, **options)
        self.guide = guide

    @classmethod
    def from_config(cls, config: Config, event_shape: Sequence[int]) -> VAE:
        """Build the VAE that ``config`` describes, for data of shape ``event_shape``."""
        return cls(
            event_shape,
            guide=config.guide,
            guide_rank=config.guide_rank,
            num_flows=config.num_flows,
            **network_options(config),
        )

    # -- hooks of the training loop: a variant of the VAE overrides these, never the loop --

    def training_loss(self, elbo: ELBO) -> nn.Module:
        """The module :class:`~pyrovae.inference.SVITrainer` minimises: ``elbo(model, guide)``.

        It is called with the keyword arguments of a :meth:`training_batches` item plus
        ``num_data`` and ``beta``, and returns the differentiable loss.
        """
        return elbo(self.model, self.guide)

    def training_batches(
        self, data: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[dict[str, Any]]:
        """One epoch of the loss's keyword arguments: ``{"x": x}`` per minibatch."""
        for x in data.batches("train", batch_size, shuffle=shuffle, drop_last=drop_last):
            yield {"x": x}

    def training_size(self, data: Dataset) -> int:
        """The ``N`` of the data plate's ``N / B`` scaling: the training items the loss sums."""
        return len(data.train)

    def check_loss(self, batch: dict[str, Any], num_data: int) -> None:
        """Evaluate the ELBO of one :meth:`training_batches` item (the caller turns on Pyro's
        validation), so shape and support errors surface before training."""
        Trace_ELBO(max_plate_nesting=1).loss(self.model, self.guide, **batch, num_data=num_data)

    def metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Extra held-out numbers for ``metrics.jsonl`` and ``evaluation.json`` (none here)."""
        return {}

    def require_unconditional(self, what: str) -> None:
        """Raise :class:`ConfigError` unless the guide reads ``x`` alone, as ``what`` needs
        (a conditional or semi-supervised model's guide also needs the labels)."""
        if self.needs_labels:
            raise ConfigError(
                f"{what} works on a model whose guide reads x alone (--model vae); this "
                "model conditions on labels"
            )

    @property
    def is_custom(self) -> bool:
        """Whether the prior or likelihood is a user's object rather than a registered name."""
        return any(str(v).startswith("custom ") for v in self.spec.values())

    @property
    def device(self) -> torch.device:
        return self.model.device

    def validate_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless ``x`` is a finite batch this VAE can model."""
        validate_data(x, self.event_shape, what)  # items, shape, NaN/inf
        if not torch.is_floating_point(x):
            raise DataError(f"{what} must be a floating-point tensor, got {x.dtype}")
        self.model.likelihood.validate(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's mean and log-variance of :math:`q(z \\mid x)`.

        For the diagonal Gaussian guide these define :math:`q` exactly; the low-rank
        guide gives the mean and the log of the marginal variances; the IAF guide the
        mean and log-variance of its base Gaussian (before the flow).
        """
        return self.guide.encode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid z]` under the likelihood."""
        return self.model.likelihood.mean(self.model.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: :math:`E[x \\mid z = \\mu_\\phi(x)]`."""
        loc, _ = self.encode(x)
        return self.decode(loc)

    @torch.no_grad()
    def predictive(
        self, x: torch.Tensor, num_samples: int = 1, return_sites: Sequence[str] = ("z", "x")
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive draws with ``pyro.infer.Predictive``: ``z ~ q(z | x)``, then
        new data ``x ~ p(x | z)``; each site's draws have shape ``(num_samples, len(x), ...)``.

        The model observes ``x``, so it runs under ``poutine.uncondition`` to draw new data
        rather than return the observation.
        """
        predictive = Predictive(
            poutine.uncondition(self.model),
            guide=self.guide,
            num_samples=num_samples,
            return_sites=list(return_sites),
            parallel=True,
        )
        return predictive(x)

    @torch.no_grad()
    def sample(self, num_samples: int, *, return_latents: bool = False) -> torch.Tensor | tuple:
        """Generate: draw ``z`` from the prior by running the model with ``x=None``.

        Returns the decoded means :math:`E[x \\mid z]` (and ``z`` if ``return_latents``).
        """
        trace = poutine.trace(self.model).get_trace(batch_size=num_samples)
        z = trace.nodes["z"]["value"]
        mean = self.model.likelihood.mean(trace.nodes["_RETURN"]["value"])
        return (mean, z) if return_latents else mean
