"""Data-parallel training under ``torchrun``: two ``gloo`` processes on the CPU.

The ranks keep identical parameters and the gradient DistributedDataParallel applies is the
mean of the ranks' own gradients; two ranks with batch ``B`` reach the held-out ELBO of one
process with batch ``2B``; a run killed after its first checkpoint resumes bit for bit (and
on one process); a variant that cannot train data-parallel is refused before any rank waits
for another. Each ``torchrun`` costs a few seconds of start-up (two interpreters importing
torch and Pyro), so the module launches four.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pyrovae import Config, fit
from pyrovae.cli import main
from pyrovae.data import Shard, load_dataset
from pyrovae.inference.training import distributed
from pyrovae.inference.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")

#: a small run of the digits: 1437 training and 360 held-out 8x8 images
RUN = ["--hidden", "64", "--latent-dim", "4", "--num-epochs", "10", "--num-eval-samples", "100"]
RUN += ["--num-threads", "1", "--device", "cpu", "--no-progress", "-q"]


def torchrun(
    *args: str, nproc: int = 2, wait: bool = True, standalone: bool = True
) -> subprocess.Popen:
    """``python -m torch.distributed.run --standalone --nproc-per-node NPROC ARGS`` on this
    checkout, one thread per rank, every warning an error (as in the test suite);
    ``standalone=False`` leaves the rendezvous to ``ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run"]
    command += ["--standalone"] if standalone else []
    command += ["--nproc-per-node", str(nproc), *args]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"torchrun failed:\n{out}\n{err}"
    return process


