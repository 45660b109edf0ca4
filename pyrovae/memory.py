"""Will a run's networks fit? Their size, estimated before anything is allocated, against
the memory available.

A configuration such as ``--hidden 1000000000`` would otherwise fail inside torch's
allocator (or, worse, succeed and swap); :func:`check_networks_fit` builds the variant on
torch's ``meta`` device, where tensors have shapes but no storage, counts its parameters
and refuses a run whose parameters, gradients and Adam's two moments would not fit the
memory available (``MemAvailable`` of ``/proc/meminfo``, or the GPU's free memory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from pyro.util import get_rng_state, set_rng_state

from pyrovae.errors import ConfigError

__all__ = ["available_bytes", "check_networks_fit", "parameter_bytes"]

logger = logging.getLogger(__name__)

#: copies of each parameter that training holds: the weights, their gradients and Adam's
#: first and second moments
TRAINING_COPIES = 4


def available_bytes(device: torch.device) -> int | None:
    """Memory that ``device`` can still allocate: a GPU's free memory, else the machine's
    ``MemAvailable`` (``/proc/meminfo``; free pages where there is no such file). ``None``
    when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def parameter_bytes(build: Callable[[], torch.nn.Module]) -> tuple[int, int] | None:
    """``(parameters, bytes)`` of the module ``build()`` returns, built on the ``meta``
    device (nothing allocated, the random states left as they were); ``None`` when it
    cannot be built there."""
    state = get_rng_state()
    try:
        with torch.device("meta"):
            module = build()
        params = list(module.parameters())
    except Exception:  # a builder that needs real tensors: no estimate
        return None
    finally:
        set_rng_state(state)
    count = sum(p.numel() for p in params)
    return count, sum(p.numel() * p.element_size() for p in params)


def check_networks_fit(build: Callable[[], torch.nn.Module], device: torch.device) -> None:
    """Refuse (:class:`ConfigError`) networks whose training state, ``TRAINING_COPIES``
    times their parameters, needs more memory than ``device`` has available."""
    size = parameter_bytes(build)
    available = available_bytes(device)
    if size is None or available is None:
        return
    count, nbytes = size
    needed = TRAINING_COPIES * nbytes
    logger.debug("networks: %d parameters, %.3f GB to train", count, needed / 1e9)
    if needed > available:
        where = "free on the GPU" if device.type == "cuda" else "available"
        raise ConfigError(
            f"the networks of this configuration have {count:.3g} parameters: training them "
            f"(weights, gradients and Adam's state) needs {needed / 1e9:.1f} GB, more than "
            f"the {available / 1e9:.1f} GB of memory {where}; use a smaller --hidden or "
            "--latent-dim (or --num-classes)"
        )
