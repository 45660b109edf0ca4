r"""The plain VAE: :math:`p(z)\,p_\theta(x \mid z)` with an amortized guide
:math:`q_\phi(z \mid x)`.

.. math::

    z_n \sim p(z), \qquad x_n \mid z_n \sim p_\theta(x \mid \mathrm{decoder}_\theta(z_n)),
    \qquad n = 1, \dots, N

This module holds the variant whole: its model (:class:`VAEModel`), the class that builds
model and guide from registered components (:class:`VAE`) and the hooks of its training
step (SVI on a Pyro ELBO with one torch optimizer). The other variants subclass
:class:`VAE` and override what differs.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
- Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Predictive
from pyro.nn import PyroModule
from torch import nn

from pyrovae.data import validate_data
from pyrovae.errors import ConfigError, DataError
from pyrovae.guides import ENCODERS, GUIDES, AmortizedGuide, AmortizedNormalGuide, make_guide
from pyrovae.inference.training.step import SVIStep, TrainingStep
from pyrovae.model import (
    DECODERS,
    LIKELIHOODS,
    PRIORS,
    Likelihood,
    Prior,
    make_likelihood,
    make_prior,
)
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.registry import Registry, assign_options, component

if TYPE_CHECKING:
    from pyrovae.data import Dataset, Shard

__all__ = ["VAE", "VAEModel"]

#: the registered components a VAE is built from: role -> registry
COMPONENTS: dict[str, Registry] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "guide": GUIDES,
}


def _spec(value: Any, options: Mapping[str, Any]) -> Any:
    """A component as plain data for ``VAE.spec``: ``{"name": ..., **options}``, or
    ``"custom <type>"`` for a user's object (a checkpoint cannot rebuild it)."""
    if isinstance(value, str):
        return {"name": value, **options}
    return f"custom {type(value).__name__}"


class VAEModel(LocalPyroModule):
    """The model ``z -> x``: a prior, a decoder and a likelihood.

    Parameters
    ----------
    prior : Prior
        :math:`p(z)`.
    decoder : nn.Module
        ``z -> likelihood parameters``.
    likelihood : Likelihood
        ``parameters -> p(x | z)`` (elementwise over pixels).
    event_shape : tuple of int
        Shape of one data point.
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.event_shape = tuple(event_shape)

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Run the generative story; with ``x=None`` draw ``batch_size`` new data points.

        ``mask`` (boolean, the shape of ``x``; ``True`` = observed) conditions on the
        observed pixels only, with Pyro's ``obs_mask`` (see :meth:`observe_pixels`):
        :math:`\log p(x_{obs} \mid z)` sums over the observed pixels, and the missing ones
        are drawn from the likelihood (inpainting). Returns the decoder's output (the
        likelihood's parameters).
        """
        with self.plate(x, num_data, batch_size):
            with kl_weight(beta):
                z = pyro.sample("z", self.prior())
            params = self.decoder(z)
            if mask is None:
                self.observe(params, x)
        if mask is not None:
            self.observe_pixels(params, x, mask)
        return params

    def plate(
        self, x: torch.Tensor | None, num_data: int | None, batch_size: int | None
    ) -> pyro.plate:
        """The data plate of one call: the ``len(x)`` items of ``x`` on its device, or
        ``batch_size`` new ones (default 1) on the model's, out of ``num_data``."""
        if x is None:
            return data_plate(batch_size or 1, num_data, self.device)
        return data_plate(len(x), num_data, x.device)

    def observe(self, params: torch.Tensor, x: torch.Tensor | None) -> None:
        """The site ``x ~ p(x | params)`` of one item, its pixels an event."""
        likelihood = self.likelihood(params)
        pixel_dims = len(self.event_shape) - len(likelihood.event_shape)
        pyro.sample("x", likelihood.to_event(pixel_dims), obs=x)

    def observe_pixels(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> None:
        r"""The site ``x`` observed only where ``mask`` is true, with Pyro's ``obs_mask``.

        ``obs_mask`` conditions on the batch elements where the mask is true and draws the
        others from the likelihood as the latent site ``x_unobserved`` (its log-density
        masked out), so :math:`\log p(x_{obs} \mid z) = \sum_{i:\, m_i} \log p(x_i \mid z)`
        and ``x_unobserved`` holds imputed pixels. ``obs_mask`` masks batch elements, so the
        pixels are batch elements here rather than an event; and as the data plate owns the
        rightmost batch dimension, this site comes after the plate (per-item sums are the
        caller's, e.g. :func:`pyrovae.inference.evaluation.importance_weights`, which runs
        its importance samples as repeated items rather than in a plate).
        """
        likelihood = self.likelihood(params)
        if likelihood.event_shape:
            raise ConfigError(
                "conditioning on some pixels needs an elementwise likelihood (one distribution "
                f"per pixel); this one has event_shape {tuple(likelihood.event_shape)}"
            )
        pyro.sample("x", likelihood, obs=x, obs_mask=mask)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters and buffers."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")


