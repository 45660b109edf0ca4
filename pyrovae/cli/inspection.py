"""``pyrovae inspect | graph | latent | disentanglement``: posteriors, the graphical model,
the latent space and how it lines up with ground-truth factors."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from pyrovae.cli.common import load_run, output_folder, output_name, run_parser
from pyrovae.config import Config
from pyrovae.errors import ConfigError, DataError
from pyrovae.graph import FORMATS as GRAPH_FORMATS
from pyrovae.inference.evaluation.metrics import ACTIVE_THRESHOLD
from pyrovae.inference.inspection.latent import EMBEDDINGS

#: disentanglement_lib's training and test points of every metric
DEFAULT_POINTS = (10_000, 5_000)
#: the most values a traversal row may sweep
MAX_TRAVERSAL_STEPS = 101

logger = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The subcommands inspect, graph, latent and disentanglement."""
    inspect = run_parser(
        sub,
        common,
        "inspect",
        help="posterior draws as ArviZ data; NUTS gold standard; inference gaps",
        description=(
            "Draw from the guide q(z|x) for chosen inputs into ArviZ InferenceData (NetCDF), "
            "print arviz.summary and save ArviZ plots; optionally sample the exact posterior "
            "p(z|x) with NUTS and compare, and estimate the approximation and amortization "
            "gaps of Cremer et al. (2018) on held-out data."
        ),
    )
    inspect.add_argument(
        "--items",
        type=int,
        nargs="+",
        default=None,
        metavar="I",
        help="indices of the inputs: into the held-out set, or rows of --data (default: 0 1 2)",
    )
    inspect.add_argument("--data", help="take the inputs from this .npy/.npz file (file order)")
    inspect.add_argument(
        "-s", "--num-samples", type=int, default=1000, help="draws of q(z|x) per input (1000)"
    )
    inspect.add_argument(
        "--dims",
        type=int,
        nargs="+",
        metavar="D",
        help="latent dims to plot (default: up to 4 with the narrowest q(z|x))",
    )
    inspect.add_argument(
        "--nuts", action="store_true", help="also sample p(z|x) with NUTS and compare with q"
    )
    inspect.add_argument("--num-chains", type=int, default=4, help="NUTS chains (4)")
    inspect.add_argument("--num-warmup", type=int, default=500, help="NUTS warmup steps (500)")
    inspect.add_argument(
        "--num-mcmc-samples", type=int, default=500, help="NUTS draws per chain (500)"
    )
    inspect.add_argument(
        "--gaps",
        action="store_true",
        help="estimate log p(x), the optimized and amortized ELBOs and their gaps",
    )
    inspect.add_argument(
        "--num-gap-items",
        type=int,
        default=100,
        help="held-out items (a seeded random sample) for --gaps (100)",
    )
    inspect.add_argument(
        "-k", type=int, default=1000, help="importance samples K for --gaps (1000)"
    )
    inspect.add_argument(
        "--gap-steps", type=int, default=1000, help="Adam steps of the per-item guide (1000)"
    )
    inspect.add_argument("--output", type=Path, help="output folder (default: RUN/inspect)")

    graph = run_parser(
        sub,
        common,
        "graph",
        seed=False,
        help="draw the model and the guide as graphical models (needs graphviz)",
        description="Draw the model and the guide with pyro.render_model.",
    )
    graph.add_argument("--format", default="svg", choices=GRAPH_FORMATS, help="svg (default)")
    graph.add_argument("--output", type=Path, help="output folder (default: the run folder)")

    latent = run_parser(
        sub,
        common,
        "latent",
        help="encode the data set; 2-D scatter, KL per dim, active units, linear probe",
        description=(
            "Encode the run's train and held-out data to posterior means and log-variances "
            "(latent.npz), draw a 2-D scatter of the held-out means coloured by label, and "
            "report KL per dimension, active units, mutual information and the accuracy of "
            "a linear probe (latent.json)."
        ),
    )
    latent.add_argument(
        "--embedding",
        nargs="+",
        default=["pca", "tsne"],
        choices=EMBEDDINGS.names(),
        help="2-D embeddings of latents with more than 2 dims (default: pca tsne)",
    )
    latent.add_argument(
        "--max-points",
        type=int,
        default=2000,
        help="held-out points in the scatter (a seeded random sample; default 2000)",
    )
    latent.add_argument(
        "--threshold",
        type=float,
        default=ACTIVE_THRESHOLD,
        help=f"active-unit threshold ({ACTIVE_THRESHOLD}, Burda et al.)",
    )
    latent.add_argument(
        "--probe-max-train",
        type=int,
        default=10000,
        help="fit the linear probe on at most this many train items (a seeded sample; 10000)",
    )
    latent.add_argument("--output", type=Path, help="output folder (default: RUN/latent)")
    latent.add_argument("--batch-size", type=int, default=500, help="data points per batch")

    from pyrovae.inference.evaluation.disentanglement import DCI_CLASSIFIERS, METRICS

    disentanglement = run_parser(
        sub,
        common,
        "disentanglement",
        help="MIG, FactorVAE and beta-VAE scores, DCI, SAP; a traversal per latent dim",
        description=(
            "Score the posterior means of a run on data with factor labels (--dataset "
            "dsprites or dsprites-small, whose factor space is rendered exactly, or an .npz "
            "with factors, drawn by lookup): MIG, the FactorVAE and beta-VAE scores, DCI and "
            "SAP with disentanglement_lib's settings. Writes RUN/disentanglement.json (every "
            "score, the settings, the mutual information of each latent dim with each factor, "
            "the factor each dim is most informative about and whether it is active) and "
            "RUN/traversals.png (one row per latent dim, labelled with that factor); "
            "-seed<S> and -last (--checkpoint last) are added to the names."
        ),
    )
    disentanglement.add_argument(
        "--metrics",
        type=_metric_list,
        default=list(METRICS),
        metavar="M,...",
        help=f"the metrics to compute, comma-separated (default: {','.join(METRICS)})",
    )
    disentanglement.add_argument(
        "--num-points",
        type=int,
        default=DEFAULT_POINTS[0],
        help="training points of every metric (default 10000, as disentanglement_lib)",
    )
    disentanglement.add_argument(
        "--num-test-points",
        type=int,
        default=DEFAULT_POINTS[1],
        help="test (evaluation) points of every metric (default 5000, as disentanglement_lib)",
    )
    disentanglement.add_argument(
        "--dci-classifier",
        choices=list(DCI_CLASSIFIERS),
        default="gbt",
        help="gbt: GradientBoostingClassifier, disentanglement_lib's (minutes); forest: a "
        "random forest, many times faster (default: gbt)",
    )
    disentanglement.add_argument(
        "--span", type=float, default=2.5, help="traversals sweep -span..span (default 2.5)"
    )
    disentanglement.add_argument(
        "--steps", type=int, default=9, help="values per traversal (default 9, at most 101)"
    )


