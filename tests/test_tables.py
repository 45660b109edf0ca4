"""Tables with mixed column types: the columns likelihood against scipy, missing cells,
type inference, refusals, training and imputation from Python and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import run_cli
from pyro import poutine
from scipy import stats

from pyrovae import VAE, Config, train
from pyrovae.data.tables import TableDataset, TableEncoding, infer_type, load_table
from pyrovae.errors import ConfigError, DataError
from pyrovae.inference.applications import impute
from pyrovae.model.columns import ColumnsLikelihood, TableInput, parse_columns

TINY = ["--num-eval-samples", "4", "--no-progress", "-q", "--num-threads", "1"]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def test_every_column_density_matches_scipy():
    """Each column's log-density, computed by scipy from the same raw decoder outputs
    (float64), within float32 rounding."""
    types = "real,real-laplace,positive,binary,categorical:3,count,count-nb"
    likelihood = ColumnsLikelihood((7,), columns=types, min_scale=0.05)
    (num_params,) = likelihood.param_shape((7,))
    assert num_params == 2 + 2 + 2 + 1 + 3 + 1 + 2
    params = torch.randn(4, num_params, generator=torch.Generator().manual_seed(1))
    x = torch.tensor(
        [
            [0.3, -1.2, 0.7, 1.0, 2.0, 3.0, 5.0],
            [-2.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0],
            [1.1, 3.0, 0.1, 1.0, 1.0, 7.0, 12.0],
            [0.0, 0.5, 1.0, 0.0, 2.0, 1.0, 2.0],
        ]
    )
    got = likelihood(params).log_prob(x).double().numpy()
    p, v = params.double().numpy(), x.double().numpy()
    s = lambda raw: 0.05 + _softplus(raw)  # noqa: E731
    want = np.stack(
        [
            stats.norm.logpdf(v[:, 0], p[:, 0], s(p[:, 1])),
            stats.laplace.logpdf(v[:, 1], p[:, 2], s(p[:, 3])),
            stats.lognorm.logpdf(v[:, 2], s(p[:, 5]), scale=np.exp(p[:, 4])),
            stats.bernoulli.logpmf(v[:, 3], 1 / (1 + np.exp(-p[:, 6]))),
            np.take_along_axis(
                p[:, 7:10] - np.log(np.exp(p[:, 7:10]).sum(1, keepdims=True)),
                v[:, 4:5].astype(int),
                1,
            )[:, 0],
            stats.poisson.logpmf(v[:, 5], np.exp(p[:, 10])),
            # torch's NegativeBinomial(r, logits) counts successes of probability sigmoid(l):
            # scipy's nbinom(n=r, p) counts failures before n successes of probability p
            stats.nbinom.logpmf(v[:, 6], np.exp(p[:, 11]), 1 / (1 + np.exp(p[:, 12]))),
        ],
        axis=1,
    )
    # float32 against float64: a few float32 ulps (1.2e-7 each) of terms of size ~10
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_missing_cells_contribute_exactly_zero_through_the_model():
    """A NaN cell has log-density 0 and leaves the other cells' alone; the model's site
    ``x`` sums the observed cells only, and the gradient stays finite."""
    vae = VAE((3,), latent_dim=2, hidden=(8,), likelihood="columns", columns="real,binary,count")
    x = torch.tensor([[0.5, 1.0, 2.0], [float("nan"), 0.0, float("nan")]])
    z = torch.randn(2, 2)
    conditioned = poutine.condition(vae.model, data={"z": z})
    trace = poutine.trace(conditioned).get_trace(x)
    trace.compute_log_prob()
    params = trace.nodes["_RETURN"]["value"]
    cells = vae.model.likelihood(params).log_prob(x)
    assert cells[1, 0].item() == 0.0 and cells[1, 2].item() == 0.0
    full = vae.model.likelihood(params).log_prob(torch.nan_to_num(x, nan=1.0))
    assert torch.equal(cells[0], full[0]) and cells[1, 1] == full[1, 1]
    assert torch.allclose(trace.nodes["x"]["log_prob"], cells.sum(-1))
    cells.sum().backward()
    grads = [p.grad for p in vae.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_obs_mask_agrees_with_nan_cells():
    """Pyro's ``obs_mask`` on the columns distribution (the model's ``mask=`` path) gives
    the observed cells the log-density that NaN for the hidden ones gives, and draws the
    hidden cells from their own families (codes in range, counts whole)."""
    vae = VAE(
        (3,), latent_dim=2, hidden=(8,), likelihood="columns", columns="real,categorical:3,count"
    )
    x = torch.tensor([[0.5, 2.0, 4.0], [1.5, 0.0, 1.0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    conditioned = poutine.condition(vae.model, data={"z": torch.randn(2, 2)})
    masked = poutine.trace(conditioned).get_trace(x, mask=mask)
    nan = poutine.trace(conditioned).get_trace(torch.where(mask, x, torch.nan))
    masked.compute_log_prob()
    nan.compute_log_prob()
    observed = masked.nodes["x_observed"]["log_prob"].sum()
    torch.testing.assert_close(observed, nan.nodes["x"]["log_prob"].sum())
    drawn = masked.nodes["x_unobserved"]["value"]
    assert drawn[0, 1] in (0.0, 1.0, 2.0) and float(drawn[1, 2]).is_integer()


def test_guide_input_one_hot_and_zero_filled():
    transform = TableInput(parse_columns("categorical:3,positive,count"))
    x = torch.tensor([[2.0, math.e, 3.0], [float("nan"), float("nan"), 0.0]])
    assert transform.num_features == 3 + 1 + 1 + 3
    got = transform(x)
    want = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0, math.log(4.0), 1.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    torch.testing.assert_close(got, want)


def _made_up_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame(
        {
            "height": a * 10 + 170,
            "temperature": a - 0.5,
            "income": np.exp(a + 8),
            "smoker": np.where(a > 0, "yes", "no"),
            "colour": rng.choice(["red", "green", "blue"], n),
            "stars": rng.integers(1, 6, n),
            "visits": rng.poisson(20, n),
            "clicks": rng.negative_binomial(1, 0.01, n),
            "member": rng.random(n) > 0.5,
        }
    )


def test_type_inference_on_a_made_up_csv(tmp_path):
    frame = _made_up_frame()
    frame.loc[3, "height"] = np.nan
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_table(tmp_path / "t.csv", test_fraction=0.25, seed=0)
    types = dict(zip(data.table.names, data.table.column_types.split(",")))
    assert types == {
        "height": "positive",
        "temperature": "real",
        "income": "positive",
        "smoker": "binary",
        "colour": "categorical:3",
        "stars": "categorical:5",
        "visits": "count",
        "clicks": "count-nb",
        "member": "binary",
    }
    assert infer_type(pd.Series([1.5, -2.0, 3.0])) == "real"
    # the training split's statistics standardise a real column
    column = data.table.columns[1]
    train_rows = data.train[:, 1].numpy() * column.std + column.mean
    assert abs(train_rows.mean() - column.mean) < 1e-4
    np.testing.assert_allclose(data.train[:, 1].std(unbiased=False), 1.0, rtol=1e-4)
    assert int(torch.isnan(torch.cat([data.train, data.test])[:, 0]).sum()) == 1


def test_categorical_mapping_round_trips():
    frame = pd.DataFrame(
        {
            "size": ["M", "S", None, "L", "S"],
            "grade": [3, 1, 2, 2, 1],
            "ok": [True, False, True, True, False],
        }
    )
    encoding = TableEncoding.fit(frame, np.arange(5), {"grade": "categorical"})
    x, _ = encoding.encode(frame)
    assert encoding.columns[0].categories == ("L", "M", "S")
    assert x[:, 0].tolist()[:2] == [1.0, 2.0] and math.isnan(x[2, 0])
    back = encoding.decode(x)
    assert back["size"].isna().tolist() == [False, False, True, False, False]
    assert back["size"].dropna().tolist() == ["M", "S", "L", "S"]
    assert back["grade"].tolist() == [3, 1, 2, 2, 1]
    assert back["ok"].tolist() == [True, False, True, True, False]


@pytest.fixture
def table_csv(tmp_path) -> Path:
    path = tmp_path / "t.csv"
    _made_up_frame(40).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--column-types", "heigth=count"], "did you mean 'height'"),
        (["--column-types", "height=cont"], "did you mean 'count'"),
        (["--column-types", "height"], "NAME=TYPE"),
        (["--column-types", "colour=real"], "holds text such as"),
        (["--column-types", "temperature=positive"], "declared positive"),
        (["--column-types", "stars=binary"], "declared binary"),
        (["--label-column", "smoke"], "did you mean 'smoker'"),
        (["--likelihood", "gaussian"], "modelled column by column"),
        (["--prior", "vamp"], "a table's rows (category codes"),
    ],
)
def test_refusals_exit_2_and_leave_no_run(table_csv, tmp_path, capsys, flags, message):
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--num-epochs", "1", *TINY]
    code, _, err = run_cli([*argv, *flags], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not workdir.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n", "no rows"),
        ("a,b\n1,\n2,\n", "only missing values"),
        (b"\xff\xfe\x00garbage\x00\x01", "cannot read"),
    ],
)
def test_bad_files_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    workdir = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", path, "--workdir", workdir, *TINY], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not workdir.exists()


def test_parquet_needs_pyarrow_or_reads(tmp_path):
    frame = _made_up_frame(20)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match=r"pyrovae\[tables\]"):
            load_table(tmp_path / "t.parquet")
        return
    frame.to_parquet(tmp_path / "t.parquet")
    assert load_table(tmp_path / "t.parquet").shape == (frame.shape[1],)


def test_columns_option_is_checked():
    with pytest.raises(ConfigError, match="did you mean 'binary'"):
        parse_columns("real,binaryy")
    with pytest.raises(ConfigError, match="number of categories"):
        parse_columns("categorical")
    with pytest.raises(ConfigError, match="2 columns"):
        ColumnsLikelihood((3,), columns="real,real")


def test_imputation_recovers_a_predictable_column():
    """``y = 2 a`` up to small noise and a category set by the sign of ``a``: their removed
    cells are imputed far better than by the column mean (mode)."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "a": a,
            "y": 2 * a + 0.1 * rng.normal(size=n),
            "b": -a + 0.1 * rng.normal(size=n),
            "sign": np.where(a > 0.3, "pos", np.where(a < -0.3, "neg", "zero")),
        }
    )
    hidden = rng.random(n) < 0.3
    incomplete = frame.copy()
    incomplete.loc[hidden, "y"] = np.nan
    incomplete.loc[hidden, "sign"] = np.nan
    encoding = TableEncoding.fit(incomplete, np.arange(n))
    x, _ = encoding.encode(incomplete)
    data = TableDataset("t", x, x[:50], None, None, table=encoding)
    config = Config.from_flags(
        likelihood="columns",
        columns=encoding.column_types,
        latent_dim=2,
        hidden=(32,),
        num_epochs=40,
        batch_size=32,
        learning_rate=3e-3,
        diagnostic_items=0,
        seed=0,
    )
    vae = VAE.from_section(config.model, data.shape)
    train(vae, data, config, progress=False)
    completed = encoding.decode(impute(vae, x, num_samples=50))
    truth = frame.loc[hidden]
    rmse = np.sqrt(np.mean((completed.loc[hidden, "y"] - truth["y"]) ** 2))
    mean_rmse = np.sqrt(np.mean((incomplete["y"].mean() - truth["y"]) ** 2))
    assert rmse < 0.35 * mean_rmse, (rmse, mean_rmse)
    errors = np.mean(completed.loc[hidden, "sign"] != truth["sign"])
    mode_errors = np.mean(incomplete["sign"].mode()[0] != truth["sign"])
    assert errors < 0.5 * mode_errors, (errors, mode_errors)
    # observed cells come back unchanged
    observed = ~hidden
    np.testing.assert_allclose(completed.loc[observed, "y"], frame.loc[observed, "y"], atol=1e-5)


