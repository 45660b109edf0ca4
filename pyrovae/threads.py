"""How many CPU threads torch computes with: chosen from the size of the work unless the
user says (``--num-threads``, ``run.num_threads``).

Intra-op threads pay only when each operation is large enough to split. A training step of
the default run (digits 8x8, MLP 64-256-128-8, batch 64) is a few milliseconds of small
matrix products; a second thread gains nothing there, and when another process keeps a
core busy the OpenMP threads wait on each other at every operation: epochs of 0.06 s
became 1-6 s (issue 11). So one thread, unless a step is big.

The size of a step is estimated as ``batch size x parameter count``, about the
multiply-adds of one forward pass of the networks (an MLP uses each weight once per item;
a convolution reuses its weights over positions, so this underestimates it and such a
network gets fewer threads than it could use: pass ``--num-threads``). Pyro's tracing adds
a fixed cost per step that threads do not shorten, which is why small steps gain nothing.

Measured on the 2-core reference machine (pyrovae SVI steps with ``Trace_ELBO``, median of
5 rounds of 60 steps; time per step with 1 / 2 threads; noisy, the machine is shared):

=======================================  ========  ==============  =========
network, batch                           work (M)  1 / 2 threads   2 / 1
=======================================  ========  ==============  =========
digits 64-256-128-8, batch 64 (default)       6.5  2.9 / 3.1 ms    1.05
digits 64-256-128-8, batch 128                 13  3.2 / 2.8 ms    0.88
digits 64-256-128-8, batch 256                 26  6.2 / 5.5 ms    0.88
fashion 784-400-50, batch 8                   5.5  5.7 / 4.6 ms    0.79
fashion 784-400-50, batch 16                   11  6.1 / 4.8 ms    0.79
fashion 784-400-50, batch 32                   22  8.0 / 5.5 ms    0.68-1.21
fashion 784-400-50, batch 64                   44  7.9 / 6.9 ms    0.85-0.87
digits 64-256-128-8, batch 512                 52  7.2 / 4.5 ms    0.63
fashion 784-400-50, batch 128                  88  13.4 / 8.5 ms   0.63-0.80
fashion 784-400-50, batch 256                 176  17.9 / 11.7 ms  0.65
=======================================  ========  ==============  =========

With ``yes > /dev/null`` keeping one core busy, two threads made the same steps slower,
not faster: digits batch 64 2.9 -> 16.9 ms, Fashion-MNIST batch 64 10.1 -> 31.4 ms, batch
128 13.5 -> 36.6 ms, while one thread kept its idle speed. Below ~40 M the idle gain is
unsteady (0.68-1.21 at 22 M; none for the default run), so the rule grants one thread per
:data:`WORK_PER_THREAD` (20 M) multiply-adds of a step: one for the default run, two from
40 M (Fashion-MNIST 784-400-50 at batch 64 and up, 1.15-1.6 times faster on idle cores).
Where the cores are shared, pass ``--num-threads 1``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pyrovae.errors import ConfigError

__all__ = ["WORK_PER_THREAD", "available_cores", "choose_threads", "set_threads", "work_per_step"]

logger = logging.getLogger(__name__)

#: multiply-adds of a step (batch size x parameters) per thread; see the module docstring
WORK_PER_THREAD = 20_000_000

#: torch's own choice when pyrovae was imported: ``OMP_NUM_THREADS`` when set (``torchrun``
#: sets 1 for several processes per machine), else the cores; never exceeded automatically
TORCH_THREADS = torch.get_num_threads()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it),
    shared by the ``LOCAL_WORLD_SIZE`` processes ``torchrun`` starts on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, os.cpu_count() or cores) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def work_per_step(module: nn.Module, batch_size: int) -> int:
    """``batch_size`` x the parameter count of ``module``: about the multiply-adds of one
    forward pass of its networks on a batch (not yet materialised parameters count 0)."""
    parameters = sum(p.numel() for p in module.parameters() if not nn.parameter.is_lazy(p))
    return batch_size * parameters


def choose_threads(work: int) -> tuple[int, str]:
    """The torch thread count for steps of ``work`` multiply-adds, and why: one per
    :data:`WORK_PER_THREAD`, at least 1, at most :func:`available_cores` and
    ``TORCH_THREADS``."""
    wanted = max(1, work // WORK_PER_THREAD)
    cores, default = available_cores(), TORCH_THREADS
    threads = min(wanted, cores, default)
    why = f"{work / 1e6:.1f} M multiply-adds per step, one thread per {WORK_PER_THREAD // 10**6} M"
    if threads < wanted:
        limit = "cores" if cores <= default else "torch's default threads"
        why += f", capped by the {min(cores, default)} {limit}"
    return threads, why


def set_threads(requested: int | None, module: nn.Module, batch_size: int) -> int:
    """Set torch's thread count: ``requested`` when given, else :func:`choose_threads` for
    ``module`` stepping on batches of ``batch_size``; logs the count and why (INFO) and
    returns it."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--num-threads must be >= 1, got {requested}")
        threads, why = requested, "--num-threads"
    else:
        threads, why = choose_threads(work_per_step(module, batch_size))
    torch.set_num_threads(threads)
    logger.info("torch threads: %d (%s)", threads, why)
    return threads
