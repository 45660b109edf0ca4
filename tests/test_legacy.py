"""Run folders written by pyrovae 0.1 (a flat config.toml, checkpoint format 1 with one
optimizer) still load for evaluate, sample, inspect and --resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.config import load_config
from pyrovae.inference.training.checkpoint import load_checkpoint

LEGACY = Path(__file__).parent / "fixtures" / "legacy_run"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A copy of the legacy run folder (the tests write into it)."""
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy_run"))


def test_the_fixture_is_in_the_old_format():
    state = torch.load(LEGACY / "checkpoint.pt", weights_only=True)
    assert state["format_version"] == 1 and "optimizer" in state
    assert "latent_dim" in state["config"]  # flat keys, no sections


def test_old_config_and_checkpoint_load_as_sections():
    config = load_config(LEGACY / "config.toml")
    assert config.model["prior"] == {"name": "mixture", "num_components": 3}
    assert config.model["latent_dim"] == 2 and config.model["hidden"] == (16,)
    # the options of components the run did not choose (guide_rank, free_bits, ...) are gone;
    # the normal guide's own (its log-variance clamp, added since) take their defaults
    assert config.model["guide"] == {"name": "normal", "log_var_min": None, "log_var_max": None}
    state = load_checkpoint(LEGACY / "checkpoint.pt")
    assert list(state["optimizers"]) == ["svi"]
    vae, loaded, _ = load_run(LEGACY)
    assert loaded == config
    assert vae.model.prior.loc.shape == (3, 2)  # the mixture's three components
    assert torch.equal(vae.state_dict()["model.prior.loc"], state["vae"]["model.prior.loc"])


def test_evaluate_sample_and_inspect_read_an_old_run(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "-k", "4", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["elbo"] < 0 and result["log_likelihood"] >= result["elbo"] - 1.0
    assert main(["sample", str(run), "-n", "4", "--output", str(tmp_path / "s"), "-q"]) == 0
    assert (tmp_path / "s" / "samples-n4.png").exists()
    out = str(tmp_path / "inspect")
    code = main(["inspect", str(run), "--items", "0", "1", "-s", "5", "--output", out, "-q"])
    assert code == 0


def _rows(path: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock seconds."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_rows(new: list[dict], old: list[dict]) -> None:
    """Every number equal, bit for bit, except the Monte Carlo KL diagnostic of the mixture
    prior: its log-density is now computed with the square expanded
    (``DiagonalNormalMixture``), the same quantity in another float32 order, so it may
    differ in the last digits (relative 1e-6; the draws are the same)."""
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k != "kl"} == {
            k: v for k, v in b.items() if k != "kl"
        }
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-6)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_fresh_run_trains_the_numbers_of_pyrovae_0_1(tmp_path, one_thread):
    """The same command, run by today's code, writes pyrovae 0.1's metrics bit for bit:
    the same initial weights, batches, steps and diagnostics."""
    argv = ["train", "--workdir", str(tmp_path / "run"), "--num-epochs", "2", "--limit", "120"]
    argv += ["--hidden", "16", "--latent-dim", "2", "--prior", "mixture", "--num-components"]
    argv += ["3", "--num-eval-samples", "4", "--diagnostic-items", "50", "--no-progress", "-q"]
    assert main(argv) == 0
    assert_same_rows(_rows(tmp_path / "run" / "metrics.jsonl"), _rows(LEGACY / "metrics.jsonl"))


def test_resume_continues_an_old_run_exactly(run, capsys, one_thread):
    """The old checkpoint's one optimizer becomes the step's "svi" optimizer; resumed to 3
    epochs, the run writes what pyrovae 0.1 wrote in 3 uninterrupted epochs."""
    argv = ["train", "--workdir", str(run), "--resume", "--num-epochs", "3"]
    assert main([*argv, "--no-progress", "-q"]) == 0
    rows = _rows(run / "metrics.jsonl")
    assert len(rows) == 3
    assert_same_rows(rows, _rows(LEGACY / "metrics_3_epochs.jsonl"))
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["format_version"] == 2 and state["epoch"] == 3
    assert state["optimizers"]["svi"]["state"]  # Adam's moments came through
    assert "model" in state["config"]  # sections now
