r"""Tests of FactorVAE (:mod:`pyrovae.variants.factorvae`).

The two objectives are recomputed by hand with ``torch.distributions`` and a written-out
cross-entropy, in float64, from the networks at the step's draws: the same seed makes the
same draws in the same order (the guide's :math:`z \sim q(z \mid x)` through ``rsample``,
then the second minibatch's codes, then the permutation's uniforms). Both sides add the
same few dozen terms of order 1-1000, so a tolerance of 1e-9 leaves float64 rounding
(~1e-13) far behind, while a lost or misweighted term (:math:`\beta`, :math:`\gamma`,
:math:`N`, the halves of D's loss) moves an objective by more than 1e-3.
"""

from __future__ import annotations

import copy
import json
import math

import pyro
import pytest
import torch
from group_checks import ATOL64, OBJECTIVES, assert_all_close, assert_resumed_exactly, bce, grad
from pyro.infer import Trace_ELBO
from torch import distributions as td

from pyrovae import Config, ConfigError, load_dataset
from pyrovae.cli import main
from pyrovae.inference.training import Trainer, make_elbo
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.networks import Discriminator
from pyrovae.variants import VARIANTS, FactorVAE
from pyrovae.variants.factorvae import FactorVAEStep, judge, permute_dims

NUM_DATA = 40
BETA = 0.5
GAMMA = 3.0


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=200)


def tiny_factorvae(**options) -> FactorVAE:
    """A small float64 FactorVAE on 8x8 images."""
    options = {"gamma": GAMMA, "discriminator_hidden": (8, 8), **options}
    return FactorVAE((1, 8, 8), latent_dim=3, hidden=(8,), **options).double()


def hand_objectives(vae: FactorVAE, x, x2, analytic_kl: bool, seed: int) -> dict:
    """The two objectives at the draws ``seed`` makes, from the networks and
    ``torch.distributions`` alone: the VAE's scaled to the ``NUM_DATA`` items, D's per code."""
    pyro.set_rng_seed(seed)
    loc, log_var = vae.guide.encoder(x)
    q = td.Normal(loc, torch.exp(0.5 * log_var))
    z = q.rsample()
    with torch.no_grad():
        loc2, log_var2 = vae.guide.encoder(x2)
        z2 = td.Normal(loc2, torch.exp(0.5 * log_var2)).rsample()
        columns = torch.rand(z2.shape, dtype=torch.float32).argsort(dim=0)
        permuted = z2.gather(0, columns)
    p = td.Normal(torch.zeros_like(loc), torch.ones_like(loc))
    kl = (
        td.kl_divergence(q, p).sum(-1)
        if analytic_kl
        else q.log_prob(z).sum(-1) - p.log_prob(z).sum(-1)
    )
    log_px = td.Bernoulli(logits=vae.model.decoder(z), validate_args=False).log_prob(x)
    elbo = log_px.sum((1, 2, 3)) - BETA * kl
    logit_joint = vae.discriminator(z)
    logit_product = vae.discriminator(permuted)
    tc = logit_joint.mean()
    return {
        "vae": -NUM_DATA * elbo.mean() + GAMMA * NUM_DATA * tc,
        "discriminator": 0.5 * (bce(logit_joint, 1.0) + bce(logit_product, 0.0)),
        "tc": tc,
        "elbo_loss": -NUM_DATA * elbo.mean(),
    }


# --- the objectives and each group's gradient ---------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_each_group_gets_the_gradient_of_its_own_objective_alone(digits, objective):
    """The step's gradient of each group equals ``torch.autograd.grad`` of that group's
    objective alone, recomputed by hand from the same parameters and noise, and after
    ``__call__`` each parameter's ``.grad`` holds it. The other objective's gradient with
    respect to each group is nonzero (D's loss reaches the encoder through z, the TC
    penalty reaches D), so a shared backward pass would fail this test."""
    elbo, analytic = OBJECTIVES[objective]
    vae = tiny_factorvae()
    x, x2 = digits.train[:6].double(), digits.train[6:12].double()
    batch = {"x": x, "x_permuted": x2}
    before = copy.deepcopy(vae)
    step = FactorVAEStep(vae, elbo(max_plate_nesting=1))

    pyro.set_rng_seed(2)
    losses = step.losses(batch, num_data=NUM_DATA, beta=BETA)
    step_grads = step.gradients(losses)
    pyro.set_rng_seed(2)
    stats = step(batch, num_data=NUM_DATA, beta=BETA)  # the same draws again, then the updates

    hand = hand_objectives(before, x, x2, analytic, seed=2)
    for name in ("vae", "discriminator"):
        torch.testing.assert_close(losses.objectives[name], hand[name], rtol=0, atol=ATOL64)
    torch.testing.assert_close(losses.tc, hand["tc"], rtol=0, atol=ATOL64)
    torch.testing.assert_close(stats["loss"], hand["vae"], rtol=0, atol=ATOL64)
    assert "elbo" not in stats  # beta != 1: the Pyro loss is not minus the ELBO

    groups = FactorVAEStep(before, elbo(max_plate_nesting=1)).groups
    other = {"vae": "discriminator", "discriminator": "vae"}
    for name, params in groups.items():
        expected = grad(hand[name], params)
        assert_all_close(step_grads[name], expected)
        assert_all_close([p.grad for p in step.groups[name]], expected)
        assert any(e.abs().sum() > 0 for e in expected), name
        assert any(not torch.equal(p, q) for p, q in zip(step.groups[name], params)), name
        leaked = grad(hand[other[name]], params)
        assert sum(g.abs().sum() for g in leaked) > 1e-3, name
        shared = [a + b for a, b in zip(expected, leaked)]
        assert any(not torch.allclose(g, s) for g, s in zip(step_grads[name], shared)), name


