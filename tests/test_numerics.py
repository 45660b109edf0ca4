"""A diverging run stops at the step where a NaN or an infinity appears: before the update
its gradient would make, with one message naming the step, the epoch, what was not finite
and the checkpoint kept, exit status 2 from the CLI, and none of Pyro's own NaN warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from pyrovae import VAE, Config, NumericsError, cli, fit, load_dataset
from pyrovae.inference import SVIStep, make_elbo
from pyrovae.inference.training import Trainer
from pyrovae.inference.training.compiled import CompiledELBO

#: 300 digits at batch 64: 4 steps per epoch, so step 6 is the second of epoch 2
TINY = {"limit": 300, "num_eval_samples": 8, "batch_size": 64}
TINY_FLAGS = ["--limit", "300", "--num-eval-samples", "8", "--no-progress", "-q"]
BAD_STEP = 6


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """The CLI's exit status, stdout and stderr; Pyro's NaN warnings recorded, not raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    nan_warnings = [w for w in caught if "Encountered" in str(w.message)]
    assert not nan_warnings, f"Pyro's NaN warnings reached the user: {nan_warnings[:2]}"
    return code, out, err


class Spy:
    """Wraps ``SVIStep.__call__``: at call :data:`BAD_STEP`, keeps the parameters and the
    checkpoint's bytes as they were before the step, then lets ``spoil`` spoil the step."""

    def __init__(self, monkeypatch, workdir: Path, spoil) -> None:
        self.calls, self.workdir, self.spoil = 0, workdir, spoil
        real = SVIStep.__call__

        def call(step: SVIStep, batch, **kwargs):
            self.calls += 1
            if self.calls != BAD_STEP:
                return real(step, batch, **kwargs)
            self.step = step
            self.params = [p.detach().clone() for p in step.parameters]
            self.checkpoint = (workdir / "checkpoint.pt").read_bytes()
            return spoil(real, step, batch, **kwargs)

        monkeypatch.setattr(SVIStep, "__call__", call)


def nan_gradient(real, step, batch, **kwargs):
    """The step with the gradient of the decoder's first weight turned into NaN."""
    weight = dict(step.loss.named_parameters())["model.decoder.net.0.weight"]
    handle = weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    try:
        return real(step, batch, **kwargs)
    finally:
        handle.remove()


def nan_loss(real, step, batch, **kwargs):
    """The step as it is, reporting a NaN loss."""
    stats = real(step, batch, **kwargs)
    return {**stats, "loss": torch.tensor(float("nan"))}


