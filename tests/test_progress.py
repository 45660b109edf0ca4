"""Progress and logging: the training bar advances once per step, the long evaluations draw
bars on a terminal only (never with --no-progress, never per epoch), and --tensorboard
writes scalars, a KL histogram and image grids that TensorBoard reads back."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import run_cli

from pyrovae import VAE, Config, ConfigError, cli, load_dataset, progress, score
from pyrovae.data import Dataset
from pyrovae.inference.evaluation import ClassifierSettings
from pyrovae.inference.training import Trainer
from pyrovae.inference.training.trainer import POSTFIX_EVERY
from pyrovae.run import make_trainer
from pyrovae.variants import build_variant

TINY = ["--num-epochs", "2", "--num-eval-samples", "8", "-q"]


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm's ``disable=None`` draws on it."""

    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch) -> Terminal:
    """Make stderr a :class:`Terminal` for the rest of a test. (Called in the test itself:
    pytest's capture sets ``sys.stderr`` again after the fixtures, when the test starts.)"""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def drawn(text: str) -> bool:
    """Whether ``text`` holds a tqdm bar (a bar redraws its line with a carriage return;
    a log line may be there too, as on any stderr)."""
    return "\r" in text or "/s]" in text


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--workdir", str(workdir), "--no-progress", *TINY]) == 0
    return workdir


# --- progress bars --------------------------------------------------------------------------


class Bars:
    """Records every tqdm bar pyrovae makes (they all come from pyrovae.progress)."""

    def __init__(self, monkeypatch) -> None:
        self.made: list = []
        base = progress.tqdm
        made = self.made

        class Recorded(base):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        monkeypatch.setattr(progress, "tqdm", Recorded)


def test_the_training_bar_advances_once_per_step_and_shows_the_running_objective(
    digits, tmp_path, monkeypatch, capsys
):
    bars = Bars(monkeypatch)
    config = Config.from_flags(num_epochs=3, batch_size=32)
    per_epoch = len(digits.train) // 32
    vae = VAE.from_section(config.model, digits.shape)
    trainer = make_trainer(vae, digits, config)
    steps = []
    real_epoch = Trainer.epoch

    def epoch(self, data, bar=None):
        before = bar.n
        objective = real_epoch(self, data, bar)
        steps.append(bar.n - before)
        return objective

    monkeypatch.setattr(Trainer, "epoch", epoch)
    trainer.fit(digits, tmp_path / "run", progress=True)
    (bar,) = bars.made
    total = 3 * per_epoch
    assert steps == [per_epoch] * 3 and bar.n == bar.total == total == trainer.step_count
    assert bar.format_dict["unit"] == "step"
    shown = bar.format_dict["postfix"]
    assert "epoch=3/3" in shown and "objective=" in shown and "test=" in shown
    err = capsys.readouterr().err
    assert f"{total}/{total}" in err and "step/s" in err
    # a resumed run's bar starts where the run stopped
    bars.made.clear()
    trainer = make_trainer(vae, digits, config.replace(num_epochs=4))
    trainer.fit(digits, tmp_path / "run", resume=True, progress=True)
    (bar,) = bars.made
    assert bar.total == bar.n == 4 * per_epoch and steps[3:] == [per_epoch]


def test_the_running_objective_is_read_every_few_steps(digits, monkeypatch):
    reads = []
    real_item = torch.Tensor.item

    def item(self):
        reads.append(1)
        return real_item(self)

    from tqdm import tqdm

    config = Config.from_flags(num_epochs=1, batch_size=8)
    steps = len(digits.train) // 8
    vae = VAE.from_section(config.model, digits.shape)
    trainer = make_trainer(vae, digits, config)
    monkeypatch.setattr(torch.Tensor, "item", item)
    trainer.epoch(digits, tqdm(total=steps, disable=True))
    quiet = len(reads)
    reads.clear()
    trainer.epoch(digits, tqdm(total=steps, file=io.StringIO()))
    # a hidden bar reads nothing more; a shown one once every POSTFIX_EVERY steps
    assert len(reads) - quiet == steps // POSTFIX_EVERY


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(tmp_path, capsys):
    code, _, err = run_cli(["train", "--workdir", tmp_path / "run", *TINY], capsys)
    assert code == 0 and not drawn(err), err
    code, _, err = run_cli(["evaluate", tmp_path / "run", "-k", "4"], capsys)
    assert code == 0 and not drawn(err), err


