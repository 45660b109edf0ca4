r"""FactorVAE (Kim & Mnih 2018): a VAE whose aggregate posterior is pushed towards a
product of its marginals by a penalty on its total correlation, which a discriminator on
codes estimates.

The model and the guide are the plain VAE's (:class:`~pyrovae.variants.vae.VAE`: a prior
that factorises over the latent dimensions, any likelihood, any registered guide), so
the ELBO and the IWAE bound are those of a VAE. The total correlation of the aggregate
posterior :math:`q(z) = \frac{1}{N} \sum_n q(z \mid x_n)` is

.. math::

    \mathrm{TC}(z) = \mathrm{KL}\Big(q(z) \,\Big\|\, \prod_{j=1}^{d} q(z_j)\Big)
        = E_{q(z)}\Big[\log \frac{q(z)}{\prod_j q(z_j)}\Big]
        \approx E_{q(z)}\Big[\log \frac{D(z)}{1 - D(z)}\Big],

where :math:`D(z) = \sigma(\mathrm{logit}_\psi(z))` is a discriminator trained to tell
draws of :math:`q(z)` (label 1) from draws of :math:`\prod_j q(z_j)` (label 0): at its
optimum :math:`D^*(z) = q(z) / (q(z) + \prod_j q(z_j))`, so its logit is the log density
ratio. Per minibatch of :math:`B` items with codes :math:`z_i \sim q(z \mid x_i)` (the
draws of the ELBO), the two parameter groups descend

.. math::

    \text{VAE } (\theta, \phi):&\quad -\mathrm{ELBO}_\beta
        + \gamma\, N\, \frac{1}{B} \sum_{i=1}^{B} \mathrm{logit}_\psi(z_i),

    \text{discriminator } \psi:&\quad \tfrac12\, \mathrm{BCE}\big(\mathrm{logit}_\psi(z),
        1\big) + \tfrac12\, \mathrm{BCE}\big(\mathrm{logit}_\psi(\tilde z), 0\big),

where :math:`-\mathrm{ELBO}_\beta` is the run's objective (``--elbo``, with the KL
schedule's :math:`\beta`) scaled to the :math:`N` training items by the data plate, so
the penalty is scaled alike, and :math:`\tilde z` are the codes of a *second* minibatch
of :math:`B` items, each latent dimension permuted independently across it
(:func:`permute_dims`): draws of :math:`\prod_j q(z_j)`. Kim & Mnih's Algorithm 1 draws
the two minibatches independently; here the second comes from a second random order of
the training items (``Dataset.cycle``), so an epoch is still one pass of the first.

Each group's gradient is exactly the gradient of its own objective alone, both at the
same parameters (:class:`~pyrovae.inference.training.groups.GroupStep`): the VAE never
receives the discriminator's loss, nor the discriminator the VAE's.

References
----------
- Kim & Mnih (2018), Disentangling by Factorising. ICML.
- Watanabe (1960), Information theoretical analysis of multivariate correlation (the
  total correlation).
- Sugiyama, Suzuki & Kanamori (2012), Density Ratio Estimation in Machine Learning (the
  density-ratio trick).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO

from pyrovae.errors import ConfigError
from pyrovae.inference.sites import trace_latent_sites
from pyrovae.inference.training.groups import (
    CANNOT,
    GroupStep,
    TraceRecorder,
    bce,
    check_partition,
    unique_parameters,
)
from pyrovae.inference.training.objectives import TCVAEELBO
from pyrovae.inference.training.step import elbo_stats
from pyrovae.networks import Discriminator
from pyrovae.variants.vae import VAE

if TYPE_CHECKING:
    from pyrovae.data import Dataset, Shard

__all__ = [
    "FactorVAE",
    "FactorVAELosses",
    "FactorVAEStep",
    "factorises",
    "judge",
    "permute_dims",
]

#: Adam's betas for the discriminator (Kim & Mnih's setting)
DISCRIMINATOR_BETAS = (0.5, 0.9)


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    r"""Each column of ``z`` (shape ``(B, d)``) permuted independently across its rows.

    Every column keeps its values (so each :math:`z_j` keeps its empirical marginal) while
    the rows are broken apart: draws of :math:`q(z)` become draws of
    :math:`\prod_j q(z_j)`. The permutations come from the global torch RNG."""
    if z.dim() != 2:
        raise ValueError(f"permute_dims takes codes of shape (B, d), got {tuple(z.shape)}")
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


def factorises(distribution: dist.Distribution) -> bool:
    """Whether a prior over codes (``event_shape == (d,)``) is a product over its
    dimensions: independent univariate factors (``Normal(...).to_event(1)``)."""
    if isinstance(distribution, dist.Independent):
        return distribution.base_dist.event_shape == ()
    return False


def judge(
    discriminator: Discriminator, z: torch.Tensor, permuted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``D`` on codes ``z`` of :math:`q(z)` and ``permuted`` codes of
    :math:`\prod_j q(z_j)`, in one pass: ``(tc, loss, accuracy)``.

    ``tc`` is the total-correlation estimate, the mean logit on ``z``; ``loss`` ``D``'s
    objective, :math:`\tfrac12\,\mathrm{BCE}(\mathrm{logit}(z), 1) + \tfrac12\,
    \mathrm{BCE}(\mathrm{logit}(\tilde z), 0)`; ``accuracy`` (no gradient) its share of
    correct calls over both kinds of codes."""
    logits = discriminator.logit(torch.cat([z, permuted]))
    joint, product = logits.split([len(z), len(permuted)])
    with torch.no_grad():
        accuracy = ((joint > 0).sum() + (product < 0).sum()).float() / len(logits)
    return joint.mean(), 0.5 * (bce(joint, 1.0) + bce(product, 0.0)), accuracy


