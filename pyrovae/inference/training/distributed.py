r"""Data-parallel training on ``torch.distributed``: the ranks, the process group's lifetime,
and the few collectives that the trainer and the evaluation share.

``torchrun`` starts one process per device (``--nproc-per-node`` on each of ``--nnodes``
machines) and tells each its place in the environment: ``RANK`` (:math:`r`, from 0),
``WORLD_SIZE`` (:math:`W`) and ``LOCAL_RANK`` (its device on its machine). Under it,
:func:`process_group` starts the default process group (``gloo`` on the CPU, ``nccl`` on
CUDA devices, one per rank) and the loss module of the training step runs in
:class:`torch.nn.parallel.DistributedDataParallel` (:func:`wrap`), which averages the
gradients over the ranks during the backward pass.

Every rank holds the whole VAE and its optimizer. In epoch :math:`e` all ranks draw the
same permutation of the :math:`N` training items, seeded by the run's seed and :math:`e`
(:func:`epoch_shard`), and rank :math:`r` takes its share of it
(:class:`~pyrovae.data.dataset.Shard`): minibatches :math:`\mathcal{B}_r` of :math:`B`
items. The data plate keeps its scale :math:`N / B`, so each rank's loss estimates the loss
of the whole training set and the averaged gradient is the full-data gradient estimate of
the global minibatch :math:`\mathcal{B} = \bigcup_r \mathcal{B}_r` of :math:`W B` items,
the one a single process takes with batch :math:`W B`:

.. math::

    \frac{1}{W} \sum_{r=1}^{W} \nabla_\theta \Big( \frac{N}{B} \sum_{n \in \mathcal{B}_r}
        \ell_n(\theta) \Big) = \frac{N}{W B} \sum_{n \in \mathcal{B}} \nabla_\theta
        \ell_n(\theta),

with :math:`\ell_n` the negative ELBO of item :math:`n`. The ranks start from the same
parameters (DistributedDataParallel broadcasts rank 0's when it wraps the module) and take
the same averaged gradient, so their parameters stay identical; their noise differs:
rank :math:`r` seeds its Pyro and torch random streams (the reparameterization noise, a
dynamic binarization) with ``seed + r`` (:func:`rank_seed`).

Evaluation is split too: each rank evaluates a contiguous share of the held-out items
(:func:`share`; no item twice, no padding) and the per-item means are combined through an
all-reduce of sums, weighted by the shares' sizes (:func:`split_means`): the mean over all
items, on every rank. What needs all items at once (the mutual information of the collapse
diagnostics) runs on rank 0 and is broadcast (:func:`from_main_process`).

Rank 0 alone writes the run folder (checkpoints, metrics, config, figures, TensorBoard).
A checkpoint holds every rank's random states (gathered to rank 0, :func:`gather`), so a
run resumed on as many ranks continues bit for bit; on another number of ranks the
parameters, the optimizers' moments, the epoch and the KL schedule continue, and the
ranks' noise starts new streams (see :meth:`pyrovae.inference.training.Trainer.restore`).

Outside ``torchrun`` (no process group) every helper is the identity of one process:
rank 0 of 1, and a run is exactly what it is without this module.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pyrovae.data.dataset import Shard
from pyrovae.errors import PyroVAEError

__all__ = [
    "ENVIRONMENT",
    "barrier",
    "epoch_shard",
    "from_main_process",
    "gather",
    "is_distributed",
    "is_main_process",
    "launched",
    "launched_rank",
    "main_process_first",
    "maximum",
    "mean",
    "process_group",
    "rank",
    "rank_seed",
    "share",
    "split_means",
    "world_size",
    "wrap",
]

T = TypeVar("T")

#: the variables ``torchrun`` sets in every process it starts
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: how long a collective waits for the other ranks (a rank that writes figures while the
#: others wait at the final barrier takes a while; a lost rank ends the run after this)
TIMEOUT = datetime.timedelta(minutes=30)


# -- who am I ------------------------------------------------------------------------------


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment says so)."""
    return all(name in os.environ for name in ENVIRONMENT)