def test_on_a_terminal_training_and_the_final_evaluation_draw_bars_and_the_epochs_none(
    tmp_path, monkeypatch
):
    terminal = on_a_terminal(monkeypatch)
    active = []
    real = VAE.evaluate_epoch

    def evaluate_epoch(self, data, **kwargs):
        active.append(progress.active())
        return real(self, data, **kwargs)

    monkeypatch.setattr(VAE, "evaluate_epoch", evaluate_epoch)
    assert cli.main(["train", "--workdir", str(tmp_path / "run"), *TINY]) == 0
    shown = terminal.getvalue()
    assert "SVI" in shown and "step/s" in shown and "IWAE log p(x), K=8" in shown
    assert active == [False, False]
    # --no-progress: nothing at all
    terminal.seek(0)
    terminal.truncate()
    argv = ["train", "--workdir", str(tmp_path / "quiet"), "--no-progress", *TINY]
    assert cli.main(argv) == 0 and not drawn(terminal.getvalue())


#: NUTS (Pyro's own bar) and the per-item guides of the gaps, briefly
INSPECT = ["inspect", "--nuts", "--num-chains", "1", "--num-warmup", "5", "--num-mcmc-samples"]
INSPECT += ["5", "--gaps", "--num-gap-items", "2", "-k", "2", "--gap-steps", "3", "-s", "5"]
INSPECT += ["--num-threads", "1"]


@pytest.mark.parametrize(
    "argv, label",
    [
        (["evaluate", "-k", "4"], "IWAE log p(x), K=4"),
        (["latent", "--embedding", "pca", "--probe-max-train", "50"], "encoding train"),
        (["anomaly", "-k", "2", "--reference-size", "20"], "anomaly scores"),
        (["inpaint", "-k", "2", "--rounds", "1"], "inpainting"),
        (INSPECT, "per-item guides"),
    ],
)
def test_long_evaluations_draw_bars_on_a_terminal_and_none_with_no_progress(
    argv, label, trained_run, tmp_path, monkeypatch
):
    terminal = on_a_terminal(monkeypatch)
    # Pyro hides its NUTS bar whenever CI or PYTEST_XDIST_WORKER is set (CI runners set CI)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    threads = torch.get_num_threads()
    command = [argv[0], str(trained_run), *argv[1:], "-q"]
    if argv[0] in ("latent", "inspect", "inpaint"):
        command += ["--output", str(tmp_path / "out")]
    if argv[0] == "anomaly":
        command += ["--output", str(tmp_path / "scores.csv")]
    try:
        assert cli.main(command) == 0
        shown = terminal.getvalue()
        assert label in shown and "/s" in shown, shown
        if argv[0] == "inspect":
            assert "Warmup" in shown  # Pyro's own NUTS bar
            # one chain: our one line on mixing, not ArviZ's shape-validation warning
            assert "one NUTS chain" in shown and "Shape validation" not in shown
        terminal.seek(0)
        terminal.truncate()
        assert cli.main([*command, "--no-progress"]) == 0
        assert not drawn(terminal.getvalue())
    finally:
        torch.set_num_threads(threads)