@dataclass
class FactorVAELosses:
    r"""The losses of one minibatch.

    Attributes
    ----------
    elbo_loss : torch.Tensor
        The run's objective's loss, scaled to the ``num_data`` training items
        (:math:`-\mathrm{ELBO}_\beta`).
    tc : torch.Tensor
        The total-correlation estimate: the mean logit of ``D`` on the minibatch's codes.
    vae : torch.Tensor
        The VAE group's objective, ``elbo_loss + gamma * num_data * tc``.
    discriminator : torch.Tensor
        ``D``'s cross-entropy, half on the codes (label 1), half on the permuted codes
        of the second minibatch (label 0).
    accuracy : torch.Tensor
        ``D``'s accuracy over both kinds of codes.
    """

    elbo_loss: torch.Tensor
    tc: torch.Tensor
    vae: torch.Tensor
    discriminator: torch.Tensor
    accuracy: torch.Tensor

    @property
    def objectives(self) -> dict[str, torch.Tensor]:
        """Each parameter group's objective, by the name of its optimizer."""
        return {"vae": self.vae, "discriminator": self.discriminator}


class FactorVAEStep(GroupStep):
    r"""One FactorVAE update: the VAE and the discriminator, each on its own objective.

    Per minibatch (``{"x": x, "x_permuted": x'}``): the run's ELBO on the model and the
    guide, whose guide draws :math:`z \sim q(z \mid x)` are recorded; codes of the second
    minibatch :math:`z' \sim q(z \mid x')` drawn without gradient and permuted
    (:func:`permute_dims`); ``D`` judges both in one pass (:meth:`losses`). Each group's
    gradient is taken alone at the same parameters (:meth:`gradients`), then each optimizer
    steps (:meth:`apply`).

    Parameters
    ----------
    vae : FactorVAE
        The variant; its ``gamma`` and ``discriminator_learning_rate`` apply.
    objective : ELBO
        The run's Pyro ELBO (any but the JIT-compiled ones, whose guide draws cannot be
        read back).
    learning_rate : float
        The VAE's Adam learning rate (the run's ``--learning-rate``; Adam's default betas,
        as for the plain VAE).
    clip_norm : float, optional
        Clip each group's gradient norm to this value.

    Attributes
    ----------
    groups : dict of str to list of nn.Parameter
        ``vae``: the model's and the guide's parameters; ``discriminator``: ``D``'s.
    optimizers : dict of str to torch.optim.Adam
        ``vae`` and ``discriminator`` (betas (0.5, 0.9), Kim & Mnih's).
    """

    def __init__(
        self,
        vae: FactorVAE,
        objective: ELBO,
        *,
        learning_rate: float = 1e-3,
        clip_norm: float | None = None,
    ) -> None:
        self.vae = vae
        self.objective = objective
        self.recorder = TraceRecorder(vae.guide)
        self.elbo = objective(vae.model, self.recorder)
        # the ELBO runs the guide once per particle, or once for all of them (vectorized)
        self.runs = 1 if objective.vectorize_particles else objective.num_particles
        groups = {
            "vae": unique_parameters([*vae.model.parameters(), *vae.guide.parameters()]),
            "discriminator": list(vae.discriminator.parameters()),
        }
        check_partition(vae, groups, "FactorVAE")
        optimizers = {
            "vae": torch.optim.Adam(groups["vae"], lr=learning_rate),
            "discriminator": torch.optim.Adam(
                groups["discriminator"],
                lr=vae.discriminator_learning_rate,
                betas=DISCRIMINATOR_BETAS,
            ),
        }
        super().__init__(groups, optimizers, clip_norm)

    def codes(self) -> torch.Tensor:
        """The guide draws of the ELBO's last call, one row per draw: ``(P * B, d)``."""
        traces = self.recorder.traces[-self.runs :]
        return torch.cat([t.nodes["z"]["value"].reshape(-1, self.vae.latent_dim) for t in traces])

    def losses(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> FactorVAELosses:
        """The losses of a minibatch, differentiable; nothing is updated."""
        self.recorder.traces.clear()
        elbo_loss = self.elbo(batch["x"], num_data=num_data, beta=beta)
        z = self.codes()
        with torch.no_grad():
            other = poutine.trace(self.vae.guide).get_trace(batch["x_permuted"])
            permuted = permute_dims(other.nodes["z"]["value"])
        tc, discriminator, accuracy = judge(self.vae.discriminator, z, permuted)
        return FactorVAELosses(
            elbo_loss=elbo_loss,
            tc=tc,
            vae=elbo_loss + self.vae.gamma * num_data * tc,
            discriminator=discriminator,
            accuracy=accuracy,
        )

    def check(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> None:
        sites = trace_latent_sites(poutine.trace(self.vae.guide).get_trace(batch["x"]))
        if sites != ["z"]:
            raise ConfigError(
                "--model factorvae permutes the codes of one latent site z; this guide draws "
                f"{', '.join(sites) or 'none'}"
            )
        losses = self.losses(batch, num_data=num_data, beta=beta)
        for name, value in losses.objectives.items():
            if not torch.isfinite(value):
                raise ConfigError(f"FactorVAE's {name} objective is {value.item()} at the start")

    def __call__(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float] = 1.0
    ) -> dict[str, torch.Tensor]:
        with pyro.validation_enabled(False):
            losses = self.losses(batch, num_data=num_data, beta=beta)
        self.apply(self.gradients(losses))
        stats = {
            "loss": losses.vae.detach(),
            "tc": losses.tc.detach(),
            "discriminator_loss": losses.discriminator.detach(),
            "discriminator_accuracy": losses.accuracy,
        }
        stats.update(elbo_stats(self.objective, losses.elbo_loss, beta))
        return stats


class FactorVAE(VAE):
    r"""FactorVAE as a variant (``--model factorvae``): the plain VAE's model and guide, a
    discriminator on codes, and the two-group step above.

    The discriminator ``D`` is an MLP on codes (``discriminator_hidden`` widths, LeakyReLU
    0.2, one logit: :math:`\log D / (1 - D)` directly; Kim & Mnih's two softmax logits
    carry the same function, their difference) and a submodule of the variant
    (``vae.discriminator``), so ``state_dict()``, checkpoints and ``--resume`` carry it.

    Parameters
    ----------
    event_shape, latent_dim, prior, likelihood, encoder, decoder, hidden, guide
        As for :class:`~pyrovae.variants.vae.VAE`; ``latent_dim`` >= 2 and a prior that
        factorises over the dimensions (``normal``, ``learned-normal``).
    gamma : float
        factorvae: gamma, the weight of the total-correlation penalty on the VAE's
        objective (Kim & Mnih's gamma).
    discriminator_hidden : tuple of int
        factorvae: widths of the hidden layers of the discriminator on codes.
    discriminator_learning_rate : float
        factorvae: Adam learning rate of the discriminator on codes.

    Examples
    --------
    >>> vae = FactorVAE((1, 8, 8), latent_dim=4, hidden=(32,), discriminator_hidden=(16,))
    >>> vae.discriminator.logit(torch.zeros(3, 4)).shape
    torch.Size([3])
    """

    name = "factorvae"
    #: the held-out ELBO, as for the plain VAE: the model and the guide are a VAE's, and the
    #: TC estimate moves with the discriminator
    monitor: ClassVar[tuple[str, str]] = ("test_elbo", "max")
    cannot: ClassVar[Mapping[str, str]] = CANNOT

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = 8,
        prior: Any = "normal",
        likelihood: Any = "bernoulli",
        encoder: str | Mapping = "mlp",
        decoder: str | Mapping = "mlp",
        hidden: Sequence[int] = (256, 128),
        guide: Any = "normal",
        *,
        gamma: float = 10.0,
        discriminator_hidden: tuple[int, ...] = (256, 256, 256),
        discriminator_learning_rate: float = 1e-4,
        **options: Any,
    ) -> None:
        if latent_dim < 2:
            raise ConfigError(
                f"--model factorvae needs --latent-dim 2 or more (got {latent_dim}): its "
                "discriminator tells codes from codes with their dimensions permuted apart, "
                "and one dimension has nothing to permute"
            )
        checks = {
            "gamma": (gamma, gamma >= 0),
            "discriminator_learning_rate": (
                discriminator_learning_rate,
                discriminator_learning_rate > 0,
            ),
        }
        for key, (value, ok) in checks.items():
            if not (ok and math.isfinite(value)):
                raise ConfigError(f"{key} of --model factorvae is out of range: {value}")
        self.gamma = gamma
        self.discriminator_hidden = tuple(discriminator_hidden)
        self.discriminator_learning_rate = discriminator_learning_rate
        super().__init__(
            event_shape, latent_dim, prior, likelihood, encoder, decoder, hidden, guide, **options
        )
        self.spec["variant"].update(
            gamma=gamma,
            discriminator_hidden=list(self.discriminator_hidden),
            discriminator_learning_rate=discriminator_learning_rate,
        )

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The VAE's model and guide (:meth:`VAE.build`), then the discriminator on codes
        (after them, so a seed gives the VAE the plain VAE's initial weights)."""
        super().build(parts)
        if not factorises(self.model.prior()):
            raise ConfigError(
                f"--model factorvae penalises the codes' dependence, so it needs a prior that "
                f"factorises over the latent dimensions (--prior normal or learned-normal); "
                f"--prior {self.component_name('prior')} does not"
            )
        self.discriminator = Discriminator((self.latent_dim,), hidden=self.discriminator_hidden)

    # -- the training step --

    def training_step(
        self, objective: ELBO, *, learning_rate: float, clip_norm: float | None = None
    ) -> FactorVAEStep:
        """The two-group step (:class:`FactorVAEStep`) on the run's ``objective``."""
        if type(objective) is TCVAEELBO:
            raise ConfigError(
                "--model factorvae penalises the total correlation with its discriminator; "
                "--elbo TCVAE_ELBO penalises it again with a minibatch estimate; choose one "
                "(drop --elbo TCVAE_ELBO, or train --model vae with it)"
            )
        if type(objective).__name__.startswith("Jit"):
            raise ConfigError(
                "--model factorvae reads the guide's draws of each ELBO evaluation, which a "
                f"JIT-compiled ELBO hides; drop --elbo {type(objective).__name__} (use "
                "Trace_ELBO)"
            )
        return FactorVAEStep(self, objective, learning_rate=learning_rate, clip_norm=clip_norm)

    def training_batches(
        self,
        data: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        shard: Shard | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One pass over the training items, ``{"x": x, "x_permuted": x'}`` per minibatch:
        ``x'`` as many items from a second random order of the training items (cycled),
        whose codes the step permutes. Both orders, and dynamic binarization, come from one
        generator seeded by the global RNG."""
        generator = data.new_generator()
        others = data.cycle("train", batch_size, shuffle=shuffle, generator=generator)
        for x in data.batches(
            "train",
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            shard=shard,
        ):
            yield {"x": x, "x_permuted": next(others)}

    def metrics(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        r"""``tc``: the held-out total-correlation estimate, the mean logit of ``D`` on one
        draw :math:`z \sim q(z \mid x)` per item (nats; a mean over the items of ``x``)."""
        from pyrovae.inference.evaluation import batches, eval_mode

        total = 0.0
        with eval_mode(self), torch.no_grad():
            for xb, _ in batches(x.to(self.device), 500):
                z = poutine.trace(self.guide).get_trace(xb).nodes["z"]["value"]
                total += self.discriminator.logit(z).sum().item()
        return {"tc": total / len(x)}
