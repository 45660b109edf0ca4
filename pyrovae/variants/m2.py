r"""The M2 model of semi-supervised learning (Kingma et al. 2014): :math:`p(y)\,p(z)\,
p_\theta(x \mid y, z)` with the guide :math:`q_\phi(y \mid x)\,q_\phi(z \mid x, y)`.

.. math::

    y_n \sim \mathrm{Categorical}(1/C, \dots, 1/C), \qquad z_n \sim p(z), \qquad
    x_n \mid y_n, z_n \sim p_\theta\big(x \mid \mathrm{decoder}_\theta([z_n,
        \mathrm{onehot}(y_n)])\big)

The class is a latent variable: observed for labelled items, summed out for unlabelled
ones. For an unlabelled item the classifier :math:`q_\phi(y \mid x)` is a latent site
marked for parallel enumeration, so ``TraceEnum_ELBO`` sums over every class,

.. math::

    \mathcal{U}(x) = \sum_y q_\phi(y \mid x)\,\mathcal{L}(x, y)
        + \mathcal{H}(q_\phi(y \mid x)),

where :math:`\mathcal{L}(x, y)` is the ELBO of a labelled item. The objective, to be
maximised, is

.. math::

    \mathcal{J}^\alpha = \sum_{(x, y) \in \mathcal{D}_l} \mathcal{L}(x, y)
        + \sum_{x \in \mathcal{D}_u} \mathcal{U}(x)
        + \alpha\, E_{\tilde p_l(x, y)}\big[\log q_\phi(y \mid x)\big],

with :math:`\alpha = 0.1\,N` in the paper. SVI minimises :math:`-\mathcal{J}^\alpha`
from minibatches, on one of two schedules (``labeled_schedule``):

- ``"interleaved"`` (the default; the kind of schedule Pyro's ``examples/vae/ss_vae_M2.py``
  trains on, which puts its labelled batches at every :math:`\lfloor N / N_l \rfloor`-th
  step): an epoch is one pass over the unlabelled items and one over the labelled items,
  in minibatches of the same size; the labelled minibatches are spread evenly among the
  unlabelled ones, and a step takes one minibatch of either kind: :math:`\mathcal{U}` of
  an unlabelled one, or :math:`\mathcal{L}` plus :math:`\alpha / N_l` times the
  classification log-likelihood of a labelled one. Each item is weighted by the epoch's
  number of steps :math:`S` (times :math:`N / V` when only :math:`V` of the :math:`N`
  items of its kind are visited, e.g. a short last batch dropped), so the steps of an
  epoch add up to :math:`S\,\mathcal{J}^\alpha` in expectation: a step drawn at random
  from the epoch is an unbiased estimate of :math:`\mathcal{J}^\alpha`, a single step of
  only its own kind's terms.
- ``"paired"``: a step takes one unlabelled minibatch (scaled by :math:`N_u / B_u`) and
  one labelled minibatch (scaled by :math:`N_l / B_l`, cycling through the labelled
  items) and the mean classification log-likelihood of the labelled minibatch times
  :math:`\alpha`; with few labels every labelled item is then seen :math:`N_u / N_l`
  times an epoch.

On Fashion-MNIST with 100 labels per class the paired schedule's validation accuracy peaks
within a few epochs and then falls, while the interleaved one keeps climbing
(``docs/applications.md``). Outside an enumerating ELBO (e.g. importance-weighted
evaluation) ``y`` is sampled from the classifier; :meth:`SemiSupervisedVAE.class_log_joint`
scores every class instead, which gives the generative model's own class posterior
(:meth:`SemiSupervisedVAE.model_posterior`, and the metrics that tell whether the decoder
reads ``y``).

This module holds the variant whole: model, guide, loss, the labelled subset, the
training batches and the supervised baseline :func:`train_classifier`.

References
----------
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from math import prod
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from torch import nn

from pyrovae.errors import ConfigError, DataError
from pyrovae.guides.conditional import ConditionalEncoder
from pyrovae.guides.encoders import diagonal_normal
from pyrovae.inference.training.step import SVIStep, TrainingStep
from pyrovae.model import Likelihood, Prior
from pyrovae.model.base import LocalPyroModule, data_plate, kl_weight
from pyrovae.networks import gated_mlp, mlp
from pyrovae.registry import closest
from pyrovae.variants.cvae import ConditionalVAE, ConditionalVAEModel

if TYPE_CHECKING:
    from pyrovae.data import Dataset, Shard

__all__ = [
    "Classifier",
    "SemiSupervisedGuide",
    "SemiSupervisedLoss",
    "SemiSupervisedModel",
    "SemiSupervisedVAE",
    "labeled_subset",
    "split_labeled",
    "train_classifier",
]


class SemiSupervisedModel(ConditionalVAEModel):
    """:class:`~pyrovae.variants.cvae.ConditionalVAEModel` with a uniform prior on ``y``.

    ``forward(x=None, y=None, ...)``: ``y`` is observed when given, otherwise a latent
    site (sampled from :math:`p(y)` when generating, enumerated or sampled by the guide
    when inferring).
    """

    def __init__(
        self,
        prior: Prior,
        decoder: nn.Module,
        likelihood: Likelihood,
        event_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        super().__init__(prior, decoder, likelihood, event_shape, num_classes)
        self.register_buffer("label_logits", torch.zeros(num_classes))

    def label(self, y: torch.Tensor | None) -> torch.Tensor:
        """:math:`y \\sim p(y)`, uniform over the classes (observed when ``y`` is given)."""
        return pyro.sample("y", dist.Categorical(logits=self.label_logits), obs=y)


class Classifier(nn.Module):
    """The MLP ``prod(event_shape) -> hidden... -> num_classes`` logits of :math:`q(y \\mid x)`
    (ReLUs, or gated layers with ``gated``: :func:`~pyrovae.networks.gated_mlp`)."""

    def __init__(
        self,
        event_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        *,
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.event_dim = len(event_shape)
        self.net = (gated_mlp if gated else mlp)([prod(event_shape), *hidden, num_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(-self.event_dim) if self.event_dim else x[..., None])


class SemiSupervisedGuide(LocalPyroModule):
    """``forward(x=None, y=None, *, num_data=None, batch_size=None, beta=1.0)``."""

    def __init__(self, encoder: ConditionalEncoder, classifier: Classifier) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

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
        with data_plate(len(x), num_data, x.device):
            if y is None:
                logits = self.classifier(x)
                y = pyro.sample(
                    "y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"}
                )
            loc, log_var = self.encoder(x, y)
            with kl_weight(beta):
                pyro.sample("z", diagonal_normal(loc, log_var))
        return loc, log_var


def labeled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` randomly chosen items of every class (sorted), the rest
    being unlabelled; raises :class:`DataError` when a class has too few items."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) <= per_class:
            raise DataError(
                f"class {c} has {len(members)} training items, too few for "
                f"--labels-per-class {per_class} and some unlabelled ones; lower it"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


def split_labeled(
    labels: torch.Tensor, per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labeled, unlabeled)``: the indices of :func:`labeled_subset` and of every other
    training item, both sorted and on the CPU. This is the split ``--model m2
    --labels-per-class N --seed S`` trains on; ``benchmarks/pyro_m2.py`` hands the same
    split to Pyro's example."""
    labeled = labeled_subset(labels, per_class, seed)
    unlabeled = torch.ones(len(labels), dtype=torch.bool)
    unlabeled[labeled] = False
    return labeled, unlabeled.nonzero().flatten()


