r"""The conditional VAE (Sohn et al. 2015): :math:`p(z)\,p_\theta(x \mid z, y)` with
:math:`q_\phi(z \mid x, y)`.

.. math::

    z_n \sim p(z), \qquad x_n \mid z_n, y_n \sim
        p_\theta\big(x \mid \mathrm{decoder}_\theta([z_n, \mathrm{onehot}(y_n)])\big)

The label :math:`y` is an input of the model, not a random variable: the decoder reads
the latent code concatenated with the one-hot label. The prior does not depend on the
label, :math:`p(z \mid y) = p(z)` (any registered prior but the VampPrior, whose
encoder would need labels), so :math:`z` is free to carry what the label does not
(style), and class-conditional generation draws :math:`z \sim p(z)` and decodes it with
the requested label. The guide :math:`q_\phi(z \mid x, y) = \mathcal{N}(\mu_\phi(x, y),
\operatorname{diag}\sigma^2_\phi(x, y))` reads the data and the label
(:class:`~pyrovae.guides.conditional.ConditionalEncoder`). Trains with the shared
trainer and the default SVI step, on ``(x, y)`` minibatches.

References
----------
- Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
  Conditional Generative Models.
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Predictive
from torch import nn

from pyrovae.errors import ConfigError, DataError
from pyrovae.guides.conditional import ConditionalEncoder
from pyrovae.guides.encoders import diagonal_normal
from pyrovae.inference.training.step import TrainingStep
from pyrovae.model import DECODERS, Likelihood, Prior
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.networks import join, one_hot
from pyrovae.variants.vae import VAE, VAEModel

if TYPE_CHECKING:
    from pyrovae.data import Dataset, Shard

__all__ = [
    "DRAWS",
    "ConditionalNormalGuide",
    "ConditionalVAE",
    "ConditionalVAEModel",
    "check_labels",
]


def check_labels(y: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    """Raise :class:`DataError` unless ``y`` holds integer class indices in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{what} must be an integer tensor of class indices 0..{num_classes - 1}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{what} must be class indices 0..{num_classes - 1}, got values from "
            f"{int(y.min())} to {int(y.max())}; the model was built for {num_classes} classes"
        )


def _labels_for(
    num_samples: int,
    y: int | Sequence[int] | torch.Tensor | None,
    num_classes: int,
    device: torch.device,
) -> torch.Tensor:
    """Labels for generation: every class in turn (``None``), one class (``int``) or given."""
    if y is None:
        labels = torch.arange(num_samples, device=device) % num_classes
    elif isinstance(y, int):
        labels = torch.full((num_samples,), y, dtype=torch.long, device=device)
    else:
        labels = torch.as_tensor(y, device=device)
        if labels.dim() != 1:
            raise DataError(f"labels for generation must be 1-D, got shape {tuple(labels.shape)}")
    check_labels(labels, num_classes, "the requested label")
    return labels


