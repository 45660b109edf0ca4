"""The compiled SVI step (``--compile``): the traced graph computes Pyro's own loss and
gradient, a compiled run trains and resumes exactly, and what cannot be compiled is refused.

Equality is to float32 rounding: the traced graph runs the very operations of the eager
estimator, but sums the sites' log-densities in float32 where Pyro's value goes through
Python floats, and takes the gradient with ``torch.func`` rather than ``backward()``, which
may order the sums of the backward pass differently (a few float32 ulps, ~1e-7 relative,
on each gradient element).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch._inductor import config as inductor_config

from pyrovae import VAE, Config, fit
from pyrovae.cli import main
from pyrovae.errors import ConfigError
from pyrovae.inference.training import make_elbo
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.inference.training.compiled import CompiledELBO

RTOL = {"value": 1e-6, "grad": 1e-5}
FAST = {"num_eval_samples": 8, "eval_batch_size": 500, "batch_size": 64}


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _loss_module(elbo: str, model: str = "vae", **flags):
    config = Config.from_flags(model=model, hidden=(32,), latent_dim=4, elbo=elbo, **flags)
    pyro.set_rng_seed(0)
    vae = VAE.from_section(config.model, (1, 8, 8)) if model == "vae" else None
    if vae is None:
        from pyrovae.variants import build_variant

        vae = build_variant(config.model, (1, 8, 8))
    loss = make_elbo(elbo)(vae.model, vae.guide)
    x = torch.rand(16, 1, 8, 8)
    with pyro.validation_enabled(False):
        loss(x=x, num_data=100)  # materialise lazily built parameters
    return loss, x


def _eager_and_compiled(loss, x, backend: str, beta) -> tuple:
    """Pyro's eager loss and autograd gradient, and the compiled ones, on the same noise."""
    compiled = CompiledELBO(loss, backend=backend)
    params = dict(compiled.estimator.named_parameters())
    torch.manual_seed(3)
    with pyro.validation_enabled(False):
        eager = loss(x=x, num_data=100, beta=beta)
    eager_grads = torch.autograd.grad(eager, list(params.values()))
    torch.manual_seed(3)
    with inductor_config.patch(fallback_random=True):  # Inductor draws with torch's generator
        value, grads = compiled.loss_and_grads(x=x, num_data=100, beta=beta)
        torch.manual_seed(3)
        differentiable = compiled(x=x, num_data=100, beta=beta)
    graph_grads = torch.autograd.grad(differentiable, list(params.values()))
    return eager, eager_grads, value, [grads[n] for n in params], differentiable, graph_grads


@pytest.mark.parametrize("elbo", ["Trace_ELBO", "TraceMeanField_ELBO"])
@pytest.mark.parametrize("beta", [1.0, 0.4, 0.0])
def test_the_traced_graph_is_pyros_loss_and_gradient(elbo, beta):
    """The traced graph (run as recorded) against Pyro's eager ELBO at each KL weight,
    including 0, which masks the latent site (another graph)."""
    loss, x = _loss_module(elbo)
    eager, eager_grads, value, grads, differentiable, graph_grads = _eager_and_compiled(
        loss, x, "eager", beta
    )
    torch.testing.assert_close(value, eager.detach(), rtol=RTOL["value"], atol=0)
    torch.testing.assert_close(differentiable.detach(), eager.detach(), rtol=RTOL["value"], atol=0)
    for a, b, c in zip(grads, graph_grads, eager_grads, strict=True):
        scale = c.abs().max().item()
        torch.testing.assert_close(a, c, rtol=RTOL["grad"], atol=RTOL["grad"] * scale)
        torch.testing.assert_close(b, c, rtol=RTOL["grad"], atol=RTOL["grad"] * scale)


def test_the_kl_weight_is_an_input_of_the_graph_not_a_constant():
    """A KL schedule reuses the graph: two non-zero weights share one traced structure, and
    the second weight's value is Pyro's at that weight (not the first's)."""
    loss, x = _loss_module("Trace_ELBO")
    compiled = CompiledELBO(loss, backend="eager")
    torch.manual_seed(5)
    first = compiled.loss_and_grads(x=x, num_data=100, beta=0.9)[0]
    torch.manual_seed(5)
    second = compiled.loss_and_grads(x=x, num_data=100, beta=0.2)[0]
    assert len(compiled._graphs) == 1 and not torch.equal(first, second)
    torch.manual_seed(5)
    with pyro.validation_enabled(False):
        eager = loss(x=x, num_data=100, beta=0.2)
    torch.testing.assert_close(second, eager.detach(), rtol=RTOL["value"], atol=0)