def _metric_list(text: str) -> list[str]:
    """``--metrics mig,dci``: known metric names (argparse reports an unknown one)."""
    from pyrovae.inference.evaluation.disentanglement import METRICS
    from pyrovae.registry import closest

    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in METRICS:
            raise argparse.ArgumentTypeError(
                f"unknown metric {name!r}{closest(name, METRICS)}; choose from {','.join(METRICS)}"
            )
    if not names:
        raise argparse.ArgumentTypeError("give at least one metric")
    return names


def _output_folder(args: argparse.Namespace, default: str | None) -> Path:
    run_dir = args.run if args.run.is_dir() else args.run.parent
    out = args.output or (run_dir / default if default else run_dir)
    output_folder(out)
    return out


def _inspect_inputs(args: argparse.Namespace, vae, config, heldout) -> tuple:
    """The inputs to inspect and their indices: held-out items, or rows of --data."""
    from pyrovae.data import load_items

    if args.data:
        binarize = "static" if config.data["binarize"] == "dynamic" else config.data["binarize"]
        pool, where = load_items(args.data, binarize=binarize, seed=config.run["seed"]), args.data
    else:
        pool, where = heldout(), "the held-out set"
    items = args.items if args.items is not None else list(range(min(3, len(pool))))
    bad = [i for i in items if not 0 <= i < len(pool)]
    if bad:
        raise ConfigError(
            f"--items {' '.join(map(str, bad))} out of range: {where} has {len(pool)} items "
            f"(indices 0 to {len(pool) - 1})"
        )
    if len(set(items)) != len(items):
        raise ConfigError(f"--items repeats an index: {' '.join(map(str, items))}")
    x = pool[items].to(vae.device)
    vae.validate_data(x, "inputs to inspect")
    return x, items


