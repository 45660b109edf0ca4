r"""The discretized logistic and its mixture: likelihoods for 8-bit images, in bits per dimension.

An 8-bit pixel takes one of :math:`B = 256` values; pyrovae scales them to the grid
:math:`v_k = k / (B - 1)`, :math:`k = 0, \dots, B - 1`, in :math:`[0, 1]`. The discretized
logistic puts on :math:`v_k` the mass a logistic density with location :math:`\mu` and scale
:math:`s` gives to the bin around it, half a step :math:`h = 1 / (2 (B - 1))` either side;
the first bin reaches down to :math:`-\infty` and the last up to :math:`+\infty`, so the
masses sum to one:

.. math::

    P(x = v_k) = \sigma\!\left(\frac{v_k + h - \mu}{s}\right)
               - \sigma\!\left(\frac{v_k - h - \mu}{s}\right),
    \qquad \sigma(\pm\infty) = 1, 0 \text{ at the edge bins},

with :math:`\sigma` the logistic sigmoid (the logistic's CDF). The mixture (Salimans et al.
2017) weights :math:`K` of them per sub-pixel, :math:`P(x) = \sum_j \pi_j P_j(x)`. A model
whose likelihood is a probability mass function on the data's grid has a log-likelihood
that compares across papers; it is reported in bits per dimension,
:math:`-\log p(x) / (D \ln 2)` (:func:`pyrovae.inference.evaluation.bits_per_dim`).

Each sub-pixel (each channel of each pixel) is modelled independently given :math:`z`:
PixelCNN++'s autoregressive coupling of the red, green and blue values of one pixel is not
implemented.

The log of a difference of sigmoids is computed exactly, with no fallback: for
:math:`a > b`,
:math:`\sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,(1 - e^{-(a - b)})`, so

.. math::

    \log P = \log\sigma(a) + \log\sigma(-b) + \log\!\left(-\operatorname{expm1}(-(a - b))\right),

every term finite and accurate in floating point for any :math:`\mu` and :math:`s` (here
:math:`a - b = 2h / s`). PixelCNN++ subtracts the two sigmoids and falls back to the
density at the bin's midpoint times the bin width where the difference underflows; the
identity above needs no such approximation.

References
----------
- Salimans, Karpathy, Chen & Kingma (2017), PixelCNN++: improving the PixelCNN with
  discretized logistic mixture likelihood and other modifications. ICLR.
- Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), Improved variational
  inference with inverse autoregressive flow. NeurIPS (the discretized logistic).
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions.util import broadcast_shape
from torch.distributions import constraints
from torch.nn import functional as F

from pyrovae.errors import ConfigError, DataError
from pyrovae.model.likelihoods import LIKELIHOODS, Likelihood

__all__ = [
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogisticMixture",
    "DiscretizedLogisticMixtureLikelihood",
    "OnGrid",
]

#: how far (in grid steps) a value may lie from the grid and still count as on it: float32
#: data ``k / 255`` lie within ~1e-5 steps of it
GRID_TOLERANCE = 1e-3


class OnGrid(constraints.Constraint):
    """The grid :math:`\\{k / (B - 1) : k = 0, \\dots, B - 1\\}` in :math:`[0, 1]`, to within
    ``GRID_TOLERANCE`` (1e-3) of a step."""

    is_discrete = True
    event_dim = 0

    def __init__(self, num_bins: int) -> None:
        self.num_bins = int(num_bins)
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (self.num_bins - 1)
        return (
            (k >= -GRID_TOLERANCE)
            & (k <= self.num_bins - 1 + GRID_TOLERANCE)
            & ((k - k.round()).abs() <= GRID_TOLERANCE)
        )

    def __repr__(self) -> str:
        return f"OnGrid(num_bins={self.num_bins})"


def _grid_step(num_bins: int) -> float:
    if int(num_bins) < 2:
        raise ConfigError(f"num_bins must be >= 2, got {num_bins}")
    return 1.0 / (int(num_bins) - 1)


class DiscretizedLogistic(dist.TorchDistribution):
    r"""The logistic distribution of location ``loc`` and scale ``scale`` discretized onto
    the grid :math:`k / (B - 1)` of ``num_bins`` values in :math:`[0, 1]` (module docstring).

    Elementwise: the batch shape is that of ``loc`` and ``scale`` broadcast, and the event
    shape is empty.

    Parameters
    ----------
    loc : torch.Tensor
        location :math:`\mu` of the logistic (any real; the data's scale is [0, 1]).
    scale : torch.Tensor
        scale :math:`s > 0` of the logistic.
    num_bins : int
        number of grid values :math:`B` (256 for 8-bit data).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_bins: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        self.step = _grid_step(num_bins)
        self.num_bins = int(num_bins)
        loc, scale = torch.as_tensor(loc), torch.as_tensor(scale, dtype=torch.as_tensor(loc).dtype)
        shape = broadcast_shape(loc.shape, scale.shape)
        self.loc, self.scale = loc.expand(shape), scale.expand(shape)
        super().__init__(torch.Size(shape), validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> DiscretizedLogistic:
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.step, new.num_bins = self.step, self.num_bins
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return OnGrid(self.num_bins)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = self.step / 2
        # the standardised bin edges a > b; the edge bins are open to +-infinity, where the
        # terms below are exactly 0 (selected with where, so no infinity enters a gradient)
        a = (value + half - self.loc) / self.scale
        b = (value - half - self.loc) / self.scale
        first = value < half
        last = value > 1 - half
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        upper = torch.where(last, zero, F.logsigmoid(a))  # log sigma(a)
        lower = torch.where(first, zero, F.logsigmoid(-b))  # log (1 - sigma(b))
        # log(1 - e^{-(a - b)}) with a - b = 2h / s computed as such, not as a difference
        width = torch.log(-torch.expm1(-self.step / self.scale))
        return upper + lower + torch.where(first | last, zero, width)

    def cdf_at_edges(self) -> torch.Tensor:
        """The logistic CDF at the ``B - 1`` inner bin edges, shape ``(B - 1, *batch_shape)``."""
        edges = (
            torch.arange(self.num_bins - 1, dtype=self.loc.dtype, device=self.loc.device) + 0.5
        ) * self.step
        shape = (-1,) + (1,) * len(self.batch_shape)
        return torch.sigmoid((edges.reshape(shape) - self.loc) / self.scale)

    @property
    def mean(self) -> torch.Tensor:
        r"""The exact mean of the discrete distribution, by summation by parts over the bins:
        :math:`E[x] = \sum_k v_k P(v_k) = 1 - \frac{1}{B - 1}\sum_{k=0}^{B-2} F(e_k)`, with
        :math:`F` the logistic CDF and :math:`e_k` the inner bin edges."""
        # one edge at a time keeps the memory that of one batch of parameters (B - 1 = 255
        # elementwise passes), which matters for a mixture over an image batch
        total = torch.zeros(self.batch_shape, dtype=self.loc.dtype, device=self.loc.device)
        for k in range(self.num_bins - 1):
            total = total + torch.sigmoid(((k + 0.5) * self.step - self.loc) / self.scale)
        return 1 - self.step * total

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """A logistic draw by inversion, rounded to the nearest grid value and clipped to
        [0, 1] (which is exactly the bin it falls in, the edge bins open-ended)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            finfo = torch.finfo(self.loc.dtype)
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(finfo.tiny, 1 - finfo.eps)
            y = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
            k = (y / self.step).round().clamp(0, self.num_bins - 1)
            return k * self.step


class DiscretizedLogisticMixture(dist.MixtureSameFamily):
    r"""A mixture of ``K`` :class:`DiscretizedLogistic` per element, the components on the
    last dimension of ``logits``, ``loc`` and ``scale`` (Pyro's ``MixtureSameFamily``:
    :math:`\log P(x) = \operatorname{logsumexp}_j(\log \pi_j + \log P_j(x))`; sampling draws
    a component, then from it; the mean is the weighted sum of the exact component means).

    Parameters
    ----------
    logits : torch.Tensor
        unnormalised log-weights :math:`\log \pi_j`, shape ``(*batch_shape, K)``.
    loc : torch.Tensor
        the components' locations, shape ``(*batch_shape, K)``.
    scale : torch.Tensor
        the components' scales (positive), shape ``(*batch_shape, K)``.
    num_bins : int
        number of grid values (256 for 8-bit data).
    """

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        num_bins: int = 256,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(
            dist.Categorical(logits=logits, validate_args=validate_args),
            DiscretizedLogistic(loc, scale, num_bins, validate_args=validate_args),
            validate_args=validate_args,
        )

    def expand(self, batch_shape: torch.Size, _instance=None) -> DiscretizedLogisticMixture:
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        return super().expand(batch_shape, _instance=new)


def _check_grid(x: torch.Tensor, num_bins: int, name: str) -> None:
    """Raise :class:`DataError` unless ``x`` lies on the grid of ``num_bins`` values, naming
    the ``--num-bins`` of the grid the data do lie on when there is one (scikit-learn's
    digits, 0..16 / 16, lie on 17 values)."""
    bad = ~OnGrid(num_bins).check(x)
    if not bool(bad.any()):
        return
    values = torch.unique(x.detach().flatten().double().cpu())
    hint = ""
    gaps = values.diff()
    if len(gaps) and float(values.min()) >= 0 and float(values.max()) <= 1:
        levels = round(1 / float(gaps.min()))  # the finest grid the smallest gap allows
        if 1 <= levels < 2**16 and bool(OnGrid(levels + 1).check(values).all()):
            hint = (
                f"; these data lie on the grid of {levels + 1} values k/{levels}: "
                f"use --num-bins {levels + 1}"
            )
    raise DataError(
        f"the {name} likelihood needs data on the grid k/{num_bins - 1} of --num-bins "
        f"{num_bins} values in [0, 1] (8-bit images divided by 255, --binarize none), but "
        f"{int(bad.sum())} values lie off it (e.g. {float(x[bad].flatten()[0]):.6g}){hint}"
    )


class _DiscretizedLikelihood(Likelihood):
    """What both discretized likelihoods share: the grid, its check, the scale's floor and
    the layout of the decoder's output (``n`` parameter maps per data channel, stacked on
    the first data dimension, the channels of a conv decoder)."""

    #: parameter maps per data channel (set by each likelihood)
    num_maps: int
    #: the grid's range (what a VampPrior clamps its pseudo-inputs to); :meth:`validate`
    #: checks the grid itself
    support_interval = (0.0, 1.0)

    def __init__(self, event_shape: tuple[int, ...], num_bins: int, min_scale: float) -> None:
        super().__init__()
        _grid_step(num_bins)
        if not min_scale > 0:
            raise ConfigError(f"min_scale must be > 0, got {min_scale}")
        self.num_bins = int(num_bins)
        self.min_scale = float(min_scale)
        self.event_shape = tuple(event_shape)

    @property
    def discrete_bins(self) -> int:
        return self.num_bins

    def param_shape(self, event_shape: tuple[int, ...]) -> tuple[int, ...]:
        event_shape = tuple(event_shape)
        return (self.num_maps * event_shape[0], *event_shape[1:])

    def maps(self, params: torch.Tensor) -> torch.Tensor:
        """The decoder's output ``(..., n * C, *rest)`` as ``(n, ..., C, *rest)``."""
        dim = params.dim() - len(self.event_shape)
        split = params.unflatten(dim, (self.num_maps, self.event_shape[0]))
        return split.movedim(dim, 0)

    def scale_of(self, raw: torch.Tensor) -> torch.Tensor:
        """``min_scale + softplus(raw)``: positive, floored, smooth (no dead gradient)."""
        return self.min_scale + F.softplus(raw)

    def validate(self, x: torch.Tensor) -> None:
        _check_grid(x, self.num_bins, self.name)


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(_DiscretizedLikelihood):
    r""":math:`x_i \sim \mathrm{DiscretizedLogistic}(\mu_i, s_i)` on the grid of 8-bit data,
    each sub-pixel independent given :math:`z` (:class:`DiscretizedLogistic`). The decoder
    outputs two maps per data channel: the locations, then the raw scales
    (:math:`s = s_{min} + \mathrm{softplus}(\cdot)`).

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one data point.
    num_bins : int
        discretized likelihoods: values of the data's grid k/(num_bins-1) in [0, 1].
    min_scale : float
        discretized likelihoods: floor of the logistic scale (a quarter of an 8-bit step).
    """

    name = "discretized-logistic"
    num_maps = 2

    def __init__(
        self, event_shape: tuple[int, ...], *, num_bins: int = 256, min_scale: float = 1e-3
    ) -> None:
        super().__init__(event_shape, num_bins, min_scale)

    def forward(self, params: torch.Tensor) -> DiscretizedLogistic:
        loc, raw = self.maps(params)
        return DiscretizedLogistic(loc, self.scale_of(raw), self.num_bins, validate_args=False)


@LIKELIHOODS.register("discretized-logistic-mixture")
class DiscretizedLogisticMixtureLikelihood(_DiscretizedLikelihood):
    r"""A mixture of ``num_components`` discretized logistics per sub-pixel (PixelCNN++'s
    likelihood without its coupling of colour channels; :class:`DiscretizedLogisticMixture`).
    The decoder outputs :math:`3K` maps per data channel: the :math:`K` mixture logits, the
    :math:`K` locations, the :math:`K` raw scales.

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one data point.
    num_components : int
        discretized-logistic-mixture: logistics per sub-pixel K (also sets the mixture prior's).
    num_bins : int
        discretized likelihoods: values of the data's grid k/(num_bins-1) in [0, 1].
    min_scale : float
        discretized likelihoods: floor of the logistic scale (a quarter of an 8-bit step).
    """

    name = "discretized-logistic-mixture"

    def __init__(
        self,
        event_shape: tuple[int, ...],
        *,
        num_components: int = 5,
        num_bins: int = 256,
        min_scale: float = 1e-3,
    ) -> None:
        if num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {num_components}")
        super().__init__(event_shape, num_bins, min_scale)
        self.num_components = int(num_components)
        self.num_maps = 3 * self.num_components

    def forward(self, params: torch.Tensor) -> DiscretizedLogisticMixture:
        maps = self.maps(params).unflatten(0, (3, self.num_components)).movedim(1, -1)
        logits, loc, raw = maps
        return DiscretizedLogisticMixture(
            logits, loc, self.scale_of(raw), self.num_bins, validate_args=False
        )
