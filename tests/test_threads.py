"""torch's thread count: one per 20 M multiply-adds of a training step, within the cores and
torch's own default, unless ``--num-threads`` says otherwise (:mod:`pyrovae.threads`).

The autouse fixture of ``conftest.py`` puts torch's thread count back after every test."""

from __future__ import annotations

import logging

import pytest
import torch

from pyrovae import Config, cli, load_run, threads
from pyrovae.errors import ConfigError
from pyrovae.variants import build_variant

TINY = ["--num-epochs", "1", "--num-eval-samples", "4", "--no-progress"]


def _network(shape=(1, 8, 8), **flags):
    return build_variant(Config.from_flags(**flags).model, shape)


@pytest.fixture
def cores(monkeypatch):
    """``cores(n)``: pretend this process may use ``n`` cores and torch's default is ``n``."""

    def pretend(n: int) -> None:
        monkeypatch.setattr(threads, "available_cores", lambda: n)
        monkeypatch.setattr(threads, "TORCH_THREADS", n)

    return pretend


def test_the_default_digits_network_gets_one_thread(cores):
    cores(64)
    work = threads.work_per_step(_network(), 64)  # pyrovae train: MLP 64-256-128-8, batch 64
    assert work == 64 * 102_224
    assert threads.choose_threads(work)[0] == 1


def test_a_big_network_gets_a_thread_per_20_million_multiply_adds(cores):
    # Fashion-MNIST's MLP 784-400-50
    vae = _network((1, 28, 28), hidden=(400,), latent_dim=50)
    cores(64)
    assert threads.choose_threads(threads.work_per_step(vae, 64))[0] == 2  # 44 M
    assert threads.choose_threads(threads.work_per_step(vae, 256))[0] == 8  # 176 M
    cores(2)
    count, why = threads.choose_threads(threads.work_per_step(vae, 256))
    assert count == 2 and "capped by the 2 cores" in why


@pytest.mark.parametrize("n", [1, 2, 3, 16])
def test_never_more_threads_than_cores(n, cores):
    cores(n)
    assert threads.choose_threads(10**12)[0] == n


def test_never_more_than_torchs_own_default(monkeypatch):
    """``OMP_NUM_THREADS`` (torchrun sets 1 for several processes) caps the choice."""
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setattr(threads, "TORCH_THREADS", 3)
    count, why = threads.choose_threads(10**12)
    assert count == 3 and "torch's default" in why


def test_torchrun_processes_on_one_machine_share_its_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 8)
    assert threads.available_cores() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.available_cores() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.available_cores() == 1


def test_an_explicit_count_wins(cores, caplog):
    cores(64)
    big = _network((1, 28, 28), hidden=(400,), latent_dim=50)
    with caplog.at_level(logging.INFO, logger="pyrovae.threads"):
        assert threads.set_threads(1, big, 1024) == 1
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 (--num-threads)" in caplog.text
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="pyrovae.threads"):
        assert threads.set_threads(None, _network(), 64) == 1  # the rule's count, and why
    assert torch.get_num_threads() == 1
    assert "6.5 M multiply-adds per step" in caplog.text
    with pytest.raises(ConfigError, match="--num-threads must be >= 1"):
        threads.set_threads(0, big, 64)


def test_train_and_evaluate_set_the_rules_count(tmp_path, cores, capsys, caplog):
    """Without --num-threads, ``train`` and the commands on a run end with the rule's count
    for the run's network and batch size; with it, with the count given."""
    cores(2)
    flags = ["--hidden", "2000", "--batch-size", "256", *TINY]  # 8x8 digits: 79 M per step
    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO, logger="pyrovae.threads"):
        assert cli.main(["train", "--workdir", str(tmp_path / "big"), *flags]) == 0
    vae, config, _ = load_run(tmp_path / "big")
    work = threads.work_per_step(vae, config.optimization["batch_size"])
    assert threads.choose_threads(work)[0] == torch.get_num_threads() == 2
    assert f"torch threads: 2 ({work / 1e6:.1f} M multiply-adds per step" in caplog.text
    assert config.run["num_threads"] is None  # the run's config keeps "automatic"

    torch.set_num_threads(1)
    assert cli.main(["evaluate", str(tmp_path / "big"), "-k", "2", "-q"]) == 0
    assert torch.get_num_threads() == 2
    assert cli.main(["evaluate", str(tmp_path / "big"), "-k", "2", "-q", "--num-threads", "1"]) == 0
    assert torch.get_num_threads() == 1

    assert (
        cli.main(["train", "--workdir", str(tmp_path / "one"), *flags, "--num-threads", "1"]) == 0
    )
    assert torch.get_num_threads() == 1
    capsys.readouterr()