def _refuse_labelled(vae, config: Config, command: str, attribute: str) -> None:
    """``inspect`` and ``latent`` analyse the guide q(z|x) of a plain VAE."""
    if getattr(vae, attribute):
        raise ConfigError(
            f"pyrovae {command} analyses q(z|x) of a plain VAE; this run's model is "
            f"{config.model['variant']['name']}, whose guide also reads the label y"
        )


def _cmd_inspect(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro
    import torch

    from pyrovae import plots
    from pyrovae.inference.inspection.gaps import inference_gaps
    from pyrovae.inference.inspection.mcmc import max_r_hat, nuts_posterior
    from pyrovae.inference.inspection.posterior import (
        compare_posteriors,
        guide_moments,
        posterior_draws,
        posterior_summary,
        save_inference_data,
    )
    from pyrovae.inference.sites import latent_sites, require, require_single_latent
    from pyrovae.run import load_data, save_figure

    matplotlib.use("Agg")
    checks = {"-s/--num-samples": args.num_samples, "-k": args.k}
    if args.nuts:
        checks.update(
            {"--num-chains": args.num_chains, "--num-mcmc-samples": args.num_mcmc_samples}
        )
    if args.gaps:
        checks["--num-gap-items"] = args.num_gap_items
    bad = [f"{k} must be >= 1, got {v}" for k, v in checks.items() if v < 1]
    if args.num_warmup < 0 or args.gap_steps < 0:
        bad.append("--num-warmup and --gap-steps must be >= 0")
    if bad:
        raise ConfigError("; ".join(bad))
    vae, config, _ = load_run(args)
    _refuse_labelled(vae, config, "inspect", "needs_labels")
    require(vae, "posterior", "posterior inspection")  # before the output folder is made
    require(vae, "images", "posterior inspection (its predictive groups hold E[x | z] per pixel)")
    # refused before anything is drawn or written
    if args.nuts:
        require(vae, "likelihood", "NUTS on p(z | x)")
    if args.gaps:
        require(vae, "likelihood", "the gap decomposition")
    several = len(latent_sites(vae)) > 1
    if several and (args.nuts or args.gaps or args.dims is not None):
        # the export has one variable per site; the figures, NUTS and the gaps read one
        require_single_latent(vae, "pyrovae inspect --nuts, --gaps or --dims")
    if args.dims is not None:
        bad_dims = [d for d in args.dims if not 0 <= d < vae.latent_dim]
        if bad_dims:
            raise ConfigError(
                f"--dims {' '.join(map(str, bad_dims))} out of range: the latent has "
                f"{vae.latent_dim} dims (0 to {vae.latent_dim - 1})"
            )
    test = []

    def heldout() -> torch.Tensor:  # the run's held-out set, loaded once when needed
        if not test:
            test.append(load_data(config, vae.device, args.run).test)
        return test[0]

    x, items = _inspect_inputs(args, vae, config, heldout)
    out = _output_folder(args, "inspect")
    pyro.set_rng_seed(args.seed)
    written = []

    q = posterior_draws(vae, x, args.num_samples, items=items)
    written.append(save_inference_data(q, out / "posterior.nc"))
    print(f"q(z|x): {args.num_samples} draws per input\n{posterior_summary(q).to_string()}\n")
    figures = {"predictive.png": lambda: plots.posterior_predictive_grid(q)}
    if not several:  # the density plots of one site's dims
        q_scale = guide_moments(q)[1]
        dims = args.dims or sorted(np.argsort(q_scale.mean(0))[: min(4, vae.latent_dim)].tolist())
        forest_dims = None if vae.latent_dim <= 16 else dims  # every dim while legible
        figures["posterior.png"] = lambda: plots.posterior_densities(q, dims=dims)
        figures["forest.png"] = lambda: plots.posterior_forest({"q(z|x)": q}, dims=forest_dims)
    if not several and len(dims) >= 2:
        figures["pair.png"] = lambda: plots.posterior_pair(q, item=items[0], dims=dims)

    if args.nuts:
        nuts = nuts_posterior(
            vae,
            x,
            num_samples=args.num_mcmc_samples,
            num_warmup=args.num_warmup,
            num_chains=args.num_chains,
            items=items,
        )
        written.append(save_inference_data(nuts, out / "nuts.nc"))
        table = compare_posteriors(q, nuts)
        table.to_csv(out / "comparison.csv")
        written.append(out / "comparison.csv")
        divergent = int(nuts.sample_stats["diverging"].sum())
        nuts_summary = posterior_summary(nuts)
        print(
            f"NUTS p(z|x): {args.num_chains} chains x {args.num_mcmc_samples} draws, "
            f"{divergent} divergent\n{nuts_summary.to_string()}\n"
        )
        print(
            "q(z|x) vs NUTS p(z|x) (overlap: Bhattacharyya coefficient of Gaussian fits)\n"
            f"{table.round(3).to_string()}\n"
        )
        r_hat = max_r_hat(nuts)
        if args.num_chains < 2:
            logger.warning(
                "one NUTS chain: its mixing cannot be checked (r_hat compares chains); "
                "use --num-chains 2 or more"
            )
        elif not r_hat < 1.01:  # Vehtari et al. (2021); NaN when a chain never moved
            logger.warning(
                "NUTS chains have not mixed (largest r_hat %.4g, above 1.01 or undefined): "
                "the reference is not trustworthy; raise --num-warmup and --num-mcmc-samples",
                r_hat,
            )
        if divergent:
            logger.warning(
                "NUTS had %d divergent transitions: treat the reference with care", divergent
            )
        figures["comparison.png"] = lambda: plots.posterior_comparison(q, nuts, dims=dims)
        figures["forest_nuts.png"] = lambda: plots.posterior_forest(
            {"q(z|x)": q, "NUTS p(z|x)": nuts}, dims=dims
        )

    for name, make in figures.items():
        save_figure(make(), out / name)
        written.append(out / name)

    if args.gaps:
        test = heldout()
        generator = torch.Generator().manual_seed(args.seed)
        index = torch.randperm(len(test), generator=generator)[: args.num_gap_items].sort().values
        gaps = inference_gaps(vae, test[index.to(test.device)], args.k, num_steps=args.gap_steps)
        result = {
            **gaps.summary(),
            "gap_steps": args.gap_steps,
            "items": index.tolist(),
            "per_item": {
                name: getattr(gaps, name).tolist()
                for name in ("log_likelihood", "elbo_optimized", "elbo_amortized")
            },
        }
        (out / "gaps.json").write_text(json.dumps(result, indent=2) + "\n")
        written.append(out / "gaps.json")
        summary = {k: v for k, v in result.items() if k not in ("items", "per_item")}
        print(f"gaps in nats per data point:\n{json.dumps(summary, indent=2)}\n")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from pyrovae.graph import require_graphviz, save_graphs
    from pyrovae.run import load_data

    require_graphviz()  # before loading anything
    vae, config, _ = load_run(args)
    x = load_data(config, vae.device, args.run).test[:2]
    paths = save_graphs(vae, x, _output_folder(args, None), args.format)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _cmd_latent(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro

    from pyrovae import plots
    from pyrovae.inference.inspection.latent import embed, encode_dataset, latent_report, save_codes
    from pyrovae.inference.sites import require
    from pyrovae.run import load_data, save_figure

    matplotlib.use("Agg")
    if args.max_points < 2 or args.batch_size < 1 or args.probe_max_train < 2:
        raise ConfigError("--max-points and --probe-max-train must be >= 2, --batch-size >= 1")
    vae, config, _ = load_run(args)
    _refuse_labelled(vae, config, "latent", "requires_y")
    require(vae, "posterior", "encoding a data set")  # before the output folder is made
    data = load_data(config, vae.device, args.run)
    if len(data.test) < 2:  # the diagnostics' variances need two; refused before any file
        raise DataError(
            f"pyrovae latent needs at least 2 held-out items for its diagnostics; the run has "
            f"{len(data.test)} (more data, or a larger --test-fraction at training)"
        )
    out = _output_folder(args, "latent")
    pyro.set_rng_seed(args.seed)  # the mutual information estimate draws z ~ q(z|x)
    codes = encode_dataset(vae, data, args.batch_size)
    save_codes(codes, out / "latent.npz")
    report = latent_report(
        vae,
        data,
        codes,
        threshold=args.threshold,
        batch_size=args.batch_size,
        max_probe_train=args.probe_max_train,
        seed=args.seed,
    )
    rng = np.random.default_rng(args.seed)
    loc = codes["test_loc"]
    shown = np.sort(rng.permutation(len(loc))[: args.max_points])
    labels = codes.get("test_labels")
    embeddings = embed(loc[shown], args.embedding, seed=args.seed)
    save_figure(
        plots.latent_scatter(embeddings, None if labels is None else labels[shown]),
        out / "latent.png",
    )
    (out / "latent.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out / 'latent.npz'}, {out / 'latent.png'}, {out / 'latent.json'}")
    return 0


def _cmd_disentanglement(args: argparse.Namespace) -> int:
    import matplotlib

    from pyrovae import plots
    from pyrovae.inference.evaluation.disentanglement import (
        METRICS,
        evaluate_disentanglement,
        factor_traversals,
    )
    from pyrovae.inference.sites import require
    from pyrovae.run import factor_sampler, save_figure
    from pyrovae.runfolder import write_json

    matplotlib.use("Agg")
    if args.num_points < 2 or args.num_test_points < 2:
        raise ConfigError("--num-points and --num-test-points must be >= 2")
    if not 2 <= args.steps <= MAX_TRAVERSAL_STEPS or not 0 < args.span < math.inf:
        raise ConfigError(
            f"--steps must lie in 2..{MAX_TRAVERSAL_STEPS} and --span be a finite number > 0"
        )
    vae, config, _ = load_run(args)
    require(vae, "posterior", "the disentanglement metrics")  # before the data are read
    sampler = factor_sampler(config, vae.device)  # data without factors: refused here
    binarize = config.data["binarize"]
    report = evaluate_disentanglement(
        vae,
        sampler,
        metrics=args.metrics,
        num_points=args.num_points,
        num_test_points=args.num_test_points,
        dci_classifier=args.dci_classifier,
        seed=args.seed,
        binarize=binarize,
    )
    grid, base = factor_traversals(
        vae, sampler, report, span=args.span, steps=args.steps, seed=args.seed, binarize=binarize
    )
    values = np.linspace(-args.span, args.span, args.steps)
    named = ", ".join(f"{n}={int(v)}" for n, v in zip(report.factor_names, base))
    figure = plots.traversal_rows(
        grid,
        [report.dim_label(row) for row in report.dims()],
        values.tolist(),
        f"latent traversals of an item ({named}); rows: dim, its factor (normalised MI)",
    )
    folder = args.run if args.run.is_dir() else args.run.parent
    result = {
        "checkpoint": args.checkpoint,
        **report.to_dict(),
        "traversal": {"base_factors": base.tolist(), "values": values.tolist()},
    }
    # settings other than the defaults name the outputs, so a partial score never replaces
    # a full one
    named = {
        "metrics": "+".join(args.metrics) if tuple(args.metrics) != METRICS else None,
        "p": args.num_points if args.num_points != DEFAULT_POINTS[0] else None,
        "t": args.num_test_points if args.num_test_points != DEFAULT_POINTS[1] else None,
        "dci": args.dci_classifier if args.dci_classifier != "gbt" else None,
    }
    json_path = folder / (output_name("disentanglement", args, **named) + ".json")
    figure_path = folder / (output_name("traversals", args, **named) + ".png")
    write_json(result, json_path)
    save_figure(figure, figure_path)
    print(_report_table(report))
    print(f"wrote {json_path} and {figure_path}")
    return 0


def _report_table(report) -> str:
    """The scores with their seconds, then each latent dim's factor."""
    lines = [f"{'metric':<22}{'score':>8}"]
    lines += [f"{name:<22}{value:>8.3f}" for name, value in report.scores.items()]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    lines.append(f"{'dim':<6}{'std':>8}  {'factor':<14}{'normalised MI':>14}")
    for row in report.dims():
        factor = row["factor"] if row["active"] else "(inactive)"
        mi = row["normalized_mi"]
        lines.append(f"z{row['dim']:<5}{row['std']:>8.3f}  {factor:<14}{mi:>14.3f}")
    return "\n".join(lines)


COMMANDS = {
    "inspect": _cmd_inspect,
    "graph": _cmd_graph,
    "latent": _cmd_latent,
    "disentanglement": _cmd_disentanglement,
}
