"""The VAE variants by name: ``MODELS`` (``--model``) holds ``vae``, ``cvae`` and ``m2``.

Each variant is a :class:`~pyrovae.VAE` subclass that swaps the model and guide and
overrides the training-loop hooks (:meth:`~pyrovae.VAE.training_batches`,
:meth:`~pyrovae.VAE.training_loss`, ...); the training loop itself is shared.

- ``vae``: :class:`~pyrovae.VAE`, :math:`p(z)\\,p(x \\mid z)` with :math:`q(z \\mid x)`.
- ``cvae``: :class:`ConditionalVAE`, :math:`p(z)\\,p(x \\mid z, y)` with
  :math:`q(z \\mid x, y)` (Sohn et al. 2015).
- ``m2``: :class:`~pyrovae.semisupervised.SemiSupervisedVAE`,
  :math:`p(y)\\,p(z)\\,p(x \\mid y, z)` with :math:`q(y \\mid x)\\,q(z \\mid x, y)`
  (Kingma et al. 2014).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, Predictive, Trace_ELBO, TraceEnum_ELBO

from pyrovae.errors import ConfigError, DataError
from pyrovae.guides.conditional import ConditionalEncoder, ConditionalNormalGuide
from pyrovae.model import DECODERS, Likelihood, Prior
from pyrovae.model.conditional import ConditionalVAEModel
from pyrovae.registry import Registry
from pyrovae.vae import VAE, network_options

if TYPE_CHECKING:
    from pyrovae.config import Config
    from pyrovae.data import Dataset

__all__ = ["MODELS", "ConditionalVAE", "SemiSupervisedVAE", "build_vae", "check_labels"]

#: ``--model``: name -> VAE class with ``from_config(config, event_shape)``
MODELS: Registry[type[VAE]] = Registry("model")
MODELS.register("vae")(VAE)


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


@MODELS.register("cvae")
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
        Number of labels :math:`C`.
    latent_dim, prior, likelihood, encoder, decoder, hidden, **options
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

    needs_labels = True
    requires_y = True
    model_name = "cvae"

    def __init__(
        self,
        event_shape: Sequence[int],
        num_classes: int,
        latent_dim: int = 8,
        prior: str | Prior | dist.Distribution | Callable[[], dist.Distribution] = "normal",
        likelihood: str | Likelihood | Callable[[torch.Tensor], dist.Distribution] = "bernoulli",
        encoder: str = "mlp",
        decoder: str = "mlp",
        hidden: Sequence[int] = (256, 128),
        **options: object,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"a conditional model needs num_classes >= 2, got {num_classes}")
        super().__init__(
            event_shape, latent_dim, prior, likelihood, encoder, decoder, hidden, **options
        )
        self.num_classes = num_classes
        self.spec.update(model=self.model_name, num_classes=num_classes)
        net = {"event_shape": self.event_shape, "hidden": tuple(hidden)}
        # the prior and likelihood the VAE built are kept; decoder and encoder take labels
        self.model = self._make_model(
            self.model.prior,
            DECODERS.build(decoder, latent_dim=latent_dim + num_classes, **net),
            self.model.likelihood,
        )
        self.guide = self._make_guide(
            ConditionalEncoder(encoder, latent_dim, self.event_shape, hidden, num_classes)
        )

    def _make_model(self, prior: Prior, decoder: torch.nn.Module, likelihood: Likelihood):
        return ConditionalVAEModel(prior, decoder, likelihood, self.event_shape, self.num_classes)

    def _make_guide(self, encoder: ConditionalEncoder):
        return ConditionalNormalGuide(encoder)

    @classmethod
    def from_config(cls, config: Config, event_shape: Sequence[int]) -> ConditionalVAE:
        if config.elbo.startswith("Jit"):
            # pyro.ops.jit hashes keyword arguments as constants: every minibatch's labels
            # would compile a new graph
            raise ConfigError(
                f"--model {cls.model_name} passes labels as keyword arguments, which Pyro's JIT "
                f"treats as constants; use --elbo Trace_ELBO or TraceMeanField_ELBO"
            )
        if config.guide != "normal":
            raise ConfigError(
                f"--model {cls.model_name} has its own guide q(z|x,y) (diagonal Gaussian); "
                f"drop --guide {config.guide}"
            )
        if config.num_classes is None:
            raise ConfigError(
                f"--model {cls.model_name} needs num_classes (fit() reads it from the labels)"
            )
        return cls(event_shape, num_classes=config.num_classes, **network_options(config))

    # -- training-loop hooks --

    def training_batches(
        self, data: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[dict[str, Any]]:
        """One epoch of ``{"x": x, "y": y}`` minibatches (the data set must have labels)."""
        pairs = data.labeled_batches("train", batch_size, shuffle=shuffle, drop_last=drop_last)
        for x, y in pairs:
            yield {"x": x, "y": y}

    # -- everyday operations, given labels --

    def validate_labels(self, y: torch.Tensor | None, num_items: int, what: str = "labels") -> None:
        """Raise :class:`DataError` unless ``y`` holds one valid class index per item."""
        if y is None:
            raise DataError(
                f"the {self.model_name} model needs {what} (one class index per item); "
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
        from pyrovae.model.conditional import join, one_hot

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


@MODELS.register("m2")
class SemiSupervisedVAE(ConditionalVAE):
    r"""The M2 model of semi-supervised learning: :math:`p(y)\,p(z)\,p(x \mid y, z)` with
    the guide :math:`q(y \mid x)\,q(z \mid x, y)`.

    Trains with the shared SVI loop on a few labelled items per class and the rest of the
    training set unlabelled (see :mod:`pyrovae.inference.semisupervised` for the
    objective); the classifier :math:`q(y \mid x)` is the product
    (:meth:`classify`). ``TraceEnum_ELBO`` sums the class out of the unlabelled ELBO.

    Parameters
    ----------
    event_shape, num_classes, latent_dim, prior, likelihood, encoder, decoder, hidden
        As for :class:`ConditionalVAE`.
    labels_per_class : int
        Labelled training items per class; the others are used without their labels.
    alpha : float, optional
        Weight of the classification loss; ``None`` is :math:`0.1\,N` (the paper's).
    label_seed : int
        Seeds the choice of the labelled items.

    References
    ----------
    - Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
      Generative Models.
    """

    needs_labels = True
    requires_y = False
    model_name = "m2"

    def __init__(
        self,
        event_shape: Sequence[int],
        num_classes: int,
        *args: Any,
        labels_per_class: int = 10,
        alpha: float | None = None,
        label_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if labels_per_class < 1:
            raise ConfigError(f"labels_per_class must be >= 1, got {labels_per_class}")
        if alpha is not None and alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self._hidden = tuple(kwargs.get("hidden", (256, 128)))
        super().__init__(event_shape, num_classes, *args, **kwargs)
        self.labels_per_class = labels_per_class
        self.alpha = alpha
        self.label_seed = label_seed
        self.spec.update(labels_per_class=labels_per_class, alpha=alpha)

    def _make_model(self, prior: Prior, decoder: torch.nn.Module, likelihood: Likelihood):
        from pyrovae.model.semisupervised import SemiSupervisedModel

        return SemiSupervisedModel(prior, decoder, likelihood, self.event_shape, self.num_classes)

    def _make_guide(self, encoder: ConditionalEncoder):
        from pyrovae.guides.semisupervised import Classifier, SemiSupervisedGuide

        classifier = Classifier(self.event_shape, self.num_classes, self._hidden)
        return SemiSupervisedGuide(encoder, classifier)

    @classmethod
    def from_config(cls, config: Config, event_shape: Sequence[int]) -> SemiSupervisedVAE:
        if config.elbo != "Trace_ELBO":
            raise ConfigError(
                "--model m2 trains with TraceEnum_ELBO (it sums the class out of the "
                f"unlabelled ELBO); drop --elbo {config.elbo}"
            )
        if config.guide != "normal":
            raise ConfigError(
                f"--model m2 has its own guide q(y|x) q(z|x,y); drop --guide {config.guide}"
            )
        if config.num_classes is None:
            raise ConfigError("--model m2 needs num_classes (fit() reads it from the labels)")
        return cls(
            event_shape,
            config.num_classes,
            labels_per_class=config.labels_per_class,
            alpha=config.alpha,
            label_seed=config.seed,
            **network_options(config),
        )

    # -- training-loop hooks --

    def _split(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        from pyrovae.inference.semisupervised import labeled_subset

        if data.train_labels is None:
            raise DataError(f"--model m2 needs training labels; {data.name} has none")
        labeled = labeled_subset(data.train_labels, self.labels_per_class, self.label_seed)
        unlabeled = torch.ones(len(data.train), dtype=torch.bool)
        unlabeled[labeled] = False
        return labeled.to(data.train.device), unlabeled.nonzero().flatten().to(data.train.device)

    def training_size(self, data: Dataset) -> int:
        """The unlabelled items: the ``N`` of the unlabelled ELBO's plate."""
        return len(self._split(data)[1])

    def training_loss(self, elbo: ELBO) -> torch.nn.Module:
        """:math:`-\\mathcal{J}^\\alpha` with ``TraceEnum_ELBO`` (the particles of ``elbo``)."""
        from pyrovae.inference.semisupervised import SemiSupervisedLoss

        particles = {
            "max_plate_nesting": 1,
            "num_particles": elbo.num_particles,
            "vectorize_particles": elbo.vectorize_particles,
        }
        return SemiSupervisedLoss(
            TraceEnum_ELBO(**particles)(self.model, self.guide),
            Trace_ELBO(**particles)(self.model, self.guide),
            self.guide.classifier,
            self.alpha,
        )

    def training_batches(
        self, data: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[dict[str, Any]]:
        """One pass over the unlabelled items; each minibatch comes with a labelled one of
        the same size (or all labelled items, if fewer), cycling through them. Both draw
        their order and dynamic binarization from one generator seeded by the global RNG."""
        labeled, unlabeled = self._split(data)
        generator = data.new_generator()
        pairs = data.cycle(
            "train", batch_size, shuffle=shuffle, labels=True, indices=labeled, generator=generator
        )
        for x in data.batches(
            "train",
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            indices=unlabeled,
            generator=generator,
        ):
            xl, yl = next(pairs)
            yield {"x": x, "x_labeled": xl, "y_labeled": yl, "num_labeled": len(labeled)}

    def check_loss(self, batch: dict[str, Any], num_data: int) -> None:
        TraceEnum_ELBO(max_plate_nesting=1).loss(
            self.model, self.guide, batch["x"], num_data=num_data
        )
        Trace_ELBO(max_plate_nesting=1).loss(
            self.model,
            self.guide,
            batch["x_labeled"],
            batch["y_labeled"],
            num_data=batch["num_labeled"],
        )

    def metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """The classifier's held-out accuracy (when the held-out items have labels)."""
        if y is None:
            return {}
        return {"accuracy": float((self.predict(x) == y.to(x.device)).float().mean())}

    # -- the classifier and label-free operations --

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        r"""Class probabilities :math:`q(y \mid x)`, shape ``(N, num_classes)``."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat(
                [
                    torch.softmax(self.guide.classifier(x[i : i + batch_size]), -1)
                    for i in range(0, len(x), batch_size)
                ]
            )
        finally:
            self.train(was_training)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        r"""The most probable class under :math:`q(y \mid x)`."""
        return self.classify(x).argmax(-1)

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`q(z \mid x, y)`, with the predicted class when ``y`` is not given."""
        return self.guide.encoder(x, self.predict(x) if y is None else y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""Decode :math:`\mu_\phi(x, y)` with ``y`` (the predicted class if not given)."""
        y = self.predict(x) if y is None else y
        loc, _ = self.encode(x, y)
        return self.decode(loc, y)


def build_vae(config: Config, event_shape: Sequence[int]) -> VAE:
    """The VAE variant ``config.model`` describes (:data:`MODELS`), for items of ``event_shape``."""
    return MODELS[config.model].from_config(config, event_shape)