def test_cli_train_impute_and_anomaly(table_csv, tmp_path, capsys):
    frame = pd.read_csv(table_csv)
    frame.loc[[1, 4], "colour"] = np.nan
    frame.loc[[2], "visits"] = np.nan
    frame.to_csv(table_csv, index=False)
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--num-epochs", "2"]
    argv += ["--column-types", "height=real", "--label-column", "member", "--hidden", "16"]
    code, _, err = run_cli([*argv, *TINY], capsys)
    assert code == 0, err
    config = (workdir / "config.toml").read_text()
    assert 'columns = "real,real,positive,binary,categorical:3,categorical:5,count' in config
    output = tmp_path / "done.csv"
    code, out, err = run_cli(["impute", workdir, table_csv, "--output", output, "-k", "4"], capsys)
    assert code == 0, err
    assert json.loads(out)["imputed_cells"] == {"colour": 2, "visits": 1}
    done = pd.read_csv(output)
    assert done["colour"].notna().all() and set(done["colour"]) <= {"red", "green", "blue"}
    assert done["visits"].notna().all() and float(done.loc[2, "visits"]).is_integer()
    pd.testing.assert_frame_equal(done.drop(index=[1, 2, 4]), frame.drop(index=[1, 2, 4]))
    scores = tmp_path / "scores.csv"
    code, out, err = run_cli(
        ["anomaly", workdir, "--data", table_csv, "-k", "4", "--output", scores], capsys
    )
    assert code == 0, err
    assert json.loads(out)["num_items"] == 40
    assert len(scores.read_text().splitlines()) == 41
    # a run folder of before table.json: the encoding is derived from the training file again
    (workdir / "table.json").unlink()
    (workdir / "table.npz").unlink()
    code, out, err = run_cli(["impute", workdir, table_csv, "--output", output, "-k", "4"], capsys)
    assert code == 0 and json.loads(out)["imputed_cells"] == {"colour": 2, "visits": 1}, err
    # a table with other columns is refused
    code, _, err = run_cli(
        ["impute", workdir, _write(tmp_path / "o.csv", frame.drop(columns="colour"))], capsys
    )
    assert code == 2 and "lacks the column 'colour'" in err


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_run_folder_is_self_contained(table_csv, tmp_path, capsys):
    """A table run keeps its encoding (table.json) and rows (table.npz): with its training
    CSV altered or deleted, impute and anomaly give exactly what they gave before; a
    corrupt table.json is one message, exit 2."""
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--num-epochs", "1"]
    code, _, err = run_cli([*argv, "--label-column", "member", "--hidden", "8", *TINY], capsys)
    assert code == 0, err
    stored = json.loads((workdir / "table.json").read_text())
    assert [c["name"] for c in stored["columns"]][:2] == ["height", "temperature"]
    assert stored["label"]["name"] == "member"
    incomplete = pd.read_csv(table_csv)
    incomplete.loc[[0, 3], "colour"] = np.nan
    incomplete.loc[[1], "height"] = np.nan
    rows = _write(tmp_path / "rows.csv", incomplete)

    def outputs() -> tuple[str, str]:
        imputed, scores = tmp_path / "imputed.csv", tmp_path / "scores.csv"
        code, _, err = run_cli(["impute", workdir, rows, "-k", "4", "--output", imputed], capsys)
        assert code == 0, err
        code, _, err = run_cli(
            ["anomaly", workdir, "--data", rows, "-k", "4", "--output", scores], capsys
        )
        assert code == 0, err
        return imputed.read_text(), scores.read_text()

    before = outputs()
    frame = pd.read_csv(table_csv)  # altered: another standardisation, another category
    frame["temperature"] *= 3
    frame.loc[0, "colour"] = "purple"
    frame.to_csv(table_csv, index=False)
    assert outputs() == before
    table_csv.unlink()
    assert outputs() == before
    (workdir / "table.npz").write_bytes(b"PK\x03\x04 a damaged zip")
    code, _, err = run_cli(["anomaly", workdir, "--data", rows, "-k", "4"], capsys)
    assert code == 2 and "table.npz is not the table rows" in err and "Traceback" not in err
    (workdir / "table.json").write_text("{not json")
    code, _, err = run_cli(["impute", workdir, rows], capsys)
    assert code == 2 and "table.json is not a table encoding" in err and "Traceback" not in err
    assert not (workdir / "imputed.csv").exists() and not (workdir / "anomaly_scores.csv").exists()


