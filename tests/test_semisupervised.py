"""The M2 model: its enumerated ELBO matches a hand computation, it trains with the
shared loop on labelled and unlabelled minibatches, and the CLI runs it."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import torch.distributions as td
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyrovae import Config, ConfigError, DataError, Dataset, fit, load_dataset, load_run
from pyrovae.cli import main
from pyrovae.cli.common import load_items
from pyrovae.data import Shard
from pyrovae.inference import importance_weights
from pyrovae.networks import one_hot
from pyrovae.run import make_step
from pyrovae.variants import SemiSupervisedVAE
from pyrovae.variants.m2 import SemiSupervisedLoss, labeled_subset, split_labeled

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
    m2: SemiSupervisedVAE,
    data: Dataset,
    seed: int,
    draws_between: int = 0,
    drop_last: bool = True,
    shard: Shard | None = None,
) -> list:
    torch.manual_seed(seed)
    batches = []
    for batch in m2.training_batches(data, 16, drop_last=drop_last, shard=shard):
        batches.append(batch)
        torch.rand(draws_between)  # what an SVI step draws from the global RNG
    return batches


def _item_ids(x: torch.Tensor) -> list[int]:
    """The positions of _m2_data's items in a minibatch (item i is filled with (i + 1/2) / 90)."""
    return (x[:, 0, 0, 0] * 90 - 0.5).round().long().tolist()


@pytest.fixture
def paired(m2) -> SemiSupervisedVAE:
    m2.labeled_schedule = "paired"
    return m2


@pytest.mark.parametrize("schedule", ["interleaved", "paired"])
def test_m2_dynamic_binarization_is_reproducible_from_the_seed(m2, schedule):
    """M2's unlabelled and labelled minibatches draw their order and their Bernoulli
    samples from one generator seeded by the global seed: the same seed gives the same
    batches however many random numbers the SVI steps draw in between (the old
    ``torch.bernoulli`` drew from the global RNG), and another seed gives others."""
    m2.labeled_schedule = schedule
    data = _m2_data("dynamic")
    quiet, busy = _m2_epoch(m2, data, seed=1), _m2_epoch(m2, data, seed=1, draws_between=100)
    other = _m2_epoch(m2, data, seed=2)
    # 60 unlabelled items in 3 full batches of 16; interleaved, 2 batches of the 30 labelled
    assert len(quiet) == len(busy) == len(other) == (3 if schedule == "paired" else 5)
    for a, b in zip(quiet, busy):
        assert set(a) == (
            {"x", "x_labeled", "y_labeled", "num_labeled"}
            if schedule == "paired"
            else {"x", "num_labeled", "unlabeled_num_data"}
            if "x" in a
            else {"x_labeled", "y_labeled", "num_labeled", "labeled_num_data"}
        )
        for key in ("x", "x_labeled", "y_labeled"):
            if key in a:
                assert key == "y_labeled" or set(a[key].unique().tolist()) <= {0.0, 1.0}
                assert torch.equal(a[key], b[key])
    assert not all(
        torch.equal(a.get("x", a.get("x_labeled")), c.get("x", c.get("x_labeled")))
        for a, c in zip(quiet, other)
    )


def test_m2_batches_pass_over_unlabelled_and_cycle_labelled(paired):
    """Paired: each epoch visits every unlabelled item once; the labelled minibatches (16
    of the 30 labelled items) go through all labelled items before repeating one."""
    data = _m2_data("none")
    labeled, unlabeled = paired._split(data)
    for seed in (0, 1):
        batches = _m2_epoch(paired, data, seed, drop_last=False)  # all 60 unlabelled items
        seen = torch.tensor([i for b in batches for i in _item_ids(b["x"])])
        assert sorted(seen.tolist()) == unlabeled.tolist()
        seen_labeled = torch.tensor([i for b in batches for i in _item_ids(b["x_labeled"])])
        assert len(seen_labeled) == 16 * len(batches) and len(seen_labeled) >= 30
        assert sorted(seen_labeled[:30].tolist()) == labeled.tolist()
        assert len(set(seen_labeled[30:60].tolist())) == len(seen_labeled[30:60])
        y = torch.cat([b["y_labeled"] for b in batches])
        assert torch.equal(y, data.train_labels[seen_labeled])
        assert all(b["num_labeled"] == 30 for b in batches)
    assert paired.steps_per_epoch(data, 16) == len(_m2_epoch(paired, data, 0))


