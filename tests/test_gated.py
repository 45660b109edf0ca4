"""The VampPrior paper's networks and log-variance clamp: gated dense layers with He-normal
weights (``--encoder gated-mlp --decoder gated-mlp``) and the guides' ``log_var_min`` /
``log_var_max`` (Tomczak & Welling 2018, their code's ``utils/nn.py`` and ``models/``)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from pyro import poutine
from torch import nn

from pyrovae import VAE, Config, ConfigError, cli, load_dataset, train
from pyrovae.guides import (
    ENCODERS,
    GUIDES,
    ClippedLogVar,
    GatedMLPEncoder,
    make_guide,
)
from pyrovae.model import DECODERS, GatedMLPDecoder
from pyrovae.networks import GatedDense, gated_mlp
from pyrovae.variants import VARIANTS
from pyrovae.variants.hvae import HierarchicalVAE

LOW, HIGH = -6.0, 2.0
GATED = {"encoder": "gated-mlp", "decoder": "gated-mlp"}
FAST = {"num_eval_samples": 4, "eval_batch_size": 500, "batch_size": 64, "diagnostic_items": 0}
CLI_FAST = ["--num-eval-samples", "4", "--diagnostic-items", "0", "--no-progress", "-q"]


@pytest.fixture(scope="module")
def few_digits():
    return load_dataset("digits", limit=300)


def test_gated_layer_equals_a_hand_computation():
    layer = GatedDense(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    w1, b1 = layer.h.weight.detach(), layer.h.bias.detach()
    w2, b2 = layer.g.weight.detach(), layer.g.bias.detach()
    expected = (x @ w1.T + b1) * (1.0 / (1.0 + torch.exp(-(x @ w2.T + b2))))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_gated_mlp_is_gated_layers_and_a_linear_head():
    net = gated_mlp([784, 300, 300, 40])
    assert [type(m) for m in net] == [GatedDense, GatedDense, nn.Linear]
    assert (net[0].h.in_features, net[1].h.in_features, net[2].in_features) == (784, 300, 300)
    assert net[2].out_features == 40


@pytest.mark.parametrize("network", [GatedMLPEncoder, GatedMLPDecoder])
def test_weights_are_he_normal_and_biases_torch_default(network):
    """The reference's ``he_init`` draws every Linear weight from N(0, 2 / fan_in) and leaves
    the bias at torch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)). For n independent normal draws
    the sample standard deviation has relative standard error 1/sqrt(2n) and the mean a
    standard error std/sqrt(n): both are checked to within 5 standard errors."""
    net = network(20, (784,), hidden=(300, 300))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 5  # two gated layers of two Linears each, and the head
    for layer in linears:
        w = layer.weight.detach().double().flatten()
        n, expected = w.numel(), math.sqrt(2.0 / layer.in_features)
        assert abs(w.std().item() / expected - 1) < 5 / math.sqrt(2 * n)
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(n)
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.bias.abs().max().item() <= bound
        # a uniform on [-b, b] has std b / sqrt(3): the bias was not redrawn
        assert layer.bias.std().item() > 0.3 * bound


def test_registered_networks_give_the_registry_shapes():
    assert "gated-mlp" in ENCODERS and "gated-mlp" in DECODERS
    encoder = ENCODERS.build(
        "gated-mlp", latent_dim=4, event_shape=(1, 8, 8), hidden=(32, 16), num_outputs=3
    )
    outputs = encoder(torch.rand(2, 5, 1, 8, 8))
    assert len(outputs) == 3 and all(o.shape == (2, 5, 4) for o in outputs)
    decoder = DECODERS.build("gated-mlp", latent_dim=4, event_shape=(1, 8, 8), hidden=(32, 16))
    # the decoder mirrors the encoder's hidden sizes
    assert [m.h.out_features for m in decoder.net[:-1]] == [16, 32]
    assert decoder(torch.randn(2, 5, 4)).shape == (2, 5, 1, 8, 8)


@pytest.mark.parametrize("model", ["vae", "hvae"])
def test_gated_networks_train_an_epoch_from_python(model, few_digits):
    config = Config.from_flags(
        model=model,
        num_epochs=1,
        hidden=[64, 64],
        log_var_min=LOW,
        log_var_max=HIGH,
        prior="vamp",
        num_pseudo_inputs=10,
        **GATED,
        **FAST,
    )
    vae = VARIANTS[model].from_section(config.model, few_digits.shape)
    history = train(vae, few_digits, config, progress=False)
    assert len(history) == 1 and math.isfinite(history[0]["test_elbo"])
    assert isinstance(vae.guide.encoder, GatedMLPEncoder)
    assert isinstance(vae.model.decoder, GatedMLPDecoder)
    if model == "hvae":  # the inner networks are gated too, as in the paper's HVAE_2level
        assert isinstance(vae.guide.z1_net.x_features, GatedDense)
        assert isinstance(vae.model.top_down.net[0], GatedDense)


@pytest.mark.parametrize("model", ["vae", "hvae"])
def test_gated_networks_train_an_epoch_from_the_cli(model, tmp_path, capsys):
    argv = [
        "train", "--model", model, "--encoder", "gated-mlp", "--decoder", "gated-mlp",
        "--hidden", "64", "64", "--log-var-min", "-6", "--log-var-max", "2",
        "--limit", "300", "--num-epochs", "1", "--workdir", str(tmp_path / "run"), *CLI_FAST,
    ]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    text = (tmp_path / "run" / "config.toml").read_text()
    assert 'name = "gated-mlp"' in text and "log_var_min = -6.0" in text


def test_python_dash_m_trains_the_gated_hvae(tmp_path):
    argv = [
        sys.executable, "-m", "pyrovae", "train", "--model", "hvae", "--prior", "vamp",
        "--num-pseudo-inputs", "10", "--encoder", "gated-mlp", "--decoder", "gated-mlp",
        "--hidden", "32", "32", "--log-var-min", "-6", "--log-var-max", "2",
        "--limit", "200", "--num-epochs", "1", "--workdir", str(tmp_path / "run"), *CLI_FAST,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "config.toml").exists()


class FarOut(nn.Module):
    """An encoder whose log-variances are far outside [-6, 2]: +-100, alternating."""

    def __init__(self, latent_dim: int, num_outputs: int = 2) -> None:
        super().__init__()
        self.latent_dim, self.num_outputs = latent_dim, num_outputs
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shape = (*x.shape[:-1], self.latent_dim)
        sign = (-1.0) ** torch.arange(self.latent_dim, dtype=x.dtype)
        log_var = 100.0 * sign * self.weight * torch.ones(shape)
        rest = [torch.zeros(shape) for _ in range(self.num_outputs - 2)]
        return (torch.zeros(shape), log_var, *rest)


def _far_out_guide(name: str, **options):
    guide_cls = GUIDES[name]
    encoder = FarOut(4, guide_cls.num_encoder_outputs(**options))
    bounds = {"log_var_min": LOW, "log_var_max": HIGH}
    return GUIDES.build(name, {**options, **bounds}, encoder=encoder, latent_dim=4)


@pytest.mark.parametrize("name", ["normal", "iaf"])
def test_clipped_posterior_scale_and_encode(name):
    guide = _far_out_guide(name)
    x = torch.rand(7, 10)
    site = poutine.trace(guide).get_trace(x, num_data=7).nodes["z"]
    base = site["fn"].base_dist if name == "normal" else site["fn"].base_dist.base_dist
    scale = base.scale
    assert scale.min() >= math.exp(LOW / 2) - 1e-6 and scale.max() <= math.exp(HIGH / 2) + 1e-6
    # the bounds are reached: the raw log-variances are +-100
    torch.testing.assert_close(scale[..., 0], torch.full((7,), math.exp(HIGH / 2)))
    torch.testing.assert_close(scale[..., 1], torch.full((7,), math.exp(LOW / 2)))
    _, log_var = guide.encode(x)
    assert torch.equal(log_var[..., 0::2], torch.full((7, 2), HIGH))
    assert torch.equal(log_var[..., 1::2], torch.full((7, 2), LOW))


def test_lowrank_guide_clamps_its_diagonal():
    guide = _far_out_guide("lowrank", guide_rank=1)  # its factor W is zero here
    site = poutine.trace(guide).get_trace(torch.rand(7, 10), num_data=7).nodes["z"]
    cov_diag = site["fn"].cov_diag
    assert cov_diag.min() >= math.exp(LOW) * (1 - 1e-6)
    assert cov_diag.max() <= math.exp(HIGH) * (1 + 1e-6)
    _, log_var = guide.encode(torch.rand(7, 10))
    torch.testing.assert_close(log_var[..., :2], torch.tensor([HIGH, LOW]).expand(7, 2))


def test_clamped_log_var_has_no_gradient_beyond_the_bounds():
    guide = _far_out_guide("normal")
    guide.encode(torch.rand(3, 10))[1].sum().backward()
    assert guide.encoder.weight.grad == 0  # as Hardtanh's


def test_without_bounds_nothing_is_clamped():
    guide = GUIDES.build("normal", encoder=FarOut(4), latent_dim=4)
    assert guide.encode(torch.rand(3, 10))[1].abs().max() == 100.0
    assert guide.gaussian_encoder is guide.encoder


def test_the_vamp_prior_reads_the_clamped_posteriors():
    vae = VAE((10,), latent_dim=4, prior="vamp", num_pseudo_inputs=5, guide="normal")
    assert vae.model.prior.encoder is vae.guide.encoder
    clipped = VAE((10,), 4, prior="vamp", num_pseudo_inputs=5, log_var_min=-1.0, log_var_max=-0.5)
    assert isinstance(clipped.model.prior.encoder, ClippedLogVar)
    _, log_var = clipped.model.prior._encode(clipped.model.prior.pseudo_inputs)
    assert log_var.min() >= -1.0 and log_var.max() <= -0.5
    # the view holds no parameters of its own: the state dict is the unclamped VAE's
    assert clipped.state_dict().keys() == vae.state_dict().keys()


def test_hvae_clamps_all_three_gaussians():
    hvae = HierarchicalVAE(
        (10,), latent_dim=3, hidden=(8,), log_var_min=LOW, log_var_max=HIGH, **GATED
    )
    with torch.no_grad():  # the heads' log-variance halves far out, the means at 0
        for layer in (hvae.guide.encoder.net[-1], hvae.guide.z1_net.joint[-1]):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor([0.0] * 3 + [100.0] * 3))
        top_down = hvae.model.top_down.net[-1]
        top_down.weight.zero_()
        top_down.bias.copy_(torch.tensor([0.0] * 3 + [-100.0] * 3))
    x = torch.rand(5, 10)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, num_data=5)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(
        x, num_data=5
    )
    for trace in (guide_trace, model_trace):
        scale = trace.nodes["z1"]["fn"].base_dist.scale
        assert scale.min() >= math.exp(LOW / 2) - 1e-6
        assert scale.max() <= math.exp(HIGH / 2) + 1e-6
    assert torch.all(hvae.guide.encode(x)[1] == HIGH)
    assert torch.all(hvae.guide.encode_z1(x)[1] == HIGH)
    torch.testing.assert_close(
        model_trace.nodes["z1"]["fn"].base_dist.scale, torch.full((5, 3), math.exp(LOW / 2))
    )


@pytest.mark.parametrize("model", ["vae", "hvae"])
@pytest.mark.parametrize("low, high", [(2.0, 2.0), (2.0, -6.0)])
def test_min_not_below_max_is_a_config_error(model, low, high):
    with pytest.raises(ConfigError, match="log_var_min must be < log_var_max"):
        VARIANTS[model]((10,), latent_dim=2, log_var_min=low, log_var_max=high)
    with pytest.raises(ConfigError, match="log_var_min must be < log_var_max"):
        make_guide(
            "normal",
            "mlp",
            latent_dim=2,
            event_shape=(10,),
            hidden=(8,),
            options={"log_var_min": low, "log_var_max": high},
        )


def test_min_not_below_max_exits_2_from_the_cli(tmp_path, capsys):
    argv = ["train", "--log-var-min", "1", "--log-var-max", "0", "--workdir", str(tmp_path)]
    code = cli.main(argv)
    assert code == 2 and "log_var_min must be < log_var_max" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["cvae", "m2", "vqvae"])
def test_own_guides_without_the_clamp_refuse_it(model):
    labels = {} if model == "vqvae" else {"num_classes": 3}
    with pytest.raises(ConfigError, match=f"--model {model} has its own guide.*--log-var-min"):
        VARIANTS[model]((1, 8, 8), latent_dim=2, log_var_min=LOW, **labels)


def test_conditional_variants_take_gated_networks_and_vqvae_refuses_them():
    cvae = VARIANTS["cvae"]((10,), latent_dim=2, num_classes=3, hidden=(8,), **GATED)
    assert isinstance(cvae.guide.encoder.net, GatedMLPEncoder)
    assert isinstance(cvae.model.decoder, GatedMLPDecoder)
    m2 = VARIANTS["m2"]((10,), latent_dim=2, num_classes=3, hidden=(8,), **GATED)
    assert isinstance(m2.guide.classifier.net[0], GatedDense)  # a network of the guide
    with pytest.raises(ConfigError, match="--model vqvae takes no --encoder"):
        VARIANTS["vqvae"]((1, 8, 8), latent_dim=2, encoder="gated-mlp")


def test_flags_appear_in_train_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--log-var-min" in out and "--log-var-max" in out and "gated-mlp" in out


@pytest.mark.parametrize("name, options", [("lowrank", {"guide_rank": 1}), ("iaf", {})])
def test_richer_guides_take_the_bounds_with_gated_encoders(name, options):
    bounds = {"log_var_min": LOW, "log_var_max": HIGH}
    guide = make_guide(
        name,
        "gated-mlp",
        latent_dim=2,
        event_shape=(10,),
        hidden=(8,),
        options={**options, **bounds},
    )
    assert (guide.log_var_min, guide.log_var_max) == (LOW, HIGH)
    assert guide.encode(torch.rand(3, 10))[1].shape == (3, 2)