def test_a_nan_gradient_stops_the_run_before_its_update(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    spy = Spy(monkeypatch, workdir, nan_gradient)
    config = Config.from_flags(num_epochs=3, **TINY)
    with pytest.raises(NumericsError) as info:
        fit(config, workdir, progress=False)
    message = str(info.value)
    assert f"at step {BAD_STEP} (epoch 2)" in message
    assert "the gradient of model.decoder.net.0.weight is NaN" in message
    assert "its update was not applied" in message
    assert f"{workdir / 'checkpoint.pt'} keeps epoch 1" in message
    assert "--learning-rate (now 0.001)" in message and "--clip-norm" in message
    assert "\n" not in message
    # no parameter moved at the bad step, and the last good checkpoint is untouched
    assert all(torch.equal(a, b) for a, b in zip(spy.params, spy.step.parameters))
    assert (workdir / "checkpoint.pt").read_bytes() == spy.checkpoint


def test_with_clipping_the_message_names_the_gradient_that_is_not_finite(tmp_path, monkeypatch):
    """Clipping by a NaN total norm would make every gradient NaN (and name the first
    parameter): a non-finite norm is left unclipped, so the check names the right one."""
    name = "guide.encoder.net.0.weight"  # not the first parameter

    def inf_gradient(real, step, batch, **kwargs):
        weight = dict(step.loss.named_parameters())[name]
        handle = weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        try:
            return real(step, batch, **kwargs)
        finally:
            handle.remove()

    workdir = tmp_path / "run"
    Spy(monkeypatch, workdir, inf_gradient)
    config = Config.from_flags(num_epochs=3, clip_norm=10.0, **TINY)
    with pytest.raises(NumericsError, match=f"the gradient of {name} is infinite"):
        fit(config, workdir, progress=False)


def test_a_nan_loss_names_its_step_and_exits_2(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    spy = Spy(monkeypatch, workdir, nan_loss)
    code, _, err = run_cli(
        ["train", "--workdir", workdir, "--num-epochs", "3", *TINY_FLAGS], capsys
    )
    assert code == 2 and "Traceback" not in err
    assert f"training diverged at step {BAD_STEP} (epoch 2): the loss is nan;" in err
    assert "not applied" not in err  # a finite gradient: the step itself was taken
    assert (workdir / "checkpoint.pt").read_bytes() == spy.checkpoint
    assert len(err.strip().splitlines()) == 1


def test_a_huge_learning_rate_on_resume_stops_with_one_message(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--num-epochs", "1", *TINY_FLAGS]) == 0
    kept = (workdir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    argv = ["train", "--workdir", workdir, "--resume", "--num-epochs", "3", "--learning-rate"]
    code, _, err = run_cli([*argv, "1e6", *TINY_FLAGS], capsys)
    assert code == 2 and "Traceback" not in err
    assert "training diverged at step " in err and "(epoch 2)" in err
    assert "keeps epoch 1" in err and "--learning-rate (now 1e+06)" in err
    assert len(err.strip().splitlines()) == 1
    assert (workdir / "checkpoint.pt").read_bytes() == kept


def test_a_single_step_epoch_that_diverges_is_caught_by_the_evaluation(tmp_path, capsys):
    """One minibatch holds the whole training set, so the epoch's one step is its loss at
    the initial parameters (finite); what diverges is the held-out evaluation after it."""
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", workdir, "--batch-size", "2000", "--learning-rate", "10"]
    code, _, err = run_cli([*argv, "--num-epochs", "2", "--no-progress", "-q"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "training diverged after step 1 (epoch 1): the held-out" in err
    assert "no epoch had finished" in err and "--learning-rate (now 10)" in err
    assert not (workdir / "checkpoint.pt").exists()


@pytest.mark.parametrize("model", ["vaegan", "vqvae"])
def test_the_variants_own_steps_are_checked_too(model, tmp_path):
    config = Config.from_flags(model=model, num_epochs=2, learning_rate=1e6, **TINY)
    with pytest.raises(NumericsError, match=r"training diverged at step \d+ \(epoch 1\): the "):
        fit(config, tmp_path / "run", progress=False)


def test_the_compiled_route_is_checked_before_its_fused_update(monkeypatch):
    data = load_dataset("digits", limit=300)
    vae = VAE.from_section(Config.from_flags().model, data.shape)
    step = vae.training_step(make_elbo("Trace_ELBO"), learning_rate=1e-3)
    step.compile(backend="eager")
    real, calls = CompiledELBO.loss_and_grads, {"n": 0}

    def spoiled(self, **kwargs):
        value, grads = real(self, **kwargs)
        calls["n"] += 1
        if calls["n"] == BAD_STEP + 1:  # the first call is check()'s warm-up
            calls["params"] = [p.detach().clone() for p in step.parameters]
            name = next(iter(grads))
            grads = {**grads, name: torch.full_like(grads[name], float("inf"))}
        return value, grads

    monkeypatch.setattr(CompiledELBO, "loss_and_grads", spoiled)
    trainer = Trainer(vae, step, num_epochs=3, batch_size=64, diagnostic_items=0)
    with pytest.raises(NumericsError, match=rf"at step {BAD_STEP} \(epoch 2\): the gradient of "):
        trainer.fit(data, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(calls["params"], step.parameters))
