"""Bad input through the CLI, one table: every row ends with one message naming the cause,
exit status 2 (130 for Ctrl-C), no traceback, and a watched run folder byte for byte as it
was. The rows cover paths, sizes, memory, seeds, names, config files, data files, runs and
resumes, file-system errors while writing, and interrupts; Ctrl-C during start-up, bugs
(``internal error``, exit 1) and ``--debug`` have tests of their own below."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-epochs", "1", "--num-eval-samples", "4", "--num-threads", "1", "--no-progress"]
RUN_FLAGS = ["--hidden", "16", "--latent-dim", "2", "--num-epochs", "2", "--num-eval-samples", "4"]
RUN_FLAGS += ["--num-threads", "1", "--no-progress", "-q"]


def run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        return e.code


def digest(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> Path:
    """One tiny trained run on the digits, which no row may change."""
    workdir = tmp_path_factory.mktemp("watched") / "run"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["train", "--workdir", str(workdir), *RUN_FLAGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return workdir


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The bad files the rows name in upper case (``NAN``, ``BADTOML``, ...)."""
    folder = tmp_path_factory.mktemp("files")
    digits = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    labels = np.arange(40) % 10
    labels[3] = 10**9
    arrays = {
        "EMPTY": np.zeros((10, 0), dtype=np.float32),
        "NAN": np.where(np.eye(20, 64) > 0, np.nan, 0.5).astype(np.float32),
        "OUTSIDE": np.full((20, 64), 3.0, dtype=np.float32),
        "FLAT5": np.full((10, 5), 0.5, dtype=np.float32),
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = folder / f"{name.lower()}.npy"
        np.save(paths[name], array)
    paths["BIGLABEL"] = folder / "biglabel.npz"
    np.savez(paths["BIGLABEL"], x=digits, y=labels)
    texts = {
        "NOTNPY": ("notnpy.npy", "this is not a .npy file\n"),
        "BADTOML": ("bad.toml", "[model\nlatent_dim = 2\n"),
        "UNKNOWNKEY": ("unknown.toml", "[model]\nlatent_dims = 2\n"),
        "BADSEED": ("seed.toml", "[run]\nseed = -5\n"),
        "WRONGTYPE": ("type.toml", '[model]\nlatent_dim = "two"\n'),
        "AFILE": ("afile", "a regular file\n"),
    }
    for name, (file, text) in texts.items():
        paths[name] = folder / file
        paths[name].write_text(text)
    paths["BADCKPT"] = folder / "badrun"
    paths["BADCKPT"].mkdir()
    (paths["BADCKPT"] / "checkpoint.pt").write_bytes(b"not a checkpoint")
    paths["EMPTYDIR"] = folder / "emptydir"
    paths["EMPTYDIR"].mkdir()
    paths["READONLY"] = folder / "readonly"
    paths["READONLY"].mkdir()
    return paths


# ---- set-ups: faults a row injects (monkeypatch, the row's paths) ---------------------


def _read_only(monkeypatch, paths) -> None:
    """``READONLY`` refuses new entries, as a folder without write permission does (the
    tests may run as root, whom permissions do not stop)."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(paths["READONLY"])):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def _np_save_fails(code: int) -> Callable:
    def setup(monkeypatch, paths) -> None:
        def save(file, *args, **kwargs):
            raise OSError(code, os.strerror(code), str(file))

        monkeypatch.setattr(np, "save", save)

    return setup


def _checkpoint_write_fails(error: BaseException) -> Callable:
    """Writing a checkpoint fails with ``error`` (torch.save's own on a full disk, or an
    ``OSError`` from the file system)."""

    def setup(monkeypatch, paths) -> None:
        def save(*args, **kwargs):
            raise error

        monkeypatch.setattr(torch, "save", save)

    return setup


def _raises_in(target: str, error: BaseException) -> Callable:
    """The method ``target`` of :class:`pyrovae.VAE` raises ``error``."""

    def setup(monkeypatch, paths) -> None:
        from pyrovae.variants import VAE

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(VAE, target, fail)

    return setup


def _fit_interrupted(monkeypatch, paths) -> None:
    import pyrovae.run

    def fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyrovae.run, "fit", fit)


@dataclass
class Row:
    argv: str
    message: str  # a regex the message must match
    setup: Callable | None = None
    code: int = 2


CPU_OOM = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 80000000000 bytes. Error code 12 (Cannot allocate memory)"
)
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 64320 vs 64208"
GPU_OOM = torch.cuda.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"
)

#: id -> row; NEW is a fresh folder of the test's own, RUN the watched run, upper-case
#: names the module's files
ROWS = {
    # paths that cannot be created or written
    "workdir under /proc": Row("train --workdir /proc/pyrovae-test/run", r"cannot be created"),
    "workdir under a file": Row("train --workdir AFILE/run", r"AFILE is a file, not a folder"),
    "workdir is a file": Row("train --workdir AFILE", r"--workdir AFILE is a file"),
    "workdir without permission": Row(
        "train --workdir READONLY/run", r"cannot be created: .*Permission denied", _read_only
    ),
    "sample output under /proc": Row("sample RUN --output /proc/pyrovae-test", r"cannot be"),
    "sample output under a file": Row("sample RUN --output AFILE/out", r"is a file, not a folder"),
    "sample output without permission": Row(
        "sample RUN --output READONLY/out", r"Permission denied", _read_only
    ),
    "inspect output under /proc": Row(
        "inspect RUN --items 0 -s 4 --output /proc/pyrovae-test", r"--output .* cannot be"
    ),
    "latent output under a file": Row("latent RUN --output AFILE/x", r"is a file, not a folder"),
    "anomaly output under /proc": Row(
        "anomaly RUN -k 2 --output /proc/pyrovae-test/a.csv", r"--output .* cannot be"
    ),
    "inpaint output under /proc": Row(
        "inpaint RUN -k 2 --output /proc/pyrovae-test", r"--output .* cannot be"
    ),
    "interpolate output under a file": Row(
        "interpolate RUN --items 0 1 --output AFILE/x", r"is a file, not a folder"
    ),
    "score cache under /proc": Row(
        "score RUN -n 10 --cache-dir /proc/pyrovae-test", r"cannot create the classifier cache"
    ),
    # the file system refusing a write
    "full disk while writing": Row(
        "sample RUN --output NEW", r"samples-n64\.npy: No space left on device", _np_save_fails(28)
    ),
    "read-only disk while writing": Row(
        "sample RUN --output NEW", r"samples-n64\.npy: Read-only file system", _np_save_fails(30)
    ),
    "no permission while writing": Row(
        "sample RUN --output NEW", r"samples-n64\.npy: Permission denied", _np_save_fails(13)
    ),
    "full disk while saving a checkpoint": Row(
        "train --workdir NEW --hidden 16",
        r"cannot write \S*checkpoint\.pt \(torch: .*\).*free space on its disk",
        _checkpoint_write_fails(RuntimeError(TORCH_FULL_DISK)),
    ),
    "read-only disk while saving a checkpoint": Row(
        "train --workdir NEW --hidden 16",
        r"cannot write \S*checkpoint\.pt: Read-only file system",
        _checkpoint_write_fails(OSError(errno.EROFS, os.strerror(errno.EROFS))),
    ),
    # sizes that cannot be allocated, memory that runs out
    "latent dim 10^9": Row("train --workdir NEW --latent-dim 1000000000", r"needs .* GB, more"),
    "hidden 10^9": Row("train --workdir NEW --hidden 1000000000", r"smaller --hidden"),
    "num classes 10^9": Row(
        "train --workdir NEW --model cvae --num-classes 1000000000", r"parameters: training"
    ),
    "a label of 10^9": Row(
        "train --workdir NEW --model cvae --data BIGLABEL", r"1000000001 classes, more than its 40"
    ),
    "out of memory (CPU)": Row(
        "evaluate RUN -k 2",
        r"out of memory \(an allocation of 80\.0 GB failed\).*--batch-size",
        _raises_in("evaluate_heldout", CPU_OOM),
    ),
    "out of memory (GPU)": Row(
        "evaluate RUN -k 2",
        r"out of memory \(CUDA out of memory on the GPU\)",
        _raises_in("evaluate_heldout", GPU_OOM),
    ),
    "MemoryError": Row(
        "sample RUN --output NEW",
        r"^pyrovae sample: error: out of memory; use a smaller",
        _raises_in("sample", MemoryError()),
    ),
    # sizes out of range
    "latent dim 0": Row("train --workdir NEW --latent-dim 0", r"latent_dim must be >= 1"),
    "negative hidden": Row("train --workdir NEW --hidden -5", r"hidden must list positive"),
    "batch size 0": Row("train --workdir NEW --batch-size 0", r"batch_size must be >= 1"),
    "negative epochs": Row("train --workdir NEW --num-epochs -1", r"num_epochs must be >= 1"),
    "evaluate k 0": Row("evaluate RUN -k 0", r"-k/--num-samples .* must be >= 1"),
    # seeds: one range, 0..2**32-1, for the config key and every --seed
    "train seed 2**70": Row(f"train --workdir NEW --seed {2**70}", r"seed must be an integer"),
    "train seed -1": Row("train --workdir NEW --seed -1", r"from 0 to 4294967295 .*got -1"),
    "evaluate seed -1": Row("evaluate RUN --seed -1", r"argument --seed: .*got -1"),
    "sample seed 2**32": Row(f"sample RUN --seed {2**32}", r"--seed must be .*got 4294967296"),
    "seed in a config file": Row("train --workdir NEW --config BADSEED", r"seed .*got -5"),
    # names
    "unknown prior": Row("train --workdir NEW --prior cauchy", r"invalid choice: 'cauchy'"),
    "unknown likelihood": Row("train --workdir NEW --likelihood poisson", r"invalid choice"),
    "unknown model": Row("train --workdir NEW --model vea", r"invalid choice: 'vea'"),
    "misspelled option": Row(
        "train --workdir NEW --num-componets 3", r"did you mean '?--num-components"
    ),
    "option of an unused component": Row(
        "train --workdir NEW --num-components 3", r"none of which this run uses"
    ),
    "impossible objective": Row("train --workdir NEW --elbo IWAE", r"--num-particles K >= 2"),
    "nan learning rate": Row("train --workdir NEW --learning-rate nan", r"finite number"),
    # long runs: validation, early stopping, learning-rate schedules, which parameters
    "patience without validation": Row(
        "train --workdir NEW --patience 5", r"no validation split; add --validation-fraction"
    ),
    "validation fraction 1": Row(
        "train --workdir NEW --validation-fraction 1", r"validation_fraction must be between 0"
    ),
    "validation fraction 0": Row(
        "train --workdir NEW --validation-fraction 0", r"validation_fraction must be > 0"
    ),
    "too small a validation split": Row(
        "train --workdir NEW --validation-fraction 0.001",
        r"cannot split .* with validation_fraction=0\.001",
    ),
    "unknown lr schedule": Row("train --workdir NEW --lr-schedule cosin", r"invalid choice"),
    "lr gamma 1": Row(
        "train --workdir NEW --lr-schedule step --lr-gamma 1", r"lr_gamma must be between 0"
    ),
    "lr option without schedule": Row(
        "train --workdir NEW --lr-patience 3", r"none of which this run uses"
    ),
    "unknown checkpoint": Row("evaluate RUN --checkpoint first", r"invalid choice: 'first'"),
    # config files
    "missing config": Row("train --workdir NEW --config missing.toml", r"does not exist"),
    "invalid TOML": Row("train --workdir NEW --config BADTOML", r"not valid TOML"),
    "unknown config key": Row(
        "train --workdir NEW --config UNKNOWNKEY", r"unknown config key model\.latent_dims"
    ),
    "wrong type in config": Row("train --workdir NEW --config WRONGTYPE", r"latent_dim"),
    "config is a folder": Row("train --workdir NEW --config EMPTYDIR", r"cannot read config"),
    # data files
    "missing data": Row("train --workdir NEW --data missing.npy", r"does not exist"),
    "empty items": Row("train --workdir NEW --data EMPTY", r"empty items"),
    "NaN in data": Row("train --workdir NEW --data NAN", r"NaN"),
    "outside the support": Row("train --workdir NEW --data OUTSIDE", r"\[0, 1\]"),
    "not a .npy file": Row("train --workdir NEW --data NOTNPY", r"notnpy\.npy"),
    "items of another shape": Row("evaluate RUN --data FLAT5", r"shape \(5,\).*\(1, 8, 8\)"),
    # runs and resumes
    "no such run": Row("evaluate no-such-run", r"no checkpoint"),
    "corrupt checkpoint": Row("sample BADCKPT", r"checkpoint"),
    "existing run without --resume": Row("train --workdir RUN", r"--resume"),
    "resume another architecture": Row(
        "train --workdir RUN --resume --hidden 32", r"another architecture"
    ),
    "resume with another seed": Row(
        "train --workdir RUN --resume --seed 3", r"another split of the data \(seed: 0 -> 3\)"
    ),
    "resume with a validation split": Row(
        "train --workdir RUN --resume --validation-fraction 0.2",
        r"another split of the data \(validation_fraction: None -> 0\.2\)",
    ),
    "resume nothing": Row("train --workdir EMPTYDIR --resume", r"no run to resume"),
    "label for a plain run": Row("sample RUN --label 2", r"drop --label"),
    # interrupts
    "Ctrl-C in sample": Row(
        "sample RUN --output NEW",
        r"^pyrovae sample: interrupted$",
        _raises_in("sample", KeyboardInterrupt()),
        code=130,
    ),
    "Ctrl-C in train": Row(
        "train --workdir NEW",
        r"interrupted; the last finished epoch is saved",
        _fit_interrupted,
        code=130,
    ),
}


@pytest.mark.parametrize("case", ROWS)
def test_bad_input(case, watched, files, tmp_path, capsys, monkeypatch):
    row = ROWS[case]
    before = digest(watched)
    names = {"RUN": str(watched), "NEW": str(tmp_path / "new")}
    names.update({k: str(v) for k, v in files.items()})
    placeholder = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    argv = [placeholder.sub(lambda m: names[m.group(1)], a) for a in row.argv.split()]
    if argv[0] == "train":  # before the row's flags, which override them
        argv[1:1] = TINY
    elif "--num-threads" not in argv and argv[0] != "score":
        argv += ["--num-threads", "1", "--no-progress"]
    if row.setup is not None:
        row.setup(monkeypatch, files)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        code = run_cli(argv)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == row.code, err
    assert "Traceback" not in err, err
    if row.code == 2:
        errors = [line for line in lines if "error:" in line]
        assert len(errors) == 1, err
        message = errors[0]
    else:
        interrupted = [line for line in lines if "interrupted" in line]
        assert len(interrupted) == 1, err
        message = interrupted[0]
    shown = {v: k for k, v in names.items() if k in ("AFILE",)}  # the rows name these
    for path, name in shown.items():
        message = message.replace(path, name)
    assert re.search(row.message, message), message
    assert digest(watched) == before, "a refused command changed the watched run"


def test_the_table_covers_at_least_40_inputs():
    assert len(ROWS) >= 40


# ---- bugs and --debug --------------------------------------------------------------------


def _bug(monkeypatch) -> None:
    _raises_in("sample", ZeroDivisionError("boom"))(monkeypatch, {})


def test_a_bug_is_one_internal_error_line(watched, tmp_path, capsys, monkeypatch):
    _bug(monkeypatch)
    monkeypatch.delenv("PYROVAE_DEBUG", raising=False)
    code = run_cli(["sample", str(watched), "--output", str(tmp_path), "--num-threads", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "pyrovae sample: internal error: ZeroDivisionError: boom (rerun with --debug for the "
        "traceback and please report it)"
    )


@pytest.mark.parametrize("how", ["--debug", "PYROVAE_DEBUG=1"])
def test_debug_shows_the_traceback(how, watched, tmp_path, capsys, monkeypatch):
    _bug(monkeypatch)
    argv = ["sample", str(watched), "--output", str(tmp_path), "--num-threads", "1"]
    if how == "--debug":
        monkeypatch.delenv("PYROVAE_DEBUG", raising=False)
        argv.append("--debug")
    else:
        monkeypatch.setenv("PYROVAE_DEBUG", "1")
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err and "internal error" in err


def test_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch):
    monkeypatch.delenv("PYROVAE_DEBUG", raising=False)
    assert run_cli(["evaluate", "no-such-run", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("pyrovae evaluate: error")


# ---- start-up: import pyrovae is light, and Ctrl-C while torch imports exits 130 --------


def test_the_script_and_python_m_share_the_guarded_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pyrovae"] == "pyrovae.__main__:run"


def test_import_pyrovae_does_not_import_torch():
    code = "import sys, pyrovae; assert 'torch' not in sys.modules; pyrovae.PyroVAEError"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def _torch_is_loading(pid: int) -> bool:
    """Whether the process has begun loading torch's libraries (Linux: its memory map)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_ctrl_c_during_start_up_exits_130(tmp_path):
    """SIGINT while ``python -m pyrovae train`` is still importing torch: exit 130, one
    line, no traceback (the signal is sent as soon as torch's libraries start to load)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYROVAE_DEBUG", None)
    argv = [sys.executable, "-m", "pyrovae", "train", "--workdir", str(tmp_path / "run")]
    process = subprocess.Popen(
        [*argv, *TINY],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it (a shell's background jobs, CI's too, ignore it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not _torch_is_loading(process.pid) and process.poll() is None:
        assert time.monotonic() < deadline, "torch never started to load"
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == ["pyrovae train: interrupted"]
    assert not (tmp_path / "run").exists()