def test_at_beta_one_the_step_logs_the_elbo_and_the_tc(digits):
    """At beta 1 the Pyro loss is minus the ELBO, which the step logs next to its objective
    (-ELBO + gamma N TC), the TC estimate and D's loss and accuracy."""
    vae = tiny_factorvae()
    x, x2 = digits.train[:6].double(), digits.train[6:12].double()
    step = vae.training_step(Trace_ELBO(max_plate_nesting=1), learning_rate=1e-3)
    stats = step({"x": x, "x_permuted": x2}, num_data=NUM_DATA, beta=1.0)
    assert set(stats) == {"loss", "elbo", "tc", "discriminator_loss", "discriminator_accuracy"}
    expected = -stats["elbo"] + GAMMA * NUM_DATA * stats["tc"]
    torch.testing.assert_close(stats["loss"], expected, rtol=0, atol=ATOL64)
    assert 0 <= stats["discriminator_accuracy"] <= 1


def test_the_parameter_groups_partition_the_parameters():
    vae = tiny_factorvae(prior="learned-normal", likelihood="gaussian", learn_scale="global")
    step = vae.training_step(Trace_ELBO(max_plate_nesting=1), learning_rate=1e-3)
    ids = {name: {id(p) for p in params} for name, params in step.groups.items()}
    assert set().union(*ids.values()) == {id(p) for p in vae.parameters()}
    assert sum(len(v) for v in ids.values()) == len(list(vae.parameters()))
    assert {id(p) for p in vae.model.prior.parameters()} <= ids["vae"]
    assert {id(p) for p in vae.discriminator.parameters()} == ids["discriminator"]
    assert set(step.optimizers) == {"vae", "discriminator"}
    disc = step.optimizers["discriminator"].param_groups[0]
    assert disc["lr"] == 1e-4 and disc["betas"] == (0.5, 0.9)  # Kim & Mnih's
    vae_group = step.optimizers["vae"].param_groups[0]
    assert vae_group["lr"] == 1e-3 and vae_group["betas"] == (0.9, 0.999)


# --- the permutation and the estimate of the total correlation -----------------------------


def test_the_permutation_keeps_each_marginal_and_breaks_the_dependence():
    """Each column keeps its multiset of values; two perfectly correlated columns (z_2 =
    z_1) lose their correlation, as draws of the product of the marginals would."""
    z1 = torch.randn(4000)
    z = torch.stack([z1, z1, torch.arange(4000.0)], dim=1)
    permuted = permute_dims(z)
    assert permuted.shape == z.shape
    for j in range(3):
        assert torch.equal(permuted[:, j].sort().values, z[:, j].sort().values)
    # the columns are permuted independently: a sample correlation of 4000 independent
    # pairs has standard deviation 1/sqrt(4000) = 0.016; 0.08 is five of them
    assert abs(torch.corrcoef(permuted[:, :2].T)[0, 1]) < 0.08
    assert not torch.equal(permuted[:, 0], permuted[:, 1])
    with pytest.raises(ValueError, match=r"shape \(B, d\)"):
        permute_dims(torch.zeros(3))


