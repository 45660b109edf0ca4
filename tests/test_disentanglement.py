"""Procedural dSprites and the disentanglement metrics.

Rendering: deterministic, and the factors are recoverable from the pixels (the centroid
follows the position, the area the scale). Metrics: checked on codes with known answers over a
small synthetic factor space (4 factors x 8 values, the "items" being the factor vectors), so
every test runs in seconds:

- the **identity** code (code j = factor j) scores 1 on MIG, the FactorVAE and beta-VAE
  scores, DCI and continuous SAP. Exactly 1 where the points are the whole product space (the
  factors are then exactly independent, so every off-diagonal mutual information and tree
  importance is 0); the intervention scores are 1 because a fixed factor's dimension has
  variance exactly 0 (FactorVAE) or a difference exactly 0 (beta-VAE). Discrete SAP is the
  exception: a one-dimensional linear classifier cannot separate 8 ordered classes, so it
  stays well below 1 even for the identity (what disentanglement_lib computes too);
- the **Hadamard rotation** mixes every factor equally into every code dimension (all
  loadings +-1/2): every metric falls to chance (below 0.05 for the gap-based scores, below
  0.45 for the accuracies, whose chance level is 0.25). A generic **random rotation** (seed 1)
  halves MIG, DCI and SAP (thresholds below), but leaves the intervention scores high: they
  ask only whether the fixed factor is *identifiable* from the code statistics, not whether
  one dimension holds it (a known weakness, and our check that we compute them as published);
- a code that **ignores one factor** (its dimension collapsed to a constant) loses exactly that
  factor's share: MIG and continuous SAP drop from 1 to 3/4 exactly, that factor's DCI
  informativeness drops to chance (1/8) while D and C stay 1, the FactorVAE score drops to
  the share of evaluation points that did not fix that factor (about 3/4). The beta-VAE score
  stays 1: the ignored factor's class is the one whose features are all positive (the
  criticism of Kim & Mnih 2018, section 3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pyrovae.data import Dataset, DSprites, Factors, GridSampler, load_dataset
from pyrovae.errors import DataError
from pyrovae.inference.evaluation import (
    beta_vae_score,
    dci,
    factor_vae_score,
    mig,
    mutual_information,
    sample_codes,
    sap,
    sap_matrix,
)

# -- procedural dSprites ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sprites() -> DSprites:
    return DSprites.small()


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(
        torch.arange(image.shape[-2]), torch.arange(image.shape[-1]), indexing="ij"
    )
    mass = image.sum()
    return float((image * cols).sum() / mass), float((image * rows).sum() / mass)


def test_dsprites_grids() -> None:
    assert DSprites.full().factor_sizes == (3, 6, 40, 32, 32)
    assert DSprites.full().num_items == 737_280
    assert DSprites.small().factor_sizes == (3, 6, 10, 16, 16)
    assert DSprites.small().num_items == 46_080
    values = DSprites.full().values(np.array([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31]]))
    np.testing.assert_allclose(values["scale"], [0.5, 1.0])
    np.testing.assert_allclose(values["orientation"], [0.0, 2 * np.pi * 39 / 40])
    np.testing.assert_allclose(values["posX"], [0.0, 1.0])


def test_rendering_is_deterministic(sprites: DSprites) -> None:
    factors = sprites.sample_factors(50, np.random.default_rng(0))
    images = sprites.render(factors)
    assert images.shape == (50, 1, 32, 32) and images.dtype == torch.float32
    # the same rows give the same pixels whatever the batch, and in another instance
    assert torch.equal(images[7:8], sprites.render(factors[7:8]))
    assert torch.equal(images.flip(0), DSprites.small().render(factors[::-1]))
    # gray levels: the share of the 3 x 3 sub-pixel points inside the sprite
    assert images.min() >= 0 and images.max() == 1
    assert torch.equal(images * 9, (images * 9).round())


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_centroid_follows_the_position(sprites: DSprites, shape: int) -> None:
    positions = np.arange(16)
    along_x = np.array([[shape, 3, 1, p, 7] for p in positions])
    along_y = np.array([[shape, 3, 1, 7, p] for p in positions])
    cx = [_centroid(image)[0] for image in sprites.render(along_x)]
    cy = [_centroid(image)[1] for image in sprites.render(along_y)]
    assert np.all(np.diff(cx) > 0) and np.all(np.diff(cy) > 0)
    # a whole grid step moves the sprite by 0.66 / 15 of the image (1.4 px at 32)
    np.testing.assert_allclose(np.diff(cx), 32 * 0.66 / 15, rtol=0.1)


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_grows_with_the_scale(sprites: DSprites, shape: int) -> None:
    factors = np.array([[shape, s, 0, 8, 8] for s in range(6)])
    area = sprites.render(factors).sum(dim=(1, 2, 3)).numpy()
    assert np.all(np.diff(area) > 0)
    # area goes with the squared scale, 0.5 -> 1: four times larger
    assert 3.3 < area[-1] / area[0] < 4.7


def test_shapes_and_orientations_differ(sprites: DSprites) -> None:
    shapes = sprites.render(np.array([[s, 5, 1, 8, 8] for s in range(3)]))
    assert not torch.equal(shapes[0], shapes[1]) and not torch.equal(shapes[1], shapes[2])
    hearts = sprites.render(np.array([[2, 5, o, 8, 8] for o in range(10)]))
    assert len({h.numpy().tobytes() for h in hearts}) == 10  # no symmetry: all differ
    # a scale-1 sprite at the extreme positions stays inside the frame
    corners = sprites.render(np.array([[0, 5, 0, 0, 0], [0, 5, 0, 15, 15]]))
    assert corners[..., 0, :].sum() == 0 and corners[..., -1, :].sum() == 0
    assert corners[..., :, 0].sum() == 0 and corners[..., :, -1].sum() == 0


def test_sampler_fixed_draws_share_the_factor(sprites: DSprites) -> None:
    rng = np.random.default_rng(1)
    for index in range(sprites.num_factors):
        factors, images = sprites.sample_with_fixed(40, index, rng)
        assert len(np.unique(factors[:, index])) == 1
        others = np.delete(factors, index, axis=1)
        assert all(len(np.unique(column)) > 1 for column in others.T)
        assert torch.equal(images, sprites.render(factors))


def test_dsprites_dataset_carries_its_factors(sprites: DSprites) -> None:
    data = load_dataset("dsprites-small", limit=64, seed=3)
    assert data.shape == (1, 32, 32) and len(data.train) == len(data.test) == 64
    assert data.factors is not None
    assert data.factors.names == ("shape", "scale", "orientation", "posX", "posY")
    assert data.factors.sizes == sprites.factor_sizes
    assert torch.equal(data.train, sprites.render(data.factors.train))
    assert torch.equal(data.test, sprites.render(data.factors.test))
    assert torch.equal(data.train_labels, torch.from_numpy(data.factors.train[:, 0]))
    # the validation split and the limit keep the factors with their items
    kept, validation = data.split_validation(0.25, seed=0)
    assert torch.equal(kept.train, sprites.render(kept.factors.train))
    assert torch.equal(validation.test, sprites.render(validation.factors.test))
    big = load_dataset("dsprites", limit=8, seed=3)
    assert big.shape == (1, 64, 64) and big.factors.sizes == (3, 6, 40, 32, 32)
    assert torch.equal(big.test, DSprites.full().render(big.factors.test))


def test_factors_must_match_the_items() -> None:
    x = torch.zeros(4, 2)
    factors = Factors(("a",), (2,), np.zeros((4, 1), np.int64), np.zeros((3, 1), np.int64))
    with pytest.raises(DataError, match="3 rows of test factors"):
        Dataset("d", x, x, None, None, factors=factors)
    with pytest.raises(DataError, match="outside"):
        dataclasses.replace(factors, test=np.full((4, 1), 2, np.int64))


def test_npz_with_factors(tmp_path) -> None:
    rng = np.random.default_rng(0)
    scales = rng.choice([0.5, 0.75, 1.0], size=40)
    kinds = rng.integers(0, 2, size=40)
    x = np.stack([scales, kinds], axis=1).astype(np.float32)  # items that show their factors
    np.savez(
        tmp_path / "f.npz",
        x=x,
        factors=np.stack([scales, kinds], axis=1),
        factor_names=np.array(["scale", "kind"]),
    )
    data = load_dataset(path=tmp_path / "f.npz", test_fraction=0.25)
    assert data.factors.names == ("scale", "kind") and data.factors.sizes == (3, 2)
    # values become their rank: 0.5, 0.75, 1.0 -> 0, 1, 2, aligned with the split items
    for split in ("train", "test"):
        items = getattr(data, split).numpy()
        np.testing.assert_array_equal(data.factors.take(split, slice(None))[:, 1], items[:, 1])
        np.testing.assert_array_equal(
            data.factors.take(split, slice(None))[:, 0],
            np.searchsorted([0.5, 0.75, 1.0], items[:, 0]),
        )
    np.savez(
        tmp_path / "s.npz",
        x_train=x[:30],
        x_test=x[30:],
        factors_train=kinds[:30],
        factors_test=kinds[30:],
    )
    split = load_dataset(path=tmp_path / "s.npz")
    assert split.factors.names == ("factor0",) and split.factors.test.shape == (10, 1)
    np.savez(tmp_path / "bad.npz", x=x, factors=kinds[:39])
    with pytest.raises(DataError, match="39 rows of factors for 40 items"):
        load_dataset(path=tmp_path / "bad.npz")


# -- metrics on codes with known answers -----------------------------------------------------


class FactorVectors(GridSampler):
    """4 factors of 8 values each, whose item is its factor vector (as floats)."""

    def render(self, factors: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(factors), dtype=torch.float32)


SPACE = FactorVectors(["a", "b", "c", "d"], [8, 8, 8, 8])
HADAMARD = (
    torch.tensor(
        [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32
    )
    / 2
)
ROTATION = torch.as_tensor(
    np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0], dtype=torch.float32
)
IGNORED = 2  # the factor the "ignore" code drops

CODES = {
    "identity": lambda x: x,
    "hadamard": lambda x: x @ HADAMARD,
    "rotation": lambda x: x @ ROTATION,
    "ignore": lambda x: x * torch.tensor([1.0, 1.0, 0.0, 1.0]),
}


def _arrays(code: str, factors: np.ndarray) -> np.ndarray:
    return CODES[code](torch.as_tensor(factors, dtype=torch.float32)).double().numpy()


PRODUCT = SPACE.product()  # all 4096 combinations: the factors exactly independent
SUBSET = PRODUCT[np.random.default_rng(2).choice(len(PRODUCT), 1000, replace=False)]
TEST = SPACE.sample_factors(1000, np.random.default_rng(3))


def test_mig() -> None:
    assert mig(_arrays("identity", PRODUCT), PRODUCT) == pytest.approx(1.0, abs=1e-9)
    assert mig(_arrays("hadamard", PRODUCT), PRODUCT) < 0.05
    assert mig(_arrays("rotation", PRODUCT), PRODUCT) < 0.5
    assert mig(_arrays("ignore", PRODUCT), PRODUCT) == pytest.approx(0.75, abs=1e-9)
    info = mutual_information(_arrays("identity", PRODUCT), PRODUCT)
    np.testing.assert_allclose(info, np.log(8) * np.eye(4), atol=1e-9)
    with pytest.raises(ValueError, match="two code dimensions"):
        mig(PRODUCT[:, :1].astype(float), PRODUCT)


def test_dci() -> None:
    identity = dci(_arrays("identity", SUBSET), SUBSET, _arrays("identity", TEST), TEST)
    assert identity.disentanglement > 0.99 and identity.completeness > 0.99
    assert identity.informativeness == 1.0
    for code in ("hadamard", "rotation"):
        mixed = dci(_arrays(code, SUBSET), SUBSET, _arrays(code, TEST), TEST)
        limit = 0.05 if code == "hadamard" else 0.5
        assert mixed.disentanglement < limit and mixed.completeness < limit, code
    # on the product space no tree finds anything in the other dimensions for the ignored
    # factor: it has no importance, and its accuracy is chance (1/8)
    ignore = dci(_arrays("ignore", PRODUCT), PRODUCT, _arrays("ignore", TEST), TEST)
    assert ignore.importance[:, IGNORED].sum() == 0
    assert ignore.disentanglement > 0.99 and ignore.completeness > 0.99
    others = np.delete(ignore.informativeness_per_factor, IGNORED)
    np.testing.assert_array_equal(others, 1.0)
    # chance: 1/8, give or take 3 binomial standard deviations on 1000 test points
    assert abs(ignore.informativeness_per_factor[IGNORED] - 1 / 8) < 0.035


def test_sap() -> None:
    def continuous(code: str) -> float:
        return sap(_arrays(code, PRODUCT), PRODUCT, continuous_factors=True)

    assert continuous("identity") == pytest.approx(1.0, abs=1e-9)
    assert continuous("hadamard") < 0.05 and continuous("rotation") < 0.6
    assert continuous("ignore") == pytest.approx(0.75, abs=1e-9)

    def gaps(code: str) -> np.ndarray:
        scores = np.sort(sap_matrix(_arrays(code, SUBSET), SUBSET, _arrays(code, TEST), TEST), 0)
        return scores[-1] - scores[-2]

    identity = gaps("identity")
    assert identity.mean() > 0.15  # well below 1: see the module docstring
    assert gaps("hadamard").mean() < 0.05
    ignore = gaps("ignore")
    assert ignore[IGNORED] < 0.05
    np.testing.assert_allclose(np.delete(ignore, IGNORED), np.delete(identity, IGNORED), atol=0.05)


def _factor_vae(code: str):
    return factor_vae_score(
        CODES[code], SPACE, 0, num_train=500, num_eval=1000, num_variance_estimate=1000
    )


def _beta_vae(code: str):
    return beta_vae_score(CODES[code], SPACE, 0, num_train=500, num_eval=500)


def test_factor_vae_score() -> None:
    identity = _factor_vae("identity")
    assert identity.train_accuracy == identity.eval_accuracy == 1.0
    assert _factor_vae("hadamard").eval_accuracy < 0.45
    assert _factor_vae("rotation").eval_accuracy > 0.8  # identifiable, though mixed
    ignore = _factor_vae("ignore")
    # the constant dimension is pruned; the votes of batches fixing the ignored factor land
    # on other factors' dimensions, so exactly those (about 1/4, +-4 sd on 1000) are wrong
    assert ignore.num_active_dims == 3
    assert abs(ignore.eval_accuracy - 0.75) < 0.06
    assert factor_vae_score(lambda x: 0 * x, SPACE, num_variance_estimate=100).eval_accuracy == 0


def test_beta_vae_score() -> None:
    assert _beta_vae("identity").eval_accuracy > 0.99
    assert _beta_vae("hadamard").eval_accuracy < 0.45
    assert _beta_vae("rotation").eval_accuracy > 0.8
    assert _beta_vae("ignore").eval_accuracy > 0.99  # Kim & Mnih's criticism


def test_metrics_on_dsprites_codes(sprites: DSprites) -> None:
    """A hand-made code of sprite images (centroid column, centroid row, area) carries posX,
    posY and scale in that order, as the mutual information finds."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[*_centroid(image), float(image.sum())] for image in images])

    codes, factors = sample_codes(encode, sprites, num_points=600, rng=0)
    assert codes.shape == (600, 3) and factors.shape == (600, 5)
    info = mutual_information(codes, factors)
    assert info[:, 3].argmax() == 0 and info[:, 4].argmax() == 1 and info[:, 1].argmax() == 2
