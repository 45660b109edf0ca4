"""Sample-quality scores: the Fréchet distance against an independent scipy computation,
precision and recall on real and on garbage items, sharpness by hand, the cached feature
classifier, and ``pyrovae score`` on a small trained run (good and bad input)."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from cli_checks import run_cli

from pyrovae import VAE, ConditionalVAE, DataError, Dataset, load_dataset, score
from pyrovae.inference.evaluation import (
    ClassifierSettings,
    default_cache_dir,
    feature_classifier,
    frechet_distance,
    manifold_scores,
    precision_recall,
    sharpness,
)
from pyrovae.inference.evaluation import features as features_module
from pyrovae.inference.evaluation.features import extract_features

#: every key of score() and scores.json
SCORE_KEYS = {
    "num_data",
    "num_samples",
    "fd_samples",
    "fd_reconstructions",
    "fd_train_test",
    "precision",
    "recall",
    "density",
    "coverage",
    "precision_recall_k",
    "sharpness_samples",
    "sharpness_reconstructions",
    "sharpness_data",
    "reconstruction_mse",
    "classifier_accuracy",
    "feature_dim",
}
TINY = ["--num-epochs", "1", "--num-eval-samples", "4", "--no-progress", "-q"]


@pytest.fixture(autouse=True)
def no_home_cache(tmp_path, monkeypatch):
    """No test writes a classifier into the user's own cache."""
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="module")
def classifier(digits, cache):
    """The digits classifier with the default settings, trained once for this module."""
    return feature_classifier(digits, cache_dir=cache)


@pytest.fixture(scope="module")
def test_features(digits, classifier) -> torch.Tensor:
    return extract_features(classifier.network, digits.test)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), in float64 with scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


# -- Fréchet distance --------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero(test_features):
    x = test_features.double()
    trace = torch.cov(x.T).trace().item()
    # FD(X, X) = 2 tr(S) - 2 sum_i sqrt(eig_i(S S)) is a difference of two numbers of size
    # tr(S). In float64 the eigenvalues of S S are exact to about 1e-16 ||S||^2, so each square
    # root is off by at most about 1e-8 ||S|| (the zero eigenvalues of a rank-deficient S are
    # the worst case), and D = 128 of them by at most about 1e-6 tr(S).
    assert abs(frechet_distance(x, x)) < 1e-6 * trace
    gaussian = torch.randn(400, 16, dtype=torch.float64)
    assert abs(frechet_distance(gaussian, gaussian)) < 1e-6 * 16


def test_frechet_distance_grows_with_noise(digits, classifier):
    network = classifier.network
    clean = digits.test
    distances = []
    for level in (0.0, 0.05, 0.1, 0.2, 0.4):
        noisy = (clean + level * torch.randn_like(clean)).clamp(0, 1)
        distances.append(frechet_distance(clean, noisy, feature=network, batch_size=100))
    assert distances[0] < 1e-6 * distances[-1]
    assert all(a < b for a, b in itertools.pairwise(distances)), distances
    # the items' path (torchmetrics runs the network) equals the features' path
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    on_features = frechet_distance(
        extract_features(network, clean), extract_features(network, noisy)
    )
    assert frechet_distance(clean, noisy, feature=network) == pytest.approx(on_features, rel=1e-9)


@pytest.mark.parametrize("num_items, dim", [(500, 16), (300, 64)])
def test_frechet_distance_matches_scipy(num_items, dim):
    generator = np.random.default_rng(dim)
    mix_a, mix_b = generator.normal(size=(2, dim, dim))
    a = generator.normal(size=(num_items, dim)) @ mix_a + 1.0
    b = generator.normal(size=(num_items + 50, dim)) @ mix_b - 0.5
    expected = scipy_frechet(a, b)
    actual = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert actual == pytest.approx(expected, rel=1e-3)
    # features in float32 (as a network gives them) agree as well
    actual32 = frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert actual32 == pytest.approx(expected, rel=1e-3)


# -- precision and recall ----------------------------------------------------------------------