def _trained_tc(correlation: torch.Tensor, steps: int = 400, batch: int = 512) -> float:
    """The TC estimate of a discriminator trained by :func:`judge` on Gaussian codes with
    this correlation matrix (Adam as the step's, learning rate 1e-3), on 20 000 new draws."""
    d = len(correlation)
    cholesky = torch.linalg.cholesky(correlation)

    def draw(n: int) -> torch.Tensor:
        return torch.randn(n, d) @ cholesky.T

    disc = Discriminator((d,), hidden=(64, 64))
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(steps):
        _, loss, _ = judge(disc, draw(batch), permute_dims(draw(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return disc.logit(draw(20_000)).mean().item()


def test_a_trained_discriminator_estimates_the_gaussian_total_correlation():
    r"""For :math:`z \sim \mathcal{N}(0, R)` with unit variances, the marginals are
    :math:`\mathcal{N}(0, 1)` and :math:`\mathrm{TC} = \mathrm{KL}(\mathcal{N}(0, R) \,\|\,
    \mathcal{N}(0, I)) = -\tfrac12 \log\det R` (0.674 nats for the R below): the
    optimal discriminator's logit is :math:`-\tfrac12 z^\top (R^{-1} - I) z - \tfrac12
    \log\det R`, whose mean under :math:`q` is the TC.

    The tolerance: the estimate on 20 000 draws has a Monte Carlo standard error of 0.006
    nats; the rest is the discriminator's error after 400 noisy Adam steps. Over seeds 0-9
    of this very training the error had mean -0.005, standard deviation 0.023 and largest
    size 0.048 nats (and 0.010 at most for independent codes, whose TC is 0). 0.1 nats is
    the mean plus four standard deviations, 15% of the TC; a discriminator that sees
    only the marginals, or none that learned, estimates 0 and fails by 0.67."""
    correlation = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    exact = -0.5 * torch.logdet(correlation).item()
    assert exact == pytest.approx(0.6735, abs=1e-4)
    assert _trained_tc(correlation) == pytest.approx(exact, abs=0.1)
    assert _trained_tc(torch.eye(3)) == pytest.approx(0.0, abs=0.03)


# --- training, resume, the command line -----------------------------------------------------


def _fit(digits, workdir, epochs, resume=False):
    torch.manual_seed(0)
    vae = FactorVAE(digits.shape, latent_dim=3, hidden=(16,), discriminator_hidden=(16,))
    step = vae.training_step(Trace_ELBO(max_plate_nesting=1), learning_rate=1e-3)
    trainer = Trainer(vae, step, num_epochs=epochs, batch_size=32, diagnostic_items=50)
    history = trainer.fit(digits, workdir, resume=resume, progress=False, config={"test": 1})
    return vae, trainer, history


def test_resume_after_one_epoch_of_two_is_bit_exact(digits, tmp_path):
    whole = _fit(digits, tmp_path / "whole", 2)
    _fit(digits, tmp_path / "cut", 1)
    resumed = _fit(digits, tmp_path / "cut", 2, resume=True)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert set(saved["optimizers"]) == {"vae", "discriminator"}
    assert any(k.startswith("discriminator.") for k in saved["vae"])
    assert_resumed_exactly(whole, resumed)


def test_an_epoch_logs_the_objective_elbo_tc_and_discriminator(digits, tmp_path):
    from pyrovae.run import fit

    config = Config.from_flags(
        model="factorvae",
        latent_dim=3,
        hidden=(16,),
        discriminator_hidden=(16,),
        num_epochs=1,
        limit=200,
        batch_size=32,
    )
    result = fit(config, tmp_path / "run", progress=False)
    row = result.history[-1]
    for key in (
        "train_objective",
        "train_elbo",
        "train_tc",
        "train_discriminator_loss",
        "train_discriminator_accuracy",
        "test_elbo",
        "tc",
        "kl",
    ):
        assert row[key] is not None and math.isfinite(row[key]), key
    # the objective is the ELBO minus gamma times the TC estimate, both per data point
    assert row["train_objective"] == pytest.approx(row["train_elbo"] - 10.0 * row["train_tc"])
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert {"elbo", "log_likelihood", "tc"} <= evaluation.keys()
    assert evaluation["log_likelihood"] >= evaluation["elbo"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_line_trains_and_resumes(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    flags = ["--model", "factorvae", "--gamma", "5", "--limit", "120", "--latent-dim", "3"]
    flags += ["--hidden", "16", "--discriminator-hidden", "16", "16", "--batch-size", "32"]
    flags += ["--discriminator-learning-rate", "0.001", "--no-progress", "-q"]
    code, out, _ = run_cli(["train", "--workdir", workdir, *flags, "--num-epochs", "1"], capsys)
    assert code == 0 and "tc" in json.loads(out)["evaluation"]
    saved = Config.from_dict(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"])
    variant = saved.model["variant"]
    assert variant["gamma"] == 5.0 and variant["discriminator_hidden"] == (16, 16)
    assert variant["discriminator_learning_rate"] == 0.001
    argv = ["train", "--workdir", workdir, "--resume", "--num-epochs", "2", "--no-progress", "-q"]
    assert run_cli(argv, capsys)[0] == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [row["epoch"] for row in history] == [1, 2]


def test_the_command_line_trains_on_dsprites_small(tmp_path, capsys):
    workdir = str(tmp_path / "sprites")
    argv = ["train", "--model", "factorvae", "--dataset", "dsprites-small", "--limit", "128"]
    argv += ["--latent-dim", "4", "--hidden", "16", "--discriminator-hidden", "16"]
    argv += ["--num-epochs", "1", "--workdir", workdir, "--no-progress", "-q"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert math.isfinite(json.loads(out)["train_tc"])


def test_help_lists_the_options_with_their_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "factorvae", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in VARIANTS.options("factorvae"):
        assert "--" + name.replace("_", "-") in text, name
    # --gamma is the VAE-GAN's too: each says its own default
    assert "[model 'factorvae'; default: 10.0]" in text
    assert "[model 'vaegan'; default: 1.0]" in text


# --- what is refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--latent-dim", "1"], "needs --latent-dim 2 or more (got 1)"),
        (["--prior", "mixture"], "needs a prior that factorises over the latent dimensions"),
        (["--prior", "flow"], "--prior flow does not"),
        (["--elbo", "JitTrace_ELBO"], "drop --elbo JitTrace_ELBO"),
        (["--elbo", "TCVAE_ELBO"], "penalises it again with a minibatch estimate"),
        (["--gamma", "-1"], "gamma of --model factorvae is out of range: -1.0"),
        (["--discriminator-learning-rate", "0"], "discriminator_learning_rate of --model"),
        (["--compile"], "--model factorvae cannot be used for --compile"),
    ],
)
def test_what_makes_no_sense_is_refused_with_one_message(flags, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["train", "--model", "factorvae", "--limit", "100", "--num-epochs", "1"]
    code, _, err = run_cli([*argv, "--workdir", str(workdir), *flags, "-q"], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("error:") == 1 and not workdir.exists()


def test_data_parallel_training_is_refused_before_any_rank_waits(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    env = {"RANK": 0, "WORLD_SIZE": 2, "LOCAL_RANK": 0, "MASTER_PORT": 1}
    for name, value in {**env, "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, str(value))
    argv = ["train", "--workdir", str(workdir), "--model", "factorvae", "--num-epochs", "1"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--model factorvae cannot be used for data-parallel training" in err
    assert "torch.autograd.grad" in err and not workdir.exists()


def test_a_guide_with_another_latent_site_is_refused(digits):
    """The step permutes the codes of the one site z; a guide that draws more is refused
    at the check, before training."""
    vae = tiny_factorvae()
    guide = vae.guide

    class TwoSites(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = guide

        def forward(self, x, **kwargs):
            pyro.sample("extra", pyro.distributions.Normal(torch.zeros(()), 1.0))
            return self.inner(x, **kwargs)

    vae.guide = TwoSites()
    step = vae.training_step(Trace_ELBO(max_plate_nesting=1), learning_rate=1e-3)
    x = digits.train[:4].double()
    with pytest.raises(ConfigError, match="permutes the codes of one latent site z"):
        step.check({"x": x, "x_permuted": x}, num_data=NUM_DATA)


def test_iwae_and_several_particles_train(digits):
    """Any ELBO but the JIT's: the TC term reads every particle's codes."""
    vae = tiny_factorvae()
    x, x2 = digits.train[:6].double(), digits.train[6:12].double()
    step = vae.training_step(make_elbo("IWAE", 4), learning_rate=1e-3)
    losses = step.losses({"x": x, "x_permuted": x2}, num_data=NUM_DATA)
    assert step.codes().shape == (4 * 6, 3)
    assert torch.isfinite(losses.vae) and torch.isfinite(losses.discriminator)
    elbo = Trace_ELBO(num_particles=3, max_plate_nesting=1)
    step = vae.training_step(elbo, learning_rate=1e-3)
    step.losses({"x": x, "x_permuted": x2}, num_data=NUM_DATA)
    assert step.codes().shape == (3 * 6, 3)


@pytest.mark.parametrize("guide", ["normal", "lowrank", "iaf"])
def test_every_registered_guide_takes_a_step(digits, guide):
    """The codes are the value of the guide's site z, whatever its family."""
    vae = FactorVAE((1, 8, 8), latent_dim=3, hidden=(8,), guide=guide, discriminator_hidden=(8,))
    x = digits.train[:6]
    step = vae.training_step(Trace_ELBO(max_plate_nesting=1), learning_rate=1e-3)
    step.check({"x": x, "x_permuted": x}, num_data=NUM_DATA)
    stats = step({"x": x, "x_permuted": x}, num_data=NUM_DATA)
    assert step.codes().shape == (6, 3)
    assert all(torch.isfinite(v) for v in stats.values())
