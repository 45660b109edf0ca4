"""What a long run needs: a validation split, early stopping that waits for the KL warm-up
and keeps the best parameters (``best.pt``), learning-rate schedules, gradient
normalisation, and an exact resume of all of them."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from pyrovae import Config, cli, fit, load_dataset, load_run
from pyrovae.data import Dataset
from pyrovae.inference.training import make_schedule
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.inference.training.optimization import NORM_EPSILON, normalize_gradients

SMALL = {"hidden": (32,), "latent_dim": 2, "num_eval_samples": 4, "num_threads": 1}


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _numbers(history: list[dict]) -> list[dict]:
    """A history without its wall-clock seconds: what an exact resume reproduces."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# -- the validation split ------------------------------------------------------------------


def _indexed(num_items: int = 200, binarize: str = "none") -> Dataset:
    """Items that carry their own index (item i is a constant image of value i / N) and a
    label i % 4, so a split can be read back exactly."""
    values = torch.arange(num_items, dtype=torch.float32) / num_items
    x = values.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.arange(num_items) % 4
    return Dataset("indexed", x, x[:10].clone(), y, y[:10].clone(), binarize=binarize)


def _indices(x: torch.Tensor, num_items: int) -> list[int]:
    return [round(float(v) * num_items) for v in x[:, 0, 0, 0]]


def test_validation_split_partitions_the_training_items_stratified_and_seeded():
    data = _indexed()
    kept, validation = data.split_validation(0.25, seed=3)
    train, held = _indices(kept.train, 200), _indices(validation.test, 200)
    assert len(held) == 50 and len(train) == 150
    assert sorted(train + held) == list(range(200))  # disjoint, and nothing lost
    assert train == sorted(train) and held == sorted(held)  # the original order is kept
    # stratified: each of the 4 labels has exactly a quarter of its 50 items held out
    counts = torch.bincount(validation.test_labels).tolist()
    assert sum(counts) == 50 and all(c in (12, 13) for c in counts)
    assert torch.equal(validation.test_labels, torch.tensor(held) % 4)
    assert torch.equal(kept.train_labels, torch.tensor(train) % 4)
    # the test set is untouched, and the validation set trains on the same items
    assert torch.equal(kept.test, data.test) and torch.equal(validation.train, kept.train)
    # seeded: the same seed, the same split; another seed, another one
    again = data.split_validation(0.25, seed=3)[1]
    other = data.split_validation(0.25, seed=4)[1]
    assert _indices(again.test, 200) == held and _indices(other.test, 200) != held


def test_dynamic_binarization_draws_the_validation_items_once():
    data = _indexed(binarize="dynamic")
    kept, validation = data.split_validation(0.25, seed=0)
    assert set(validation.test.unique().tolist()) <= {0.0, 1.0}
    assert not set(kept.train.unique().tolist()) <= {0.0, 1.0}  # training items stay grey
    assert torch.equal(validation.test, data.split_validation(0.25, seed=0)[1].test)


def test_validation_fraction_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        _indexed().split_validation(1.0, seed=0)


# -- schedules and their warm-up -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("constant", {}),
        ("linear", {"warmup_epochs": 3}),
        ("cyclical", {"num_cycles": 3, "cycle_ratio": 0.4}),
    ],
)
def test_settled_step_is_the_first_step_of_the_final_kl_weight_for_good(name, options):
    schedule = make_schedule(name, options, beta=2.0, steps_per_epoch=7, num_epochs=10)
    settled = schedule.settled_step()
    assert all(schedule(t) == 2.0 for t in range(settled, 70))
    if settled > 0:
        assert schedule(settled - 1) < 2.0


# -- early stopping and best.pt -------------------------------------------------------------


#: a run whose learning rate is so small that the validation ELBO only wanders (its
#: one-sample estimate's noise): early stopping must end it, and no epoch is favoured
EARLY = {
    **SMALL,
    "num_epochs": 40,
    "learning_rate": 1e-9,
    "validation_fraction": 0.2,
    "patience": 3,
    "kl_schedule": "linear",
    "warmup_epochs": 5,
}