class SemiSupervisedLoss(nn.Module):
    r""":math:`-\mathcal{J}^\alpha` of a labelled and an unlabelled minibatch.

    Parameters
    ----------
    unlabeled_elbo : nn.Module
        ``TraceEnum_ELBO(...)(model, guide)``: the negative ELBO with the class summed out.
    labeled_elbo : nn.Module
        ``Trace_ELBO(...)(model, guide)``: the negative ELBO with the class observed (there
        is nothing to enumerate).
    classifier : nn.Module
        The guide's classifier, ``x -> logits`` of :math:`q(y \mid x)`.
    alpha : float, optional
        Weight of the classification term; ``None`` is :math:`0.1\,N` with :math:`N` the
        number of training items, labelled and unlabelled.
    """

    def __init__(
        self,
        unlabeled_elbo: nn.Module,
        labeled_elbo: nn.Module,
        classifier: nn.Module,
        alpha: float | None,
    ) -> None:
        super().__init__()
        self.unlabeled_elbo = unlabeled_elbo
        self.labeled_elbo = labeled_elbo
        self.classifier = classifier
        self.alpha = alpha

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        x_labeled: torch.Tensor | None = None,
        y_labeled: torch.Tensor | None = None,
        num_labeled: int,
        num_data: int,
        unlabeled_num_data: float | None = None,
        labeled_num_data: float | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """The loss of an unlabelled minibatch ``x``, a labelled one, or both.

        ``num_data`` and ``num_labeled`` are the numbers of unlabelled and labelled
        training items (:math:`N_u`, :math:`N_l`). Each minibatch stands for the number of
        items its ``*_num_data`` says (the plate's ``N / B`` scaling), by default its set's
        size; the classification term weighs each labelled item by :math:`\alpha / N_l`.
        """
        alpha = 0.1 * (num_data + num_labeled) if self.alpha is None else self.alpha
        terms = []
        if x is not None:
            stands_for = num_data if unlabeled_num_data is None else unlabeled_num_data
            terms.append(self.unlabeled_elbo(x, num_data=stands_for, beta=beta))
        if x_labeled is not None and y_labeled is not None:
            stands_for = num_labeled if labeled_num_data is None else labeled_num_data
            terms.append(self.labeled_elbo(x_labeled, y_labeled, num_data=stands_for, beta=beta))
            classification = F.cross_entropy(self.classifier(x_labeled), y_labeled)
            terms.append(alpha * stands_for / num_labeled * classification)
        if not terms:
            raise ValueError("a step needs an unlabelled or a labelled minibatch, or both")
        return torch.stack(terms).sum()


