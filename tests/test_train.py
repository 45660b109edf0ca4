"""Training end to end: the loop learns, checkpoints round-trip, resume is exact,
and every registered prior, likelihood, network and ELBO trains."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import VAE, Config, ConfigError, fit, load_dataset, load_run, train
from pyrovae.errors import CheckpointError, DataError, PyroVAEError
from pyrovae.guides import ENCODERS
from pyrovae.inference import ELBOS, SVIStep, evaluate, heldout_elbo
from pyrovae.inference.training.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.model import DECODERS, LIKELIHOODS, PRIORS
from pyrovae.run import make_step
from pyrovae.runfolder import RunFolderError

FAST = {"num_eval_samples": 8, "eval_batch_size": 500, "batch_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_improves_heldout_elbo(digits):
    """Untrained, the Bernoulli decoder outputs logits near 0: about -64 log 2 = -44.4 nats
    per 8x8 image. Twenty epochs must gain far more than the epoch-to-epoch noise (< 1 nat)."""
    config = Config.from_flags(num_epochs=20, **FAST)
    torch.manual_seed(0)
    vae = VAE.from_section(config.model, digits.shape)
    before = heldout_elbo(vae, digits.test)
    history = train(vae, digits, config, progress=False)
    after = heldout_elbo(vae, digits.test)
    assert before < -40
    assert after > before + 10
    # the single-sample held-out estimate over 360 images has a standard error ~0.1 nat
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1
    assert len(history) == 20 and history[-1]["epoch"] == 20


def test_checkpoint_roundtrip_gives_identical_evaluation(tmp_path, digits):
    config = Config.from_flags(num_epochs=2, **FAST)
    result = fit(config, tmp_path / "run", progress=False)
    # the same device, so that the same seed gives the same random stream
    loaded, loaded_config, checkpoint = load_run(tmp_path / "run", device=result.vae.device)
    assert loaded_config == config and checkpoint["epoch"] == 2
    assert _state_equal(result.vae.state_dict(), loaded.state_dict())
    x = digits.test.to(result.vae.device)
    torch.manual_seed(1)
    a = evaluate(result.vae, x, num_samples=16)
    torch.manual_seed(1)
    b = evaluate(loaded, x, num_samples=16)
    assert a == b


class Interrupt(Exception):
    """Stands for a Ctrl-C or a killed process in the middle of an epoch."""


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    """An uninterrupted 4-epoch run and a run stopped in epoch 3 then resumed end
    bit-for-bit identical: same parameters, optimizer state and metrics."""
    config = Config.from_flags(num_epochs=4, **FAST)
    whole = fit(config, tmp_path / "whole", progress=False)

    real_step, calls = SVIStep.__call__, {"n": 0}

    def failing_step(self, batch, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 22 + 5:  # 22 steps per epoch: stop inside epoch 3
            raise Interrupt
        return real_step(self, batch, **kwargs)

    monkeypatch.setattr(SVIStep, "__call__", failing_step)
    with pytest.raises(Interrupt):
        fit(config, tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    monkeypatch.setattr(SVIStep, "__call__", real_step)

    resumed = fit(config, tmp_path / "cut", resume=True, progress=False)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in whole.history]
    assert [r["test_elbo"] for r in resumed.history] == [r["test_elbo"] for r in whole.history]
    assert _state_equal(whole.vae.state_dict(), resumed.vae.state_dict())
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["optimizers"]["svi"]["state"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["optimizers"]["svi"]["state"]
    assert all(_state_equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_resume_can_extend_a_finished_run(tmp_path):
    fit(Config.from_flags(num_epochs=1, **FAST), tmp_path, progress=False)
    result = fit(Config.from_flags(num_epochs=2, **FAST), tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_a_time_limit_stops_after_the_epoch_that_passes_it_and_resume_honours_it(tmp_path):
    # every epoch takes more than a microsecond: the limit stops the run after its first
    tiny = Config.from_flags(num_epochs=3, time_limit=1e-6, **FAST)
    result = fit(tiny, tmp_path, progress=False)
    assert [r["epoch"] for r in result.history] == [1]
    # a resumed run counts the seconds of its earlier epochs: still out of time
    again = fit(tiny, tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in again.history] == [1]
    # a larger budget continues it to num_epochs
    more = Config.from_flags(num_epochs=3, time_limit=1e6, **FAST)
    done = fit(more, tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in done.history] == [1, 2, 3]


def test_existing_run_is_not_overwritten(tmp_path):
    fit(Config.from_flags(num_epochs=1, **FAST), tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(PyroVAEError, match="already holds a run"):
        fit(Config.from_flags(num_epochs=1, latent_dim=3, **FAST), tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_another_architecture_is_refused(tmp_path):
    fit(Config.from_flags(num_epochs=1, **FAST), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"another architecture \(latent_dim: 8 -> 3\)"):
        fit(
            Config.from_flags(num_epochs=2, latent_dim=3, **FAST),
            tmp_path,
            resume=True,
            progress=False,
        )


def test_resume_with_another_split_is_refused_unless_the_checkpoint_holds_no_config(tmp_path):
    """Another --limit changes which items train: refused. A checkpoint without a config
    (pyrovae 0.1 could save none) has nothing to compare and resumes."""
    flags = {"num_epochs": 1, "limit": 200, **FAST}
    fit(Config.from_flags(**flags), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"another split of the data \(limit: 200 -> 300\)"):
        fit(Config.from_flags(**{**flags, "limit": 300}), tmp_path, resume=True, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    state.pop("format_version", None)
    save_checkpoint({**state, "config": {}}, path)
    resumed = fit(Config.from_flags(**{**flags, "num_epochs": 2}), tmp_path, resume=True)
    assert len(resumed.history) == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RunFolderError, match="disk full; the previous one is kept"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path)


def _one_step(vae: VAE, x: torch.Tensor, config: Config) -> None:
    step = make_step(vae, config)
    with pyro.validation_enabled(True):
        step.check({"x": x}, num_data=1000)
    before = [p.detach().clone() for p in step.parameters]
    loss = step({"x": x}, num_data=1000)["loss"]
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, step.parameters))


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
@pytest.mark.parametrize("prior", PRIORS.names())
def test_every_prior_likelihood_combination_trains_one_step(prior, likelihood, digits):
    # a learned per-pixel scale where the likelihood has a scale (options belong to it)
    scale = {"learn_scale": "pixel"} if "learn_scale" in LIKELIHOODS.options(likelihood) else {}
    x = digits.train[:32]
    if likelihood == "columns":  # a table's likelihood: the digits as 64 real columns
        scale, x = {"columns": ",".join(["real"] * 64)}, x.flatten(1)
    if "num_bins" in LIKELIHOODS.options(likelihood):  # the digits' grid, 0..16 / 16
        scale["num_bins"] = 17
    config = Config.from_flags(prior=prior, likelihood=likelihood, **scale)
    if prior == "vamp" and LIKELIHOODS[likelihood].support_interval is None:
        # the pseudo-inputs are clamped to the data range, which such a likelihood leaves open
        with pytest.raises(ConfigError, match="does not bound"):
            VAE.from_section(config.model, x.shape[1:])
        return
    vae = VAE.from_section(config.model, x.shape[1:])
    _one_step(vae, x, config)


@pytest.mark.parametrize("network", sorted(set(ENCODERS) & set(DECODERS)))
def test_every_network_trains_one_step(network, digits):
    config = Config.from_flags(encoder=network, decoder=network)
    vae = VAE.from_section(config.model, digits.shape)
    _one_step(vae, digits.train[:32], config)
    assert vae.sample(5).shape == (5, *digits.shape)


@pytest.mark.parametrize("elbo", ELBOS.names())
@pytest.mark.parametrize("particles", [(1, False), (3, True)])
def test_every_elbo_trains(elbo, particles, digits):
    num_particles, vectorize = particles
    options = {"num_particles": num_particles, "vectorize_particles": vectorize}
    if elbo in ("IWAE", "RenyiELBO") and num_particles == 1:
        with pytest.raises(ConfigError, match="K >= 2"):  # one particle is the ELBO
            Config.from_flags(elbo=elbo, **options)
        return
    config = Config.from_flags(elbo=elbo, num_epochs=2, **options, **FAST)
    torch.manual_seed(0)
    vae = VAE.from_section(config.model, digits.shape)
    history = train(vae, digits, config, progress=False)
    assert all(math.isfinite(r["train_elbo"]) for r in history)
    assert history[-1]["test_elbo"] > -44.4  # better than logits of 0 (64 log 2 nats)


def test_beta_is_recorded_and_changes_the_objective(digits):
    config = Config.from_flags(beta=4.0, num_epochs=1, **FAST)
    vae = VAE.from_section(config.model, digits.shape)
    assert train(vae, digits, config, progress=False)[0]["beta"] == 4.0


def test_user_prior_and_likelihood_objects(digits):
    prior = dist.Laplace(torch.zeros(4), torch.ones(4)).to_event(1)
    vae = VAE(
        digits.shape,
        latent_dim=4,
        prior=prior,
        likelihood=lambda logits: dist.ContinuousBernoulli(logits=logits),
    )
    _one_step(vae, digits.train[:16], Config.from_flags(latent_dim=4))
    assert vae.sample(3).shape == (3, 1, 8, 8)


def test_prior_of_the_wrong_dimension_is_refused():
    with pytest.raises(ConfigError, match=r"event_shape \(4,\)"):
        VAE((1, 8, 8), latent_dim=4, prior=dist.Normal(torch.zeros(3), 1.0).to_event(1))


def test_generation_and_reconstruction_shapes(digits):
    vae = VAE(digits.shape, latent_dim=2)
    images, z = vae.sample(7, return_latents=True)
    assert images.shape == (7, 1, 8, 8) and z.shape == (7, 2)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert vae.reconstruct(digits.test[:5]).shape == (5, 1, 8, 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda(tmp_path: Path):
    result = fit(Config.from_flags(num_epochs=2, device="cuda", **FAST), tmp_path, progress=False)
    assert all(p.device.type == "cuda" for p in result.vae.parameters())
    assert result.data.train.device.type == "cuda"
    loaded, _, _ = load_run(tmp_path, device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_checkpoint_records_the_vae_not_the_config_defaults(tmp_path, digits):
    vae = VAE(digits.shape, latent_dim=3, likelihood="continuous-bernoulli")
    train(vae, digits, Config.from_flags(num_epochs=1, **FAST), tmp_path, progress=False)
    loaded, config, _ = load_run(tmp_path)
    assert (config.model["likelihood"]["name"], config.model["latent_dim"]) == (
        "continuous-bernoulli",
        3,
    )
    assert _state_equal(vae.state_dict(), loaded.state_dict())


def test_run_with_a_custom_prior_cannot_be_rebuilt_from_its_checkpoint(tmp_path, digits):
    prior = dist.Laplace(torch.zeros(8), torch.ones(8)).to_event(1)
    vae = VAE(digits.shape, prior=prior)
    train(vae, digits, Config.from_flags(num_epochs=1, **FAST), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="custom Independent"):
        load_run(tmp_path)
    rebuilt = VAE(digits.shape, prior=prior)
    rebuilt.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["vae"])
    assert _state_equal(vae.state_dict(), rebuilt.state_dict())


def test_custom_likelihood_with_infinite_density_on_the_data_is_refused(digits):
    def beta(params):
        mean = torch.sigmoid(params)
        return dist.Beta(10 * mean, 10 * (1 - mean))

    vae = VAE(digits.shape, likelihood=beta)
    with pytest.raises(DataError, match="log-density is infinite"):
        vae.validate_data(digits.train)  # digits hold exact zeros, where this Beta is -inf
    vae.validate_data(digits.train.clamp(0.01, 0.99))


def test_custom_likelihood_without_a_closed_form_mean(digits):
    def logit_normal(params):
        base = dist.Normal(params, 0.5)
        return dist.TransformedDistribution(base, dist.transforms.SigmoidTransform())

    vae = VAE(digits.shape, latent_dim=2, likelihood=logit_normal)
    x = digits.test[:10].clamp(0.01, 0.99)
    assert vae.reconstruct(x).shape == x.shape
    assert math.isfinite(evaluate(vae, x, num_samples=4)["reconstruction_mse"])


def test_posterior_predictive_draws_new_data(digits):
    vae = VAE(digits.shape, latent_dim=2)
    x = digits.test[:5]
    draws = vae.predictive(x, num_samples=3)
    assert draws["z"].shape == (3, 5, 2) and draws["x"].shape == (3, 5, 1, 8, 8)
    assert set(draws["x"].unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws, not the data
