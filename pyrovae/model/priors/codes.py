r"""Priors over a grid of discrete codes :math:`k = (k_1, \dots, k_P)`, each
:math:`k_p \in \{0, \dots, K - 1\}`: what a VQ-VAE samples from after training.

A VQ-VAE trains with the uniform prior :math:`p(k) = K^{-P}` and afterwards fits a prior
to the codes of the training items (:meth:`CodePrior.fit`). Two are registered in
``CODE_PRIORS``:

- ``categorical``: independent positions, :math:`p(k) = \prod_p \pi_{p, k_p}`, fitted by
  counting with add-:math:`\alpha` smoothing,

  .. math::

      \pi_{p, j} = \frac{c_{p, j} + \alpha}{N + K \alpha},

  :math:`c_{p, j}` the training items whose code at position :math:`p` is :math:`j`;
- ``autoregressive``: :math:`p(k) = \prod_p p(k_p \mid k_{<p})` in raster order, the
  conditionals from one masked network over the one-hot codes (MADE), trained by
  maximum likelihood with Adam; sampling is ancestral, one pass per position.

Before :meth:`CodePrior.fit` every prior is the uniform one. A prior's ``forward()``
returns a Pyro distribution with ``event_shape == (P,)`` that the model samples inside
its data plate, as :class:`~pyrovae.model.priors.Prior` does for continuous codes.

References
----------
- van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning
  (a PixelCNN prior over the codes, fitted after the autoencoder).
- Germain, Gregor, Murray & Larochelle (2015), MADE: Masked Autoencoder for Distribution
  Estimation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from pyrovae.errors import ConfigError
from pyrovae.registry import Registry

__all__ = [
    "CODE_PRIORS",
    "AutoregressiveCodePrior",
    "AutoregressiveCodes",
    "CategoricalCodePrior",
    "CodePrior",
    "MaskedLinear",
]

CODE_PRIORS: Registry[type[CodePrior]] = Registry("code prior")


class CodePrior(nn.Module):
    """Base class: a prior over ``num_positions`` codes, each one of ``num_codes``.

    ``forward()`` is the uniform prior until :meth:`fit` sets ``fitted`` (a buffer, so a
    checkpoint records it); then the fitted prior (:meth:`fitted_distribution`).
    """

    def __init__(self, num_positions: int, num_codes: int) -> None:
        super().__init__()
        self.num_positions, self.num_codes = num_positions, num_codes
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("uniform_logits", torch.zeros(num_positions, num_codes))

    def forward(self) -> TorchDistribution:
        """:math:`p(k)` with ``event_shape == (P,)``: the fitted prior, or the uniform one."""
        return self.fitted_distribution() if bool(self.fitted) else self.uniform()

    def uniform(self) -> TorchDistribution:
        """The uniform prior, :math:`\\log p(k) = -P \\log K` for every grid."""
        return dist.Categorical(logits=self.uniform_logits).to_event(1)

    def fitted_distribution(self) -> TorchDistribution:
        raise NotImplementedError  # abstract

    def fit(self, codes: torch.Tensor, *, generator: torch.Generator) -> None:
        """Fit the prior to training ``codes`` (``(N, P)`` indices); random draws (if any)
        come from ``generator`` alone, so the caller's random streams are untouched."""
        raise NotImplementedError  # abstract

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 2 or codes.shape[1] != self.num_positions or len(codes) == 0:
            raise ConfigError(
                f"a code prior fits (N, {self.num_positions}) codes with N >= 1, got shape "
                f"{tuple(codes.shape)}"
            )