class VAE(PyroModule):
    """A variational autoencoder as a Pyro model ``vae.model`` and guide ``vae.guide``.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one data point, e.g. ``(1, 28, 28)``.
    latent_dim : int
        Dimension of :math:`z`.
    prior : str, dict, Prior, distribution or callable
        A registered name (:data:`pyrovae.model.PRIORS`: ``"normal"``, ``"mixture"``,
        ``"vamp"``, ``"flow"``, ...), a table ``{"name": ..., **options}``, a
        :class:`~pyrovae.model.Prior`, or any ``pyro.distributions`` distribution with
        ``event_shape == (latent_dim,)`` (or a callable returning one).
    likelihood : str, dict, Likelihood or callable
        A registered name (``"bernoulli"``, ``"continuous-bernoulli"``, ``"gaussian"``,
        ``"laplace"``), a table with options, a :class:`~pyrovae.model.Likelihood`, or a
        callable from the decoder's output to an elementwise distribution.
    encoder, decoder : str or dict
        Registered network names (``"mlp"``, ``"conv"``), or tables with options.
    guide : str, dict or AmortizedGuide
        A registered guide (``"normal"``: diagonal Gaussian, ``"lowrank"``: low-rank plus
        diagonal Gaussian, ``"iaf"``: Gaussian followed by inverse autoregressive flow
        steps; :data:`pyrovae.guides.GUIDES`), built with the ``encoder`` network, or a
        guide object of your own.
    hidden : sequence of int
        Hidden layer sizes in encoder order; the decoder mirrors them.
    **options
        Options of the chosen components, by name (``num_components`` of the mixture
        prior, ``scale`` of the gaussian likelihood, ``guide_rank`` of the lowrank guide,
        ...): each goes to every chosen component that declares it, and an option that
        none declares is an error naming the closest valid one.

    Examples
    --------
    >>> vae = VAE((1, 8, 8), latent_dim=4, prior="mixture", num_components=3)
    >>> vae.sample(16).shape
    torch.Size([16, 1, 8, 8])
    >>> vae.spec["prior"]
    {'name': 'mixture', 'num_components': 3}
    """

    #: the name of the variant (``--model``)
    name = "vae"
    #: the training data must carry labels (conditional and semi-supervised variants)
    needs_labels: bool = False
    #: the items are sentences (token ids of a vocabulary; :mod:`pyrovae.data.text`), and the
    #: variant's ``vocab_size`` option is set from the data's vocabulary
    reads_text: bool = False
    #: the model and guide take the label ``y`` as an input, so evaluation needs labels too
    requires_y: bool = False
    #: the latent sample sites of the model, in generative order
    latent_sites: tuple[str, ...] = ("z",)
    #: the run's seed, for what a variant draws once outside the trainer's streams (the
    #: VQ-VAE's fit of its prior over codes); :meth:`from_section` sets it
    seed: int = 0
    #: the variant's own guide, if it has one (then ``guide`` must stay ``"normal"``)
    own_guide: str | None = None
    #: options the variant gained after run folders of it were written, with the value
    #: those runs had: a checkpoint whose config lacks one is read with that value
    #: (``pyrovae.run.saved_config``)
    legacy_options: ClassVar[Mapping[str, Any]] = {}
    #: the options of the ``normal`` guide that the variant's own guide takes (hvae's
    #: ``log_var_min``/``log_var_max``); any other is refused
    own_guide_options: ClassVar[tuple[str, ...]] = ()
    #: what the variant lacks, capability -> why: the tools that need it refuse a run of
    #: this variant with that reason (:data:`pyrovae.inference.sites.CAPABILITIES`)
    cannot: ClassVar[Mapping[str, str]] = {}
    #: the per-epoch evaluation's score that chooses the best epoch (``best.pt``) and drives
    #: early stopping and a plateau learning-rate schedule: ``(row key, "max" or "min")``;
    #: on a validation split the key's ``test_`` reads ``validation_``
    monitor: ClassVar[tuple[str, str]] = ("test_elbo", "max")
    #: the registered components the variant is built from when a run names none, role ->
    #: name (the VAE-GAN's ``conv`` networks); the others are the run configuration's own
    component_defaults: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = 8,
        prior: str
        | Mapping
        | Prior
        | dist.Distribution
        | Callable[[], dist.Distribution] = "normal",
        likelihood: str
        | Mapping
        | Likelihood
        | Callable[[torch.Tensor], dist.Distribution] = "bernoulli",
        encoder: str | Mapping = "mlp",
        decoder: str | Mapping = "mlp",
        hidden: Sequence[int] = (256, 128),
        guide: str | Mapping | AmortizedGuide = "normal",
        **options: Any,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.latent_dim = latent_dim
        self.hidden = tuple(hidden)
        if latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"latent_dim must be >= 1 and hidden layer sizes positive, got {latent_dim} "
                f"and {list(self.hidden)}"
            )
        if self.own_guide is not None and component(guide)[0] != "normal":
            raise ConfigError(
                f"--model {self.name} has its own guide {self.own_guide}; drop "
                f"--guide {component(guide)[0]}"
            )
        parts = self.resolve(
            prior=prior,
            likelihood=likelihood,
            encoder=encoder,
            decoder=decoder,
            guide=guide,
            **options,
        )
        if self.own_guide is not None:
            self._refuse_guide_options(parts["guide"][1])
        #: what this VAE is, as the plain data of a config's model section; checkpoints
        #: store it so that load_run rebuilds the same VAE
        self.spec: dict[str, Any] = {
            "variant": {"name": self.name},
            "latent_dim": latent_dim,
            "hidden": list(self.hidden),
            **{role: _spec(value, opts) for role, (value, opts) in parts.items()},
        }
        self.build(parts)

    def _refuse_guide_options(self, options: Mapping[str, Any]) -> None:
        """Refuse an option of the ``normal`` guide that the variant's own guide does not
        take (a config lists every option of the chosen guide: only one set off its default
        counts)."""
        declared = GUIDES.options("normal")
        refused = sorted(
            key
            for key, value in options.items()
            if key not in self.own_guide_options and value != declared[key].default
        )
        if refused:
            flags = ", ".join("--" + name.replace("_", "-") for name in refused)
            raise ConfigError(
                f"--model {self.name} has its own guide {self.own_guide}, which takes no "
                f"{flags}; drop it"
            )

    def resolve(self, **chosen: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
        """Each component as ``(name or object, checked options)``: tables are split, and
        flat options routed to the chosen components that declare them."""
        flat = {k: chosen.pop(k) for k in list(chosen) if k not in COMPONENTS}
        parts = {role: component(spec) for role, spec in chosen.items()}
        routed = assign_options(
            {role: (COMPONENTS[role], value) for role, (value, _) in parts.items()},
            flat,
            f"--model {self.name}",
        )
        resolved = {}
        for role, (value, options) in parts.items():
            options = {**options, **routed[role]}
            if isinstance(value, str):
                options = COMPONENTS[role].check_options(value, options)
            elif options:
                raise ConfigError(f"options are for a registered {role}, given by its name")
            resolved[role] = (value, options)
        return resolved

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """Build ``self.model`` and ``self.guide`` from the resolved components."""
        net = {
            "latent_dim": self.latent_dim,
            "event_shape": self.event_shape,
            "hidden": self.hidden,
        }
        # the decoder, then the guide: the order (and so the random initial weights for a
        # seed) of pyrovae 0.1; the prior comes last, as the VampPrior reads the encoder.
        # The likelihood (which draws nothing) says the shape of the decoder's output.
        likelihood = self.build_likelihood(parts["likelihood"])
        decoder = DECODERS.build(
            parts["decoder"][0],
            parts["decoder"][1],
            **{**net, "event_shape": likelihood.param_shape(self.event_shape)},
        )
        guide, guide_options = parts["guide"]
        encoder, encoder_options = parts["encoder"]
        if isinstance(guide, str):
            guide = make_guide(
                guide,
                encoder,
                **net,
                options=guide_options,
                encoder_options=encoder_options,
                input_transform=likelihood.input_transform(self.event_shape),
            )
        self.guide = guide
        # a prior may read the encoder whose outputs are the guide's Gaussian q(z|x)
        encoder = guide.gaussian_encoder if isinstance(guide, AmortizedNormalGuide) else None
        prior = self.make_prior(parts["prior"], self.latent_dim, encoder, likelihood)
        self.model = VAEModel(prior, decoder, likelihood, self.event_shape)

    def build_likelihood(self, part: tuple[Any, dict[str, Any]]) -> Likelihood:
        """The likelihood from its resolved ``(name or object, options)``."""
        return make_likelihood(part[0], self.event_shape, part[1])

    def make_prior(
        self,
        part: tuple[Any, dict[str, Any]],
        latent_dim: int,
        encoder: nn.Module | None,
        likelihood: Likelihood,
    ) -> Prior:
        """The prior, given what a prior may read: the data shape, the ``encoder`` whose
        diagonal Gaussians are the guide's q(z|x) (the VampPrior mixes them; ``None`` when
        the guide has no such encoder) and the data's range (``None`` when the likelihood
        leaves it open)."""
        name, options = part
        return make_prior(
            name,
            latent_dim,
            options,
            event_shape=self.event_shape,
            encoder=encoder,
            data_range=likelihood.support_interval,
        )

    @classmethod
    def from_section(
        cls, section: Mapping[str, Any], event_shape: Sequence[int], *, seed: int = 0
    ) -> VAE:
        """Build the VAE a config's model section describes, for data of ``event_shape``
        (``seed``: the run's seed, for a variant that draws something once, e.g. M2's
        labelled items)."""
        components = {role: section[role] for role in COMPONENTS if role in section}
        options = {k: v for k, v in section.get("variant", {}).items() if k != "name"}
        if "label_seed" in inspect.signature(cls).parameters:
            options["label_seed"] = seed
        vae = cls(
            event_shape,
            latent_dim=section.get("latent_dim", 8),
            hidden=tuple(section.get("hidden", (256, 128))),
            **components,
            **options,
        )
        vae.seed = seed
        return vae

    # -- the training step: a variant overrides these, never the trainer's loop --

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> TrainingStep:
        """The step the trainer runs: SVI on ``objective(model, guide)`` with one Adam.

        A variant with other losses or several optimizers (a discriminator, a codebook)
        returns its own :class:`~pyrovae.inference.training.TrainingStep`.
        """
        return SVIStep(
            objective(self.model, self.guide), learning_rate=learning_rate, clip_norm=clip_norm
        )

    def training_batches(
        self,
        data: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        shard: Shard | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One epoch of the step's keyword arguments: ``{"x": x}`` per minibatch.

        In data-parallel training the trainer gives this rank's ``shard`` of the epoch,
        which goes to :meth:`Dataset.batches <pyrovae.data.Dataset.batches>`: every batch
        a variant yields must come from it, so that the ranks see different items.
        """
        batches = data.batches(
            "train", batch_size, shuffle=shuffle, drop_last=drop_last, shard=shard
        )
        for x in batches:
            yield {"x": x}

    def training_size(self, data: Dataset) -> int:
        """The ``N`` of the data plate's ``N / B`` scaling: the training items the loss sums."""
        return len(data.train)

    def check_batches(self, data: Dataset, batch_size: int) -> list[dict[str, Any]]:
        """The minibatches the trainer evaluates once, with Pyro's validation on, before
        training: one of every kind of step :meth:`training_batches` takes (here the first
        of an epoch)."""
        return [next(self.training_batches(data, batch_size, shuffle=False))]

    def steps_per_epoch(self, data: Dataset, batch_size: int, world_size: int = 1) -> int:
        """The steps (batches) of one epoch of :meth:`training_batches` on one of
        ``world_size`` ranks, which the trainer counts epochs, progress and schedules by:
        ``pyrovae.inference.training.trainer.steps_per_epoch`` of the
        :meth:`training_size` items. A variant whose epoch has other steps says so here."""
        from pyrovae.inference.training.trainer import steps_per_epoch

        return steps_per_epoch(self.training_size(data), batch_size, world_size)

    def evaluate_epoch(
        self, data: Dataset, *, batch_size: int = 500, probe_items: int = 1000
    ) -> dict[str, Any]:
        """What the trainer logs after each epoch: the held-out ELBO, the variant's
        :meth:`metrics` and the collapse diagnostics of every latent site on the first
        ``probe_items`` held-out items (none when 0).

        In data-parallel training each rank evaluates its share of the held-out items and
        their means are combined exactly
        (:func:`~pyrovae.inference.training.distributed.split_means`; so :meth:`metrics`
        must return per-item means); the diagnostics read every probe item's code at once
        (the mutual information), so rank 0 computes them and sends them to the others.
        """
        from pyrovae.inference import diagnose, heldout_elbo
        from pyrovae.inference.evaluation import bits_per_dim_entries
        from pyrovae.inference.training import distributed

        def means(part: slice) -> dict[str, Any]:
            x = data.test[part]
            y = None if data.test_labels is None else data.test_labels[part]
            labels = {"y": y} if self.requires_y else {}
            elbo = heldout_elbo(self, x, batch_size, **labels)
            bits = bits_per_dim_entries(self, x, {"test_elbo_bits_per_dim": elbo})
            return {"test_elbo": elbo, **bits, **self.metrics(x, y)}

        row = distributed.split_means(means, len(data.test))
        probe = data.test[:probe_items]
        if len(probe) >= 2 and not self.requires_y:  # diagnostics encode x alone
            row.update(
                distributed.from_main_process(
                    lambda: diagnose(self, probe.to(self.device), batch_size=batch_size)
                )
            )
        return row

    def evaluate_heldout(
        self,
        x: torch.Tensor,
        *,
        num_samples: int = 1000,
        batch_size: int = 500,
        y: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        r"""The run's held-out summary (``evaluation.json``, ``pyrovae evaluate``): the ELBO,
        the IWAE :math:`\log p(x)` with ``num_samples`` draws and the reconstruction error
        (:func:`pyrovae.inference.evaluate`); ``y`` for a variant that reads labels. A
        variant without a data-space likelihood reports what it has instead."""
        from pyrovae.inference import evaluate

        return evaluate(self, x, num_samples, batch_size, y)

    def finish_training(self, data: Dataset) -> bool:
        """Fit what the variant fits once, after its epochs (none here; the VQ-VAE's prior
        over codes); returns whether parameters changed, so that the run layer saves them."""
        return False

    def metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Extra held-out numbers for ``metrics.jsonl`` and ``evaluation.json`` (none here):
        means over the items of ``x``, which data-parallel evaluation combines over the
        ranks' shares. Those too costly for every epoch go in :meth:`evaluation_metrics`."""
        return {}

    def evaluation_metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """The variant's numbers for the held-out summary (``evaluation.json``, ``pyrovae
        evaluate``): :meth:`metrics` and those too costly to log every epoch (none here);
        means over the items of ``x``, as :meth:`metrics`."""
        return self.metrics(x, y)

    def require_unconditional(self, what: str) -> None:
        """Raise :class:`ConfigError` unless the guide reads ``x`` alone, as ``what`` needs
        (a conditional or semi-supervised model's guide also needs the labels)."""
        if self.needs_labels:
            raise ConfigError(
                f"{what} works on a model whose guide reads x alone (--model vae); this "
                "model conditions on labels"
            )

    def component_name(self, role: str) -> str:
        """The registered name of the component in ``role`` (``"guide"``, ``"prior"``, ...),
        or ``"custom <type>"`` for a user's object."""
        spec = self.spec.get(role, "")
        return spec["name"] if isinstance(spec, Mapping) else str(spec)

    @property
    def is_custom(self) -> bool:
        """Whether the prior or likelihood is a user's object rather than a registered name."""
        return any(str(v).startswith("custom ") for v in self.spec.values())

    @property
    def device(self) -> torch.device:
        return self.model.device

    def validate_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless ``x`` is a finite batch this VAE can model."""
        missing = self.model.likelihood.allows_missing  # NaN: a missing value (a table)
        checked = torch.nan_to_num(x, nan=0.0, posinf=torch.inf, neginf=-torch.inf)
        validate_data(checked if missing else x, self.event_shape, what)  # items, shape, NaN/inf
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
        self, x: torch.Tensor, num_samples: int = 1, return_sites: Sequence[str] | None = None
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
            return_sites=list(return_sites or (*self.latent_sites, "x")),
            parallel=True,
        )
        return predictive(x)

    @torch.no_grad()
    def sample(self, num_samples: int, *, return_latents: bool = False) -> torch.Tensor | tuple:
        """Generate: draw ``z`` from the prior by running the model with ``x=None``.

        Returns the decoded means :math:`E[x \\mid z]` (and ``z``, the latent site next to
        ``x``, if ``return_latents``).
        """
        trace = poutine.trace(self.model).get_trace(batch_size=num_samples)
        z = trace.nodes[self.latent_sites[-1]]["value"]
        mean = self.model.likelihood.mean(trace.nodes["_RETURN"]["value"])
        return (mean, z) if return_latents else mean