class ConditionalVAEModel(VAEModel):
    """The model ``(z, y) -> x``: a prior, a decoder on ``[z, onehot(y)]`` and a likelihood.

    Parameters
    ----------
    prior : Prior
        :math:`p(z)`, the same for every label.
    decoder : nn.Module
        ``[z, onehot(y)] -> likelihood parameters`` (built for ``latent_dim + num_classes``
        inputs).
    likelihood : Likelihood
        ``parameters -> p(x | z, y)`` (elementwise over pixels).
    event_shape : tuple of int
        Shape of one data point.
    num_classes : int
        Number of labels :math:`C`; labels are ``0, ..., C - 1``.
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape)
        self.num_classes = num_classes

    def label(self, y: torch.Tensor | None) -> torch.Tensor:
        """The label inside the data plate: the conditional VAE requires it as an input."""
        if y is None:
            raise DataError(
                "the conditional VAE needs the labels y of its data (one class index per item)"
            )
        return y

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """Run the generative story given labels ``y``; with ``x=None`` draw new data.

        Returns the decoder's output (the likelihood's parameters) for the batch.
        """
        if x is not None:
            size = len(x)
        elif y is not None:
            size = y.shape[-1]
        else:
            size = batch_size or 1
        device = x.device if x is not None else self.device
        with data_plate(size, num_data, device):
            y = self.label(y)
            with kl_weight(beta):
                z = pyro.sample("z", self.prior())
            params = self.decoder(join(z, one_hot(y, self.num_classes, z.dtype)))
            self.observe(params, x)
        return params


class ConditionalNormalGuide(LocalPyroModule):
    """Diagonal-Gaussian guide :math:`q(z \\mid x, y)` with the model's signature
    ``forward(x=None, y=None, *, num_data=None, batch_size=None, beta=1.0)``.

    With ``x=None`` (generation) there is nothing to infer and the guide samples nothing.
    """

    def __init__(self, encoder: ConditionalEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if x is None:
            return None
        if y is None:
            raise DataError(
                "the conditional VAE needs the labels y of its data (one class index per item)"
            )
        with data_plate(len(x), num_data, x.device):
            loc, log_var = self.encoder(x, y)
            with kl_weight(beta):
                pyro.sample("z", diagonal_normal(loc, log_var))
        return loc, log_var


class ConditionalVAE(VAE):
    """The conditional VAE: a decoder on ``[z, onehot(y)]`` and an encoder on ``(x, y)``.

    .. math::

        \\mathcal{L}(x, y) = E_{q(z \\mid x, y)}[\\log p(x \\mid z, y)]
            - \\beta\\,\\mathrm{KL}(q(z \\mid x, y) \\,\\|\\, p(z))

    The prior is the same for every label (:math:`p(z \\mid y) = p(z)`, any registered
    prior). Trains with the same loop as :class:`~pyrovae.VAE`, on ``(x, y)`` minibatches.

    Parameters
    ----------
    event_shape : sequence of int
        Shape of one data point.
    num_classes : int
        cvae/m2: the number of labels C (fit() reads it from the data: one more than the
        largest label).
    latent_dim, prior, likelihood, encoder, decoder, hidden, guide, **options
        As for :class:`~pyrovae.VAE`.

    References
    ----------
    - Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
      Conditional Generative Models.

    Examples
    --------
    >>> cvae = ConditionalVAE((1, 8, 8), num_classes=10, latent_dim=4)
    >>> cvae.sample(16, y=3).shape
    torch.Size([16, 1, 8, 8])
    """

    name = "cvae"
    needs_labels = True
    requires_y = True

    own_guide = "q(z|x,y), a diagonal Gaussian"

    def __init__(
        self, event_shape: Sequence[int], *args: Any, num_classes: int | None = None, **kwargs: Any
    ) -> None:
        if num_classes is None:
            raise ConfigError(
                f"--model {self.name} needs num_classes (fit() reads it from the labels)"
            )
        if num_classes < 2:
            raise ConfigError(f"a conditional model needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(event_shape, *args, **kwargs)
        self.spec["variant"]["num_classes"] = num_classes

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The decoder reads ``[z, onehot(y)]``, the encoder ``(x, y)``."""
        encoder, encoder_options = parts["encoder"]
        self.guide = self.make_guide(
            ConditionalEncoder(
                encoder,
                self.latent_dim,
                self.event_shape,
                self.hidden,
                self.num_classes,
                encoder_options,
            )
        )
        likelihood = self.build_likelihood(parts["likelihood"])
        # the encoder reads labels: no encoder of x alone for a prior to read
        prior = self.make_prior(parts["prior"], self.latent_dim, None, likelihood)
        decoder = DECODERS.build(
            parts["decoder"][0],
            parts["decoder"][1],
            latent_dim=self.latent_dim + self.num_classes,
            event_shape=likelihood.param_shape(self.event_shape),
            hidden=self.hidden,
        )
        self.model = self.make_model(prior, decoder, likelihood)

    def make_model(self, prior: Prior, decoder: nn.Module, likelihood: Likelihood) -> nn.Module:
        return ConditionalVAEModel(prior, decoder, likelihood, self.event_shape, self.num_classes)

    def make_guide(self, encoder: ConditionalEncoder) -> nn.Module:
        return ConditionalNormalGuide(encoder)

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> TrainingStep:
        if type(objective).__name__.startswith("Jit"):
            # pyro.ops.jit hashes keyword arguments as constants: every minibatch's labels
            # would compile a new graph
            raise ConfigError(
                f"--model {self.name} passes labels as keyword arguments, which Pyro's JIT "
                "treats as constants; use --elbo Trace_ELBO or TraceMeanField_ELBO"
            )
        return super().training_step(objective, learning_rate=learning_rate, clip_norm=clip_norm)

    # -- the training step --

    def training_batches(
        self,
        data: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        shard: Shard | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One epoch of ``{"x": x, "y": y}`` minibatches (the data set must have labels);
        this rank's share of it with a ``shard``."""
        pairs = data.batches(
            "train", batch_size, shuffle=shuffle, drop_last=drop_last, labels=True, shard=shard
        )
        for x, y in pairs:
            yield {"x": x, "y": y}

    # -- everyday operations, given labels --

    def validate_labels(self, y: torch.Tensor | None, num_items: int, what: str = "labels") -> None:
        """Raise :class:`DataError` unless ``y`` holds one valid class index per item."""
        if y is None:
            raise DataError(
                f"the {self.name} model needs {what} (one class index per item); "
                "use a labelled data set"
            )
        check_labels(y, self.num_classes, what)
        if y.shape != (num_items,):
            raise DataError(f"{what} must have shape ({num_items},), got {tuple(y.shape)}")

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's mean and log-variance of :math:`q(z \\mid x, y)`."""
        return self.guide.encoder(x, y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid z, y]` under the likelihood."""
        return self.model.likelihood.mean(
            self.model.decoder(join(z, one_hot(y, self.num_classes, z.dtype)))
        )

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: :math:`E[x \\mid z = \\mu_\\phi(x, y), y]`."""
        loc, _ = self.encode(x, y)
        return self.decode(loc, y)

    @torch.no_grad()
    def predictive(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        num_samples: int = 1,
        return_sites: Sequence[str] = ("z", "x"),
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive draws ``z ~ q(z | x, y)``, ``x ~ p(x | z, y)`` (M2 draws
        ``y ~ q(y | x)`` when no labels are given)."""
        predictive = Predictive(
            poutine.uncondition(self.model),
            guide=self.guide,
            num_samples=num_samples,
            return_sites=list(return_sites),
            parallel=True,
        )
        return predictive(x) if y is None else predictive(x, y)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        y: int | Sequence[int] | torch.Tensor | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor | tuple:
        """Class-conditional generation: ``z ~ p(z)``, decoded with label ``y``.

        ``y`` is one class for every sample (``int``), one label per sample, or ``None``
        for the classes in turn (``0, 1, ..., C - 1, 0, ...``).
        """
        labels = _labels_for(num_samples, y, self.num_classes, self.device)
        trace = poutine.trace(self.model).get_trace(y=labels)
        z = trace.nodes["z"]["value"]
        mean = self.model.likelihood.mean(trace.nodes["_RETURN"]["value"])
        return (mean, z) if return_latents else mean

    @torch.no_grad()
    def generate(self, per_class: int, *, draw: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        r"""A labelled synthetic data set: ``per_class`` items of every class (data augmentation).

        Parameters
        ----------
        per_class : int
            Items per class; the result has ``per_class * num_classes`` items, class by class.
        draw : {"mean", "sample"}
            ``"mean"``: the decoded means :math:`E[x \mid z, y]` (smooth images in [0, 1]
            for the Bernoulli likelihoods); ``"sample"``: draws :math:`x \sim p(x \mid z, y)`
            (binary images for the Bernoulli likelihood).

        Returns
        -------
        x, y : torch.Tensor
            Items of shape ``(per_class * C, *event_shape)`` and their labels.
        """
        if per_class < 1:
            raise ConfigError(f"per_class must be >= 1, got {per_class}")
        if draw not in DRAWS:
            raise ConfigError(f"unknown draw {draw!r}; choose one of: {', '.join(DRAWS)}")
        y = torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class)
        trace = poutine.trace(self.model).get_trace(y=y)
        if draw == "sample":
            return trace.nodes["x"]["value"], y
        return self.model.likelihood.mean(trace.nodes["_RETURN"]["value"]), y


#: how :meth:`ConditionalVAE.generate` turns a latent code into an item
DRAWS = ("mean", "sample")
