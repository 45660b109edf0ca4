"""The M2 model: its enumerated ELBO matches a hand computation, it trains with the
shared loop on labelled and unlabelled minibatches, and the CLI runs it."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributions as td
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyrovae import Config, ConfigError, DataError, Dataset, fit, load_dataset, load_run
from pyrovae.networks import one_hot
from pyrovae.run import make_step
from pyrovae.variants import SemiSupervisedVAE
from pyrovae.variants.m2 import labeled_subset, split_labeled

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def import_benchmark(monkeypatch: pytest.MonkeyPatch):
    """Import ``benchmarks.<name>`` from the repository root (benchmarks is not installed)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return lambda name: importlib.import_module(f"benchmarks.{name}")


@pytest.fixture
def m2() -> SemiSupervisedVAE:
    torch.manual_seed(0)
    return SemiSupervisedVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden=(8,))


def _hand_elbo(m2: SemiSupervisedVAE, x: torch.Tensor, y: torch.Tensor, samples: int):
    """Monte Carlo E_q(z|x,y)[log p(x|z,y) + log p(y) + log p(z) - log q(z|x,y)] per item,
    with torch.distributions and the networks called directly."""
    loc, log_var = m2.guide.encoder(x, y)
    q = td.Normal(loc, (0.5 * log_var).exp())
    z = q.sample((samples,))
    logits = m2.model.decoder(torch.cat([z, one_hot(y, 3).expand(samples, -1, -1)], -1))
    log_lik = td.Bernoulli(logits=logits).log_prob(x).flatten(2).sum(-1)
    log_prior = td.Normal(0.0, 1.0).log_prob(z).sum(-1) + math.log(1 / 3)
    return (log_lik + log_prior - q.log_prob(z).sum(-1)).mean(0)


@torch.no_grad()
def test_enumerated_elbo_sums_the_class_out(m2):
    """TraceEnum_ELBO on an unlabelled item equals sum_y q(y|x) L(x, y) + H(q(y|x)),
    computed by hand. Each L(x, y) is a mean over 4000 samples whose standard deviation
    is below 3 nats here, so its standard error is < 0.05 nats; we allow 0.3 per item
    (dropping log p(y) or the entropy would be off by ~1.1 nats)."""
    x = torch.rand(4, 1, 4, 4).round()
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=4000, vectorize_particles=True)
    pyro.set_rng_seed(1)
    enumerated = -torch.tensor([elbo.loss(m2.model, m2.guide, x[i : i + 1]) for i in range(4)])
    probs = torch.softmax(m2.guide.classifier(x), -1)
    per_class = torch.stack([_hand_elbo(m2, x, torch.full((4,), c), 4000) for c in range(3)], -1)
    hand = (probs * per_class).sum(-1) + td.Categorical(probs=probs).entropy()
    assert (enumerated - hand).abs().max() < 0.3, (enumerated, hand)


@torch.no_grad()
def test_labelled_elbo_observes_the_class(m2):
    x, y = torch.rand(4, 1, 4, 4).round(), torch.tensor([0, 1, 2, 1])
    elbo = Trace_ELBO(max_plate_nesting=1, num_particles=4000, vectorize_particles=True)
    pyro.set_rng_seed(2)
    traced = -elbo.loss(m2.model, m2.guide, x, y)
    assert abs(traced - _hand_elbo(m2, x, y, 4000).sum()) < 0.6  # 4 items x 0.15


def test_labeled_subset():
    labels = torch.arange(10).repeat(20)
    index = labeled_subset(labels, 3, seed=1)
    assert len(index) == 30 and torch.equal(torch.bincount(labels[index]), torch.full((10,), 3))
    assert torch.equal(index, labeled_subset(labels, 3, seed=1))
    with pytest.raises(DataError, match="too few"):
        labeled_subset(labels, 20)


def _m2_data(binarize: str) -> Dataset:
    """90 items of shape (1, 4, 4), 30 per class; item i is filled with (i + 0.5) / 90."""
    train = ((torch.arange(90.0) + 0.5) / 90).reshape(90, 1, 1, 1).expand(90, 1, 4, 4).clone()
    labels = torch.arange(90) % 3
    return Dataset("m2-toy", train, train[:6].clone(), labels, labels[:6], binarize=binarize)


def test_split_labeled_is_the_split_m2_trains_on(m2):
    """benchmarks/pyro_m2.py hands Pyro's example split_labeled(...): it must be the
    split M2 itself trains on, the labelled items and all the others."""
    data = _m2_data("none")
    labeled, unlabeled = split_labeled(data.train_labels, 10, seed=0)
    ours = m2._split(data)
    assert torch.equal(labeled, ours[0]) and torch.equal(unlabeled, ours[1])
    assert torch.equal(torch.sort(torch.cat([labeled, unlabeled])).values, torch.arange(90))


def _m2_epoch(
    m2: SemiSupervisedVAE, data: Dataset, seed: int, draws_between: int = 0, drop_last: bool = True
) -> list:
    torch.manual_seed(seed)
    batches = []
    for batch in m2.training_batches(data, 16, drop_last=drop_last):
        batches.append(batch)
        torch.rand(draws_between)  # what an SVI step draws from the global RNG
    return batches


