"""``pyrovae disentanglement RUN`` and the factor sampler for a user's labelled items.

The command runs on a tiny dsprites-small run with tiny point counts (the scores of an
untrained model mean nothing; the test checks what is written). The data sampler is checked
against the exact grid sampler on the same factor space, the "items" being the factor
vectors themselves (so an identity encoder reads the factors):

- on the complete grid, a :class:`DataFactorSampler` draws from the same distribution as the
  :class:`GridSampler`, so every metric agrees within its Monte Carlo error. The FactorVAE
  score of a code that ignores posY has expectation 4/5 exactly (the share of evaluation
  points that fix another factor, each then classified right); with 2 000 evaluation points
  its standard deviation is sqrt(0.8 * 0.2 / 2000) = 0.009, so two independent estimates
  differ by more than 0.05 (almost 4 standard deviations of the difference) with probability
  below 1e-4. MIG of a rotated code (about 0.10) varies by about 0.005 between seeds of 2 000
  points (measured over 6 seeds on each sampler); we allow 0.03;
- on an incomplete grid (a random half) the identity code still scores exactly 1 on the
  intervention scores: the fixed factor's dimension never varies within a batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import run_cli

from pyrovae import cli
from pyrovae.data import DataFactorSampler, Dataset, DSprites, Factors, GridSampler
from pyrovae.errors import DataError
from pyrovae.inference.evaluation import (
    METRICS,
    beta_vae_score,
    encode_factor_space,
    evaluate_disentanglement,
    factor_traversals,
    factor_vae_score,
    mig,
    sample_codes,
)
from pyrovae.plots import traversal_rows
from pyrovae.variants import VAE

NAMES = ("shape", "scale", "orientation", "posX", "posY")
SIZES = (3, 6, 10, 16, 16)  # DSprites.small()'s factor space
SCORES = (
    "mig",
    "factor_vae",
    "beta_vae",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
)
#: the tiny point counts of the command's tests
POINTS = ["--num-points", "60", "--num-test-points", "40", "--dci-classifier", "forest"]
#: how POINTS name the outputs
NAMED = "-p60-t40-dciforest"


class FactorItems(GridSampler):
    """The product space whose items are the factor vectors themselves (float32)."""

    def render(self, factors: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(factors, dtype=np.float32))


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def ignores_pos_y(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 4] = 0.0
    return x


ROTATION = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]


def rotated(x: torch.Tensor) -> np.ndarray:
    return (x.numpy() / (np.array(SIZES) - 1)) @ ROTATION


@pytest.fixture(scope="module")
def grid() -> FactorItems:
    return FactorItems(NAMES, SIZES)


@pytest.fixture(scope="module")
def complete(grid) -> DataFactorSampler:
    rows = grid.product()
    return DataFactorSampler(torch.from_numpy(rows.astype(np.float32)), rows, NAMES, SIZES)


@pytest.fixture(scope="module")
def half(grid) -> DataFactorSampler:
    rows = grid.product()
    rows = rows[np.random.default_rng(0).permutation(len(rows))[: len(rows) // 2]]
    return DataFactorSampler(torch.from_numpy(rows.astype(np.float32)), rows, NAMES, SIZES)


# -- the data sampler ------------------------------------------------------------------------


def test_fixed_factor_draws_share_the_factor_and_are_items_of_the_data(half):
    rng = np.random.default_rng(0)
    known = {tuple(row) for row in half.factors.tolist()}
    for k in range(len(SIZES)):
        factors, items = half.sample_with_fixed(50, k, rng)
        assert len(set(factors[:, k].tolist())) == 1
        assert {tuple(row) for row in factors.tolist()} <= known
        np.testing.assert_array_equal(items.numpy(), factors)  # looked up, item = its factors
    rows = half.sample_factors(300, rng)
    index, values = rng.integers(0, 5, size=300), np.ones(300, dtype=np.int64)
    fixed = half.fix_factor(rows, index, values, rng)
    assert (fixed[np.arange(300), index] == 1).all()
    assert {tuple(row) for row in fixed.tolist()} <= known


def test_render_draws_among_items_that_share_their_factors():
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 1]])
    sampler = DataFactorSampler(torch.arange(5.0)[:, None], factors, seed=0)
    drawn = sampler.render(np.array([[1, 1]] * 200))[:, 0]
    assert set(drawn.tolist()) == {3.0, 4.0}
    assert sampler.render(np.array([[0, 1]]))[0, 0] == 1.0
    with pytest.raises(DataError, match=r"no item has the factors \[2, 0\]"):
        sampler.render(np.array([[2, 0]]))


def test_a_fixed_value_without_items_is_refused_with_one_message():
    factors = np.array([[0, 0], [0, 1], [2, 0]])  # factor0 = 1 has no item
    sampler = DataFactorSampler(torch.zeros(3, 1), factors, ("a", "b"), (3, 2))
    with pytest.raises(DataError, match=r"no item has factor a = \[1\]") as error:
        sampler.fix_factor(np.zeros((4, 2)), np.zeros(4, np.int64), np.array([0, 1, 1, 2]), None)
    assert "the data cover 2 of its 3 values" in str(error.value)
    with pytest.raises(DataError, match="integer array of shape"):
        DataFactorSampler(torch.zeros(3, 1), factors[:2])


def test_a_dataset_without_factors_is_refused():
    data = Dataset("plain", torch.rand(4, 1, 2, 2), torch.rand(2, 1, 2, 2), None, None)
    with pytest.raises(DataError, match="plain has no factor labels"):
        DataFactorSampler.from_dataset(data)
    labelled = Dataset(
        "labelled",
        torch.rand(4, 1, 2, 2),
        torch.rand(2, 1, 2, 2),
        None,
        None,
        factors=Factors(("a",), (2,), np.array([[0], [1], [0], [1]]), np.array([[1], [0]])),
    )
    sampler = DataFactorSampler.from_dataset(labelled)
    assert sampler.num_items == 6 and sampler.factor_names == ("a",)


def test_on_the_complete_grid_the_data_sampler_scores_as_the_exact_one(grid, complete):
    small = {"num_train": 300, "num_eval": 300}
    for sampler in (grid, complete):
        assert factor_vae_score(identity, sampler, 0, **small).eval_accuracy == 1
        assert beta_vae_score(identity, sampler, 0, **small).eval_accuracy == 1
    settings = {"num_train": 500, "num_eval": 2000, "num_variance_estimate": 1000}
    exact = factor_vae_score(ignores_pos_y, grid, 1, **settings).eval_accuracy
    looked_up = factor_vae_score(ignores_pos_y, complete, 2, **settings).eval_accuracy
    assert abs(exact - looked_up) < 0.05
    assert abs(exact - 0.8) < 0.04 and abs(looked_up - 0.8) < 0.04
    exact_mig = mig(*sample_codes(rotated, grid, 2000, 3))
    looked_up_mig = mig(*sample_codes(rotated, complete, 2000, 4))
    assert abs(exact_mig - looked_up_mig) < 0.03


def test_on_an_incomplete_grid_the_identity_still_scores_1(half):
    assert factor_vae_score(identity, half, 0, num_train=300, num_eval=300).eval_accuracy == 1
    assert beta_vae_score(identity, half, 0, num_train=300, num_eval=300).eval_accuracy == 1


def test_encoding_the_factor_space_once_keeps_each_items_code(grid, half):
    table = encode_factor_space(rotated, grid)
    np.testing.assert_array_equal(table.factors, grid.product())
    np.testing.assert_allclose(table.items.numpy(), rotated(grid.render(grid.product())))
    table = encode_factor_space(identity, half)
    np.testing.assert_array_equal(table.items.numpy(), half.factors)


# -- the library call and the figure ----------------------------------------------------------


def test_evaluate_disentanglement_and_the_traversal_rows(half):
    vae = VAE((5,), latent_dim=3, hidden=(8,), likelihood="gaussian")
    report = evaluate_disentanglement(
        vae, half, num_points=50, num_test_points=30, dci_classifier="forest", code_table=False
    )
    assert set(report.scores) == set(SCORES)
    assert all(0.0 <= v <= 1.0 for v in report.scores.values())
    assert report.mutual_information.shape == (3, 5) and len(report.dims()) == 3
    stds = [row["std"] for row in report.dims()]
    assert stds == sorted(stds, reverse=True)  # the most varied (active) dims first
    grid, base = factor_traversals(vae, half, report, steps=5)
    assert grid.shape == (3, 5, 5) and base.shape == (5,)
    labels = [report.dim_label(row) for row in report.dims()]
    figure = traversal_rows(grid, labels, [-2.5, -1.25, 0, 1.25, 2.5], "a test")
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == labels


# -- the command ------------------------------------------------------------------------------


def train(workdir: Path, *argv: str) -> Path:
    flags = ["--num-epochs", "1", "--hidden", "16", "--num-eval-samples", "2"]
    assert cli.main(["train", "--workdir", str(workdir), *flags, *argv, "--no-progress", "-q"]) == 0
    return workdir


@pytest.fixture(scope="module")
def sprites_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sprites") / "run"
    return train(run, "--dataset", "dsprites-small", "--limit", "256", "--latent-dim", "3")


def test_disentanglement_command(sprites_run, capsys):
    code, out, err = run_cli(["disentanglement", sprites_run, *POINTS, "-q"], capsys)
    assert code == 0, err
    # the settings that are not the defaults name the outputs
    result = json.loads((sprites_run / f"disentanglement{NAMED}.json").read_text())
    assert set(result["scores"]) == set(SCORES)
    assert all(0.0 <= v <= 1.0 for v in result["scores"].values())
    settings = result["settings"]
    assert settings["num_points"] == 60 and settings["num_test_points"] == 40
    assert settings["dci_classifier"] == "forest"
    assert settings["seed"] == 0 and settings["num_bins"] == 20
    assert result["factors"] == list(NAMES) and result["checkpoint"] == "best"
    assert np.asarray(result["mutual_information"]).shape == (3, 5)
    assert sorted(row["dim"] for row in result["dims"]) == [0, 1, 2]
    assert all(row["factor"] in NAMES and isinstance(row["active"], bool) for row in result["dims"])
    assert (sprites_run / f"traversals{NAMED}.png").stat().st_size > 0
    assert "dci_disentanglement" in out and f"traversals{NAMED}.png" in out
    assert not (sprites_run / ".lock").exists()


def test_a_subset_of_metrics_and_the_last_checkpoint(sprites_run, capsys):
    argv = ["disentanglement", sprites_run, *POINTS, "--metrics", "mig,sap", "--checkpoint", "last"]
    code, _, err = run_cli([*argv, "--seed", "2", "-q"], capsys)
    assert code == 0, err
    name = f"-metricsmig+sap{NAMED}-seed2-last"
    result = json.loads((sprites_run / f"disentanglement{name}.json").read_text())
    assert set(result["scores"]) == {"mig", "sap"} and result["checkpoint"] == "last"
    assert (sprites_run / f"traversals{name}.png").exists()


def test_a_run_on_a_users_npz_with_factors(tmp_path, capsys):
    """Its own items, by lookup: 400 sprites of a random part of the grid, encoded once."""
    sprites = DSprites.small()
    factors = sprites.sample_factors(400, np.random.default_rng(0))
    path = tmp_path / "sprites.npz"
    np.savez(path, x=sprites.render(factors).numpy(), factors=factors * 10)  # raw values
    run = train(tmp_path / "run", "--data", str(path), "--latent-dim", "2")
    capsys.readouterr()
    code, _, err = run_cli(["disentanglement", run, *POINTS, "-q"], capsys)
    assert code == 0, err
    result = json.loads((run / f"disentanglement{NAMED}.json").read_text())
    assert result["settings"]["code_table"] and result["settings"]["factor_space_items"] == 400
    assert result["factors"] == [f"factor{j}" for j in range(5)]
    assert all(0.0 <= v <= 1.0 for v in result["scores"].values()) and len(result["dims"]) == 2


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--metrics", "mig,dcii"], "unknown metric 'dcii' (did you mean 'dci'?)"),
        (["--num-points", "1"], "--num-points and --num-test-points must be >= 2"),
        (["--dci-classifier", "svm"], "invalid choice: 'svm'"),
        (["--span", "nan"], "--span be a finite number > 0"),
        (["--span", "inf"], "--span be a finite number > 0"),
        (["--steps", "1000"], "--steps must lie in 2..101"),
        # two points that happen to share a shape: MIG would divide by a zero entropy
        (["--num-points", "2", "--seed", "1"], "use more points (--num-points)"),
    ],
)
def test_bad_options_exit_2(argv, phrase, sprites_run, capsys):
    before = {p.name: p.read_bytes() for p in sprites_run.iterdir()}
    code, _, err = run_cli(["disentanglement", sprites_run, *argv, "-q"], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in sprites_run.iterdir()} == before


def test_a_run_without_factors_is_refused_and_left_as_it_was(tmp_path, capsys):
    run = train(tmp_path / "digits", "--limit", "100", "--latent-dim", "2")
    capsys.readouterr()  # training's report
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, out, err = run_cli(["disentanglement", run, "-q"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "digits has no factor labels" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_metrics_cover_every_score():
    assert METRICS == ("mig", "factor_vae", "beta_vae", "dci", "sap")