def _early(tmp_path: Path, name: str = "run", resume: bool = False, **flags):
    config = Config.from_flags(**{**EARLY, **flags})
    return fit(config, tmp_path / name, resume=resume, progress=False)


def test_early_stopping_waits_for_the_warm_up_then_stops_after_patience(tmp_path):
    result = _early(tmp_path)
    history = result.history
    scores = [row["validation_elbo"] for row in history]
    stopped = len(history)
    assert stopped < 40  # it stopped early
    # the rule, recomputed from the logged scores: the first epoch e with
    # e - max(best epoch so far, warm-up) >= patience ends the run
    for e in range(1, stopped + 1):
        best = 1 + max(range(e), key=lambda i: (scores[i], -i))
        done = e - max(best, 5) >= 3
        assert done == (e == stopped), f"epoch {e}"
    assert stopped >= 5 + 3  # never before the warm-up is over, whatever the best epoch


def test_best_pt_holds_the_best_epoch_and_evaluation_uses_it(tmp_path):
    settings = {**SMALL, "num_epochs": 6, "validation_fraction": 0.2, "learning_rate": 3e-3}
    states = {}

    class Recorder:
        def __call__(self, trainer, row):
            states[row["epoch"]] = copy.deepcopy(trainer.vae.state_dict())

    from pyrovae.run import make_trainer, split_validation, use_best

    config = Config.from_flags(**settings)
    torch.manual_seed(0)
    data, validation = split_validation(load_dataset("digits"), config)
    from pyrovae.variants import build_variant

    vae = build_variant(config.model, data.shape)
    trainer = make_trainer(vae, data, config)
    history = trainer.fit(
        data,
        tmp_path / "run",
        progress=False,
        config=config.to_dict(),
        callbacks=[Recorder()],
        validation=validation,
    )
    best = max(history, key=lambda r: r["validation_elbo"])["epoch"]
    saved = load_checkpoint(tmp_path / "run" / "best.pt")
    assert saved["epoch"] == best and saved["monitor"] == "validation_elbo"
    assert _state_equal(saved["vae"], states[best])
    assert "test_elbo" not in history[0]  # the test set is not read per epoch
    # load_run: best.pt by default, checkpoint.pt (the last epoch) when asked
    loaded, _, _ = load_run(tmp_path / "run")
    last, _, _ = load_run(tmp_path / "run", checkpoint="last")
    assert _state_equal(loaded.state_dict(), states[best])
    assert _state_equal(last.state_dict(), states[6])
    noted = use_best(vae, tmp_path / "run")
    assert noted["epoch"] == best and _state_equal(vae.state_dict(), states[best])


def test_fit_evaluates_the_best_parameters(tmp_path):
    result = _early(tmp_path, num_epochs=12, patience=None, learning_rate=3e-3)
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    best = max(result.history, key=lambda r: r["validation_elbo"])["epoch"]
    assert evaluation["parameters"]["epoch"] == best
    saved = load_checkpoint(tmp_path / "run" / "best.pt")
    assert _state_equal(saved["vae"], result.vae.cpu().state_dict())


def test_resume_keeps_the_patience_state(tmp_path):
    whole = _early(tmp_path, "whole")
    stopped = len(whole.history)
    # the same run interrupted one epoch before it stopped, then resumed: it must stop
    # at the same epoch (a counter started afresh would run `patience` epochs more)
    _early(tmp_path, "parts", num_epochs=stopped - 1)
    resumed = _early(tmp_path, "parts", resume=True)
    assert _numbers(resumed.history) == _numbers(whole.history)
    # a run that has stopped stays stopped
    assert len(_early(tmp_path, "parts", resume=True).history) == stopped


# -- learning-rate schedules ------------------------------------------------------------------