def test_manifold_scores_of_real_and_of_garbage_items(digits, classifier, test_features):
    n = len(digits.test)
    subset = digits.train[torch.randperm(len(digits.train))[:n]]
    train = extract_features(classifier.network, subset)
    real = manifold_scores(train, test_features, k=3)
    # Held-out and training items are exchangeable, so a held-out item lies in a given
    # training item's 3-NN ball with probability 3/n: on average in 3 balls (the density's
    # expectation is exactly 1). Missing all of them is rare; measured 0.91-0.93 (precision)
    # and 0.90-0.95 (recall). 0.8 is about 5 binomial standard errors (0.02 at n = 360) below.
    assert real["precision"] > 0.8 and real["recall"] > 0.8, real
    assert abs(real["density"] - 1) < 0.15, real
    # coverage has a closed-form expectation (Naeem et al. 2020): 1 - prod (n - i) / (2n - i)
    expected = 1 - np.prod([(n - i) / (2 * n - i) for i in (1, 2, 3)])
    assert abs(real["coverage"] - expected) < 0.06, (real, expected)  # 3.5 standard errors
    assert precision_recall(train, test_features, k=3) == (real["precision"], real["recall"])
    # garbage, uniform pixels: precision drops (a few real outliers have large balls, so not
    # to 0), density and coverage fall much further, recall to about 0
    noise = extract_features(classifier.network, torch.rand_like(digits.test))
    garbage = manifold_scores(test_features, noise, k=3)
    assert garbage["precision"] < real["precision"] - 0.2, garbage
    assert garbage["density"] < 0.5 and garbage["coverage"] < 0.3, garbage
    assert garbage["recall"] < 0.05, garbage


def test_precision_recall_by_hand():
    # 1-D: real points 0, 1, 2, 3 have 1-NN radii 1, 1, 1, 1; generated points 0.5 and 10
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0], [10.5]])
    precision, recall = precision_recall(real, fake, k=1)
    # 0.5 lies in a real ball, 10 and 10.5 do not; the generated radii are 9.5, 0.5, 0.5, so
    # the ball of radius 9.5 around 0.5 covers every real point
    assert precision == pytest.approx(1 / 3) and recall == 1.0
    # density: 0.5 is in the balls of 0 and 1 (distances 0.5, 0.5 <= 1): 2 hits in 3 samples;
    # coverage: only the balls of 0 and 1 hold a sample
    scores = manifold_scores(real, fake, k=1)
    assert scores["density"] == pytest.approx(2 / 3) and scores["coverage"] == 0.5


# -- sharpness ---------------------------------------------------------------------------------


def test_sharpness_by_hand():
    image = torch.tensor([[[[0.0, 1.0, 0.0, 2.0], [1.0, 3.0, 1.0, 0.0], [0.0, 1.0, 4.0, 0.0]]]])
    # the interior pixels (1, 1) and (1, 2): 1 + 1 + 1 + 1 - 4*3 = -8 and 0 + 3 + 0 + 4 - 4*1 = 3
    # their population variance: ((3 - (-8)) / 2)^2
    assert sharpness(image).tolist() == [pytest.approx(30.25)]
    # two channels are averaged, and scipy's Laplacian agrees on the interior
    x = torch.rand(2, 2, 6, 7, dtype=torch.float64)
    expected = [
        np.mean([scipy.ndimage.laplace(c)[1:-1, 1:-1].var() for c in item.numpy()]) for item in x
    ]
    assert sharpness(x).numpy() == pytest.approx(expected, rel=1e-12)


def test_blur_lowers_sharpness(digits):
    x = digits.test[:50]
    box = torch.full((1, 1, 3, 3), 1 / 9)
    blurred = torch.nn.functional.conv2d(x, box, padding=1)
    assert (sharpness(blurred) < sharpness(x)).all()


# -- the feature classifier and its cache ------------------------------------------------------


def test_classifier_is_accurate_and_cached(digits, cache, classifier, monkeypatch):
    # about 0.98 measured; with 360 held-out items the binomial SE is about 0.007
    assert classifier.accuracy > 0.95
    assert classifier.path.parent == cache and classifier.path.is_file()
    assert not list(cache.glob("*.tmp"))  # written atomically, nothing left over
    entry = torch.load(classifier.path, weights_only=True)
    assert entry["accuracy"] == classifier.accuracy

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was trained again")

    monkeypatch.setattr(features_module, "train_classifier", no_training)
    again = feature_classifier(digits, cache_dir=cache)
    assert again.path == classifier.path and again.accuracy == classifier.accuracy
    x = digits.test[:20]
    assert torch.equal(again.network.features(x), classifier.network.features(x))
    # another data set (here: fewer items) is another cache entry, so it trains
    with pytest.raises(AssertionError, match="trained again"):
        feature_classifier(load_dataset("digits", limit=100), cache_dir=cache)