def launched_rank() -> int:
    """This process's ``RANK`` from ``torchrun``'s environment (0 outside it): known before
    the process group starts, e.g. to print an error once."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def is_distributed() -> bool:
    """Whether a default process group is running (this process is one of its ranks)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 to ``world_size() - 1`` (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or a process outside a process group: the one that writes the run folder."""
    return rank() == 0


def rank_seed(seed: int, epoch: int = 0) -> int:
    """The seed of this rank's random streams: ``seed + rank`` for a run that starts; for a
    run that resumes at ``epoch`` on another number of ranks (whose saved streams do not
    fit), a seed drawn from ``(seed, rank, epoch)``, which no rank has used before."""
    if epoch == 0:
        return seed + rank()
    return int(np.random.SeedSequence([seed, rank(), epoch]).generate_state(1)[0])


# -- the process group -----------------------------------------------------------------------


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Start the default process group for the block when ``torchrun`` launched this process;
    yields the device of this rank's tensors.

    The backend is ``nccl`` for CUDA devices (rank ``r`` uses the device ``LOCAL_RANK`` of its
    machine) and ``gloo`` on the CPU. Outside ``torchrun``, or when the caller already
    started a group (a script of its own), nothing is started and ``device`` is yielded as
    it is. The group started here is destroyed when the block ends, also on an error.

    Raises
    ------
    PyroVAEError
        When a rank has no CUDA device of its own (more processes on its machine than
        GPUs): not a ``ConfigError``, as the ranks of other machines may not meet it,
        so the command line prints it on every rank that does.
    """
    if not launched() or is_distributed():
        yield device
        return
    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise PyroVAEError(
                f"torchrun started local rank {local}, but this machine has "
                f"{torch.cuda.device_count()} CUDA devices; use --nproc-per-node "
                f"{torch.cuda.device_count()} or fewer (or --device cpu)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {}
    if (
        device.type == "cuda"
        and "device_id" in inspect.signature(dist.init_process_group).parameters
    ):
        options["device_id"] = device  # binds the group to the rank's GPU (torch >= 2.3)
    dist.init_process_group(backend, timeout=TIMEOUT, **options)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks once it is done (e.g. a
    download into a shared folder, which the others then read)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


# -- the loss module ---------------------------------------------------------------------------


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`, which broadcasts
    rank 0's parameters now and averages the gradients over the ranks in every backward
    pass through its ``forward``.

    Every parameter of pyrovae's loss modules takes part in every loss, so
    ``find_unused_parameters`` stays off (a step that left one out would stop at the next
    step with DistributedDataParallel's error). The buffers are constants (a prior's
    location and scale, a likelihood's fixed scale), so they are not broadcast again at
    every step. The parameters must exist before: call the module once first, as the
    trainer's check does.
    """
    from torch.nn.parallel import DistributedDataParallel

    device = _device()
    device_ids = [device] if device.type == "cuda" else None
    # torch 2.14 renamed broadcast_buffers (and deprecated the old name)
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, **buffers)


# -- the data ----------------------------------------------------------------------------------


def epoch_shard(seed: int, epoch: int) -> Shard | None:
    """This rank's share of epoch ``epoch``'s training items; ``None`` outside a process
    group (one process draws its order from the global random stream, as it always has).

    Every rank draws the epoch's permutation from the same seed, made of the run's
    ``seed`` and ``epoch``: the order does not depend on the number of ranks, nor on the
    random draws of training, so a resumed run finds the same order.
    """
    if not is_distributed():
        return None
    order_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    return Shard(rank=rank(), world_size=world_size(), seed=order_seed)


def share(num_items: int) -> slice:
    """This rank's contiguous share of ``num_items`` items: the shares of the ranks cover
    every item once, their sizes differ by one at most (``slice(0, num_items)`` in one
    process)."""
    r, w = rank(), world_size()
    return slice(r * num_items // w, (r + 1) * num_items // w)


# -- collectives ---------------------------------------------------------------------------------


def _device() -> torch.device:
    """Where this rank's collectives put their tensors: its CUDA device under ``nccl``."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean over the ranks of each scalar in ``values`` (the same keys on every rank),
    in one all-reduce; ``values`` unchanged in one process."""
    if not is_distributed():
        return dict(values)
    keys = list(values)
    stacked = torch.stack([values[k].detach().double().to(_device()) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= world_size()
    return {k: stacked[i].to(values[k].device, values[k].dtype) for i, k in enumerate(keys)}


def maximum(value: float) -> float:
    """The largest ``value`` over the ranks (e.g. an epoch's seconds, so that a time limit
    stops every rank after the same epoch)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather(value: T) -> list[T] | None:
    """Every rank's ``value`` (a picklable object) on rank 0, in rank order; ``None`` on the
    other ranks, ``[value]`` in one process."""
    if not is_distributed():
        return [value]
    values: list[Any] | None = [None] * world_size() if is_main_process() else None
    dist.gather_object(value, values, dst=0)
    return values


def from_main_process(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result (a picklable object) sent to every rank; the
    other ranks wait meanwhile. For what needs all items at once, e.g. the mutual
    information of the collapse diagnostics, which reads every item's code."""
    if not is_distributed():
        return compute()
    box: list[Any] = [compute() if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def split_means(
    evaluate: Callable[[slice], Mapping[str, Any]],
    num_items: int,
    *,
    counts: Collection[str] = ("num_data",),
) -> dict[str, Any]:
    r"""An evaluation over ``num_items`` items, split across the ranks and reduced exactly.

    Each rank calls ``evaluate(part)`` on its contiguous share ``part`` (:func:`share`),
    which returns per-item means over those items (a setting that does not depend on the
    items, such as ``num_samples``, is the mean of a constant); the keys in ``counts`` are
    numbers of items instead. The means are combined weighted by the shares' sizes
    :math:`n_r`, in one all-reduce of sums (in float64), and the counts are added:

    .. math::

        \bar v = \frac{1}{\sum_r n_r} \sum_r n_r\, \bar v_r

    which is the mean over all items, every item counted once: the same value on every
    rank. Integers stay integers. In one process this is ``evaluate(slice(0, num_items))``,
    untouched; with fewer items than ranks, rank 0 evaluates them all.
    """
    if not is_distributed():
        return dict(evaluate(slice(0, num_items)))
    if num_items < world_size():
        return from_main_process(lambda: dict(evaluate(slice(0, num_items))))
    part = share(num_items)
    size = part.stop - part.start
    values = dict(evaluate(part))
    keys = list(values)
    for key in keys:
        if isinstance(values[key], bool) or not isinstance(values[key], int | float):
            raise TypeError(f"split_means reduces numbers; {key!r} is {values[key]!r}")
    weighted = [values[k] if k in counts else values[k] * size for k in keys]
    sums = torch.tensor([*weighted, size], dtype=torch.float64, device=_device())
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    total = sums[-1].item()
    reduced: dict[str, Any] = {}
    for i, key in enumerate(keys):
        value = sums[i].item() if key in counts else sums[i].item() / total
        reduced[key] = round(value) if isinstance(values[key], int) else value
    return reduced
