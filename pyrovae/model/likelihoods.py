r"""Likelihoods :math:`p(x \mid z)`: from a decoder's output to a distribution over pixels.

A likelihood is a :class:`torch.nn.Module` called on the decoder's raw output
(unconstrained, of shape ``(..., *param_shape(event_shape))``: the data's shape for the
one-parameter families here) and returning an *elementwise* distribution of batch shape
``(..., *event_shape)``; the model declares the pixel dimensions independent with
``.to_event(len(event_shape))``. Bernoulli-type likelihoods work
in logits, which is both numerically safer and faster than ``probs=sigmoid(...)``.

Each likelihood checks data once, before training, with :meth:`Likelihood.validate`
(per-step support checks would cost time on every SVI step).

References
----------
- Loaiza-Ganem & Cunningham (2019), The continuous Bernoulli: fixing a pervasive
  error in variational autoencoders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.errors import ConfigError, DataError
from pyrovae.registry import Registry

__all__ = [
    "LEARN_SCALE",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "DistributionLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "make_likelihood",
]

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")
LEARN_SCALE = ("fixed", "global", "pixel")


class Likelihood(nn.Module):
    """Base class: ``forward(params)`` returns an elementwise distribution over ``x``."""

    #: closed interval of the support, checked by :meth:`validate` (None: unbounded)
    support_interval: tuple[float, float] | None = None

    def __init__(self) -> None:  # an explicit signature: Registry.build passes no options
        super().__init__()

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError  # abstract

    def param_shape(self, event_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the decoder's output for one item of ``event_shape``: the data's
        own shape here (one parameter per value); a likelihood with several parameters per
        value (a mixture, a categorical column) widens it, and the decoders are built to
        this shape."""
        return tuple(event_shape)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """:math:`E[x \\mid z]`, used for reconstructions and sample images."""
        return self(params).mean

    #: the name the likelihood is registered under, used in messages
    name: str = "likelihood"
    #: whether NaN in the data marks a missing value (whose log-density is 0) rather than
    #: bad data
    allows_missing: bool = False

    def input_transform(self, event_shape: tuple[int, ...]) -> nn.Module | None:
        """The guide's input layer for data this likelihood models (``None``: the encoder
        reads ``x`` as it is); a module with ``num_features``, the width it outputs (a
        table's one-hot categories and zero-filled missing cells)."""
        return None

    #: the number of values of the grid on which the likelihood is a probability mass
    #: function that compares across papers (8-bit images: 256), so that log-likelihoods
    #: are also reported in bits per dimension; None for a density (or a Bernoulli on
    #: grey values, which is not normalised)
    discrete_bins: int | None = None

    def validate(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` if ``x`` lies outside the support."""
        if self.support_interval is None:
            return
        low, high = self.support_interval
        bad = (x < low) | (x > high)
        if bool(bad.any()):
            raise DataError(
                f"the {self.name} likelihood needs data in [{low:g}, {high:g}], but "
                f"{int(bad.sum())} values lie outside (min {float(x.min()):.4g}, max "
                f"{float(x.max()):.4g}); scale the data to [0, 1] or choose --likelihood "
                "gaussian or laplace"
            )


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    r""":math:`x_i \sim \mathrm{Bernoulli}(\sigma(\eta_i))`, the default for data in [0, 1].

    On grayscale (non-binary) data this is the usual cross-entropy loss but not a
    normalised density: binarize the data for a log-likelihood that compares with
    published numbers.
    """

    support_interval = (0.0, 1.0)
    name = "bernoulli"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False: grayscale values are allowed (checked once in validate)
        return dist.Bernoulli(logits=params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    r"""The continuous Bernoulli, a normalised density on :math:`[0, 1]`."""

    support_interval = (0.0, 1.0)
    name = "continuous-bernoulli"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params, validate_args=False)


class _LocScaleLikelihood(Likelihood):
    """A location-scale family with the decoder output as location.

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one data point (needed for a per-pixel scale).
    scale : float
        gaussian/laplace scale (fixed, or initial value if learned).
    learn_scale : {"fixed", "global", "pixel"}
        gaussian/laplace scale: fixed, one global, per pixel.
    min_scale : float
        lower bound of a learned scale, so the density cannot collapse onto pixels that
        are constant in the data (e.g. the border of digit images).
    """

    family: type[dist.TorchDistribution]

    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {"learn_scale": LEARN_SCALE}

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        scale: float = 0.1,
        learn_scale: str = "fixed",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if learn_scale not in LEARN_SCALE:
            raise ConfigError(
                f"unknown learn_scale {learn_scale!r}; choose one of: {', '.join(LEARN_SCALE)}"
            )
        if not scale > min_scale:
            raise ConfigError(f"the likelihood scale must be > {min_scale}, got {scale}")
        self.learn_scale = learn_scale
        self.min_scale = min_scale
        shape = tuple(event_shape) if learn_scale == "pixel" else ()
        # inverse softplus, so that min_scale + softplus(raw) == scale at the start
        raw = torch.full(shape, float(scale - min_scale)).expm1().log()
        if learn_scale == "fixed":
            self.register_buffer("raw_scale", raw)
        else:
            self.raw_scale = nn.Parameter(raw)

    @property
    def scale(self) -> torch.Tensor:
        return self.min_scale + F.softplus(self.raw_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.family(params, self.scale.expand(params.shape), validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocScaleLikelihood):
    r""":math:`x_i \sim \mathcal{N}(\mu_i, \sigma^2)` with a fixed or learned scale."""

    family = dist.Normal
    name = "gaussian"


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocScaleLikelihood):
    r""":math:`x_i \sim \mathrm{Laplace}(\mu_i, b)` with a fixed or learned scale."""

    family = dist.Laplace
    name = "laplace"


class DistributionLikelihood(Likelihood):
    """Wraps a user's callable ``params -> distribution`` as a likelihood.

    The callable receives the decoder's raw output and returns a
    ``pyro.distributions`` distribution whose batch shape equals that output's
    shape (it may already declare pixel dimensions as events). If it is an
    ``nn.Module``, its parameters train with the model.
    """

    name = "custom"

    def __init__(self, fn: Callable[[torch.Tensor], dist.Distribution]) -> None:
        super().__init__()
        self.fn = fn
        if isinstance(fn, nn.Module):
            self.module = fn

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.fn(params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        d = self.fn(params)
        try:
            return d.mean
        except NotImplementedError:  # e.g. a TransformedDistribution: Monte Carlo mean
            return d.sample((self.num_mean_samples,)).mean(0)

    #: samples of the Monte Carlo mean for distributions without a closed-form mean
    num_mean_samples = 256

    def validate(self, x: torch.Tensor) -> None:
        # torch's support check, then the density itself: a closed support such as
        # Beta's [0, 1] admits boundary values where the log-density is infinite
        d = self.fn(torch.zeros_like(x))
        bad = ~d.support.check(x)
        if not bool(bad.any()):
            bad = ~torch.isfinite(d.log_prob(x))
        if bool(bad.any()):
            raise DataError(
                f"{int(bad.sum())} data values lie outside the support {d.support} of the "
                "custom likelihood or where its log-density is infinite (e.g. exactly 0 or 1 "
                "for a Beta); transform the data into the support or change the likelihood"
            )


def make_likelihood(
    likelihood: str | Likelihood | Callable[[torch.Tensor], dist.Distribution],
    event_shape: tuple[int, ...],
    options: Mapping[str, Any] | None = None,
    **flat: Any,
) -> Likelihood:
    """Build a likelihood from a registered name (with its checked ``options``, given as
    a mapping or as keywords), a :class:`Likelihood` or a callable."""
    options = {**(options or {}), **flat}
    if isinstance(likelihood, str):
        return LIKELIHOODS.build(likelihood, options, event_shape=tuple(event_shape))
    if options:
        raise ConfigError("options are for a registered likelihood, given by its name")
    if isinstance(likelihood, Likelihood):
        return likelihood
    if callable(likelihood):
        return DistributionLikelihood(likelihood)
    raise ConfigError(f"cannot use a {type(likelihood).__name__} as a likelihood")