def test_table_reconstruction_errors_and_nll_match_a_hand_computation():
    """evaluate() reports per-type errors (no reconstruction_mse) and the anomaly score
    ``reconstruction`` is -log p(x_obs | z = mu(x)); both recomputed here with numpy and
    scipy from the decoder's raw outputs, missing cells left out."""
    from pyrovae.inference.applications import anomaly_scores
    from pyrovae.inference.evaluation import evaluate

    torch.manual_seed(0)
    types = "real,positive,binary,categorical:3,count"
    vae = VAE((5,), latent_dim=2, hidden=(8,), likelihood="columns", columns=types)
    rng = np.random.default_rng(0)
    n = 30
    x = np.stack(
        [
            rng.normal(size=n),
            np.exp(rng.normal(size=n)),
            rng.integers(0, 2, n),
            rng.integers(0, 3, n),
            rng.poisson(3, n),
        ],
        axis=1,
    )
    x[rng.random((n, 5)) < 0.2] = np.nan
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        p = vae.model.decoder(vae.encode(xt)[0]).double().numpy()
    s = lambda raw: 0.01 + _softplus(raw)  # noqa: E731  (min_scale 1e-2)
    logits = p[:, 5:8] - np.log(np.exp(p[:, 5:8]).sum(1, keepdims=True))
    with np.errstate(invalid="ignore"):
        log_p = np.stack(
            [
                stats.norm.logpdf(x[:, 0], p[:, 0], s(p[:, 1])),
                stats.lognorm.logpdf(x[:, 1], s(p[:, 3]), scale=np.exp(p[:, 2])),
                stats.bernoulli.logpmf(x[:, 2], 1 / (1 + np.exp(-p[:, 4]))),
                np.take_along_axis(logits, np.nan_to_num(x[:, 3:4]).astype(int), 1)[:, 0],
                stats.poisson.logpmf(x[:, 4], np.exp(p[:, 8])),
            ],
            axis=1,
        )
    seen = ~np.isnan(x)
    nll = -np.where(seen, log_p, 0.0).sum(1)
    scores = anomaly_scores(vae, xt, num_samples=2)
    # float32 network outputs against float64 densities of size ~10
    np.testing.assert_allclose(scores["reconstruction"].numpy(), nll, rtol=1e-4, atol=1e-4)

    point = [
        p[:, 0],
        np.exp(p[:, 2] + s(p[:, 3]) ** 2 / 2),  # the log-normal's mean
        p[:, 4] > 0,  # probability of 1 above 1/2
        p[:, 5:8].argmax(1),
        np.exp(p[:, 8]),
    ]

    def rmse(d: int, f=lambda v: v) -> float:
        m = seen[:, d]
        return float(np.sqrt(np.mean((f(x[m, d]) - f(point[d][m])) ** 2)))

    wrong = [(point[d][seen[:, d]] != x[seen[:, d], d]) for d in (2, 3)]
    results = evaluate(vae, xt, num_samples=2)
    assert "reconstruction_mse" not in results
    want = {
        "reconstruction_rmse_real": rmse(0),
        "reconstruction_rmse_positive_log": rmse(1, np.log),
        "reconstruction_error_rate": np.concatenate(wrong).mean(),
        "reconstruction_rmse_count": rmse(4),
        "reconstruction_nll": nll.mean(),
    }
    for key, value in want.items():
        assert results[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_cli_sample_and_evaluate_on_a_table(table_csv, tmp_path, capsys):
    """Training writes samples.csv, not image grids; ``pyrovae sample`` writes rows with
    the table's columns and labels; ``pyrovae evaluate`` reports per-type errors."""
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--num-epochs", "1"]
    code, _, err = run_cli([*argv, "--hidden", "8", *TINY], capsys)
    assert code == 0, err
    assert not (workdir / "samples.png").exists() and not (workdir / "reconstructions.png").exists()
    evaluation = json.loads((workdir / "evaluation.json").read_text())
    assert "reconstruction_mse" not in evaluation and "reconstruction_error_rate" in evaluation
    frame = pd.read_csv(table_csv)
    trained = pd.read_csv(workdir / "samples.csv")
    assert list(trained.columns) == list(frame.columns) and len(trained) == 64
    code, out, err = run_cli(["sample", workdir, "-n", "7", "--seed", "2"], capsys)
    assert code == 0, err
    rows = pd.read_csv(workdir / "samples-n7-seed2.csv")
    assert list(rows.columns) == list(frame.columns) and len(rows) == 7
    assert set(rows["colour"]) <= {"red", "green", "blue"}
    assert set(rows["smoker"]) <= {"yes", "no"}
    assert (rows["income"] > 0).all() and (rows["visits"] >= 0).all()
    assert np.array_equal(rows["visits"], np.round(rows["visits"]))
    code, out, err = run_cli(["evaluate", workdir, "-k", "4"], capsys)
    assert code == 0, err
    assert "reconstruction_rmse_real" in out and "reconstruction_mse" not in out


def test_image_commands_refuse_a_table_run(table_csv, tmp_path, capsys):
    """A table's rows are not images: the commands that draw or score images refuse a table
    run with one message and exit status 2, and leave its folder as it was (score used to
    crash in native code and leave its lock behind; traverse, interpolate, arithmetic and
    denoise drew each row as a strip of pixels)."""
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--num-epochs", "1"]
    code, _, err = run_cli([*argv, "--hidden", "8", *TINY], capsys)
    assert code == 0, err

    def state():
        return sorted((p.name, p.read_bytes()) for p in workdir.rglob("*") if p.is_file())

    before = state()
    for command in (
        ["score", workdir],
        ["inspect", workdir],
        ["traverse", workdir],
        ["interpolate", workdir, "--items", "0", "1", "--output", tmp_path / "new"],
        ["arithmetic", workdir, "--items", "0", "1", "2"],
        ["denoise", workdir],
        ["inpaint", workdir, "--mask", "random"],
    ):
        code, _, err = run_cli([*command, "--num-threads", "1"], capsys)
        assert code == 2 and "rows of a table, not images" in err, (command, err)
        assert "Traceback" not in err
        assert state() == before, command
    assert not (tmp_path / "new").exists()


def test_a_column_unobserved_in_the_training_rows_is_refused():
    """A real or positive column whose observed cells all fall in the held-out split has no
    training mean or deviation: it is refused at fit time, rather than standardised with a
    NaN mean (every cell NaN, and a table.json that no later command can read)."""
    frame = pd.DataFrame({"a": [np.nan] * 8 + [1.0, 2.5], "b": np.arange(10.0) * 0.37})
    for kind in ("real", "positive"):
        with pytest.raises(DataError, match="no values in the training rows"):
            TableEncoding.fit(frame, np.arange(8), {"a": kind})
    encoding = TableEncoding.fit(frame, np.arange(9), {"a": "real"})  # one training value
    assert math.isfinite(encoding.columns[0].mean)


def test_latent_refuses_a_run_with_one_held_out_item_and_writes_nothing(tmp_path, capsys):
    """pyrovae latent wrote latent.npz (and its folder) before the diagnostics refused a
    held-out split of one item; now it refuses first and the run folder stays as it was."""
    path = tmp_path / "small.csv"
    _made_up_frame(6).to_csv(path, index=False)
    workdir = tmp_path / "run"
    argv = ["train", "--data", path, "--workdir", workdir, "--num-epochs", "1"]
    code, _, err = run_cli([*argv, "--test-fraction", "0.1", "--hidden", "8", *TINY], capsys)
    assert code == 0, err
    before = sorted(p.name for p in workdir.rglob("*"))
    code, _, err = run_cli(["latent", workdir, "--num-threads", "1"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert sorted(p.name for p in workdir.rglob("*")) == before
    assert "at least 2 held-out items" in err


@pytest.mark.parametrize(("model", "items"), [("sentence", "sentences"), ("hvae", "images")])
def test_another_variant_on_a_table_is_refused_naming_its_items(
    model, items, table_csv, tmp_path, capsys
):
    """--model sentence on a table was refused as "for images"; it is for sentences."""
    workdir = tmp_path / "run"
    argv = ["train", "--data", table_csv, "--workdir", workdir, "--model", model, *TINY]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"--model {model} is for {items}" in err
    assert not workdir.exists() or not any(workdir.iterdir())


def test_imputation_weights_the_draws_by_their_self_normalised_importance(monkeypatch):
    """The weighting alone, against a hand computation: with K = 3 draws whose log weights
    and E[x | z_k] are set by hand, a missing real cell is sum_k w_k E[x_d | z_k] with w the
    softmax of the log weights over the draws, a binary cell is whether sum_k w_k p_k(1)
    exceeds 1/2, and a categorical cell the code with the largest summed weight. The draws
    are chosen so that equal weights (or a softmax over the rows) give other answers."""
    from pyrovae.inference.applications import imputation
    from pyrovae.inference.evaluation.weights import ImportanceWeights

    vae = VAE(
        (3,), latent_dim=2, hidden=(8,), likelihood="columns", columns="real,binary,categorical:3"
    )
    log_w = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.5, 0.1]])  # (K, N)
    mean = torch.tensor(  # (K, N, D): real, P(binary = 1), categorical mode
        [
            [[10.0, 0.9, 0.0], [-1.0, 0.7, 2.0]],
            [[1.0, 0.2, 2.0], [5.0, 0.1, 1.0]],
            [[4.0, 0.9, 0.0], [2.0, 0.1, 1.0]],
        ]
    )

    def fake(vae_, x, num_samples, mean=False):
        assert num_samples == 3 and mean
        zero = torch.zeros_like(log_w)
        return ImportanceWeights(log_w, zero, zero, zero, mean=draws)

    draws = mean
    monkeypatch.setattr(imputation, "importance_weights", fake)
    x = torch.full((2, 3), float("nan"))
    x[1, 0] = 7.0  # an observed cell comes back as it is
    out = impute(vae, x, num_samples=3)
    w = np.exp(log_w.numpy() - log_w.numpy().max(0))
    w /= w.sum(0)
    real = (w * mean[..., 0].numpy()).sum(0)
    assert out[0, 0].item() == pytest.approx(real[0], rel=1e-6)
    assert out[1, 0].item() == 7.0
    binary = (w * mean[..., 1].numpy()).sum(0) > 0.5
    assert out[:, 1].tolist() == binary.astype(float).tolist() == [0.0, 1.0]
    votes = [[w[mean[:, n, 2].numpy() == c, n].sum() for c in range(3)] for n in range(2)]
    assert out[:, 2].tolist() == [float(np.argmax(v)) for v in votes] == [2.0, 2.0]


