r"""The latent sample sites of a model: which there are, and where one is required.

A Pyro model may have several latent sites (a hierarchical VAE draws ``z2`` and then
``z1 | z2``). A VAE names its sites in ``vae.latent_sites`` (``("z",)`` when it does not
say); a trace names them too: its sample sites that are neither observed nor a plate's
subsample. The collapse diagnostics and the ArviZ export work over every site; the tools
that need one code per item (NUTS, the gaps, the latent-space tools, latent operations,
inpainting) call :func:`require_single_latent` first.

Not every variant has what every tool reads. A variant names what it lacks in
``vae.cannot`` (capability -> the reason), and each tool calls :func:`require` with the
capability it needs, so that a run of such a variant is refused with one message:

- ``"likelihood"``: :math:`\log p(x, z) - \log q(z \mid x)` in data space (the ELBO, the
  IWAE :math:`\log p(x)`, anomaly scores, the gaps);
- ``"posterior"``: a diagonal Gaussian :math:`q(z \mid x)` per item (the collapse
  diagnostics, the ArviZ export, NUTS, the latent-space tools);
- ``"latent_ops"``: interpolation, traversal and arithmetic of codes;
- ``"inpainting"``: conditioning on some pixels (inpainting, denoising);
- ``"distributed"``: data-parallel training under ``torchrun``, whose
  DistributedDataParallel averages the gradients of one loss's ``backward()``
  (:mod:`pyrovae.inference.training.distributed`);
- ``"compile"``: ``--compile``, the SVI step traced and compiled as one graph
  (:mod:`pyrovae.inference.training.compiled`);
- ``"images"``: items that are images (grids of samples and reconstructions, traversal
  and arithmetic figures, sample-quality scores, anomaly scores of pixel files, the
  posterior inspection's :math:`E[x \mid z]` per pixel).
"""

from __future__ import annotations

from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ConfigError

__all__ = ["CAPABILITIES", "latent_sites", "require", "require_single_latent", "trace_latent_sites"]

#: what a tool may need of a variant (see the module docstring)
CAPABILITIES = (
    "likelihood",
    "posterior",
    "latent_ops",
    "inpainting",
    "distributed",
    "compile",
    "images",
)


def latent_sites(vae: object) -> tuple[str, ...]:
    """The names of ``vae``'s latent sites: ``vae.latent_sites``, or ``("z",)`` without one."""
    return tuple(getattr(vae, "latent_sites", ("z",)))


def trace_latent_sites(trace: poutine.Trace) -> list[str]:
    """The latent sample sites of ``trace``, in the order they were drawn."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def require_single_latent(vae: object, what: str) -> None:
    """Raise :class:`ConfigError` unless ``vae`` has exactly one latent site, as ``what`` needs."""
    sites = latent_sites(vae)
    if len(sites) != 1:
        raise ConfigError(
            f"{what} works on a model with one latent site; this model has {len(sites)} "
            f"({', '.join(sites)})"
        )


def require(vae: object, capability: str, what: str) -> None:
    """Raise :class:`ConfigError` when ``vae`` names ``capability`` (one of
    :data:`CAPABILITIES`) in its ``cannot`` table, or its likelihood in its own (a table's
    rows are not images), as ``what`` needs it."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; one of {CAPABILITIES}")
    reason = getattr(vae, "cannot", {}).get(capability)
    if reason is not None:
        name = getattr(vae, "name", type(vae).__name__)
        raise ConfigError(f"--model {name} cannot be used for {what}: {reason}")
    likelihood = getattr(getattr(vae, "model", None), "likelihood", None)
    reason = getattr(likelihood, "cannot", {}).get(capability)
    if reason is not None:
        name = getattr(likelihood, "name", type(likelihood).__name__)
        raise ConfigError(f"--likelihood {name} cannot be used for {what}: {reason}")