def test_unreadable_cache_is_retrained(digits, tmp_path, caplog):
    settings = ClassifierSettings(num_steps=5)
    first = feature_classifier(digits, cache_dir=tmp_path, settings=settings)
    first.path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        second = feature_classifier(digits, cache_dir=tmp_path, settings=settings)
    assert "unreadable" in caplog.text and second.path == first.path
    assert torch.load(second.path, weights_only=True)["accuracy"] == second.accuracy


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("PYROVAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pyrovae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "pyrovae"


def test_data_without_labels_is_refused(digits, tmp_path):
    unlabelled = Dataset("pixels", digits.train, digits.test, None, None)
    with pytest.raises(DataError, match="no train and test labels"):
        feature_classifier(unlabelled, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


# -- score() -----------------------------------------------------------------------------------


def test_score_of_every_kind_of_variant(digits, cache, classifier):
    vae = VAE(digits.shape)
    state = torch.get_rng_state()
    vae_scores = score(vae, digits, num_samples=50, batch_size=64, cache_dir=cache)
    assert torch.equal(torch.get_rng_state(), state)  # seeded on its own stream
    assert set(vae_scores) == SCORE_KEYS and vae_scores["num_samples"] == 50
    assert vae_scores["num_data"] == len(digits.test)
    assert vae_scores["classifier_accuracy"] == classifier.accuracy
    # an untrained decoder's grey blobs are far from the data, much further than the train split
    assert vae_scores["fd_samples"] > 10 * vae_scores["fd_train_test"]
    assert score(vae, digits, num_samples=50, batch_size=64, cache_dir=cache) == vae_scores
    # a conditional VAE draws the classes in turn and reconstructs with the labels
    cvae = ConditionalVAE(digits.shape, num_classes=10)
    cvae_scores = score(cvae, digits, num_samples=30, batch_size=7, cache_dir=cache)
    assert set(cvae_scores) == SCORE_KEYS
    assert all(0 <= cvae_scores[k] <= 1 for k in ("precision", "recall", "coverage"))


def test_score_of_items_that_are_not_images(tmp_path):
    # vectors: the classifier is an MLP, and sharpness is not defined (None, JSON null)
    labels = torch.arange(260) % 4
    items = (torch.rand(260, 16) + torch.nn.functional.one_hot(labels, 16)).clamp(0, 1)
    data = Dataset("vectors", items[:200], items[200:], labels[:200], labels[200:])
    settings = ClassifierSettings(num_steps=50)
    scores = score(VAE(data.shape), data, cache_dir=tmp_path, settings=settings)
    assert scores["sharpness_samples"] is None and scores["sharpness_data"] is None
    assert scores["num_samples"] == 60 and scores["classifier_accuracy"] > 0.5
    assert json.loads(json.dumps(scores))["sharpness_reconstructions"] is None


# -- pyrovae score -----------------------------------------------------------------------------


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_score_command(tmp_path, cache, classifier, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--workdir", run, *TINY], capsys)[0] == 0
    before = folder_bytes(run)
    for argv, phrase in [
        (["score", tmp_path / "missing", "--cache-dir", cache], "no checkpoint"),
        (["score", run, "--num-samples", "0", "--cache-dir", cache], "--num-samples must be >= 1"),
        (["score", run, "--num-samples", "2", "--cache-dir", cache], "more than 3 samples"),
        (["score", run, "--batch-size", "0", "--cache-dir", cache], "--batch-size must be >= 1"),
        (["score", run, "--cache-dir", run / "config.toml"], "is a file"),
    ]:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and phrase in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert folder_bytes(run) == before
    code, out, err = run_cli(["score", run, "-n", "100", "--cache-dir", cache, "-q"], capsys)
    assert code == 0, err
    written = json.loads((run / "scores.json").read_text())
    assert json.loads(out) == written and set(written) == SCORE_KEYS
    assert written["num_samples"] == 100 and written["classifier_accuracy"] == classifier.accuracy
    assert set(folder_bytes(run)) == {*before, "scores.json"}


def test_score_command_refuses_unlabelled_data(tmp_path, digits, capsys):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, digits.train[:200].numpy())
    run = tmp_path / "run"
    assert run_cli(["train", "--data", pixels, "--workdir", run, *TINY], capsys)[0] == 0
    before = folder_bytes(run)
    code, _, err = run_cli(["score", run, "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 2 and "has no train and test labels" in err and len(err.splitlines()) == 1
    assert folder_bytes(run) == before


@pytest.mark.parametrize("model", ["vae", "vaegan", "vqvae"])
def test_a_few_epochs_improve_the_scores_on_the_digits(model, digits, cache, classifier):
    """Untrained, the decoder draws grey blobs; thirty epochs must bring the samples and the
    reconstructions much closer to the data in the classifier's feature space. The margin
    (a factor of 2 on both distances) is far from what the untrained networks reach, which
    sits above 10 times the train-vs-test floor (test_score_of_every_kind_of_variant)."""
    from pyrovae import Config, train
    from pyrovae.variants import build_variant

    config = Config.from_flags(model=model, num_epochs=30, diagnostic_items=0, num_eval_samples=4)
    torch.manual_seed(0)
    vae = build_variant(config.model, digits.shape)
    before = score(vae, digits, num_samples=300, cache_dir=cache)
    train(vae, digits, config, progress=False)
    after = score(vae, digits, num_samples=300, cache_dir=cache)
    assert after["fd_samples"] < before["fd_samples"] / 2, (before, after)
    assert after["fd_reconstructions"] < before["fd_reconstructions"] / 2, (before, after)
    assert after["reconstruction_mse"] < before["reconstruction_mse"]