def test_step_and_cosine_schedules_follow_their_formulas(tmp_path):
    lr = 2e-3
    step = fit(
        Config.from_flags(
            **SMALL,
            num_epochs=5,
            learning_rate=lr,
            lr_schedule="step",
            lr_step_size=2,
            lr_gamma=0.5,
        ),
        tmp_path / "step",
        progress=False,
    ).history
    assert [r["lr_svi"] for r in step] == pytest.approx([lr * 0.5 ** (e // 2) for e in range(5)])
    cosine = fit(
        Config.from_flags(
            **SMALL, num_epochs=4, learning_rate=lr, lr_schedule="cosine", lr_min=1e-4
        ),
        tmp_path / "cosine",
        progress=False,
    ).history
    expected = [1e-4 + (lr - 1e-4) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [r["lr_svi"] for r in cosine] == pytest.approx(expected)


def test_plateau_schedule_reduces_on_the_validation_score(tmp_path):
    history = fit(
        Config.from_flags(
            **SMALL,
            num_epochs=10,
            learning_rate=1e-6,
            validation_fraction=0.2,
            lr_schedule="plateau",
            lr_patience=1,
            lr_gamma=0.5,
        ),
        tmp_path / "run",
        progress=False,
    ).history
    # torch's own scheduler fed the logged validation scores gives the same rates
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-6)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        probe, "max", 0.5, patience=1, threshold=0.0, threshold_mode="abs"
    )
    expected = []
    for row in history:
        expected.append(probe.param_groups[0]["lr"])
        reference.step(row["validation_elbo"])
    assert [r["lr_svi"] for r in history] == pytest.approx(expected, rel=1e-12)
    assert history[-1]["lr_svi"] < 1e-6  # the noise-only scores did trigger reductions


def test_plateau_schedule_counts_a_lower_negative_score_as_no_improvement():
    """Validation ELBOs are negative: a score below the best is a bad epoch however close
    (torch's default relative threshold, best * (1 + 1e-4), counted -230.01 as better than
    -230.00); after more than lr_patience bad epochs in a row the rate is multiplied by
    lr_gamma and the count starts again."""
    from pyrovae.inference.training.optimization import make_lr_schedulers

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    options = {"lr_patience": 2, "lr_gamma": 0.5}
    (scheduler,) = make_lr_schedulers("plateau", options, {"svi": optimizer}, 10).values()
    rates = []
    for epoch in range(8):
        scheduler.step(-230.0 - 0.01 * epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_a_plateau_state_saved_with_torchs_threshold_resumes_with_any_larger_score_better(
    tmp_path,
):
    """A plateau schedule checkpointed before the fix (torch's relative threshold) resumes
    with its counters and this version's notion of a better score."""
    from pyrovae.run import make_trainer
    from pyrovae.variants import build_variant

    flags = {**SMALL, "validation_fraction": 0.2, "lr_schedule": "plateau", "num_epochs": 1}
    fit(Config.from_flags(**flags), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    state["lr_schedulers"]["svi"].update(
        threshold=1e-4, threshold_mode="rel", best=-230.0, num_bad_epochs=0
    )
    config = Config.from_flags(**flags)
    data = load_dataset("digits")
    trainer = make_trainer(build_variant(config.model, data.shape), data, config)
    trainer.restore(state, path)
    scheduler = trainer.lr_schedulers["svi"]
    assert scheduler.best == -230.0  # the counters are the checkpoint's
    scheduler.step(-230.01)  # worse: a bad epoch (torch's threshold counted it better)
    assert (scheduler.best, scheduler.num_bad_epochs) == (-230.0, 1)
    scheduler.step(-229.99)
    assert (scheduler.best, scheduler.num_bad_epochs) == (-229.99, 0)


def test_a_scheduled_run_resumes_exactly(tmp_path):
    flags = {**SMALL, "learning_rate": 2e-3, "lr_schedule": "step", "lr_step_size": 2}
    whole = fit(Config.from_flags(**flags, num_epochs=5), tmp_path / "whole", progress=False)
    fit(Config.from_flags(**flags, num_epochs=3), tmp_path / "parts", progress=False)
    resumed = fit(
        Config.from_flags(**flags, num_epochs=5), tmp_path / "parts", resume=True, progress=False
    )
    assert _numbers(resumed.history) == _numbers(whole.history)
    assert _state_equal(resumed.vae.state_dict(), whole.vae.state_dict())
    saved = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert saved["lr_schedulers"]["svi"]["last_epoch"] == 5


# -- gradient normalisation -------------------------------------------------------------------


def test_a_resume_that_the_schedule_would_ignore_is_refused(tmp_path):
    """A schedule's state sets a resumed run's rate: a resume may not change the schedule,
    the learning rate, or a cosine schedule's length (it would train at lr_min past its
    end, or mix one schedule's state into another), and the run folder is untouched; a
    step schedule, which has no length, extends."""
    from pyrovae.errors import CheckpointError

    flags = {**SMALL, "limit": 200, "lr_schedule": "cosine"}
    fit(Config.from_flags(**flags, num_epochs=2), tmp_path / "cosine", progress=False)
    before = (tmp_path / "cosine" / "checkpoint.pt").read_bytes()
    for change, phrase in [
        ({"num_epochs": 4}, r"num_epochs: 2 -> 4"),
        ({"num_epochs": 2, "learning_rate": 1e-2}, r"learning_rate: 0\.001 -> 0\.01"),
        ({"num_epochs": 2, "lr_schedule": "step"}, r"lr_schedule: "),
    ]:
        config = Config.from_flags(**{**flags, **change})
        with pytest.raises(CheckpointError, match=r"the cosine learning-rate .*" + phrase):
            fit(config, tmp_path / "cosine", resume=True, progress=False)
    assert (tmp_path / "cosine" / "checkpoint.pt").read_bytes() == before
    flags["lr_schedule"] = "step"
    fit(Config.from_flags(**flags, num_epochs=2), tmp_path / "step", progress=False)
    longer = fit(Config.from_flags(**flags, num_epochs=3), tmp_path / "step", resume=True)
    assert len(longer.history) == 3
    # a constant run keeps its rate's flag, but does not take up a schedule midway
    flags["lr_schedule"] = "constant"
    fit(Config.from_flags(**flags, num_epochs=1), tmp_path / "constant", progress=False)
    faster = {**flags, "num_epochs": 2, "learning_rate": 2e-3}
    fit(Config.from_flags(**faster), tmp_path / "constant", resume=True)
    saved = load_checkpoint(tmp_path / "constant" / "checkpoint.pt")["optimizers"]["svi"]
    assert saved["param_groups"][0]["lr"] == 2e-3
    with pytest.raises(CheckpointError, match=r"the constant learning-rate .*lr_schedule: "):
        config = Config.from_flags(**{**faster, "num_epochs": 3, "lr_schedule": "cosine"})
        fit(config, tmp_path / "constant", resume=True)


def test_normalized_gradients_have_unit_norm_and_adam_steps_on_them():
    torch.manual_seed(0)
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ga, gb = torch.randn(3, 4) * 100, torch.randn(5) * 1e-3
    optimizer = torch.optim.Adam([a, b], lr=0.1)
    normalize_gradients(optimizer)
    reference = torch.optim.Adam([ref_a, ref_b], lr=0.1)
    for _ in range(3):
        a.grad, b.grad = ga.clone(), gb.clone()
        optimizer.step()
        for g, p in ((a.grad, ga), (b.grad, gb)):  # the pre-hook rewrote the gradients
            assert torch.allclose(g, p / (p.norm() + NORM_EPSILON))
        ref_a.grad = ga / (ga.norm() + NORM_EPSILON)
        ref_b.grad = gb / (gb.norm() + NORM_EPSILON)
        reference.step()
    assert torch.equal(a, ref_a) and torch.equal(b, ref_b)


def test_the_trainer_normalizes_every_gradient(tmp_path):
    from pyrovae.run import make_trainer
    from pyrovae.variants import build_variant

    config = Config.from_flags(**SMALL, num_epochs=1, normalize_gradients=True)
    data = load_dataset("digits")
    vae = build_variant(config.model, data.shape)
    trainer = make_trainer(vae, data, config)
    norms = []
    trainer.step.optimizers["svi"].register_step_post_hook(
        lambda opt, args, kwargs: norms.extend(
            float(p.grad.norm()) for g in opt.param_groups for p in g["params"]
        )
    )
    trainer.fit(data, progress=False)
    assert norms and all(n == pytest.approx(1.0, abs=1e-5) for n in norms)


# -- from the command line ---------------------------------------------------------------------


def test_cli_trains_with_early_stopping_and_reads_best_or_last(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--workdir",
        run,
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--num-epochs",
        "30",
        "--validation-fraction",
        "0.2",
        "--patience",
        "2",
        "--kl-schedule",
        "linear",
        "--warmup-epochs",
        "1",
        "--learning-rate",
        "1e-9",
        "--lr-schedule",
        "plateau",
        "--normalize-gradients",
        "--num-eval-samples",
        "4",
        "--num-threads",
        "1",
        "--no-progress",
        "-q",
    ]
    assert cli.main([str(a) for a in argv]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 30 and "validation_elbo" in rows[0] and "lr_svi" in rows[0]
    assert (run / "best.pt").exists()
    for which in ("best", "last"):
        assert cli.main(["evaluate", str(run), "-k", "2", "--checkpoint", which, "-q"]) == 0
    capsys.readouterr()
    assert (run / "evaluation-k2.json").exists() and (run / "evaluation-k2-last.json").exists()


def test_the_python_train_carves_the_validation_split_of_its_config():
    """``pyrovae.train(vae, data, config)`` (the README's Python API) with
    ``validation_fraction``: every epoch is scored on the validation split, not the test
    set, and early stopping, which needs one, is accepted."""
    from pyrovae import VAE, train

    data = load_dataset("digits")
    config = Config.from_flags(num_epochs=2, validation_fraction=0.2, patience=5, **SMALL)
    vae = VAE(data.shape, latent_dim=2, hidden=(32,))
    history = train(vae, data, config)
    assert len(history) == 2
    assert all("validation_elbo" in row and "test_elbo" not in row for row in history)


def test_the_curves_star_the_epoch_the_run_kept():
    """elbo.png stars best.pt's epoch, which the variant's monitor chose (the M2 model's
    accuracy), not the best validation ELBO's unless told nothing else."""
    from pyrovae.plots import elbo_curves

    history = [
        {"epoch": e, "train_elbo": -5.0, "validation_elbo": v, "accuracy": a}
        for e, v, a in [(1, -4.0, 0.5), (2, -2.0, 0.6), (3, -3.0, 0.9)]
    ]

    def starred(figure) -> list[float]:
        (line,) = [ln for ln in figure.axes[0].lines if ln.get_marker() == "*"]
        return list(line.get_xdata())

    assert starred(elbo_curves(history)) == [2]
    assert starred(elbo_curves(history, best=3)) == [3]
    # a VAE-GAN's rows: its feature ELBO drawn as the validation curve, best.pt's epoch
    # (chosen on the pixel error) starred
    gan = [
        {
            "epoch": e,
            "train_objective": -5.0,
            "validation_feature_elbo": v,
            "validation_pixel_mse": m,
        }
        for e, v, m in [(1, -4.0, 0.3), (2, -2.0, 0.2), (3, -3.0, 0.1)]
    ]
    figure = elbo_curves(gan, best=3)
    assert "validation (feature_elbo)" in [ln.get_label() for ln in figure.axes[0].lines]
    assert starred(figure) == [3]