def test_m2_dynamic_binarization_is_reproducible_from_the_seed(m2):
    """M2's unlabelled and labelled minibatches draw their order and their Bernoulli
    samples from one generator seeded by the global seed: the same seed gives the same
    batches however many random numbers the SVI steps draw in between (the old
    ``torch.bernoulli`` drew from the global RNG), and another seed gives others."""
    data = _m2_data("dynamic")
    quiet, busy = _m2_epoch(m2, data, seed=1), _m2_epoch(m2, data, seed=1, draws_between=100)
    other = _m2_epoch(m2, data, seed=2)
    assert len(quiet) == len(busy) == len(other) == 60 // 16
    for a, b in zip(quiet, busy):
        assert set(a) == {"x", "x_labeled", "y_labeled", "num_labeled"}
        assert set(a["x"].unique().tolist()) <= {0.0, 1.0}
        assert set(a["x_labeled"].unique().tolist()) <= {0.0, 1.0}
        assert all(torch.equal(a[k], b[k]) for k in ("x", "x_labeled", "y_labeled"))
    assert not all(torch.equal(a["x"], c["x"]) for a, c in zip(quiet, other))


def test_m2_batches_pass_over_unlabelled_and_cycle_labelled(m2):
    """Each epoch visits every unlabelled item once; the labelled minibatches (16 of the
    30 labelled items) go through all labelled items before repeating one."""
    data = _m2_data("none")
    labeled, unlabeled = m2._split(data)
    for seed in (0, 1):
        batches = _m2_epoch(m2, data, seed, drop_last=False)  # all 60 unlabelled items
        seen = torch.cat([b["x"][:, 0, 0, 0] for b in batches]) * 90 - 0.5
        assert sorted(seen.round().long().tolist()) == unlabeled.tolist()
        seen_labeled = torch.cat([b["x_labeled"][:, 0, 0, 0] for b in batches]) * 90 - 0.5
        seen_labeled = seen_labeled.round().long()
        assert len(seen_labeled) == 16 * len(batches) and len(seen_labeled) >= 30
        assert sorted(seen_labeled[:30].tolist()) == labeled.tolist()
        assert len(set(seen_labeled[30:60].tolist())) == len(seen_labeled[30:60])
        y = torch.cat([b["y_labeled"] for b in batches])
        assert torch.equal(y, data.train_labels[seen_labeled])
        assert all(b["num_labeled"] == 30 for b in batches)


def test_m2_refuses_other_elbos_and_unlabelled_data(tmp_path):
    config = Config.from_flags(model="m2", elbo="TraceMeanField_ELBO", num_classes=10)
    m2 = SemiSupervisedVAE.from_section(config.model, (1, 8, 8))
    with pytest.raises(ConfigError, match="TraceEnum_ELBO"):
        make_step(m2, config)  # the variant's training step refuses the objective
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.rand(40, 6).astype("float32"))
    with pytest.raises(DataError, match="trains on labels"):
        fit(
            Config.from_flags(model="m2", data=str(tmp_path / "x.npy")),
            tmp_path / "run",
            progress=False,
        )


def test_m2_trains_and_reloads(tmp_path):
    """Two epochs on the digits: the run records the classifier's accuracy, which after
    two epochs with 10 labels per class is far above the 10% of guessing (the classifier
    alone fits the 100 labelled digits quickly)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(
            Config.from_flags(model="m2", num_epochs=2, num_eval_samples=4),
            tmp_path / "run",
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert result.evaluation["accuracy"] > 0.4
    assert "accuracy" in result.history[-1]
    vae, config, _ = load_run(tmp_path / "run")
    assert isinstance(vae, SemiSupervisedVAE) and config.model["variant"]["labels_per_class"] == 10
    digits = load_dataset("digits")
    assert torch.equal(vae.predict(digits.test), result.vae.predict(digits.test))
    assert vae.sample(6, y=4).shape == (6, 1, 8, 8)


def test_unlabelled_items_train_the_classifier(m2):
    """The enumerated ELBO of unlabelled items reaches q(y|x): its gradient with respect to
    the classifier's weights is non-zero (with Trace_ELBO and a sampled y it would only
    arrive through the score function)."""
    x = torch.rand(8, 1, 4, 4).round()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, x)
    loss.backward()
    grads = [p.grad for p in m2.guide.classifier.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.slow
def test_m2_beats_the_supervised_baseline_on_digits(import_benchmark):
    """10 labels per class on the digits (100 labelled, 1337 unlabelled), alpha = 10 N,
    100 epochs: M2's classifier against the same network trained on the 100 labelled
    digits alone and against logistic regression on their pixels, on the 360 held-out
    digits, averaged over seeds 0, 1 and 2 (each seed draws its own labelled items, split
    and initial weights). Measured: M2 0.894 / 0.914 / 0.906 (mean 0.905), network
    0.894 / 0.897 / 0.892 (0.894), logistic regression 0.897 / 0.894 / 0.889 (0.894).
    One seed is not enough: the margin on one seed (a few digits of 360) is within the
    noise, and M2 loses on some seeds (seed 0 here; seed 3 with pyrovae 0.1's random
    streams, where seed 0 won). With 3 labels per class M2 loses (0.69 vs 0.79,
    benchmarks/semisupervised.py), so this guards the configuration the README reports
    rather than a general claim."""
    bench = import_benchmark("semisupervised")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [
            bench.compare(load_dataset("digits"), 10, 100, seed=seed, alpha_factor=10.0)
            for seed in (0, 1, 2)
        ]
    finally:
        torch.set_num_threads(threads)
    mean = {k: sum(r[k] for r in results) / len(results) for k in ("m2", "network", "logistic")}
    assert mean["m2"] > max(mean["network"], mean["logistic"]), results