def test_m2_interleaved_epoch_visits_every_item_once(m2):
    """Interleaved: an epoch is 4 unlabelled minibatches (60 items, the last of 12) and 2
    labelled ones (30 items: 16 and 14) in 6 steps, the labelled ones at steps
    floor((k + 1/2) 6 / 2) = 1 and 4; every item comes once, its label with it, and every
    item of a step stands for 6 items (the step count). The trainer drops the short
    unlabelled batch: 5 steps."""
    data = _m2_data("none")
    labeled, unlabeled = m2._split(data)
    assert m2.steps_per_epoch(data, 16) == 5 == len(_m2_epoch(m2, data, 0, drop_last=True))
    for seed in (0, 1):
        batches = _m2_epoch(m2, data, seed, drop_last=False)
        assert len(batches) == 6
        assert [i for i, b in enumerate(batches) if "x_labeled" in b] == [1, 4]
        seen = [i for b in batches if "x" in b for i in _item_ids(b["x"])]
        assert sorted(seen) == unlabeled.tolist()
        seen_labeled = [i for b in batches if "x_labeled" in b for i in _item_ids(b["x_labeled"])]
        assert sorted(seen_labeled) == labeled.tolist()
        y = torch.cat([b["y_labeled"] for b in batches if "y_labeled" in b])
        assert torch.equal(y, data.train_labels[seen_labeled])
        for b in batches:
            x = b.get("x", b.get("x_labeled"))
            assert b.get("unlabeled_num_data", b.get("labeled_num_data")) == 6 * len(x)
            assert b["num_labeled"] == 30


class _Sums(torch.nn.Module):
    """A deterministic stand-in for an ELBO module: the negative 'ELBO' of a minibatch is
    num_data / B times the sum of its items' values (the plate's N / B scaling)."""

    def __init__(self, labeled: bool) -> None:
        super().__init__()
        self.labeled = labeled

    def forward(self, x, y=None, *, num_data, beta=1.0):
        values = x.flatten(1).sum(-1) + (y.float() if self.labeled else 0.0)
        return num_data / len(x) * values.sum()


@pytest.mark.parametrize(
    ("world_size", "drop_last", "steps"),
    [(1, False, 6), (2, False, 3), (1, True, 5), (4, False, 2)],
)
def test_m2_interleaved_steps_add_up_to_the_objective(m2, world_size, drop_last, steps):
    """Over an interleaved epoch the steps' losses add up to S times -J^alpha (S steps)
    with each kind of item weighted by N / V, V of its N items visited: the unlabelled
    terms, the labelled terms, and alpha / N_l times the labelled items' cross-entropies,
    summed by hand over the items the epoch visits. So a random step of the epoch is an
    unbiased estimate of -J^alpha, also when a short last batch is dropped (drop_last: 48
    of the 60 unlabelled items) or the cut to whole shares leaves labelled items out (4
    ranks: 28 of 30). With several ranks (each its Shard of the items, its losses
    averaged by DDP) the mean over the ranks adds up to the same. The ELBOs are
    deterministic stand-ins (_Sums), so the identity is exact."""
    data = _m2_data("none")
    loss = SemiSupervisedLoss(_Sums(False), _Sums(True), m2.guide.classifier, alpha=7.0)
    x, y = data.train, data.train_labels
    total, unlabeled_seen, labeled_seen = 0.0, [], []
    with torch.no_grad():
        for rank in range(world_size):
            shard = Shard(rank, world_size, seed=3) if world_size > 1 else None
            batches = _m2_epoch(m2, data, seed=0, drop_last=drop_last, shard=shard)
            assert len(batches) == steps
            total += sum(loss(**b, num_data=60) for b in batches) / world_size
            unlabeled_seen += [i for b in batches if "x" in b for i in _item_ids(b["x"])]
            labeled_seen += [
                i for b in batches if "x_labeled" in b for i in _item_ids(b["x_labeled"])
            ]
        unl, lab = torch.tensor(unlabeled_seen), torch.tensor(labeled_seen)
        assert len(set(unlabeled_seen)) == len(unl) and len(set(labeled_seen)) == len(lab)
        assert (len(unl), len(lab)) == ((48 if drop_last else 60), (28 if world_size == 4 else 30))
        cross_entropy = torch.nn.functional.cross_entropy(
            m2.guide.classifier(x[lab]), y[lab], reduction="sum"
        )
        objective = 60 / len(unl) * x[unl].flatten(1).sum() + 30 / len(lab) * (
            x[lab].flatten(1).sum() + y[lab].float().sum() + 7.0 / 30 * cross_entropy
        )
    torch.testing.assert_close(total, steps * objective)