def _rows(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock seconds."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _states_equal(a: dict, b: dict) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(autouse=True)
def threads() -> Iterator[None]:
    """Put back torch's thread count, which the runs in this process set to 1."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """An uninterrupted run of 10 epochs on two ranks with batch 32."""
    workdir = tmp_path_factory.mktemp("ddp") / "whole"
    torchrun("-m", "pyrovae", "train", "--workdir", str(workdir), "--batch-size", "32", *RUN)
    return workdir


# -- in one process: the shares and the helpers ----------------------------------------------


def test_the_ranks_shares_of_an_epoch_make_the_batches_of_one_process():
    """Rank r takes every W-th item of the shared order: the ranks' batches k of B items are
    together batch k of one process with W*B items; every rank has as many items."""
    num_items, batch_size, world = 103, 4, 3
    order = Shard(0, 1, seed=7).positions(num_items, True, torch.device("cpu"))
    shares = [
        Shard(r, world, seed=7).positions(num_items, True, torch.device("cpu")) for r in range(3)
    ]
    assert {len(s) for s in shares} == {num_items // world}
    together = torch.cat(shares)
    assert len(set(together.tolist())) == len(together)  # no item twice
    for k in range(len(shares[0]) // batch_size):
        ranks = torch.cat([s[k * batch_size : (k + 1) * batch_size] for s in shares])
        single = order[k * world * batch_size : (k + 1) * world * batch_size]
        assert sorted(ranks.tolist()) == sorted(single.tolist())
    data = load_dataset("digits")
    batches = list(data.batches("train", 64, drop_last=True, shard=Shard(1, 2, seed=7)))
    assert len(batches) == len(data.train) // 2 // 64


def test_outside_torchrun_every_helper_is_one_process():
    assert not distributed.launched() and not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.rank_seed(5)) == (0, 1, 5)
    assert distributed.epoch_shard(0, 3) is None and distributed.share(10) == slice(0, 10)
    values = {"elbo": -3.25, "num_data": 4}
    assert distributed.split_means(lambda part: values, 4) == values
    assert distributed.gather("state") == ["state"] and distributed.maximum(2.5) == 2.5


@pytest.mark.parametrize(
    "model, reason", [("vaegan", "torch.autograd.grad"), ("vqvae", "moving averages")]
)
def test_a_variant_that_cannot_train_data_parallel_is_refused_on_every_rank(
    model, reason, tmp_path, monkeypatch, capsys
):
    """The refusal comes before the process group starts: no rank waits for another, each
    exits with status 2, and rank 0 alone prints the message."""
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), "--model", model, "--num-epochs", "1"]
    errors = []
    for rank in (0, 1):
        env = {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank, "MASTER_PORT": 1}
        for name, value in {**env, "MASTER_ADDR": "127.0.0.1"}.items():
            monkeypatch.setenv(name, str(value))
        assert main(argv) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0].count("error:") == 1 and errors[1] == ""
    assert f"--model {model} cannot be used for data-parallel training (torchrun)" in errors[0]
    assert reason in errors[0] and not workdir.exists()


# -- two gloo processes ----------------------------------------------------------------------


def test_ddp_averages_the_ranks_gradients_and_keeps_their_parameters_identical(tmp_path):
    """Before each of four steps every rank computes its gradient without DDP, then replays the
    same noise through DDP: the gradient DDP applies is the mean of the two (which differ:
    other items, other noise), and the parameters stay identical; so too for the compiled
    step (``--compile``, its loss graph differentiated through DDP). A short training of every
    other variant that trains data-parallel (and a JIT ELBO) ends identical on both ranks, and
    an evaluation split over the ranks is the one-process mean."""
    torchrun(str(WORKER), "steps", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for step in range(4):
        local = [r["local"][step] for r in ranks]
        assert not torch.equal(ranks[0]["x"][step], ranks[1]["x"][step])
        assert any(not torch.equal(a, b) for a, b in zip(*local))
        for g0, g1, ddp0, ddp1 in zip(*local, ranks[0]["ddp"][step], ranks[1]["ddp"][step]):
            assert torch.equal(ddp0, ddp1)
            torch.testing.assert_close(ddp0, (g0 + g1) / 2, rtol=1e-6, atol=1e-7)
    assert _states_equal(ranks[0]["parameters"], ranks[1]["parameters"])
    for step in range(2):  # --compile: DDP over the compiled loss graph
        local = [r["compiled_local"][step] for r in ranks]
        for g0, g1, ddp0, ddp1 in zip(
            *local, ranks[0]["compiled_ddp"][step], ranks[1]["compiled_ddp"][step]
        ):
            assert torch.equal(ddp0, ddp1)
            torch.testing.assert_close(ddp0, (g0 + g1) / 2, rtol=1e-6, atol=1e-7)
    assert set(ranks[0]["variants"]) == {"cvae", "m2", "hvae", "jit"}
    for name, (state, history) in ranks[0]["variants"].items():
        other_state, other_history = ranks[1]["variants"][name]
        assert _states_equal(state, other_state), name
        assert history == other_history, name  # every logged number is the ranks' mean
    for rank in ranks:
        assert rank["split"]["num_data"] == 359
        assert rank["split"]["mse"] == pytest.approx(rank["whole"], rel=1e-6)


def test_two_ranks_with_batch_b_reach_the_heldout_elbo_of_one_process_with_batch_2b(
    two_ranks, tmp_path
):
    """The global minibatch of two ranks with B = 32 is 64 items, so after 10 epochs the
    held-out ELBO (mean over 360 items of K = 100 draws each) matches one process with
    B = 64 up to the Monte Carlo noise of training. That noise, measured over seeds 0-5: the
    final ELBO spreads by 0.34 nats (sd) from seed to seed, but a seed's two runs share the
    initial weights, and their difference (two ranks minus one process) was -0.05 to +0.15
    nats, sd 0.08. The tolerance, 0.5 nats, is six of those sds; a bug that let each rank
    train on all the data (one process with B = 32) gains 1.5 nats, and fails it."""
    config = Config.from_flags(
        hidden=(64,), latent_dim=4, num_epochs=10, num_eval_samples=100, batch_size=64
    )
    one = fit(config.replace(num_threads=1, device="cpu"), tmp_path / "one", progress=False)
    two = json.loads((two_ranks / "evaluation.json").read_text())
    assert two["num_data"] == one.evaluation["num_data"] == 360
    assert abs(two["elbo"] - one.evaluation["elbo"]) < 0.5
    assert load_checkpoint(two_ranks / "checkpoint.pt")["world_size"] == 2


def test_a_killed_run_resumes_bit_for_bit_and_on_another_number_of_ranks(two_ranks, tmp_path):
    """The ranks are killed (SIGKILL: no clean-up) once epoch 1 is checkpointed; resumed on two
    ranks, the run ends as the uninterrupted one, bit for bit: parameters, optimizer state,
    every metric but the seconds, and the final evaluation (each rank's random states are in
    the checkpoint). Resumed again in one process, it continues from there."""
    cut = tmp_path / "cut"
    args = ["train", "--workdir", str(cut), "--batch-size", "32", *RUN]
    launcher = torchrun(str(WORKER), "hang", str(tmp_path), *args, wait=False)
    pids = [tmp_path / f"rank{r}.pid" for r in (0, 1)]
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in pids):
        assert launcher.poll() is None, launcher.communicate()
        assert time.monotonic() < deadline, "the ranks never reached epoch 1's checkpoint"
        time.sleep(0.2)
    for pid in pids:  # the ranks, then torchrun (which may have stopped the other rank)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid.read_text()), signal.SIGKILL)
    launcher.kill()
    launcher.communicate(timeout=60)
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 1

    torchrun("-m", "pyrovae", *args, "--resume")
    whole, resumed = (load_checkpoint(w / "checkpoint.pt") for w in (two_ranks, cut))
    assert _rows(cut) == _rows(two_ranks) and len(_rows(cut)) == 10
    assert _states_equal(whole["vae"], resumed["vae"])
    assert _states_equal(whole["optimizers"], resumed["optimizers"])
    assert _states_equal(whole["rank_rng"], resumed["rank_rng"])
    evaluation = [json.loads((w / "evaluation.json").read_text()) for w in (two_ranks, cut)]
    assert evaluation[0] == evaluation[1]

    more = ["train", "--workdir", str(cut), "--resume", "--num-epochs", "11", "-q"]
    assert main([*more, "--no-progress", "--num-threads", "1"]) == 0
    rows = _rows(cut)
    assert len(rows) == 11 and rows[:10] == _rows(two_ranks)
    assert "world_size" not in load_checkpoint(cut / "checkpoint.pt")  # one process wrote it


def test_two_machines_are_two_launchers_meeting_at_a_rendezvous(two_ranks, tmp_path):
    """``--nnodes 2``: two ``torchrun`` launchers of one rank each (here on one machine, as on
    two) meet at a c10d rendezvous and train the run of one launcher with two ranks, number
    for number: the same ranks, shards, seeds and averaged gradients."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tmp_path / "nodes"
    rendezvous = ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-id", "nodes"]
    rendezvous += ["--rdzv-endpoint", f"127.0.0.1:{port}"]
    args = ["-m", "pyrovae", "train", "--workdir", str(workdir), "--batch-size", "32", *RUN]
    launchers = [torchrun(*rendezvous, *args, nproc=1, wait=False, standalone=False)]
    launchers.append(torchrun(*rendezvous, *args, nproc=1, wait=False, standalone=False))
    for launcher in launchers:
        out, err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, f"torchrun failed:\n{out}\n{err}"
    assert _rows(workdir) == _rows(two_ranks)
    assert _states_equal(
        *(load_checkpoint(w / "checkpoint.pt")["vae"] for w in (workdir, two_ranks))
    )
