"""The seams of the architecture: components declare their options (and misspelled ones
are errors naming the closest), the run configuration is sections of plain data that
only the run and CLI layers import, the trainer runs a variant's step with any number of
optimizers and resumes it exactly, and several latent sites are weighted one by one."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyrovae import VAE, Config, ConfigError, load_dataset
from pyrovae.cli import main
from pyrovae.config import COMPONENTS, flag_options, load_config, save_config
from pyrovae.inference.sites import CAPABILITIES
from pyrovae.inference.training import SVIStep, Trainer, make_elbo
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.model.priors import PRIORS, Prior
from pyrovae.variants import VARIANTS, HierarchicalVAE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=200)


# --- options belong to the components ------------------------------------------------


def test_a_misspelled_option_is_an_error_naming_the_closest_one():
    # the example: this used to build 10 components without a word
    with pytest.raises(ConfigError, match="did you mean 'num_components'"):
        VAE((1, 8, 8), prior="mixture", num_component=3)
    with pytest.raises(ConfigError, match="did you mean 'num_components'"):
        VAE((1, 8, 8), prior={"name": "mixture", "num_component": 3})
    assert VAE((1, 8, 8), prior="mixture", num_components=3).model.prior.logits.shape == (3,)


def test_an_option_of_a_component_the_run_does_not_use_is_refused():
    with pytest.raises(ConfigError, match="option of prior 'mixture'"):
        VAE((1, 8, 8), prior="normal", num_components=3)
    with pytest.raises(ConfigError, match="--renyi-alpha is an option of ELBO 'RenyiELBO'"):
        Config.from_flags(elbo="Trace_ELBO", renyi_alpha=0.5)


def test_iwae_refuses_unvectorized_particles_instead_of_ignoring_them():
    with pytest.raises(ConfigError, match="vectorized"):
        make_elbo("IWAE", 5, vectorize_particles=False)
    assert make_elbo("IWAE", 5).vectorize_particles


def test_options_are_type_checked_where_they_are_given():
    with pytest.raises(ConfigError, match=r"num_components.* needs an integer"):
        Config.from_flags(prior="mixture", num_components="three")
    with pytest.raises(ConfigError, match="must be one of fixed, global, pixel"):
        Config.from_flags(likelihood="gaussian", learn_scale="pixels")


def test_a_misspelled_key_of_a_toml_component_table_names_the_closest(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model.prior]\nname = "mixture"\nnum_component = 3\n')
    with pytest.raises(ConfigError, match="did you mean 'num_components'"):
        load_config(path)
    path.write_text("[optimisation]\nnum_epochs = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'optimization'"):
        load_config(path)


def test_a_misspelled_flag_exits_2_naming_the_closest_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--workdir", str(workdir), "--num-componets", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "did you mean '--num-components'" in err
    assert "Traceback" not in err and not workdir.exists()
    assert main(["train", "--workdir", str(workdir), "--renyi-alpha", "0.5"]) == 2
    assert "RenyiELBO" in capsys.readouterr().err and not workdir.exists()


def test_every_declared_option_is_a_flag_with_its_help():
    result = subprocess.run(
        [sys.executable, "-m", "pyrovae", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())  # argparse wraps the help
    for name, (option, owners) in flag_options().items():
        assert "--" + name.replace("_", "-") in text, name
        assert option.help, f"option {name} of {owners} has no help text in its docstring"
        # the help says which components take it (each with its own text where they differ)
        assert ", ".join(owners) in text or all(f"[{owner};" in text for owner in owners)
    for component in COMPONENTS.values():
        assert "--" + component.flag.replace("_", "-") in text


def test_one_flag_sets_every_chosen_component_that_declares_it():
    config = Config.from_flags(prior="flow", guide="iaf", num_flows=3)
    assert config.model["prior"]["num_flows"] == config.model["guide"]["num_flows"] == 3


def test_sections_round_trip_through_toml(tmp_path):
    config = Config.from_flags(
        model="hvae", top_dim=4, prior="vamp", num_pseudo_inputs=7, kl_site_weights={"z2": 0.5}
    )
    save_config(config, tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    assert "[model.prior]" in text and "[model.variant]" in text and "[optimization]" in text
    assert load_config(tmp_path / "c.toml") == config


class ShiftedNormal(Prior):
    """N(shift, I), registered by a test the way a user adds a prior.

    Parameters
    ----------
    shift : float
        shifted prior: the mean of every coordinate.
    """

    def __init__(self, latent_dim: int, *, shift: float = 0.0) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.full((latent_dim,), float(shift)))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, 1.0).to_event(1)


@pytest.fixture
def shifted_prior() -> Iterator[None]:
    PRIORS.register("shifted")(ShiftedNormal)
    try:
        yield
    finally:
        PRIORS.unregister("shifted")


def test_a_new_prior_is_one_class_and_one_registry_entry(shifted_prior, capsys):
    """No other edit: the option becomes a config key and a flag, with its help."""
    config = Config.from_flags(prior="shifted", shift=2.0)
    assert config.model["prior"] == {"name": "shifted", "shift": 2.0}
    vae = VAE.from_section(config.model, (1, 8, 8))
    assert torch.equal(vae.model.prior.loc, torch.full((8,), 2.0))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--shift SHIFT" in capsys.readouterr().out


def test_nothing_below_the_run_layer_imports_the_config():
    """The library (model, guides, variants, inference, data) takes plain arguments."""
    offenders = []
    for folder in ("model", "guides", "variants", "inference", "data"):
        for path in (ROOT / "pyrovae" / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                if any(n in ("pyrovae.config", "pyrovae.run") for n in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# --- the trainer of steps -------------------------------------------------------------


class TwoOptimizerStep:
    """A step with two parameter groups and two optimizers (model and guide), each
    stepped on its own loss: the model on -ELBO, the guide on -ELBO too but through its
    own backward pass, as an adversarial variant would do with its own losses."""

    def __init__(self, vae: VAE) -> None:
        self.vae = vae
        self.loss = pyro.infer.Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)
        self.optimizers = {
            "model": torch.optim.Adam(vae.model.parameters(), lr=1e-3),
            "guide": torch.optim.SGD(vae.guide.parameters(), lr=1e-4, momentum=0.9),
        }

    def check(self, batch, *, num_data, beta=1.0):
        with torch.no_grad():
            self.loss(**batch, num_data=num_data, beta=beta)

    def __call__(self, batch, *, num_data, beta=1.0):
        stats = {}
        for name, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(**batch, num_data=num_data, beta=beta)
            loss.backward()
            optimizer.step()
            stats[f"{name}_loss"] = loss.detach()
        stats["loss"] = stats["model_loss"]
        return stats


class TwoOptimizerVAE(VAE):
    name = "two-optimizer-test"

    def training_step(self, objective, *, learning_rate, clip_norm=None):
        return TwoOptimizerStep(self)


class QuietVAE(TwoOptimizerVAE):
    """A variant that evaluates nothing per epoch ("or none", as the issue allows)."""

    def evaluate_epoch(self, data, *, batch_size=500, probe_items=1000):
        return {}


def _fit(digits, workdir, epochs, resume=False):
    torch.manual_seed(0)
    vae = TwoOptimizerVAE(digits.shape, latent_dim=2, hidden=(16,))
    trainer = Trainer(
        vae, vae.training_step(None, learning_rate=0.0), num_epochs=epochs, batch_size=32
    )
    history = trainer.fit(digits, workdir, resume=resume, progress=False, config={"test": 1})
    return vae, trainer, history


def test_a_step_with_two_optimizers_checkpoints_both_and_resumes_exactly(digits, tmp_path):
    whole, whole_trainer, whole_history = _fit(digits, tmp_path / "whole", 3)
    _fit(digits, tmp_path / "cut", 2)
    resumed, resumed_trainer, history = _fit(digits, tmp_path / "cut", 3, resume=True)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert set(state["optimizers"]) == {"model", "guide"}
    assert {"train_model_loss", "train_guide_loss"} <= history[-1].keys()
    assert [r["test_elbo"] for r in history] == [r["test_elbo"] for r in whole_history]
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for name in ("model", "guide"):
        a = whole_trainer.step.optimizers[name].state_dict()["state"]
        b = resumed_trainer.step.optimizers[name].state_dict()["state"]
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i] if k != "step")


def test_a_variant_may_evaluate_nothing_per_epoch(digits):
    vae = QuietVAE(digits.shape, latent_dim=2, hidden=(16,))
    trainer = Trainer(vae, vae.training_step(None, learning_rate=0.0), num_epochs=2)
    history = trainer.fit(digits, progress=True)
    assert [r["epoch"] for r in history] == [1, 2] and "test_elbo" not in history[-1]


def test_resume_refuses_a_step_with_other_optimizers(digits, tmp_path):
    _fit(digits, tmp_path / "run", 1)
    vae = VAE(digits.shape, latent_dim=2, hidden=(16,))
    step = SVIStep(make_elbo("Trace_ELBO")(vae.model, vae.guide))
    trainer = Trainer(vae, step, num_epochs=2, batch_size=32)
    with pytest.raises(Exception, match="optimizers"):
        trainer.fit(digits, tmp_path / "run", resume=True, progress=False)


# --- several latent sites -------------------------------------------------------------


def test_the_hierarchical_vae_is_a_registered_variant_with_two_sites():
    assert VARIANTS["hvae"] is HierarchicalVAE
    hvae = HierarchicalVAE((1, 8, 8), latent_dim=3, top_dim=2, hidden=(16,))
    assert hvae.latent_sites == ("z2", "z1")
    draws = hvae.predictive(torch.rand(4, 1, 8, 8), num_samples=2)
    assert draws["z2"].shape == (2, 4, 2) and draws["z1"].shape == (2, 4, 3)
    assert hvae.reconstruct(torch.rand(4, 1, 8, 8)).shape == (4, 1, 8, 8)


def test_the_hvae_decoder_reads_z1_and_z2_as_in_the_paper():
    """log p(x | z1, z2) in the model's trace is the Bernoulli of the decoder's logits at
    [z1, z2] (recomputed with torch.distributions), and the decoded mean moves with z2 at
    fixed z1; with ``decoder_reads_z2=False`` the decoder reads z1 alone and z2 cannot move
    it."""
    torch.manual_seed(0)
    hvae = HierarchicalVAE((1, 8, 8), latent_dim=3, top_dim=2, hidden=(16,))
    assert hvae.model.decoder.net[0].in_features == 3 + 2
    x = torch.bernoulli(torch.rand(4, 1, 8, 8))
    guide = poutine.trace(hvae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(x)
    z1, z2 = guide.nodes["z1"]["value"], guide.nodes["z2"]["value"]
    logits = hvae.model.decoder.net(torch.cat([z1, z2], -1)).reshape(4, 1, 8, 8)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(model.nodes["x"]["fn"].log_prob(x), expected, atol=1e-5)
    z2_other = z2 + 1.0
    assert (hvae.decode(z1, z2) - hvae.decode(z1, z2_other)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="decode\\(z1, z2\\)"):
        hvae.decode(z1)

    chain = HierarchicalVAE(
        (1, 8, 8), latent_dim=3, top_dim=2, hidden=(16,), decoder_reads_z2=False
    )
    assert chain.model.decoder.net[0].in_features == 3
    assert torch.equal(chain.decode(z1, z2), chain.decode(z1, z2_other))
    assert torch.equal(chain.decode(z1), chain.decode(z1, z2))


def test_hvae_checkpoints_from_before_decoder_reads_z2_load_and_resume_as_z1_only(tmp_path):
    """A checkpoint whose config lacks ``decoder_reads_z2`` (written before the option)
    decoded z1 alone: it loads, evaluates and resumes that way."""
    from pyrovae import load_run
    from pyrovae.inference.training.checkpoint import save_checkpoint

    run = tmp_path / "run"
    argv = ["train", "--workdir", str(run), "--model", "hvae", "--latent-dim", "2"]
    argv += ["--hidden", "16", "--limit", "100", "--num-eval-samples", "2", "--no-progress"]
    assert main([*argv, "--num-epochs", "1", "--no-decoder-reads-z2", "-q"]) == 0
    assert "decoder_reads_z2 = false" in (run / "config.toml").read_text()
    x = torch.rand(3, 1, 8, 8)
    before = load_run(run)[0].reconstruct(x)
    for name in ("checkpoint.pt", "best.pt"):
        if (run / name).exists():
            state = load_checkpoint(run / name)
            del state["config"]["model"]["variant"]["decoder_reads_z2"]
            save_checkpoint(state, run / name)
    vae, config, _ = load_run(run)
    assert config.model["variant"]["decoder_reads_z2"] is False and not vae.decoder_reads_z2
    assert torch.equal(vae.reconstruct(x), before)
    assert main(["train", "--workdir", str(run), "--resume", "--num-epochs", "2", "-q"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_kl_weights_apply_to_every_latent_site_one_by_one():
    """beta scales both sites' log-densities in model and guide; a per-site weight scales
    its own site only."""
    hvae = HierarchicalVAE((1, 8, 8), latent_dim=3, top_dim=2, hidden=(16,))
    x = torch.rand(4, 1, 8, 8)
    beta = {"z2": 0.5, "z1": 2.0}
    guide = poutine.trace(hvae.guide).get_trace(x, beta=beta)
    model = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(x, beta=beta)
    for trace in (guide, model):
        assert trace.nodes["z2"]["scale"] == 0.5 and trace.nodes["z1"]["scale"] == 2.0
    assert model.nodes["x"]["scale"] == 1.0


def test_kl_site_weights_reach_the_step_and_unknown_sites_are_refused(digits, tmp_path):
    from pyrovae.run import fit

    config = Config.from_flags(
        model="hvae",
        latent_dim=2,
        hidden=(16,),
        num_epochs=1,
        num_eval_samples=2,
        kl_site_weights={"z2": 0.0},
    )
    row = fit(config, tmp_path / "run", progress=False).history[-1]
    assert {"kl/z1", "kl/z2", "active_units/z1", "active_units/z2"} <= row.keys()
    with pytest.raises(ConfigError, match="not a latent site of --model hvae"):
        fit(config.replace(kl_site_weights={"z": 0.5}), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_hvae_from_the_cli_draws_both_layers(tmp_path, capsys):
    pytest.importorskip("graphviz")
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    run = tmp_path / "run"
    argv = ["train", "--model", "hvae", "--prior", "vamp", "--num-pseudo-inputs", "10"]
    argv += ["--latent-dim", "2", "--hidden", "16", "--num-epochs", "1", "--limit", "100"]
    assert (
        main([*argv, "--num-eval-samples", "2", "--workdir", str(run), "--no-progress", "-q"]) == 0
    )
    assert main(["graph", str(run), "--output", str(tmp_path), "--format", "dot", "-q"]) == 0
    model = (tmp_path / "model.dot").read_text()
    assert "z2" in model and "z1" in model and "z2 ~ DiagonalNormalMixture" in model
    capsys.readouterr()
    assert main(["latent", str(run), "-q"]) == 2  # one latent site only, with one message
    assert "latent site" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--prior", "vamp", "--num-pseudo-inputs", "0"], "num_pseudo_inputs >= 1"),
        (["--prior", "vamp", "--likelihood", "gaussian"], "does not bound"),
        (["--prior", "vamp", "--guide", "iaf"], "use --guide normal"),
        (["--model", "cvae", "--prior", "vamp"], "also read labels"),
        (["--model", "hvae", "--elbo", "InfoVAE_ELBO"], "latent sites z2, z1"),
        (["--model", "hvae", "--guide", "iaf"], "has its own guide"),
        (["--model", "hvae", "--kl-site-weights", "z9=1"], "not a latent site"),
        (["--encoder", "conv", "--decoder", "conv", "--channels", "0"], "at least one"),
    ],
)
def test_refused_components_exit_2_and_write_nothing(argv, phrase, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "--workdir", str(workdir), *argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and not workdir.exists()


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path, capsys):
    """The objective is checked on a first minibatch before anything is written."""
    run = tmp_path / "run"
    argv = ["train", "--workdir", str(run), "--model", "hvae", "--latent-dim", "2"]
    argv += ["--hidden", "16", "--num-epochs", "1", "--limit", "100", "--num-eval-samples", "2"]
    assert main([*argv, "--no-progress", "-q"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    resume = ["train", "--workdir", str(run), "--resume", "--elbo", "InfoVAE_ELBO", "-q"]
    assert main(resume) == 2
    assert "latent sites" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


class _NoLikelihoodVAE(VAE):
    """A variant that declares it lacks every capability a tool may need."""

    name = "nolikelihood"
    cannot: ClassVar[dict[str, str]] = {c: f"it has no {c} (a test)" for c in CAPABILITIES}


def test_every_tool_refuses_a_variant_that_lacks_what_it_needs():
    from pyrovae.inference import diagnose, evaluate, posterior_draws
    from pyrovae.inference.applications.inpainting import inpaint
    from pyrovae.inference.applications.latent_ops import interpolate
    from pyrovae.inference.sites import require

    vae = _NoLikelihoodVAE((1, 8, 8), latent_dim=2, hidden=(8,))
    x = torch.rand(4, 1, 8, 8).bernoulli()
    calls = {
        "likelihood": lambda: evaluate(vae, x, 2),
        "posterior": lambda: diagnose(vae, x),
        "latent_ops": lambda: interpolate(vae, x[0], x[1]),
        "inpainting": lambda: inpaint(vae, x, torch.ones_like(x, dtype=torch.bool)),
    }
    for capability, call in calls.items():
        with pytest.raises(
            ConfigError, match=f"--model nolikelihood cannot be used for .*: it has no {capability}"
        ):
            call()
    with pytest.raises(ConfigError, match="cannot be used for posterior inspection"):
        posterior_draws(vae, x)
    with pytest.raises(ValueError, match="unknown capability"):
        require(vae, "telepathy", "a test")
    plain = VAE((1, 8, 8), latent_dim=2, hidden=(8,))
    assert evaluate(plain, x, 2)["num_data"] == 4  # the plain VAE lacks nothing