def test_m2_interleaved_refuses_fewer_labels_than_ranks():
    """Three labelled items cannot be shared by four ranks (each would see none, and the
    run would train without labels): one clear DataError."""
    data = _m2_data("none")
    m2 = SemiSupervisedVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden=(8,))
    m2.labels_per_class = 1  # 3 labelled items
    with pytest.raises(DataError, match="3 labelled items cannot be shared by 4 processes"):
        m2.steps_per_epoch(data, 16, world_size=4)


def test_m2_check_batches_cover_both_kinds_of_step(m2):
    """The trainer checks one step of each kind before training: interleaved, an
    unlabelled and a labelled one (the first step is unlabelled); paired, the first."""
    data = _m2_data("none")
    kinds = [set(b) for b in m2.check_batches(data, 16)]
    assert len(kinds) == 2 and {"x" in k for k in kinds} == {True, False}
    m2.labeled_schedule = "paired"
    assert [set(b) for b in m2.check_batches(data, 16)] == [
        {"x", "x_labeled", "y_labeled", "num_labeled"}
    ]


def test_m2_paired_step_is_an_unbiased_estimate(paired):
    """Paired: a step's loss is N_u / B times its unlabelled terms, N_l / B_l times its
    labelled terms and alpha times the labelled minibatch's mean cross-entropy."""
    data = _m2_data("none")
    loss = SemiSupervisedLoss(_Sums(False), _Sums(True), paired.guide.classifier, alpha=7.0)
    b = _m2_epoch(paired, data, seed=0)[0]
    with torch.no_grad():
        xl, yl = b["x_labeled"], b["y_labeled"]
        hand = (
            60 / 16 * b["x"].flatten(1).sum()
            + 30 / 16 * (xl.flatten(1).sum() + yl.float().sum())
            + 7.0 * torch.nn.functional.cross_entropy(paired.guide.classifier(xl), yl)
        )
        torch.testing.assert_close(loss(**b, num_data=60), hand)


