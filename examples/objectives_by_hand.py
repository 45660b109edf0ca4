"""Train with pyrovae's objectives, schedules and guides by hand: each is one line.
================================================================================

An IAF guide, the IWAE bound with K = 5 samples and a cyclical KL schedule, in a plain
PyTorch loop over ``ELBOModule`` + Adam (what :class:`pyrovae.inference.Trainer`
does), printing the KL weight, the held-out ELBO and the collapse diagnostics::

    .venv/bin/python examples/objectives_by_hand.py          # under a minute on 2 CPU cores
    .venv/bin/python examples/objectives_by_hand.py --num-epochs 1 --limit 64   # smoke test

Swap any line: ``guide="lowrank"`` or ``"normal"``; ``FreeBitsELBO(free_bits=0.5)`` (with
the normal guide), ``InfoVAEELBO()`` or Pyro's ``Trace_ELBO()`` for the objective;
``LinearSchedule`` or ``ConstantSchedule`` for the KL weight.
"""

from __future__ import annotations

import argparse

import pyro
import torch

from pyrovae import VAE, load_dataset
from pyrovae.inference import IWAE, heldout_elbo
from pyrovae.inference.inspection.diagnostics import diagnose
from pyrovae.inference.training.schedules import CyclicalSchedule


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--num-epochs", type=int, default=40)
    parser.add_argument("--limit", type=int, help="use only the first N train and test images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: one thread is as fast, and safe on shared cores
    pyro.set_rng_seed(args.seed)

    data = load_dataset("digits", binarize="static", limit=args.limit, seed=args.seed)
    vae = VAE(data.shape, latent_dim=8, guide="iaf", num_flows=2)  # the guide: one argument
    loss_fn = IWAE(num_particles=5, max_plate_nesting=1)(vae.model, vae.guide)  # the bound
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    steps_per_epoch = max(1, len(data.train) // args.batch_size)
    schedule = CyclicalSchedule(  # the KL weight of step t
        beta=1.0, total_steps=args.num_epochs * steps_per_epoch, num_cycles=2, cycle_ratio=0.5
    )

    print(f"{'epoch':>5} {'beta':>6} {'held-out ELBO':>14} {'KL':>6} {'active units':>13}")
    rows, step = [], 0
    for epoch in range(1, args.num_epochs + 1):
        for x in data.batches("train", args.batch_size, shuffle=True, drop_last=True):
            loss = loss_fn(x, num_data=len(data.train), beta=schedule(step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        codes = diagnose(vae, data.test)  # on the held-out images
        row = {
            "epoch": epoch,
            "beta": schedule(step - 1),
            "test_elbo": heldout_elbo(vae, data.test),  # the true ELBO, whatever the bound
            **codes,
        }
        rows.append(row)
        print(
            f"{epoch:>5} {row['beta']:>6.2f} {row['test_elbo']:>14.2f} {row['kl']:>6.2f} "
            f"{row['active_units']:>10} / 8"
        )
    return rows


if __name__ == "__main__":
    main()