def test_a_positive_columns_mean_maps_back_to_the_tables_units():
    """Imputed and reconstructed cells are means in the encoded units; decoded, they must be
    the means in the table's units. For x' ~ LogNormal(mu, sigma) in encoded units, the
    decoded draws' Monte Carlo mean (200 000 draws, 4 standard errors) must equal the
    decoded mean E[x'] = exp(mu + sigma^2 / 2). A power encoding x' = (x e^-m)^(1/s) fails
    this by the factor exp(-(s^2 - s) sigma^2 / 2) (0.78 here, with s = 2)."""
    from pyrovae.data.tables import TableColumn

    encoding = TableEncoding((TableColumn("income", "positive", (), 1.3, 2.0),), None)
    mu, sigma = 0.2, 0.5
    torch.manual_seed(0)
    family = torch.distributions.LogNormal(torch.tensor(mu), torch.tensor(sigma))
    draws = family.sample((200_000, 1)).double()
    decoded = encoding.decode(draws)["income"].to_numpy(np.float64)
    mean = torch.tensor([[math.exp(mu + sigma**2 / 2)]], dtype=torch.float64)
    expected = float(encoding.decode(mean)["income"].iloc[0])
    se = decoded.std() / math.sqrt(len(decoded))
    assert abs(decoded.mean() - expected) < 4 * se
    # and encoding inverts decoding
    frame = pd.DataFrame({"income": [0.5, 3.0, 40.0]})
    x, _ = encoding.encode(frame)
    assert np.allclose(encoding.decode(x)["income"].to_numpy(np.float64), frame["income"])
