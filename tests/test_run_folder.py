"""A run folder that nothing corrupts: one writer at a time (``RUN/.lock``), refused and
failed commands that leave every file as it was, kills at any moment that a ``--resume``
turns into the uninterrupted run bit for bit, a full disk, and commands on a run that write
files of their own.

The processes that are stopped at a precise moment run ``tests/fault_worker.py``: it
patches one function to write a marker file and wait there, and the test kills the process
once the marker appears (no timing guesses)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae import cli, runfolder
from pyrovae.inference.training import checkpoint

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fault_worker.py")

#: a tiny digits run: 3 epochs of 12 steps
TRAIN = [
    "--hidden", "16", "--latent-dim", "2", "--num-epochs", "3", "--batch-size", "128",
    "--num-eval-samples", "4", "--num-threads", "1", "--diagnostic-items", "50",
    "--no-progress", "-q",
]  # fmt: skip


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones too) by its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def pyrovae(*argv) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pyrovae", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=300)


#: the processes of :class:`Stopped` still running (a failed test's are killed)
RUNNING: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    yield
    while RUNNING:
        process = RUNNING.pop()
        if process.poll() is None:
            process.kill()
        process.communicate()


class Stopped:
    """``pyrovae ARGV`` stopped at ``moment`` (see tests/fault_worker.py)."""

    def __init__(self, moment: str, marker: Path, *argv) -> None:
        self.marker = marker
        command = [sys.executable, str(WORKER), moment, str(marker), *map(str, argv)]
        self.process = subprocess.Popen(
            command,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )
        RUNNING.append(self.process)
        deadline = time.monotonic() + 120
        while not marker.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                _, err = self.process.communicate()
                raise AssertionError(f"never reached {moment}: {err}")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> tuple[int, str]:
        self.process.send_signal(sig)
        _, err = self.process.communicate(timeout=300)
        return self.process.returncode, err

    def go_on(self) -> tuple[int, str]:
        self.marker.with_name(self.marker.name + ".go").touch()
        _, err = self.process.communicate(timeout=300)
        return self.process.returncode, err


def interruptible() -> None:
    """In the child, before it runs: Ctrl-C as a terminal delivers it. (A shell starts its
    background jobs, CI's too, with SIGINT ignored, which their children inherit.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_run(run: Path, reference: Path) -> None:
    """Every metric but the seconds, every weight, optimizer and random state: bit for bit."""
    assert not list(run.glob(".*.tmp")) and not (run / runfolder.LOCK_NAME).exists()
    assert {p.name for p in run.iterdir()} == {p.name for p in reference.iterdir()}
    metrics = [
        without_seconds([json.loads(row) for row in (r / "metrics.jsonl").read_text().splitlines()])
        for r in (run, reference)
    ]
    assert metrics[0] == metrics[1]
    for name in ("evaluation.json", "config.toml"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    got, want = (checkpoint.load_checkpoint(r / "checkpoint.pt") for r in (run, reference))
    assert without_seconds(got.pop("history")) == without_seconds(want.pop("history"))
    assert_equal(got, want)


def assert_equal(got, want, where: str = "checkpoint") -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_equal(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, in a process of its own as the interrupted ones are."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    done = pyrovae("train", "--workdir", workdir, *TRAIN)
    assert done.returncode == 0, done.stderr
    return workdir


@pytest.fixture
def run(reference, tmp_path) -> Path:
    """A copy of the finished reference run."""
    return Path(shutil.copytree(reference, tmp_path / "run"))


# -- the lock ------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_the_first_finishes_unharmed(reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    first = Stopped("epoch:2", tmp_path / "marker", "train", "--workdir", workdir, *TRAIN)
    pid = first.marker.read_text()
    for argv in (
        ["train", "--workdir", workdir, "--resume", "--seed", "1", "-q", "--no-progress"],
        ["sample", workdir, "-n", "4"],
        ["evaluate", workdir, "-k", "2"],
    ):
        before = folder_hashes(workdir)
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"in use by process {pid} on {socket.gethostname()} since" in err
        assert "train --workdir" in err and "Traceback" not in err
        assert folder_hashes(workdir) == before
    code, err = first.go_on()
    assert code == 0, err
    assert_same_run(workdir, reference)


def test_a_stale_lock_is_taken_over_with_a_warning(run, caplog, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    stale = {"pid": gone.pid, "host": socket.gethostname(), "command": "pyrovae train"}
    (run / ".lock").write_text(json.dumps({**stale, "since": "2026-01-01 00:00:00 UTC"}))
    (run / ".checkpoint.pt.k2j4h5l1.tmp").write_bytes(b"half a checkpoint")
    (run / "metrics.tmp").write_text("{")
    (run / "inspect").mkdir()
    (run / "inspect" / ".posterior.nc.x1y2z3w4.tmp").touch()  # not the run folder's own
    code, _, err = run_cli(["sample", run, "-n", "4"], capsys)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert f"stale lock of process {gone.pid}" in warnings[0]
    assert "no process holds it" in warnings[0]
    assert not (run / ".lock").exists()
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    assert (run / "inspect" / ".posterior.nc.x1y2z3w4.tmp").exists()


def test_a_lock_from_another_host_is_refused_with_the_fix(run, capsys):
    """flock is not trusted across machines that share a file system."""
    lock = run / ".lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "pyrovae train"}))
    before = folder_hashes(run)
    code, _, err = run_cli(["evaluate", run, "-k", "2"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"remove {lock}" in err and "on elsewhere" in err
    assert folder_hashes(run) == before


def test_a_lock_its_process_still_names_but_no_longer_holds_is_stale(run, caplog, capsys):
    """The kernel ends a flock with its process: a lock file naming this very process (a
    process id reused after a crash) or left empty by a kill is taken over, not refused."""
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": "pyrovae train"}
    for text in (json.dumps(mine), ""):
        (run / ".lock").write_text(text)
        code, _, err = run_cli(["sample", run, "-n", "4"], capsys)
        assert code == 0, err
        assert not (run / ".lock").exists()
    # one warning: for the lock that named a holder (an empty one names no one)
    assert len([r for r in caplog.records if "taking over the stale lock" in r.getMessage()]) == 1


def test_the_lock_is_released_after_an_error_and_is_not_taken_by_readers(run, capsys):
    code, _, err = run_cli(["sample", run, "-n", "0"], capsys)
    assert code == 2 and not (run / ".lock").exists()
    with runfolder.lock(run):  # a command that reads only (its output elsewhere) runs
        code, _, err = run_cli(["sample", run, "-n", "4", "--output", run.parent / "s"], capsys)
        assert code == 0, err
        with runfolder.lock(run):  # the same process: nested, not refused
            pass
        assert (run / ".lock").exists()
    assert not (run / ".lock").exists()


# -- refused and failed commands change nothing ----------------------------------------------


def test_a_refused_resume_leaves_every_file_as_it_was(run, tmp_path, capsys):
    before = folder_hashes(run)
    outside = tmp_path / "pixels.npy"
    np.save(outside, np.full((50, 8, 8), 255.0, dtype=np.float32))
    other = tmp_path / "other.npy"
    np.save(other, np.full((50, 5, 5), 0.5, dtype=np.float32))
    for data in (outside, other):
        argv = ["train", "--workdir", run, "--resume", "--data", data, "--num-epochs", "5"]
        code, _, err = run_cli([*argv, "-q", "--no-progress"], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert folder_hashes(run) == before
    # and a resume that diverges in its first epoch (in a process: Pyro warns on the NaN)
    done = pyrovae("train", "--workdir", run, "--resume", "--learning-rate", "1e6",
                   "--num-epochs", "5", "-q", "--no-progress")  # fmt: skip
    assert done.returncode != 0
    assert folder_hashes(run) == before


def test_a_fresh_run_refused_for_its_data_leaves_no_folder(tmp_path, capsys):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, np.full((50, 8, 8), 255.0, dtype=np.float32))
    workdir = tmp_path / "new" / "run"
    code, _, err = run_cli(["train", "--workdir", workdir, "--data", pixels, *TRAIN], capsys)
    assert code == 2 and "bernoulli" in err
    assert not (tmp_path / "new" / "run").exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_the_config(run, monkeypatch, capsys):
    before = folder_hashes(run)
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    argv = ["train", "--workdir", run, "--resume", "--num-epochs", "4", "--learning-rate", "2e-3"]
    code, _, err = run_cli([*argv, "-q", "--no-progress"], capsys)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert code == 2 and err.count("\n") == 1, err
    assert "checkpoint.pt: No space left on device; free space on its disk" in err
    assert "the previous one is kept" in err and "Traceback" not in err
    assert folder_hashes(run) == before  # no temporary file, no lock, config.toml unchanged


# -- kills at any moment, then --resume: the uninterrupted run, bit for bit -----------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment, sig",
    [
        ("startup", signal.SIGKILL),
        ("epoch:2", signal.SIGKILL),
        ("checkpoint:2", signal.SIGKILL),
        ("metrics:2", signal.SIGKILL),
        ("evaluation", signal.SIGKILL),
        ("epoch:2", signal.SIGINT),
    ],
)
def test_a_killed_run_resumes_bit_for_bit(reference, tmp_path, moment, sig, caplog, capsys):
    workdir = tmp_path / "run"
    stopped = Stopped(moment, tmp_path / "marker", "train", "--workdir", workdir, *TRAIN)
    code, err = stopped.kill(sig)
    if sig == signal.SIGINT:
        assert code == 130 and "--resume" in err and "Traceback" not in err
        assert not (workdir / ".lock").exists()
    else:
        assert code == -signal.SIGKILL
    started = (workdir / "checkpoint.pt").exists()
    if moment == "startup":
        assert not started
    if started:
        assert (workdir / "config.toml").exists()
    # here, to save a process's start: the resumed run continues from the checkpoint's state
    argv = ["train", "--workdir", workdir, *TRAIN, *(["--resume"] if started else [])]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    stale = [r for r in caplog.records if "taking over the stale lock" in r.getMessage()]
    assert len(stale) == (sig == signal.SIGKILL)
    assert_same_run(workdir, reference)


# -- commands on a run write files of their own ----------------------------------------------


def test_evaluate_and_sample_do_not_overwrite_training_outputs(run, capsys):
    training = folder_hashes(run)
    code, out, err = run_cli(["evaluate", run, "-k", "3"], capsys)
    assert code == 0, err
    assert json.loads((run / "evaluation-k3.json").read_text()) == json.loads(out)
    code, _, err = run_cli(["evaluate", run, "-k", "3", "--num-items", "20", "--seed", "1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sample", run, "-n", "4"], capsys)
    assert code == 0, err
    assert "samples-n4.png" in out
    code, _, err = run_cli(["sample", run, "-n", "4", "--seed", "2"], capsys)
    assert code == 0, err
    new = set(folder_hashes(run)) - set(training)
    assert new == {
        "evaluation-k3.json",
        "evaluation-k3-n20-seed1.json",
        "samples-n4.png",
        "samples-n4.npy",
        "samples-n4-seed2.png",
        "samples-n4-seed2.npy",
    }
    assert {k: v for k, v in folder_hashes(run).items() if k in training} == training
    a, b = (np.load(run / f) for f in ("samples-n4.npy", "samples-n4-seed2.npy"))
    assert not np.array_equal(a, b)


def test_every_atomic_write_goes_through_one_helper():
    """No module writes with its own temporary file: runfolder.atomic_write is the one."""
    for path in (REPO / "pyrovae").rglob("*.py"):
        text = path.read_text()
        if path.name != "runfolder.py":
            assert "os.replace(" not in text and "mkstemp(" not in text, path


def test_a_resume_killed_before_its_config_toml_continues_under_the_checkpoints_config(run, capsys):
    """A resumed session writes config.toml after its first checkpoint; killed in between, it
    leaves the previous session's config.toml, older than the checkpoint. A plain --resume
    then takes the checkpoint's config (here another learning rate), not the stale file."""
    state = checkpoint.load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["optimization"]["learning_rate"] == 1e-3
    state["config"]["optimization"]["learning_rate"] = 2e-3  # what the killed session ran
    time.sleep(0.01)
    checkpoint.save_checkpoint(state, run / "checkpoint.pt")  # newer than config.toml
    code, _, err = run_cli(["train", "--workdir", run, "--resume", "--num-epochs", "4"], capsys)
    assert code == 0, err
    assert "learning_rate = 0.002" in (run / "config.toml").read_text()