def test_scoring_draws_a_bar_for_each_pass_inside_an_enabled_block(tmp_path, monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    labels = torch.arange(120) % 4
    items = (torch.rand(120, 16) + torch.nn.functional.one_hot(labels, 16)).clamp(0, 1)
    data = Dataset("vectors", items[:80], items[80:], labels[:80], labels[80:])
    settings = ClassifierSettings(num_steps=5)
    score(VAE(data.shape), data, cache_dir=tmp_path / "a", settings=settings)
    assert not drawn(terminal.getvalue())  # outside a block: hidden
    with progress.enabled():
        score(VAE(data.shape), data, cache_dir=tmp_path / "b", settings=settings)
        assert progress.active()
        with progress.enabled(False):
            assert not progress.active()
    shown = terminal.getvalue()
    for label in ("feature classifier", "held-out and reconstructions", "prior samples"):
        assert label in shown, label
    assert "training items" in shown and not progress.active()


def test_a_bar_over_batches_counts_items(monkeypatch):
    from pyrovae.inference.evaluation import batches

    terminal = on_a_terminal(monkeypatch)
    bars = Bars(monkeypatch)
    with progress.enabled():
        sizes = [len(xb) for xb, _ in batches(torch.zeros(11, 2), 4, desc="items")]
    (bar,) = bars.made
    assert sizes == [4, 4, 3] and bar.n == bar.total == 11 and "items" in terminal.getvalue()


# --- TensorBoard ----------------------------------------------------------------------------


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_logs_scalars_a_kl_histogram_and_images_and_resume_continues(
    trained_run, tmp_path, capsys
):
    pytest.importorskip("tensorboard")
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", workdir, "--tensorboard", "--tensorboard-every", "2"]
    code, _, err = run_cli([*argv, "--no-progress", *TINY], capsys)
    assert code == 0, err
    events = _events(workdir / "tensorboard")
    tags = events.Tags()
    expected = {"train/objective", "train/elbo", "test/elbo", "beta", "kl", "active_units"}
    assert expected <= set(tags["scalars"])
    assert "epoch" not in tags["scalars"] and "kl_per_dim" in tags["histograms"]
    assert set(tags["images"]) == {"images/reconstructions", "images/samples"}
    assert [e.step for e in events.Scalars("train/objective")] == [1, 2]
    assert [e.step for e in events.Images("images/samples")] == [2]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("test/elbo")] == pytest.approx(
        [r["test_elbo"] for r in rows]
    )
    (histogram,) = events.Histograms("kl_per_dim")[-1:]
    assert histogram.histogram_value.num == 8  # one value per latent dimension
    # logging draws its samples from a random stream of its own: training is unchanged
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    plain = [json.loads(line) for line in lines]
    assert [r["train_objective"] for r in rows] == [r["train_objective"] for r in plain]
    # a resumed run adds its epochs to the same folder
    argv = ["train", "--workdir", workdir, "--resume", "--num-epochs", "3", "--no-progress", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    events = _events(workdir / "tensorboard")
    assert [e.step for e in events.Scalars("train/objective")] == [1, 2, 3]
    assert [e.step for e in events.Images("images/samples")] == [2, 3]


def test_image_grids_of_a_conditional_run(digits, tmp_path):
    pytest.importorskip("tensorboard")
    from pyrovae.tensorboard import TensorBoardLogger

    vae = build_variant(Config.from_flags(model="cvae", num_classes=10).model, digits.shape)
    logger = TensorBoardLogger(tmp_path, digits.test[:12], digits.test_labels[:12])
    grids = logger.image_grids(vae)
    # 8 of the 12 items fill a row, above its reconstructions; the samples: 10 classes a row
    assert grids["reconstructions"].shape == (3, 2 * 9 + 1, 8 * 9 + 1)
    assert grids["samples"].shape == (3, 7 * 9 + 1, 10 * 9 + 1)
    state = torch.random.get_rng_state()
    logger.image_grids(vae)
    assert torch.equal(state, torch.random.get_rng_state())


def test_a_missing_tensorboard_package_is_one_message_and_nothing_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    workdir = tmp_path / "run"
    code, _, err = run_cli(["train", "--workdir", workdir, "--tensorboard", *TINY], capsys)
    assert code == 2 and "pip install -e '.[tensorboard]'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not workdir.exists()


def test_tensorboard_is_a_config_key():
    config = Config.from_flags(tensorboard=True, tensorboard_every=5)
    assert config.run["tensorboard"] is True and config.run["tensorboard_every"] == 5
    assert Config.from_flags().run["tensorboard"] is False
    with pytest.raises(ConfigError, match="tensorboard_every must be >= 1"):
        Config.from_flags(tensorboard_every=0)