def test_a_model_with_two_latent_sites_and_per_site_weights():
    loss, x = _loss_module("Trace_ELBO", model="hvae")
    beta = {"z1": 0.5, "z2": 1.0}
    eager, eager_grads, value, grads, *_ = _eager_and_compiled(loss, x, "eager", beta)
    torch.testing.assert_close(value, eager.detach(), rtol=RTOL["value"], atol=0)
    for a, c in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, c, rtol=RTOL["grad"], atol=RTOL["grad"] * c.abs().max())


def test_inductor_compiles_the_same_loss_and_gradient():
    """Inductor's fused kernels reassociate float32 sums: the same numbers to ~1e-6."""
    loss, x = _loss_module("Trace_ELBO")
    eager, eager_grads, value, grads, *_ = _eager_and_compiled(loss, x, "inductor", 1.0)
    torch.testing.assert_close(value, eager.detach(), rtol=1e-5, atol=0)
    for a, c in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5 * c.abs().max())


def test_tracing_leaves_the_random_stream_where_it_was():
    """Tracing runs the estimator once; a resumed run must draw what the original drew."""
    loss, x = _loss_module("Trace_ELBO")
    compiled = CompiledELBO(loss, backend="eager")
    torch.manual_seed(11)
    before = torch.get_rng_state()
    compiled.warm_up(x=x, num_data=100)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_compiled_run_trains_and_resumes_bit_for_bit(tmp_path):
    config = Config.from_flags(num_epochs=4, compile=True, **FAST)
    whole = fit(config, tmp_path / "whole", progress=False)
    assert whole.history[-1]["test_elbo"] > whole.history[0]["test_elbo"]
    first = Config.from_flags(num_epochs=2, compile=True, **FAST)
    fit(first, tmp_path / "cut", progress=False)
    resumed = fit(config, tmp_path / "cut", resume=True, progress=False)
    assert [r["train_elbo"] for r in resumed.history] == [r["train_elbo"] for r in whole.history]
    assert _state_equal(whole.vae.state_dict(), resumed.vae.state_dict())
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["optimizers"]["svi"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["optimizers"]["svi"]
    assert a["param_groups"][0]["fused"] is True
    assert all(_state_equal(a["state"][k], b["state"][k]) for k in a["state"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--elbo", "IWAE", "--num-particles", "4"], "--compile traces Trace_ELBO"),
        (["--model", "m2"], "--model m2 cannot be used for --compile: it trains with TraceEnum"),
        (["--model", "vaegan"], "--model vaegan cannot be used for --compile"),
        (["--model", "vqvae"], "--model vqvae cannot be used for --compile"),
    ],
)
def test_what_cannot_be_compiled_is_refused_before_the_run_folder(flags, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), "--compile", "--num-epochs", "1", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "Traceback" not in err
    assert not workdir.exists()


def _tiny_loss(guide_site) -> torch.nn.Module:
    class Model(pyro.nn.PyroModule):
        def forward(self, x, num_data=None, beta=1.0):
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    class Guide(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, num_data=None, beta=1.0):
            with pyro.plate("data", len(x)):
                guide_site(self.loc, x)

    return pyro.infer.Trace_ELBO(max_plate_nesting=1)(Model(), Guide())


def test_python_that_branches_on_tensor_values_is_refused_with_the_reason():
    def branching(loc, x):
        shift = 1.0 if x.sum() > 0 else -1.0  # the value of a tensor decides the graph
        pyro.sample("z", dist.Normal(loc + shift, 1.0))

    compiled = CompiledELBO(_tiny_loss(branching), backend="eager")
    with pytest.raises(ConfigError, match="cannot trace this model and guide as one graph"):
        compiled.warm_up(x=torch.ones(3), num_data=3)


def test_a_guide_without_rsample_is_refused():
    def discrete(loc, x):
        pyro.sample("z", dist.Poisson(loc.exp()))

    compiled = CompiledELBO(_tiny_loss(discrete), backend="eager")
    with pytest.raises(ConfigError, match="needs a reparameterized guide; site 'z'"):
        compiled.warm_up(x=torch.ones(3), num_data=3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_compiled_step_is_pyros_and_a_compiled_run_trains(tmp_path):
    """On CUDA the graph runs as a CUDA graph (mode "reduce-overhead")."""
    loss, x = _loss_module("Trace_ELBO")
    loss, x = loss.cuda(), x.cuda()
    eager, eager_grads, value, grads, *_ = _eager_and_compiled(loss, x, "inductor", 1.0)
    torch.testing.assert_close(value, eager.detach(), rtol=1e-5, atol=0)
    for a, c in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5 * c.abs().max())
    config = Config.from_flags(num_epochs=3, compile=True, device="cuda", **FAST)
    history = fit(config, tmp_path / "run", progress=False).history
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
