"""Progress: the training bar advances once per step, and the long evaluations draw bars on
a terminal only (never with --no-progress, never per epoch)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from pyrovae import VAE, Config, cli, load_dataset, progress, score
from pyrovae.data import Dataset
from pyrovae.inference.evaluation import ClassifierSettings
from pyrovae.inference.training import Trainer
from pyrovae.inference.training.trainer import POSTFIX_EVERY
from pyrovae.run import make_trainer

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


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


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