def test_m2_runs_from_before_the_schedule_option_keep_the_paired_schedule(tmp_path, capsys):
    """A run whose checkpoint and config.toml have no labeled_schedule was trained paired:
    `pyrovae train --resume` (which reads the run's config.toml when it is newer than the
    checkpoint) resumes it paired, and load_run rebuilds it paired; a new run defaults to
    interleaved."""
    assert Config.from_flags(model="m2").model["variant"]["labeled_schedule"] == "interleaved"
    run = tmp_path / "run"
    argv = ["--model", "m2", "--labeled-schedule", "paired", "--hidden", "16", "--latent-dim"]
    argv += ["2", "--num-eval-samples", "2", "--num-threads", "1", "--no-progress"]
    assert main(["train", *argv, "--num-epochs", "1", "--workdir", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["config"]["model"]["variant"]["labeled_schedule"]
    torch.save(state, run / "checkpoint.pt")
    text = (run / "config.toml").read_text()
    assert 'labeled_schedule = "paired"' in text
    (run / "config.toml").write_text(text.replace('labeled_schedule = "paired"\n', ""))
    assert load_run(run)[1].model["variant"]["labeled_schedule"] == "paired"
    capsys.readouterr()
    resume = ["train", "--resume", "--num-epochs", "2", "--num-eval-samples", "2"]
    assert main([*resume, "--no-progress", "--workdir", str(run)]) == 0, capsys.readouterr().err
    assert load_run(run)[1].model["variant"]["labeled_schedule"] == "paired"


def test_m2_interleaved_resume_continues_the_steps_and_the_warm_up(tmp_path):
    """The trainer counts an interleaved epoch's labelled steps too (VAE.steps_per_epoch):
    with a one-epoch KL warm-up the first epoch's last step is still warming up (beta < 1),
    and a run resumed after one epoch continues exactly as the straight run (the same
    per-epoch numbers, beta_mean 1 in the second epoch), which it would not if the resumed
    step count or the warm-up counted the unlabelled steps alone."""
    flags = dict(
        model="m2",
        hidden=(16,),
        latent_dim=2,
        kl_schedule="linear",
        warmup_epochs=1,
        num_eval_samples=2,
        num_threads=1,
    )
    straight = fit(Config.from_flags(num_epochs=2, **flags), tmp_path / "a", progress=False)
    fit(Config.from_flags(num_epochs=1, **flags), tmp_path / "b", progress=False)
    resumed = fit(
        Config.from_flags(num_epochs=2, **flags), tmp_path / "b", resume=True, progress=False
    )
    first, second = straight.history
    assert first["beta"] < 1 and second["beta_mean"] == 1
    for a, b in zip(straight.history, resumed.history):
        assert a["train_objective"] == b["train_objective"]
        assert a["beta_mean"] == b["beta_mean"]


def test_m2_refuses_an_unknown_schedule(tmp_path, capsys):
    argv = ["train", "--model", "m2", "--labeled-schedule", "interleave", "--workdir"]
    assert main([*argv, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "interleaved, paired" in err
    assert "did you mean 'interleaved'?" in err
    assert not (tmp_path / "run").exists()


def test_m2_refuses_other_elbos_and_unlabelled_data(tmp_path):
    config = Config.from_flags(model="m2", elbo="TraceMeanField_ELBO", num_classes=10)
    m2 = SemiSupervisedVAE.from_section(config.model, (1, 8, 8))
    with pytest.raises(ConfigError, match="TraceEnum_ELBO"):
        make_step(m2, config)  # the variant's training step refuses the objective
    np.save(tmp_path / "x.npy", np.random.rand(40, 6).astype("float32"))
    with pytest.raises(DataError, match="trains on labels"):
        fit(
            Config.from_flags(model="m2", data=str(tmp_path / "x.npy")),
            tmp_path / "run",
            progress=False,
        )


def test_m2_trains_and_reloads(tmp_path, capsys):
    """Two epochs on the digits: the run records the classifier's accuracy, which after
    two epochs with 10 labels per class is far above the 10% of guessing (the classifier
    alone fits the 100 labelled digits quickly); ``pyrovae evaluate --data`` on unlabelled
    items reports the reloaded model's label-free metrics on them (the classifier's and the
    model's own class entropy, their agreement)."""
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
    # the model's own class posterior: in the held-out summary, not in every epoch's log
    posterior = {"model_class_entropy", "model_accuracy", "class_agreement"}
    assert posterior <= result.evaluation.keys()
    assert not posterior & result.history[-1].keys()
    vae, config, _ = load_run(tmp_path / "run")
    assert isinstance(vae, SemiSupervisedVAE) and config.model["variant"]["labels_per_class"] == 10
    digits = load_dataset("digits")
    assert torch.equal(vae.predict(digits.test), result.vae.predict(digits.test))
    assert vae.sample(6, y=4).shape == (6, 1, 8, 8)
    np.save(tmp_path / "x.npy", digits.test[:50].numpy())
    capsys.readouterr()
    evaluate = ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "x.npy"), "-k", "2"]
    assert main(evaluate) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "accuracy" not in printed
    items, _ = load_items(tmp_path / "x.npy", config, tmp_path / "run")  # as evaluate binarizes
    expected = vae.evaluation_metrics(items, None)
    for name in ("classifier_entropy", "model_class_entropy", "class_agreement"):
        assert printed[name] == pytest.approx(expected[name], rel=1e-5)


def test_unlabelled_items_train_the_classifier(m2):
    """The enumerated ELBO of unlabelled items reaches q(y|x): its gradient with respect to
    the classifier's weights is non-zero (with Trace_ELBO and a sampled y it would only
    arrive through the score function)."""
    x = torch.rand(8, 1, 4, 4).round()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, x)
    loss.backward()
    grads = [p.grad for p in m2.guide.classifier.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_m2_metrics_report_accuracy_and_classifier_entropy(m2):
    """``classifier_entropy`` is the mean entropy of q(y|x), -sum p log p of the softmax of
    the classifier's logits computed by hand; a classifier whose last layer outputs zeros is
    uniform, entropy log C; the accuracy is the argmax's agreement with the labels, and
    without labels only the entropy is reported."""
    x = torch.rand(20, 1, 4, 4).round()
    y = torch.randint(3, (20,))
    log_p = torch.log_softmax(m2.guide.classifier(x), -1).detach()
    row = m2.metrics(x, y)
    assert row["classifier_entropy"] == pytest.approx(float(-(log_p.exp() * log_p).sum(-1).mean()))
    assert row["accuracy"] == pytest.approx(float((log_p.argmax(-1) == y).float().mean()))
    assert m2.metrics(x, None).keys() == {"classifier_entropy"}
    last = m2.guide.classifier.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    assert m2.metrics(x, y)["classifier_entropy"] == pytest.approx(math.log(3))
    with torch.no_grad():
        last.bias[0] = 5.0  # every item class 0 with p = e^5 / (e^5 + 2)
    p = torch.softmax(torch.tensor([5.0, 0.0, 0.0]), -1)
    row = m2.metrics(x, y)
    assert row["classifier_entropy"] == pytest.approx(float(-(p * p.log()).sum()))
    assert row["accuracy"] == pytest.approx(float((y == 0).float().mean()))


@torch.no_grad()
def test_m2_class_log_joint_matches_numerical_integration():
    """``class_log_joint`` estimates log p(x, y=c) = log(1/C) + log of the integral of
    N(z; 0, 1) p(x | z, c) over a one-dimensional z, computed here on a grid of 40 001
    points (the trapezoid rule's error is far below the tolerance). K = 20 000 draws per
    class; each estimate may miss by 5 Monte Carlo standard errors of a log-mean of
    weights (std(w) / (sqrt(K) mean(w)), from the draws themselves) plus 1e-3 for the
    grid; its log-sum-exp over the classes is log p(x) with the class summed out."""
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE((1, 2, 2), num_classes=3, latent_dim=1, hidden=(8,))
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]]).reshape(2, 1, 2, 2)
    grid = torch.linspace(-10.0, 10.0, 40_001)
    exact = torch.empty(2, 3)
    for c in range(3):
        labels = one_hot(torch.full((len(grid),), c), 3)
        logits = m2.model.decoder(torch.cat([grid[:, None], labels], -1)).reshape(-1, 4)
        for n in range(2):
            log_lik = td.Bernoulli(logits=logits).log_prob(x[n].flatten()).sum(-1)
            integrand = (td.Normal(0.0, 1.0).log_prob(grid) + log_lik).exp()
            exact[n, c] = math.log(1 / 3) + torch.trapezoid(integrand, grid).log()
    estimate = m2.class_log_joint(x, num_samples=20_000, seed=1)
    standard_error = torch.empty(2, 3)
    for c in range(3):  # the same draws as class_log_joint's (the same seed for each class)
        log_w = importance_weights(m2, x, 20_000, torch.full((2,), c), seed=1).log_weight
        w = (log_w - log_w.max(0).values).exp()
        standard_error[:, c] = w.std(0) / (w.mean(0) * math.sqrt(20_000))
    assert torch.all((estimate - exact).abs() < 5 * standard_error + 1e-3)
    assert torch.allclose(
        torch.logsumexp(estimate, -1),
        torch.logsumexp(exact, -1),
        atol=float(5 * standard_error.max() + 1e-3),
    )