def _labeled_batches(num_labeled: int, batch_size: int, world_size: int) -> int:
    """A rank's labelled minibatches on the interleaved schedule: its share is a whole number
    of items (:class:`~pyrovae.data.Shard`), the last minibatch partial."""
    share = num_labeled // world_size
    if share == 0:
        raise DataError(
            f"{num_labeled} labelled items cannot be shared by {world_size} processes on the "
            "interleaved schedule; label more items per class, use fewer processes, or "
            "--labeled-schedule paired"
        )
    return -(-share // batch_size)


def train_classifier(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """The supervised-only baseline: ``classifier`` trained with cross-entropy and Adam on
    the labelled items alone (``num_steps`` minibatch steps; a training set of a few
    labels is fitted perfectly long before)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
    classifier.train()
    for _ in range(num_steps):
        index = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        index = index.to(x.device)
        loss = F.cross_entropy(classifier(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier.eval()


def _class_summary(
    probs: torch.Tensor, y: torch.Tensor | None, entropy: str, accuracy: str
) -> dict[str, float]:
    """The mean entropy (nats) of class probabilities ``probs`` ``(N, C)`` and, given labels,
    the accuracy of their most probable class, under the names ``entropy`` and ``accuracy``."""
    row = {entropy: float(dist.Categorical(probs=probs).entropy().mean())}
    if y is not None:
        row[accuracy] = float((probs.argmax(-1) == y.to(probs.device)).float().mean())
    return row


class SemiSupervisedVAE(ConditionalVAE):
    r"""The M2 model of semi-supervised learning: :math:`p(y)\,p(z)\,p(x \mid y, z)` with
    the guide :math:`q(y \mid x)\,q(z \mid x, y)`.

    Trains with the shared SVI loop on a few labelled items per class and the rest of the
    training set unlabelled (:class:`SemiSupervisedLoss` is the
    objective); the classifier :math:`q(y \mid x)` is the product
    (:meth:`classify`). ``TraceEnum_ELBO`` sums the class out of the unlabelled ELBO.

    Parameters
    ----------
    event_shape, num_classes, latent_dim, prior, likelihood, encoder, decoder, hidden
        As for :class:`ConditionalVAE`.
    labels_per_class : int
        m2: labelled training items per class (the others are used without their labels).
    alpha : float, optional
        m2: weight of the classification loss (default: 0.1 N, N the training items, as
        in the paper).
    labeled_schedule : {"interleaved", "paired"}
        m2: how a step meets the labelled items: ``"interleaved"``, steps on either an
        unlabelled or a labelled minibatch, every item once an epoch (as Pyro's example);
        ``"paired"``, every unlabelled minibatch with a labelled one (see the module).
    label_seed : int
        Seeds the choice of the labelled items (the run's --seed).

    References
    ----------
    - Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
      Generative Models.
    """

    name = "m2"
    needs_labels = True
    requires_y = False
    own_guide = "q(y|x) q(z|x,y)"
    #: the classifier's accuracy: what a semi-supervised model is trained for
    monitor = ("accuracy", "max")
    #: the values of ``labeled_schedule``
    labeled_schedules = ("interleaved", "paired")
    #: runs from before ``labeled_schedule`` trained on the paired schedule
    legacy_options: ClassVar[Mapping[str, Any]] = {"labeled_schedule": "paired"}
    cannot: ClassVar[Mapping[str, str]] = {
        "compile": (
            "it trains with TraceEnum_ELBO, which sums the class out of the unlabelled ELBO "
            "by enumeration, and --compile traces Trace_ELBO and TraceMeanField_ELBO"
        ),
    }

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = 8,
        prior: Any = "normal",
        likelihood: Any = "bernoulli",
        encoder: str | Mapping = "mlp",
        decoder: str | Mapping = "mlp",
        hidden: Sequence[int] = (256, 128),
        guide: str | Mapping = "normal",
        label_seed: int = 0,
        *,
        num_classes: int | None = None,
        labels_per_class: int = 10,
        alpha: float | None = None,
        labeled_schedule: str = "interleaved",
        **options: Any,
    ) -> None:
        if labels_per_class < 1:
            raise ConfigError(f"labels_per_class must be >= 1, got {labels_per_class}")
        if labeled_schedule not in self.labeled_schedules:
            raise ConfigError(
                f"unknown labeled_schedule {labeled_schedule!r}"
                f"{closest(labeled_schedule, self.labeled_schedules)}; choose one of: "
                + ", ".join(self.labeled_schedules)
            )
        self.labeled_schedule = labeled_schedule
        if alpha is not None and alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.labels_per_class = labels_per_class
        self.alpha = alpha
        self.label_seed = label_seed
        super().__init__(
            event_shape,
            latent_dim,
            prior,
            likelihood,
            encoder,
            decoder,
            hidden,
            guide,
            num_classes=num_classes,
            **options,
        )
        self.spec["variant"].update(
            labels_per_class=labels_per_class, alpha=alpha, labeled_schedule=labeled_schedule
        )

    def make_model(self, prior: Prior, decoder: nn.Module, likelihood: Likelihood) -> nn.Module:
        return SemiSupervisedModel(prior, decoder, likelihood, self.event_shape, self.num_classes)

    def make_guide(self, encoder: ConditionalEncoder) -> nn.Module:
        # the classifier is a network of the guide: gated when the encoder is
        classifier = Classifier(
            self.event_shape, self.num_classes, self.hidden, gated=encoder.name == "gated-mlp"
        )
        return SemiSupervisedGuide(encoder, classifier)

    # -- the training step --

    def _split(self, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        if data.train_labels is None:
            raise DataError(f"--model m2 needs training labels; {data.name} has none")
        labeled, unlabeled = split_labeled(
            data.train_labels, self.labels_per_class, self.label_seed
        )
        return labeled.to(data.train.device), unlabeled.to(data.train.device)

    def training_size(self, data: Dataset) -> int:
        """The unlabelled items: the ``N`` of the unlabelled ELBO's plate."""
        return len(self._split(data)[1])

    def steps_per_epoch(self, data: Dataset, batch_size: int, world_size: int = 1) -> int:
        """The unlabelled minibatches, and on the interleaved schedule the labelled ones."""
        steps = super().steps_per_epoch(data, batch_size, world_size)
        if self.labeled_schedule == "paired":
            return steps
        return steps + _labeled_batches(len(self._split(data)[0]), batch_size, world_size)

    def check_batches(self, data: Dataset, batch_size: int) -> list[dict[str, Any]]:
        """The first unlabelled step, and on the interleaved schedule the first labelled
        one (a step of another kind)."""
        batches = self.training_batches(data, batch_size, shuffle=False)
        if self.labeled_schedule == "paired":
            return [next(batches)]
        kinds: dict[bool, dict[str, Any]] = {}
        for batch in batches:
            kinds.setdefault("x" in batch, batch)
            if len(kinds) == 2:
                break
        return list(kinds.values())

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> TrainingStep:
        """SVI on :math:`-\\mathcal{J}^\alpha` (:class:`SemiSupervisedLoss`): ``TraceEnum_ELBO``
        with the particles of ``objective`` sums the class out of the unlabelled ELBO."""
        if type(objective) is not Trace_ELBO:
            raise ConfigError(
                "--model m2 trains with TraceEnum_ELBO (it sums the class out of the "
                f"unlabelled ELBO); drop --elbo {type(objective).__name__}"
            )
        particles = {
            "max_plate_nesting": 1,
            "num_particles": objective.num_particles,
            "vectorize_particles": objective.vectorize_particles,
        }
        loss = SemiSupervisedLoss(
            TraceEnum_ELBO(**particles)(self.model, self.guide),
            Trace_ELBO(**particles)(self.model, self.guide),
            self.guide.classifier,
            self.alpha,
        )
        return SVIStep(loss, learning_rate=learning_rate, clip_norm=clip_norm)

    def training_batches(
        self,
        data: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        shard: Shard | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One epoch of steps on the ``labeled_schedule``; the order and dynamic
        binarization of both kinds of items come from one generator seeded by the global RNG.

        Interleaved: one pass over the unlabelled items and one over the labelled items in
        minibatches of ``batch_size``, the labelled ones spread evenly among the others
        (:meth:`steps_per_epoch` in all, with the trainer's ``drop_last``); every item of a
        step stands for ``S N / V`` items, ``S`` the steps, ``N`` the items of its kind and
        ``V`` those of them the rank visits (``N / world_size`` when nothing is dropped).
        Paired: one pass over the unlabelled items; each minibatch comes with a labelled one
        of the same size (or all labelled items, if fewer), cycling through them.

        With a ``shard`` (data-parallel training) the rank takes its share of the unlabelled
        items, in the order every rank draws alike. Interleaved, it takes its share of the
        labelled items too, and every rank steps on a labelled minibatch at the same step.
        Paired, each rank cycles through all the labelled items in an order of its own (its
        generator is seeded by its own stream), so the labelled term of every rank is an
        unbiased estimate, as in one process."""
        labeled, unlabeled = self._split(data)
        generator = data.new_generator()
        common = {"shuffle": shuffle, "generator": generator}
        pairs = None
        if self.labeled_schedule == "paired":
            pairs = data.cycle("train", batch_size, labels=True, indices=labeled, **common)
        common["shard"] = shard
        unlabeled_batches = iter(
            data.batches("train", batch_size, drop_last=drop_last, indices=unlabeled, **common)
        )
        if pairs is not None:
            for x in unlabeled_batches:
                xl, yl = next(pairs)
                yield {"x": x, "x_labeled": xl, "y_labeled": yl, "num_labeled": len(labeled)}
            return
        labeled_batches = iter(
            data.batches("train", batch_size, labels=True, indices=labeled, **common)
        )
        world = 1 if shard is None else shard.world_size
        num_labeled_batches = _labeled_batches(len(labeled), batch_size, world)
        # as Dataset.batches cuts a pass: a rank's share, its last short batch dropped or not
        share = len(unlabeled) // world
        visited = share // batch_size * batch_size if drop_last else share
        steps = num_labeled_batches + -(-visited // batch_size)
        # an item stands for S N / (the items of its kind this rank visits) items: the steps
        # of an epoch (averaged over the ranks) add up to S J, in expectation over which
        # items a short last batch or the cut to whole shares leaves out
        unlabeled_weight = steps * len(unlabeled) / visited
        labeled_weight = steps * len(labeled) / (len(labeled) // world)
        # labelled batch k at step floor((k + 1/2) S / L): evenly spread, never two at once
        at = {int((k + 0.5) * steps / num_labeled_batches) for k in range(num_labeled_batches)}
        for step in range(steps):
            if step in at:
                xl, yl = next(labeled_batches)
                yield {
                    "x_labeled": xl,
                    "y_labeled": yl,
                    "num_labeled": len(labeled),
                    "labeled_num_data": labeled_weight * len(xl),
                }
            else:
                x = next(unlabeled_batches)
                yield {
                    "x": x,
                    "num_labeled": len(labeled),
                    "unlabeled_num_data": unlabeled_weight * len(x),
                }

    def metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        r"""The classifier's held-out accuracy (when the held-out items have labels) and
        ``classifier_entropy``, the mean entropy of :math:`q(y \mid x)` in nats: near
        :math:`\log C` the classifier is close to uniform, M2's failure with few labels
        (the decoder ignores ``y``, and the entropy term of the unlabelled ELBO flattens
        the classifier; ``docs/applications.md``)."""
        return _class_summary(self.classify(x), y, "classifier_entropy", "accuracy")

    def evaluation_metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        r""":meth:`metrics` and whether the decoder reads the class, from the generative
        model's own class posterior :meth:`model_posterior` (one draw of :math:`z` per
        class; it costs a held-out pass per class, so it is left out of the epochs' log):

        - ``model_class_entropy``, its mean entropy in nats; near :math:`\log C` the
          decoder ignores ``y``, whatever the classifier says;
        - ``class_agreement``, the share of items whose most probable class is the same
          under :math:`q(y \mid x)` and under the model's posterior;
        - with labels, ``model_accuracy``, the model's posterior's accuracy.

        The model's posterior is drawn with a random stream of its own, seeded with 0: the
        same numbers for the same items in the same batches, whatever the global stream
        (``pyrovae evaluate --seed``), which is left as it was.
        """
        probs = self.classify(x)
        posterior = self.model_posterior(x, seed=0)
        agree = probs.argmax(-1) == posterior.argmax(-1)
        return {
            **_class_summary(probs, y, "classifier_entropy", "accuracy"),
            **_class_summary(posterior, y, "model_class_entropy", "model_accuracy"),
            "class_agreement": float(agree.float().mean()),
        }

    @torch.no_grad()
    def class_log_joint(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        batch_size: int = 500,
        *,
        seed: int | None = None,
    ) -> torch.Tensor:
        r"""Importance-weighted estimates of :math:`\log p(x, y = c)` for every class,
        shape ``(N, num_classes)``.

        For each class :math:`c`, ``num_samples`` draws :math:`z_k \sim q(z \mid x, c)`
        give :math:`\log \frac1K \sum_k p(x \mid z_k, c)\,p(z_k)\,p(c) / q(z_k \mid x, c)`
        (:func:`~pyrovae.inference.importance_weights` with the class observed): the
        labelled ELBO :math:`\mathcal{L}(x, c)` for ``num_samples=1``, a tighter lower
        bound in expectation as ``num_samples`` grows. Their log-sum-exp over the classes
        estimates :math:`\log p(x)` with the class summed out exactly.

        Every class is scored with the same standard-normal noise (common random numbers:
        :math:`z_k = \mu(x, c) + \sigma(x, c)\,\epsilon_k`, one :math:`\epsilon_k` for
        all classes), so the differences between classes come from the networks, not from
        Monte Carlo noise: where neither network reads the class, every class scores
        the same. ``seed`` fixes that noise (the global stream is then left as it was);
        without it, one number drawn from the global stream seeds it.
        """
        from pyrovae.inference.evaluation import (
            batches,
            eval_mode,
            importance_weights,
            log_mean_exp,
        )

        if seed is None:
            seed = int(torch.randint(2**31 - 1, ()))

        def score(xb: torch.Tensor, c: int) -> torch.Tensor:
            labels = torch.full((len(xb),), c, dtype=torch.long, device=xb.device)
            return log_mean_exp(
                importance_weights(self, xb, num_samples, labels, seed=seed).log_weight
            )

        with eval_mode(self):
            return torch.cat(
                [
                    torch.stack([score(xb, c) for c in range(self.num_classes)], -1)
                    for xb, _ in batches(x, batch_size)
                ]
            )

    def model_posterior(
        self, x: torch.Tensor, num_samples: int = 1, *, seed: int | None = None
    ) -> torch.Tensor:
        r"""The generative model's own class probabilities,
        :math:`p(y \mid x) \propto p(y)\,p(x \mid y)`, estimated by the softmax of
        :meth:`class_log_joint` over the classes, shape ``(N, num_classes)``. Where the
        decoder reads ``y`` they are sharp; where it ignores ``y`` they are near uniform,
        whatever the classifier :math:`q(y \mid x)` says."""
        return torch.softmax(self.class_log_joint(x, num_samples, seed=seed), -1)

    # -- the classifier and label-free operations --

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        r"""Class probabilities :math:`q(y \mid x)`, shape ``(N, num_classes)``."""
        from pyrovae.inference.evaluation import batches, eval_mode

        with eval_mode(self):
            return torch.cat(
                [torch.softmax(self.guide.classifier(xb), -1) for xb, _ in batches(x, batch_size)]
            )

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