@CODE_PRIORS.register("categorical")
class CategoricalCodePrior(CodePrior):
    r"""Independent positions, each a categorical distribution fitted by counting.

    Parameters
    ----------
    num_positions, num_codes : int
        :math:`P` and :math:`K`.
    smoothing : float
        :math:`\alpha > 0`, added to every count (the module docstring's formula), so a
        code unseen at a position keeps a positive probability.
    """

    def __init__(self, num_positions: int, num_codes: int, smoothing: float = 1.0) -> None:
        super().__init__(num_positions, num_codes)
        if smoothing <= 0:
            raise ConfigError(f"the categorical code prior needs smoothing > 0, got {smoothing}")
        self.smoothing = smoothing
        self.register_buffer("logits", torch.zeros(num_positions, num_codes))

    def fitted_distribution(self) -> TorchDistribution:
        return dist.Categorical(logits=self.logits).to_event(1)

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, *, generator: torch.Generator | None = None) -> None:
        self._check_codes(codes)
        one_hot = F.one_hot(codes, self.num_codes).to(self.logits.dtype)  # (N, P, K)
        counts = one_hot.sum(0) + self.smoothing
        self.logits.copy_(counts.log() - math.log(len(codes) + self.num_codes * self.smoothing))
        self.fitted.fill_(True)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` (a buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


@CODE_PRIORS.register("autoregressive")
class AutoregressiveCodePrior(CodePrior):
    r""":math:`p(k) = \prod_p p(k_p \mid k_{<p})` in raster order, from a MADE network.

    The input is the one-hot grid (:math:`P K` units, position :math:`p`'s units having
    degree :math:`p + 1`); hidden unit :math:`i` of every layer has degree
    :math:`1 + (i \bmod (P - 1))`; a unit reads the units of the previous layer whose
    degree is at most its own, and the output logits of position :math:`p` read the last
    hidden units of degree at most :math:`p` only. So the logits of :math:`k_p` depend on
    :math:`k_{<p}` alone, and the first position's are a learned constant.

    Parameters
    ----------
    num_positions, num_codes : int
        :math:`P` and :math:`K`.
    hidden : sequence of int
        Widths of the hidden layers (ReLU).
    epochs : int
        At most this many passes over the training codes in :meth:`fit` (Adam, learning
        rate 3e-3, minibatches of 128); it keeps the parameters of the pass that scored
        best on a held-out tenth of the codes and stops after ``patience`` passes
        without a better one (early stopping: a MADE overfits small code sets fast).
    """

    #: Adam's learning rate, the minibatch size and the early-stopping patience of :meth:`fit`
    learning_rate = 3e-3
    batch_size = 128
    patience = 5

    def __init__(
        self,
        num_positions: int,
        num_codes: int,
        hidden: Sequence[int] = (256, 128),
        epochs: int = 100,
    ) -> None:
        super().__init__(num_positions, num_codes)
        if not hidden or min(hidden) < 1 or epochs < 1:
            raise ConfigError(
                "the autoregressive code prior needs hidden layers of width >= 1 and "
                f"epochs >= 1, got {list(hidden)} and {epochs}"
            )
        self.epochs = epochs
        self.passes = 0  # of the last fit
        positions = torch.arange(num_positions)
        degrees = [(positions + 1).repeat_interleave(num_codes)]  # input: P K units
        degrees += [1 + torch.arange(h) % max(1, num_positions - 1) for h in hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(degrees):
            layers += [MaskedLinear(d_out[:, None] >= d_in[None, :]), nn.ReLU()]
        # the output of position p reads hidden degrees <= p, i.e. < p + 1
        out = (positions + 1).repeat_interleave(num_codes)
        layers.append(MaskedLinear(out[:, None] > degrees[-1][None, :]))
        self.net = nn.Sequential(*layers)

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        r"""The logits of :math:`p(k_p \mid k_{<p})` at every position for grids ``codes``
        (``(..., P)``): shape ``(..., P, K)``.

        The first layer reads a one-hot input, so it is computed as the sum of the ``P``
        weight columns of the codes (an embedding lookup) rather than as a product with a
        ``P K``-wide vector that is almost all zeros.
        """
        first = self.net[0]
        columns = (first.weight * first.mask).T  # (P K, hidden)
        index = codes.long() + self.num_codes * torch.arange(
            self.num_positions, device=codes.device
        )
        h = self.net[1:](F.embedding(index, columns).sum(-2) + first.bias)
        return h.reshape(*codes.shape, self.num_codes)

    def fitted_distribution(self) -> TorchDistribution:
        return AutoregressiveCodes(self)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Draw the hidden layers as ``nn.Linear`` does (uniform in
        :math:`\\pm 1/\\sqrt{\\text{fan-in}}`) from ``generator``, and zero the output
        layer, so that fitting starts from the uniform prior whatever was fitted before."""
        linear = [m for m in self.net if isinstance(m, MaskedLinear)]
        for layer in linear[:-1]:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        linear[-1].weight.zero_()
        linear[-1].bias.zero_()

    def fit(self, codes: torch.Tensor, *, generator: torch.Generator) -> None:
        """Maximum likelihood on ``codes`` from fresh parameters (:meth:`reset_parameters`),
        early-stopped on a held-out tenth of them (with fewer than 10 codes there is none,
        and the last pass is kept); the split and the minibatch order are drawn from
        ``generator``."""
        self._check_codes(codes)
        self.reset_parameters(generator)
        order = torch.randperm(len(codes), generator=generator, device=generator.device)
        order = order.to(codes.device)
        held = len(codes) // 10
        train, heldout = codes[order[held:]], codes[order[:held]]
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate)
        best, best_state, waited = -math.inf, None, 0
        self.passes = 0
        while self.passes < self.epochs:
            self.passes += 1
            order = torch.randperm(len(train), generator=generator, device=generator.device)
            for batch in order.to(codes.device).split(self.batch_size):
                with torch.enable_grad():
                    loss = -self._log_prob(train[batch]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if held == 0:
                continue
            with torch.no_grad():
                score = float(self._log_prob(heldout).mean())
            if score > best:
                best, waited = score, 0
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.fitted.fill_(True)

    def _log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        log_p = self.logits(codes).log_softmax(-1)
        return log_p.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1).sum(-1)


class AutoregressiveCodes(TorchDistribution):
    r"""The distribution of :class:`AutoregressiveCodePrior` over grids of ``P`` codes:
    ``event_shape == (P,)``, :math:`\log p(k) = \sum_p \log p(k_p \mid k_{<p})`, drawn
    ancestrally (``P`` network passes). Pyro expands it over the data plate."""

    arg_constraints: dict = {}  # noqa: RUF012  (torch's class attribute)
    has_enumerate_support = False

    def __init__(self, prior: AutoregressiveCodePrior, validate_args: bool | None = None) -> None:
        self.prior = prior
        super().__init__(
            batch_shape=torch.Size(),
            event_shape=torch.Size([prior.num_positions]),
            validate_args=validate_args,
        )

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.integer_interval(0, self.prior.num_codes - 1), 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.prior._log_prob(value)

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        device = self.prior.uniform_logits.device
        codes = torch.zeros(
            (*sample_shape, self.prior.num_positions), dtype=torch.long, device=device
        )
        for p in range(self.prior.num_positions):
            logits = self.prior.logits(codes)[..., p, :]
            codes[..., p] = dist.Categorical(logits=logits).sample()
        return codes