@torch.no_grad()
def test_m2_classes_tie_where_no_network_reads_the_class(m2):
    """Common random numbers: with the class's columns of the first layers of q(z|x,y)'s
    encoder and of the decoder zeroed, neither network reads y, and one draw of z per
    class gives every class the same score, so the model's posterior is exactly uniform
    (entropy log C). Independent draws per class would tilt it by their Monte Carlo
    noise (here by 0.7 nats between the best and the worst class, on average)."""
    for net in (m2.guide.encoder, m2.model.decoder):
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
        first.weight[:, -3:] = 0.0  # the one-hot class is joined last
    x = torch.rand(20, 1, 4, 4).round()
    scores = m2.class_log_joint(x)
    assert torch.equal(scores, scores[:, :1].expand_as(scores))
    assert m2.evaluation_metrics(x, None)["model_class_entropy"] == pytest.approx(math.log(3))
    independent = torch.stack([m2.class_log_joint(x, seed=c)[:, c] for c in range(3)], -1)
    assert (independent.max(-1).values - independent.min(-1).values).mean() > 0.5


def test_m2_evaluation_metrics_read_the_models_own_class_posterior(m2):
    """``model_class_entropy``, ``model_accuracy`` and ``class_agreement`` are computed
    from the softmax of the per-class log joints drawn with seed 0; they
    leave the global random stream as it was (training draws the same afterwards); the
    epochs' ``metrics`` do not compute them."""
    x = torch.rand(20, 1, 4, 4).round()
    y = torch.randint(3, (20,))
    probs = torch.softmax(m2.class_log_joint(x, seed=0), -1)
    q = m2.classify(x)
    state = torch.get_rng_state()
    row = m2.evaluation_metrics(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert row["model_class_entropy"] == pytest.approx(
        float(-(probs * probs.log()).sum(-1).mean()), rel=1e-5
    )
    assert row["model_accuracy"] == pytest.approx(float((probs.argmax(-1) == y).float().mean()))
    agree = (probs.argmax(-1) == q.argmax(-1)).float().mean()
    assert row["class_agreement"] == pytest.approx(float(agree))
    assert row.items() >= m2.metrics(x, y).items()
    assert m2.evaluation_metrics(x, None).keys() == {
        "classifier_entropy",
        "model_class_entropy",
        "class_agreement",
    }
    assert m2.metrics(x, y).keys() == {"classifier_entropy", "accuracy"}


@pytest.mark.slow
def test_m2_beats_the_supervised_baseline_on_digits(import_benchmark):
    """10 labels per class on the digits (100 labelled, 1337 unlabelled), alpha = 10 N,
    100 epochs: M2's classifier against the same network trained on the 100 labelled
    digits alone and against logistic regression on their pixels, on the 360 held-out
    digits, averaged over seeds 0, 1 and 2 (each seed draws its own labelled items, split
    and initial weights). Measured with the interleaved schedule (the default): M2 0.928 /
    0.925 / 0.917 (mean 0.923), network 0.894 / 0.897 / 0.892 (0.894), logistic
    regression 0.897 / 0.894 / 0.889 (0.894); with the paired schedule M2 had 0.894 /
    0.914 / 0.906 (0.905). One seed is not enough: the margin on one seed (a few digits
    of 360) is within the noise, and the paired M2 lost on seed 0. With 3 labels per class
    M2 loses (0.69 vs 0.79, benchmarks/semisupervised.py, paired), so this guards the
    configuration the README reports rather than a general claim."""
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
