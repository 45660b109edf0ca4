r"""Operations in the latent space of a trained VAE: interpolation, traversals, arithmetic.

All of them act on the posterior means :math:`\mu_\phi(x)` of the guide and decode with
:math:`E[x \mid z]`. Between two codes :math:`z_0, z_1`, for :math:`t \in [0, 1]`:

.. math::

    \mathrm{lerp}(t) = (1 - t)\, z_0 + t\, z_1, \qquad
    \mathrm{slerp}(t) = \frac{\sin((1 - t)\,\Omega)}{\sin \Omega}\, z_0
        + \frac{\sin(t\,\Omega)}{\sin \Omega}\, z_1, \quad
    \cos \Omega = \frac{z_0 \cdot z_1}{\lVert z_0 \rVert \lVert z_1 \rVert}.

Spherical interpolation keeps the norm of the path near the norms of its ends, where a
standard normal prior puts its mass (a shell of radius :math:`\approx \sqrt{d}`), while
the midpoint of a straight line is shorter (White 2016). Both paths start at
:math:`z_0` and end at :math:`z_1` exactly. A traversal varies one coordinate of
:math:`\mu_\phi(x)` over a range of prior standard deviations and keeps the others; latent
arithmetic decodes :math:`\mu(a) - \mu(b) + \mu(c)`.

References
----------
- White (2016), Sampling Generative Networks.
- Higgins et al. (2017), beta-VAE: Learning Basic Visual Concepts with a Constrained
  Variational Framework (latent traversals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pyrovae.errors import ConfigError
from pyrovae.inference.sites import require, require_single_latent

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = [
    "INTERPOLATIONS",
    "interpolate",
    "latent_arithmetic",
    "lerp",
    "slerp",
    "traverse",
]


def _weights(steps: int, like: torch.Tensor) -> torch.Tensor:
    if steps < 2:
        raise ConfigError(f"an interpolation needs steps >= 2 (both ends), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=like.dtype, device=like.device)
    t[0], t[-1] = 0.0, 1.0
    return t[:, None]


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """``steps`` points on the line from ``z0`` to ``z1`` (both included), ``(steps, d)``."""
    t = _weights(steps, z0)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """``steps`` points on the great-circle arc from ``z0`` to ``z1`` (both included).

    Falls back to :func:`lerp` for (anti)parallel codes, where the arc is not defined.
    """
    t = _weights(steps, z0)
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return lerp(z0, z1, steps)
    sin = torch.sin(omega)
    path = torch.sin((1 - t) * omega) / sin * z0 + torch.sin(t * omega) / sin * z1
    path[0], path[-1] = z0, z1  # exact ends, whatever the rounding of sin
    return path


#: ``--slerp`` or not: name -> path function
INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def _check(vae: VAE) -> None:
    require(vae, "latent_ops", "latent-space operations")
    vae.require_unconditional("latent-space operations")
    require_single_latent(vae, "latent-space operations")


def _means(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    _check(vae)
    vae.validate_data(x, "the items")
    loc, _ = vae.encode(x.to(vae.device))
    return loc


@torch.no_grad()
def interpolate(
    vae: VAE, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10, method: str = "lerp"
) -> torch.Tensor:
    """Decoded path between the posterior means of items ``x0`` and ``x1``.

    Returns ``(steps, *event_shape)``; the first and last images are the reconstructions
    of ``x0`` and ``x1``.
    """
    if method not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {method!r}; choose one of: lerp, slerp")
    z = _means(vae, torch.stack([x0, x1]))
    return vae.decode(INTERPOLATIONS[method](z[0], z[1], steps))


@torch.no_grad()
def traverse(
    vae: VAE,
    x: torch.Tensor,
    dims: Sequence[int] | None = None,
    span: float = 3.0,
    steps: int = 9,
) -> torch.Tensor:
    """Decode :math:`\\mu(x)` with one coordinate at a time set to ``linspace(-span, span)``.

    Returns ``(len(dims), steps, *event_shape)``: row ``i`` varies dimension ``dims[i]``
    (all dimensions by default). ``span`` is in units of the standard normal prior.
    """
    if steps < 2 or span <= 0:
        raise ConfigError("a traversal needs steps >= 2 and span > 0")
    mu = _means(vae, x[None])[0]
    dims = list(range(vae.latent_dim)) if dims is None else list(dims)
    if not dims or min(dims) < 0 or max(dims) >= vae.latent_dim:
        raise ConfigError(f"dims must be latent dimensions 0..{vae.latent_dim - 1}, got {dims}")
    values = torch.linspace(-span, span, steps, device=mu.device, dtype=mu.dtype)
    z = mu.repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    return vae.decode(z)


@torch.no_grad()
def latent_arithmetic(vae: VAE, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Decode :math:`\\mu(a) - \\mu(b) + \\mu(c)` ("a is to b as ? is to c")."""
    mu = _means(vae, torch.stack([a, b, c]))
    return vae.decode(mu[0] - mu[1] + mu[2])
