"""The command line: every command runs on a small trained model, flags override a
config file, and every kind of bad input ends with one readable message and exit 2."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import run_cli

from pyrovae import cli, load_config

#: every CLI command with the test that runs it; test_every_command_is_tested checks it
CLI_TESTED = {
    "train": "trained_run",
    "evaluate": "test_evaluate",
    "sample": "test_sample",
    "score": "test_scores.py::test_score_command",
    "augment": "test_augment",
    "anomaly": "test_anomaly",
    "interpolate": "test_latent_commands",
    "traverse": "test_latent_commands",
    "arithmetic": "test_latent_commands",
    "inpaint": "test_inpaint_and_denoise",
    "denoise": "test_inpaint_and_denoise",
    "impute": "test_tables.py::test_cli_train_impute_and_anomaly",
    "inspect": "test_inspect",
    "graph": "test_graph",
    "latent": "test_latent",
    "disentanglement": "test_disentanglement_cli.py::test_disentanglement_command",
}
TINY = ["--num-epochs", "2", "--num-eval-samples", "8", "--no-progress", "-q"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--workdir", str(workdir), *TINY]) == 0
    return workdir


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("cvae")
    assert cli.main(["train", "--model", "cvae", "--workdir", str(workdir), *TINY]) == 0
    return workdir


def test_every_command_is_tested():
    assert set(cli.COMMANDS) == set(CLI_TESTED)


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "config.toml",
        "checkpoint.pt",
        "metrics.jsonl",
        "evaluation.json",
        "elbo.png",
        "reconstructions.png",
        "samples.png",
    } <= names
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_config(trained_run / "config.toml").optimization["num_epochs"] == 2


def test_evaluate(trained_run, capsys):
    code, out, _ = run_cli(["evaluate", trained_run, "-k", "20"], capsys)
    assert code == 0
    assert '"num_samples": 20' in out and '"log_likelihood"' in out


def test_sample(trained_run, tmp_path, capsys):
    code, _, _ = run_cli(["sample", trained_run, "-n", "16", "--output", tmp_path], capsys)
    assert code == 0
    samples = np.load(tmp_path / "samples-n16.npy")
    assert samples.shape == (16, 1, 8, 8) and (tmp_path / "samples-n16.png").stat().st_size > 0


def test_sample_a_class(cvae_run, tmp_path, capsys):
    code, _, err = run_cli(
        ["sample", cvae_run, "--label", "3", "-n", "8", "--output", tmp_path], capsys
    )
    assert code == 0, err
    assert np.load(tmp_path / "samples-n8-label3.npy").shape == (8, 1, 8, 8)
    code, out, err = run_cli(["evaluate", cvae_run, "-k", "4"], capsys)
    assert code == 0 and '"log_likelihood"' in out, err


def test_m2_from_the_cli(tmp_path, capsys):
    import json

    workdir = tmp_path / "m2"
    argv = ["train", "--model", "m2", "--labels-per-class", "5", "--limit", "300", "--workdir"]
    argv += [workdir, *TINY]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert 0.0 <= json.loads(out)["evaluation"]["accuracy"] <= 1.0
    code, _, err = run_cli(
        ["sample", workdir, "--label", "7", "-n", "4", "--output", tmp_path], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(["evaluate", workdir, "-k", "2"], capsys)
    assert code == 0 and '"accuracy"' in out, err
    code, _, err = run_cli(
        [
            "train",
            "--model",
            "m2",
            "--elbo",
            "TraceMeanField_ELBO",
            "--workdir",
            tmp_path / "bad",
            *TINY,
        ],
        capsys,
    )
    assert code == 2 and "TraceEnum_ELBO" in err


def test_augment(cvae_run, tmp_path, capsys):
    output = tmp_path / "aug.npz"
    code, _, err = run_cli(
        ["augment", cvae_run, "--per-class", "3", "--output", output, "--draw", "sample"], capsys
    )
    assert code == 0, err
    with np.load(output) as data:
        assert data["x"].shape == (30, 1, 8, 8) and set(np.unique(data["x"])) <= {0.0, 1.0}
        assert data["y"].tolist() == [c for c in range(10) for _ in range(3)]
    # the file is a labelled data set pyrovae reads
    code, _, err = run_cli(["evaluate", cvae_run, "--data", output, "-k", "2"], capsys)
    assert code == 0, err


def test_anomaly(trained_run, tmp_path, capsys):
    import json

    normal = _save(tmp_path / "normal.npy", np.full((12, 1, 8, 8), 0.1, dtype=np.float32))
    odd = _save(tmp_path / "odd.npy", np.full((5, 1, 8, 8), 0.9, dtype=np.float32))
    output = tmp_path / "out" / "scores.csv"
    argv = ["anomaly", trained_run, "--data", normal, "--anomalous", odd, "-k", "4"]
    code, out, err = run_cli([*argv, "--output", output, "--score", "kl"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["num_items"] == 17 and set(summary["detection"]) == {
        "neg-elbo",
        "iwae-nll",
        "reconstruction",
        "kl",
    }
    lines = output.read_text().splitlines()
    assert lines[0].startswith("item,source,anomalous,neg-elbo") and len(lines) == 18
    assert output.with_suffix(".png").stat().st_size > 0
    flags = _save(tmp_path / "flags.npy", np.array([0, 1] * 6))
    code, out, err = run_cli(
        [
            "anomaly",
            trained_run,
            "--data",
            normal,
            "--labels",
            flags,
            "-k",
            "2",
            "--percentile",
            "50",
            "--output",
            output,
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    # 12 identical items: the deterministic reconstruction error cannot rank them
    assert summary["detection"]["reconstruction"]["roc_auc"] == 0.5
    # the default: the run's held-out items, written into the run folder
    code, out, err = run_cli(["anomaly", trained_run, "-k", "2"], capsys)
    assert code == 0 and (trained_run / "anomaly_scores.csv").exists(), err


@pytest.mark.parametrize(
    "argv, name, shape",
    [
        (["interpolate", "--items", "0", "5", "--steps", "4"], "interpolation", (4, 1, 8, 8)),
        (["interpolate", "--items", "0", "5", "--slerp"], "interpolation", (10, 1, 8, 8)),
        (
            ["traverse", "--item", "2", "--dims", "0", "3", "--steps", "5"],
            "traversal",
            (2, 5, 1, 8, 8),
        ),
        (["arithmetic", "--items", "0", "1", "2"], "arithmetic", (1, 1, 8, 8)),
    ],
)
def test_latent_commands(argv, name, shape, trained_run, tmp_path, capsys):
    code, _, err = run_cli([argv[0], trained_run, *argv[1:], "--output", tmp_path], capsys)
    assert code == 0, err
    assert np.load(tmp_path / f"{name}.npy").shape == shape
    assert (tmp_path / f"{name}.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, name",
    [
        (
            ["inpaint", "--mask", "random", "--fraction", "0.3", "-k", "4", "--rounds", "1"],
            "inpainting",
        ),
        (["inpaint", "--mask", "half", "-k", "2", "--show", "3"], "inpainting"),
        (["denoise", "--noise", "gaussian", "--level", "0.2"], "denoising"),
    ],
)
def test_inpaint_and_denoise(argv, name, trained_run, tmp_path, capsys):
    import json

    code, out, err = run_cli([argv[0], trained_run, *argv[1:], "--output", tmp_path], capsys)
    assert code == 0, err
    results = json.loads(out[out.index("{") :])
    assert results["num_items"] == 360
    assert np.load(tmp_path / f"{name}.npy").shape == (360, 1, 8, 8)
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    if name == "inpainting":
        assert set(results["mse_on_missing_pixels"]) == {
            "inpainting",
            "mean_image",
            "reconstruct_mean_filled",
        }


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["inpaint", "RUN", "--mask", "random", "--fraction", "1.5"], "must be in (0, 1)"),
        (["inpaint", "CVAE"], "plain VAE run"),
        (["latent", "CVAE"], "analyses q(z|x) of a plain VAE"),
        (["inspect", "CVAE"], "analyses q(z|x) of a plain VAE"),
        (["inpaint", "RUN", "--rounds", "0"], "must be >= 1"),
        (["denoise", "RUN", "--level", "-1"], "noise level must be > 0"),
        (["interpolate", "RUN", "--items", "0", "360"], "out of range: there are 360 items"),
        (["interpolate", "CVAE", "--items", "0", "1"], "conditions on labels"),
        (["traverse", "RUN", "--span", "0"], "span > 0"),
        (["anomaly", "RUN", "--percentile", "120"], "--percentile must be in [0, 100]"),
        (["anomaly", "RUN", "--labels", "FLAGS"], "one 0/1 flag per item"),
        (["anomaly", "RUN", "-k", "0"], "must be >= 1"),
        (["anomaly", "RUN", "--output", "x.txt"], "must end in .csv"),
    ],
)
def test_application_errors_exit_2(argv, phrase, trained_run, cvae_run, tmp_path, capsys):
    flags = _save(tmp_path / "flags.npy", np.array([0, 1, 1]))
    paths = {"RUN": trained_run, "CVAE": cvae_run, "FLAGS": flags}
    code, _, err = run_cli([paths.get(a, a) for a in argv], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["sample", "RUN", "--label", "2"], "drop --label"),
        (["augment", "RUN", "--per-class", "2", "--output", "OUT"], "augment needs a run"),
        (["sample", "CVAE", "--label", "10"], "class indices 0..9"),
        (["augment", "CVAE", "--per-class", "0", "--output", "OUT"], "--per-class must be"),
        (["augment", "CVAE", "--per-class", "2", "--output", "x.npy"], "must end in .npz"),
    ],
)
def test_label_errors_exit_2(argv, phrase, trained_run, cvae_run, tmp_path, capsys):
    paths = {"RUN": trained_run, "CVAE": cvae_run, "OUT": tmp_path / "a.npz"}
    code, _, err = run_cli([paths.get(a, a) for a in argv], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "usage: pyrovae " + command in out


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "pyrovae", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_flags_override_the_config_file(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('latent_dim = 3\nprior = "mixture"\nnum_epochs = 1\n')
    workdir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--config",
            config,
            "--latent-dim",
            "5",
            "--workdir",
            workdir,
            "--num-eval-samples",
            "4",
            "--no-progress",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    resolved = load_config(workdir / "config.toml")
    model, optimization = resolved.model, resolved.optimization
    assert (model["latent_dim"], model["prior"]["name"], optimization["num_epochs"]) == (
        5,
        "mixture",
        1,
    )


def test_resume_from_the_cli(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["train", "--workdir", workdir, *TINY], capsys)[0] == 0
    code, _, err = run_cli(
        ["train", "--workdir", workdir, "--resume", "--num-epochs", "3", "--no-progress", "-q"],
        capsys,
    )
    assert code == 0, err
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


BAD_DATA = {
    "nan": (lambda: np.where(np.eye(20, 64)[:, :] > 0, np.nan, 0.5), "NaN"),
    "outside [0, 1] for bernoulli": (lambda: np.full((20, 64), 3.0), "[0, 1]"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_training_data_exits_2(case, tmp_path, capsys):
    make, phrase = BAD_DATA[case]
    path = _save(tmp_path / "x.npy", make())
    code, _, err = run_cli(["train", "--data", path, "--workdir", tmp_path / "run", *TINY], capsys)
    assert code == 2
    assert phrase in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_data_shape_for_a_trained_model_exits_2(trained_run, tmp_path, capsys):
    path = _save(tmp_path / "x.npy", np.full((10, 5), 0.5, dtype=np.float32))
    code, _, err = run_cli(["evaluate", trained_run, "--data", path], capsys)
    assert code == 2 and "shape (5,)" in err and "(1, 8, 8)" in err


def test_conv_networks_on_flat_data_exit_2(tmp_path, capsys):
    path = _save(tmp_path / "x.npy", np.full((20, 5), 0.5, dtype=np.float32))
    code, _, err = run_cli(
        [
            "train",
            "--data",
            path,
            "--encoder",
            "conv",
            "--decoder",
            "conv",
            "--workdir",
            tmp_path / "run",
            *TINY,
        ],
        capsys,
    )
    assert code == 2 and "use --encoder mlp" in err


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["train", "--prior", "cauchy"], "invalid choice: 'cauchy'"),
        (["train", "--likelihood", "poisson"], "invalid choice: 'poisson'"),
        (["train", "--data", "missing.npy"], "does not exist"),
        (["train", "--latent-dim", "0"], "latent_dim must be >= 1"),
        (["evaluate", "no-such-run"], "no checkpoint"),
        (["sample", "no-such-run"], "no checkpoint"),
        (["inspect", "no-such-run"], "no checkpoint"),
        (["latent", "no-such-run"], "no checkpoint"),
    ],
)
def test_bad_arguments_exit_2(argv, phrase, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*argv, *([] if argv[0] != "train" else TINY)], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("latnt_dim = 3\n", "did you mean 'latent_dim'"),
        ('prior = "cauchy"\n', "unknown prior 'cauchy'; choose one of: normal"),
        ('latent_dim = "three"\n', "needs an integer"),
        ("latent_dim = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_exits_2(text, phrase, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(text)
    code, _, err = run_cli(
        ["train", "--config", tmp_path / "c.toml", "--workdir", tmp_path / "run", *TINY], capsys
    )
    assert code == 2 and phrase in err


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, _, err = run_cli(["evaluate", tmp_path], capsys)
    assert code == 2 and "corrupt" in err and "Traceback" not in err


def test_checkpoint_of_another_architecture_exits_2(trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    state["config"]["model"]["latent_dim"] = 3  # a config that does not fit the saved weights
    torch.save(state, tmp_path / "checkpoint.pt")
    code, _, err = run_cli(["sample", tmp_path], capsys)
    assert code == 2 and "another architecture" in err


def test_resume_with_another_architecture_exits_2(trained_run, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["train", "--workdir", workdir, *TINY], capsys)[0] == 0
    code, _, err = run_cli(
        ["train", "--workdir", workdir, "--resume", "--hidden", "32", "--no-progress", "-q"], capsys
    )
    assert code == 2 and "another architecture" in err


def test_existing_run_without_resume_exits_2(trained_run, capsys):
    code, _, err = run_cli(["train", "--workdir", trained_run, *TINY], capsys)
    assert code == 2 and "--resume" in err


def test_evaluate_on_every_item_of_a_file(trained_run, tmp_path, capsys, caplog):
    path = _save(tmp_path / "x.npy", np.full((10, 1, 8, 8), 0.5, dtype=np.float32))
    with caplog.at_level(logging.INFO):
        code, out, err = run_cli(["evaluate", trained_run, "--data", path, "-k", "4"], capsys)
    assert code == 0, err
    assert '"num_data": 10' in out
    assert f"evaluating 10 items of {path}" in caplog.text


def test_evaluate_num_items_takes_the_first_rows_of_the_file(trained_run, tmp_path, capsys):
    """--num-items N scores rows 0..N-1 of --data, in file order: the same numbers as a
    file of those rows alone (blank rows, which any binarization leaves blank)."""
    rows = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    rows[:3] = 0.0  # the first three are blank, unlike any other: a shuffle would show
    whole = _save(tmp_path / "whole.npy", rows)
    first = _save(tmp_path / "first.npy", rows[:3])
    code, out, err = run_cli(["evaluate", trained_run, "--data", whole, "--num-items", "3"], capsys)
    assert code == 0, err
    expected = run_cli(["evaluate", trained_run, "--data", first], capsys)[1]
    assert json.loads(out) == json.loads(expected)


def test_refused_resume_leaves_the_run_as_it_was(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["train", "--workdir", workdir, *TINY], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    code, _, err = run_cli(
        ["train", "--workdir", workdir, "--resume", "--latent-dim", "4", "--no-progress", "-q"],
        capsys,
    )
    assert code == 2 and "another architecture" in err
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before
    code, _, err = run_cli(
        ["train", "--workdir", workdir, "--resume", "--num-epochs", "3", "--no-progress", "-q"],
        capsys,
    )
    assert code == 0, err


def test_resume_applies_a_new_learning_rate(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["train", "--workdir", workdir, *TINY], capsys)[0] == 0
    code, _, err = run_cli(
        [
            "train",
            "--workdir",
            workdir,
            "--resume",
            "--num-epochs",
            "3",
            "--learning-rate",
            "0.0005",
            "--no-progress",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    state = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert {g["lr"] for g in state["optimizers"]["svi"]["param_groups"]} == {0.0005}


@pytest.mark.parametrize("shape", [(30, 2, 3, 4, 5), (30, 2, 8, 8), (30, 7)])
def test_any_item_shape_trains_and_plots(shape, tmp_path, capsys):
    path = _save(tmp_path / "x.npy", np.full(shape, 0.5, dtype=np.float32))
    workdir = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", path, "--workdir", workdir, *TINY], capsys)
    assert code == 0, err
    assert (workdir / "samples.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--data", "EMPTY"], "empty items"),
        (["--learning-rate", "nan"], "learning_rate must be a finite number"),
        (["--beta", "inf"], "beta must be a finite number"),
        (["--resume"], "no run to resume"),
        (["--config", "."], "cannot read config file"),
    ],
)
def test_more_bad_train_arguments_exit_2(argv, phrase, tmp_path, capsys):
    empty = _save(tmp_path / "empty.npy", np.zeros((10, 0), dtype=np.float32))
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    code, _, err = run_cli(["train", *argv, "--workdir", tmp_path / "run", *TINY], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err


def test_relative_data_path_is_stored_absolute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "x.npy", np.full((30, 4), 0.5, dtype=np.float32))
    assert run_cli(["train", "--data", "x.npy", "--workdir", "run", *TINY], capsys)[0] == 0
    assert load_config(tmp_path / "run" / "config.toml").data["data"] == str(tmp_path / "x.npy")


def test_objective_guide_and_schedule_flags(tmp_path, capsys):
    workdir = tmp_path / "iwae"
    argv = ["train", "--workdir", workdir, "--elbo", "IWAE", "--num-particles", "3"]
    argv += ["--guide", "iaf", "--num-flows", "1", "--kl-schedule", "cyclical"]
    argv += ["--num-cycles", "2", "--cycle-ratio", "0.5", "--diagnostic-items", "50", *TINY]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0, out
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["beta"] == 1.0 and rows[0]["beta_mean"] < 1.0  # first cycle
    assert {"kl", "active_units", "mutual_information"} <= rows[0].keys()
    config = load_config(workdir / "config.toml")
    names = (config.objective["elbo"], config.model["guide"], config.objective["kl_schedule"])
    assert tuple(c["name"] for c in names) == ("IWAE", "iaf", "cyclical")
    code, out, _ = run_cli(["evaluate", workdir, "-k", "4", "--num-items", "7"], capsys)
    assert code == 0 and '"num_data": 7' in out
    code, _, err = run_cli(["evaluate", workdir, "--num-items", "0"], capsys)
    assert code == 2 and "--num-items" in err


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--elbo", "FreeBits_ELBO", "--prior", "mixture"], "mixture prior"),
        (["--elbo", "FreeBits_ELBO", "--guide", "lowrank"], "--guide normal"),
        (["--elbo", "IWAE"], "--num-particles K >= 2"),
        (["--elbo", "RenyiELBO", "--num-particles", "2", "--renyi-alpha", "1"], "alpha = 1"),
        (["--kl-schedule", "cyclical", "--cycle-ratio", "1.5"], "cycle_ratio"),
        (["--guide", "lowrank", "--guide-rank", "0"], "guide_rank"),
        (["--warmup-epochs", "-1"], "warmup"),
    ],
)
def test_bad_objective_combinations_exit_2(flags, phrase, tmp_path, capsys):
    code, _, err = run_cli(["train", "--workdir", tmp_path / "r", *flags, *TINY], capsys)
    assert code == 2
    assert phrase in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def one_thread():
    """Commands here get ``--num-threads 1``, which sets torch's global thread count;
    put the previous count back afterwards."""
    threads = torch.get_num_threads()
    yield ["--num-threads", "1"]
    torch.set_num_threads(threads)


def test_inspect(trained_run, tmp_path, capsys, one_thread):
    from pyrovae.inference import load_inference_data

    out = tmp_path / "inspect"
    argv = ["inspect", trained_run, "--items", "0", "2", "-s", "40", "--output", out]
    argv += ["--nuts", "--num-chains", "2", "--num-warmup", "30", "--num-mcmc-samples", "30"]
    argv += ["--gaps", "--num-gap-items", "4", "-k", "20", "--gap-steps", "10", "-q"]
    code, stdout, err = run_cli([*argv, *one_thread], capsys)
    assert code == 0, err
    figures = ["posterior.png", "forest.png", "pair.png", "predictive.png", "comparison.png"]
    for name in [*figures, "forest_nuts.png"]:
        assert (out / name).stat().st_size > 0, name
    q = load_inference_data(out / "posterior.nc")
    assert q.posterior["z"].shape == (1, 40, 2, 8)
    assert q.posterior["item"].values.tolist() == [0, 2]
    nuts = load_inference_data(out / "nuts.nc")
    assert nuts.posterior["z"].shape == (2, 30, 2, 8)
    assert nuts.sample_stats["diverging"].shape == (2, 30)
    assert len((out / "comparison.csv").read_text().splitlines()) == 1 + 2 * 8
    gaps = json.loads((out / "gaps.json").read_text())
    assert gaps["num_data"] == 4 and len(gaps["items"]) == 4
    assert gaps["approximation_gap"] + gaps["amortization_gap"] == pytest.approx(
        gaps["inference_gap"], abs=1e-4
    )
    assert "r_hat" in stdout and "overlap" in stdout and "amortization_gap" in stdout


def test_inspect_items_of_a_data_file(trained_run, tmp_path, capsys):
    from pyrovae.inference import load_inference_data

    rows = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    path = _save(tmp_path / "x.npy", rows)
    argv = ["inspect", trained_run, "--data", path, "--items", "3", "1", "-s", "10", "-q"]
    code, _, err = run_cli([*argv, "--dims", "0", "5", "--output", tmp_path / "out"], capsys)
    assert code == 0, err
    q = load_inference_data(tmp_path / "out" / "posterior.nc")
    assert q.posterior["item"].values.tolist() == [3, 1]
    np.testing.assert_array_equal(q.observed_data["x"].values, rows[[3, 1]])


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--items", "360"], "--items 360 out of range: the held-out set has 360 items"),
        (["--items", "-1"], "out of range"),
        (["--items", "1", "1"], "repeats an index"),
        (["--dims", "8"], "--dims 8 out of range"),
        (["-s", "0"], "-s/--num-samples must be >= 1"),
        (["--nuts", "--num-chains", "0"], "--num-chains must be >= 1"),
        (["--data", "missing.npy"], "does not exist"),
    ],
)
def test_bad_inspect_arguments_exit_2(argv, phrase, trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["inspect", trained_run, *argv, "--output", tmp_path / "o"], capsys)
    assert code == 2 and phrase in err and "Traceback" not in err, err


def test_graph(trained_run, tmp_path, capsys):
    pytest.importorskip("graphviz", reason="the optional extra .[graph] is not installed")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    code, _, err = run_cli(["graph", trained_run, "--output", tmp_path], capsys)
    assert code == 0, err
    model, guide = (tmp_path / "model.svg").read_text(), (tmp_path / "guide.svg").read_text()
    assert "<svg" in model and "cluster_data" in model
    # the model draws z and the observed x with their distributions; the guide only z
    assert "z ~ Normal" in model and "x ~ Bernoulli" in model
    assert "z ~ Normal" in guide and "x ~" not in guide
    code, _, err = run_cli(["graph", trained_run, "--output", tmp_path, "--format", "dot"], capsys)
    assert code == 0 and "fillcolor=gray" in (tmp_path / "model.dot").read_text()


def test_graph_without_graphviz_exits_2(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz raises ImportError
    code, _, err = run_cli(["graph", trained_run, "--output", tmp_path], capsys)
    assert code == 2 and "pip install -e '.[graph]'" in err and "Traceback" not in err
    assert not (tmp_path / "model.svg").exists()


def test_latent(trained_run, tmp_path, capsys, one_thread):
    code, stdout, err = run_cli(
        ["latent", trained_run, "--output", tmp_path, "--max-points", "100", *one_thread], capsys
    )
    assert code == 0, err
    codes = np.load(tmp_path / "latent.npz")
    assert codes["train_loc"].shape == (1437, 8) and codes["test_log_var"].shape == (360, 8)
    assert codes["test_labels"].shape == (360,)
    report = json.loads((tmp_path / "latent.json").read_text())
    assert len(report["kl_per_dim"]) == 8 and 0 <= report["active_units"] <= 8
    assert 0.0 <= report["probe_accuracy"] <= 1.0
    assert (tmp_path / "latent.png").stat().st_size > 0
    assert json.loads(stdout[: stdout.rindex("}") + 1]) == report


def test_output_piped_into_head_ends_quietly():
    """A reader that stops early (``| head``) gets no BrokenPipeError traceback."""
    code = (
        "import sys; from pyrovae import cli; "
        "cli.COMMANDS['evaluate'] = lambda args: print('x\\n' * 10**6) or 0; "
        "sys.exit(cli.main(['evaluate', 'run']))"
    )
    result = subprocess.run(
        f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "x\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
