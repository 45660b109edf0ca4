"""What each rank of the data-parallel tests (``tests/test_distributed.py``) runs under torchrun.

``python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py MODE OUT [ARGS...]``:

- ``steps OUT``: a few SVI steps of the plain VAE through DistributedDataParallel; before each
  one the rank's gradient is computed without DDP on the same batch, replaying the same noise
  (the random state is put back). Writes ``OUT/rank<r>.pt``: the local and the DDP gradients,
  the batches, the final parameters; the same check of the compiled step (``--compile``)
  for two batches; then the final parameters of a short ``train`` of every
  variant that trains data-parallel, and a split evaluation next to the one-process one.
- ``hang OUT ARGS...``: ``pyrovae train ARGS`` whose ranks, once epoch 1's checkpoint is
  written, write their process ids to ``OUT/rank<r>.pid`` and sleep: the test kills them there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyro
import torch

from pyrovae import Config, load_dataset, train
from pyrovae.inference import reconstruction_error
from pyrovae.inference.training import Trainer, distributed
from pyrovae.run import make_step, resolve_classes
from pyrovae.variants import build_variant

#: the variants (and a JIT ELBO) trained for an epoch in the ``steps`` mode
VARIANTS = {
    "cvae": {"model": "cvae"},
    "m2": {"model": "m2"},
    "hvae": {"model": "hvae"},
    "jit": {"elbo": "JitTrace_ELBO"},
}

SMALL = {"hidden": (32,), "latent_dim": 4, "num_epochs": 1, "diagnostic_items": 50}


def steps(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    data = load_dataset("digits")
    num_data, batch_size = len(data.train), 16
    config = Config.from_flags(batch_size=batch_size, **SMALL)
    torch.manual_seed(0)
    vae = build_variant(config.model, data.shape)
    step = make_step(vae, config)
    step.check({"x": data.train[:batch_size]}, num_data=num_data)
    step.distribute()
    pyro.set_rng_seed(distributed.rank_seed(0))
    shard = distributed.epoch_shard(0, 0)
    batches = vae.training_batches(data, batch_size, drop_last=True, shard=shard)
    record: dict = {"local": [], "ddp": [], "x": []}
    for _ in range(4):
        batch = next(batches)
        state = torch.get_rng_state()
        loss = step.loss(**batch, num_data=num_data)  # the loss module itself: no DDP
        record["local"].append(torch.autograd.grad(loss, step.parameters))
        torch.set_rng_state(state)  # the same noise again, now through DDP
        step(batch, num_data=num_data)
        record["ddp"].append([p.grad.clone() for p in step.parameters])
        record["x"].append(batch["x"])
    record["parameters"] = [p.detach().clone() for p in step.parameters]

    # the compiled step (--compile) through DDP: its loss graph, differentiated by autograd
    torch.manual_seed(0)
    compiled = make_step(build_variant(config.model, data.shape), config)
    compiled.compile(backend="eager")  # the traced graph as it is: no C++ compile per rank
    compiled.check({"x": data.train[:batch_size]}, num_data=num_data)
    compiled.distribute()
    named = list(compiled.compiled.estimator.named_parameters())
    record["compiled_local"], record["compiled_ddp"] = [], []
    for x in record["x"][:2]:
        state = torch.get_rng_state()
        loss = compiled.compiled(x=x, num_data=num_data)  # the compiled module itself: no DDP
        record["compiled_local"].append(torch.autograd.grad(loss, [p for _, p in named]))
        torch.set_rng_state(state)
        compiled({"x": x}, num_data=num_data)
        record["compiled_ddp"].append([p.grad.clone() for _, p in named])

    record["variants"] = {}
    for name, flags in VARIANTS.items():
        variant_config = resolve_classes(Config.from_flags(batch_size=64, **SMALL, **flags), data)
        torch.manual_seed(0)
        variant = build_variant(variant_config.model, data.shape, seed=0)
        history = train(variant, data, variant_config, progress=False)
        record["variants"][name] = (variant.state_dict(), history)

    x = data.test[:359]  # shares of 179 and 180 items
    record["split"] = distributed.split_means(
        lambda part: {
            "mse": reconstruction_error(vae, x[part]).mean().item(),
            "num_data": part.stop - part.start,
        },
        len(x),
    )
    record["whole"] = reconstruction_error(vae, x).mean().item()
    torch.save(record, out / f"rank{distributed.rank()}.pt")
    torch.distributed.destroy_process_group()


def hang(out: Path, argv: list[str]) -> int:
    from pyrovae.cli import main

    save = Trainer.save

    def save_then_hang(self: Trainer, path, history, config) -> None:
        save(self, path, history, config)
        if len(history) == 1:
            pid = out / f"rank{distributed.rank()}.pid"
            pid.with_suffix(".tmp").write_text(str(os.getpid()))
            pid.with_suffix(".tmp").rename(pid)
            time.sleep(600)

    Trainer.save = save_then_hang  # type: ignore[method-assign]
    return main(argv)


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "steps":
        steps(folder)
    else:
        sys.exit(hang(folder, sys.argv[3:]))
