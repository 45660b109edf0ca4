r"""Inpainting and denoising with a trained VAE.

**Inpainting.** Given an item :math:`x` whose pixels are observed only where a boolean
mask :math:`m` is true, the model conditions on the observed pixels alone with Pyro's
``obs_mask`` at its likelihood site, so

.. math::

    \log p(x_{obs} \mid z) = \sum_{i:\, m_i} \log p(x_i \mid z)

and the missing pixels do not enter it, whatever they hold. The missing pixels are
recovered from the posterior :math:`p(z \mid x_{obs})` by self-normalised importance
sampling with the guide as proposal
(:func:`~pyrovae.inference.evaluation.importance_weights` with ``mask=``). The guide
reads a complete image, so it is given the observed pixels with the missing ones filled
in (at first with the mean training image); ``K`` draws
:math:`z_k \sim q(z \mid x_{fill})` get weights

.. math::

    \tilde w_k \propto \frac{p(x_{obs} \mid z_k)\, p(z_k)}{q(z_k \mid x_{fill})},
    \qquad \hat x_{miss} = \sum_k \tilde w_k\, E[x_{miss} \mid z_k],

the posterior mean of the missing pixels. Each further round refills the missing
pixels with :math:`\hat x_{miss}` and samples again (a better proposal). Observed pixels
are returned unchanged.

**Denoising.** A corrupted item is encoded and decoded,
:math:`E[x \mid z = \mu_\phi(\tilde x)]`: the decoder can only produce images like the
training data.

References
----------
- Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models (imputation of missing data).
- Mattei & Frellsen (2019), MIWAE: Deep Generative Modelling and Imputation of Incomplete
  Data Sets (importance-weighted imputation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.evaluation import chunk_size, eval_mode, importance_weights
from pyrovae.inference.sites import require, require_single_latent
from pyrovae.progress import progress_bar
from pyrovae.registry import Registry

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "CORRUPTIONS",
    "MASKS",
    "corrupt",
    "denoise",
    "inpaint",
    "make_mask",
]

#: mask patterns: name -> ``f(num_items, event_shape, fraction, generator)`` giving a
#: boolean mask, ``True`` where a pixel is observed
MASKS: Registry = Registry("mask")


def _image_size(event_shape: Sequence[int]) -> tuple[int, int]:
    if len(event_shape) < 2:
        raise ConfigError(
            f"the half and center masks need images (..., height, width); items have shape "
            f"{tuple(event_shape)}: use --mask random"
        )
    return event_shape[-2], event_shape[-1]


@MASKS.register("half")
def half_mask(
    num_items: int, event_shape: Sequence[int], fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """The bottom half of every image is missing."""
    height, _ = _image_size(event_shape)
    mask = torch.ones(num_items, *event_shape, dtype=torch.bool)
    mask[..., height - height // 2 :, :] = False
    return mask


@MASKS.register("center")
def center_mask(
    num_items: int, event_shape: Sequence[int], fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """A central square of half the image's height and width is missing."""
    height, width = _image_size(event_shape)
    mask = torch.ones(num_items, *event_shape, dtype=torch.bool)
    top, left = height // 4, width // 4
    mask[..., top : top + height // 2, left : left + width // 2] = False
    return mask


@MASKS.register("random")
def random_mask(
    num_items: int, event_shape: Sequence[int], fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Each pixel is missing with probability ``fraction``, independently."""
    return torch.rand(num_items, *event_shape, generator=generator) >= fraction


def make_mask(
    name: str, num_items: int, event_shape: Sequence[int], fraction: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """A registered mask pattern (:data:`MASKS`): ``True`` = observed, shape ``(N, *event)``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the missing fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    return MASKS[name](num_items, tuple(event_shape), fraction, generator)


def _check(vae: VAE, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if vae.needs_labels:
        raise ConfigError("inpainting and denoising work on a plain VAE run (--model vae)")
    require(vae, "inpainting", "inpainting and denoising")
    require_single_latent(vae, "inpainting and denoising")
    vae.validate_data(x, "the items")
    if mask.dtype != torch.bool or mask.shape != x.shape:
        raise DataError(
            f"the mask must be a boolean tensor of the items' shape {tuple(x.shape)}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    return mask.to(x.device)


@torch.no_grad()
def inpaint(
    vae: VAE,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    fill: torch.Tensor | float = 0.5,
    num_samples: int = 100,
    rounds: int = 3,
    batch_size: int = 500,
) -> torch.Tensor:
    """Fill in the pixels of ``x`` where ``mask`` is ``False`` (see the module docstring).

    Parameters
    ----------
    vae : VAE
        A trained VAE.
    x : torch.Tensor
        Items ``(N, *event_shape)``; the values of the missing pixels are never read.
    mask : torch.Tensor
        Boolean, the shape of ``x``; ``True`` where a pixel is observed.
    fill : torch.Tensor or float
        The first guess of the missing pixels for the guide's input, e.g. the mean
        training image.
    num_samples : int
        Importance samples :math:`K` per round.
    rounds : int
        Rounds of importance sampling, each with the guide on the previous completion.

    Returns
    -------
    torch.Tensor
        ``x`` with its missing pixels replaced by their posterior mean.
    """
    if num_samples < 1 or rounds < 1 or batch_size < 1:
        raise ConfigError("num_samples, rounds and batch_size must be >= 1")
    x = x.to(vae.device)
    mask = _check(vae, x, mask)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x)
    chunk = chunk_size(batch_size, num_samples * math.prod(x.shape[1:]))
    completed = []
    with eval_mode(vae), progress_bar(total=len(x), desc="inpainting", unit="item") as bar:
        for start in range(0, len(x), chunk):
            xb, mb = x[start : start + chunk], mask[start : start + chunk]
            current = torch.where(mb, xb, fill[start : start + chunk])
            for _ in range(rounds):
                # the guide reads the current completion; the model the observed pixels only
                w = importance_weights(vae, current, num_samples, mask=mb, mean=True)
                log_w = w.log_weight
                weights = torch.softmax(log_w, dim=0).reshape(*log_w.shape, *[1] * (x.dim() - 1))
                current = torch.where(mb, xb, (weights * w.mean).sum(0))
            completed.append(current)
            bar.update(len(xb))
    return torch.cat(completed)


#: corruptions for denoising: name -> ``f(x, level, generator)``
CORRUPTIONS: Registry = Registry("corruption")


@CORRUPTIONS.register("flip")
def flip_noise(x: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Each pixel is replaced by ``1 - x`` with probability ``level`` (salt and pepper)."""
    flip = torch.rand(x.shape, generator=generator) < level
    return torch.where(flip.to(x.device), 1 - x, x)


@CORRUPTIONS.register("gaussian")
def gaussian_noise(x: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, level^2) noise and clip to [0, 1]."""
    return (x + level * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)


def corrupt(x: torch.Tensor, kind: str = "flip", level: float = 0.1, seed: int = 0) -> torch.Tensor:
    """``x`` corrupted by the registered noise ``kind`` (:data:`CORRUPTIONS`) at ``level``."""
    if level <= 0:
        raise ConfigError(f"the noise level must be > 0, got {level}")
    return CORRUPTIONS[kind](x, level, torch.Generator().manual_seed(seed))


@torch.no_grad()
def denoise(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Reconstruct corrupted items: :math:`E[x \\mid z = \\mu_\\phi(\\tilde x)]`."""
    _check(vae, x, torch.ones_like(x, dtype=torch.bool))
    with eval_mode(vae):
        return torch.cat(
            [vae.reconstruct(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )
