"""The command line: ``pyrovae train | evaluate | sample | inspect | graph | latent``.

A thin layer over the library: it parses flags into a :class:`~pyrovae.config.Config`
(explicit flags override ``--config FILE``), calls :func:`pyrovae.fit` and friends,
and turns every :class:`~pyrovae.errors.PyroVAEError` into one message on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyrovae.config import Config, field_type, from_dict, load_config
from pyrovae.errors import ConfigError, PyroVAEError
from pyrovae.graph import FORMATS as GRAPH_FORMATS
from pyrovae.inference.latent import EMBEDDINGS

__all__ = ["main"]

logger = logging.getLogger("pyrovae")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults are SUPPRESSed so only explicit flags override."""
    group = parser.add_argument_group("run configuration (also keys of --config FILE)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f)
        default = f.default
        kwargs: dict = {
            "default": argparse.SUPPRESS,
            "dest": f.name,
            "help": f"{f.metadata['help']} (default: {default})",
        }
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = list(f.metadata["choices"])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kwargs.update(type=int, nargs="+", metavar="N")
        else:
            kwargs["type"] = kind
        group.add_argument(flag, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae", description="Variational autoencoders as Pyro programs."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train a VAE and write a run folder",
        description="Train a VAE with SVI and write a run folder.",
    )
    train.add_argument(
        "--workdir",
        default="runs/default",
        type=Path,
        help="the run folder (default: runs/default)",
    )
    train.add_argument("--config", type=Path, help="TOML file with config keys")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --workdir where it stopped"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_config_flags(train)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="held-out ELBO and IWAE log-likelihood of a run",
        description="Evaluate a trained run on its held-out data.",
    )
    evaluate.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
    evaluate.add_argument(
        "-k",
        "--num-samples",
        type=int,
        default=1000,
        help="importance samples K for the IWAE log p(x) (default: 1000)",
    )
    evaluate.add_argument(
        "--data", help="evaluate on every item of this .npy/.npz file instead of the test set"
    )
    evaluate.add_argument("--batch-size", type=int, default=500, help="data points per batch")
    evaluate.add_argument(
        "--num-items",
        type=int,
        help="evaluate only the first N items (of the test set or --data; default: all)",
    )
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the importance samples")

    sample = sub.add_parser(
        "sample",
        parents=[common],
        help="generate from the prior of a trained run",
        description="Draw z from the prior and decode: PNG grid and .npy.",
    )
    sample.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
    sample.add_argument("-n", "--num-samples", type=int, default=64, help="how many (default 64)")
    sample.add_argument("--output", type=Path, help="output folder (default: the run folder)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sample.add_argument(
        "--label",
        type=int,
        help="generate this class (runs of --model cvae or m2); default: the classes in turn",
    )

    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="posterior draws as ArviZ data; NUTS gold standard; inference gaps",
        description=(
            "Draw from the guide q(z|x) for chosen inputs into ArviZ InferenceData (NetCDF), "
            "print arviz.summary and save ArviZ plots; optionally sample the exact posterior "
            "p(z|x) with NUTS and compare, and estimate the approximation and amortization "
            "gaps of Cremer et al. (2018) on held-out data."
        ),
    )
    inspect.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
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
    inspect.add_argument("--seed", type=int, default=0)
    inspect.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    inspect.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")

    graph = sub.add_parser(
        "graph",
        parents=[common],
        help="draw the model and the guide as graphical models (needs graphviz)",
        description="Draw the model and the guide with pyro.render_model.",
    )
    graph.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
    graph.add_argument("--format", default="svg", choices=GRAPH_FORMATS, help="svg (default)")
    graph.add_argument("--output", type=Path, help="output folder (default: the run folder)")
    graph.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    latent = sub.add_parser(
        "latent",
        parents=[common],
        help="encode the data set; 2-D scatter, KL per dim, active units, linear probe",
        description=(
            "Encode the run's train and held-out data to posterior means and log-variances "
            "(latent.npz), draw a 2-D scatter of the held-out means coloured by label, and "
            "report KL per dimension, active units, mutual information and the accuracy of "
            "a linear probe (latent.json)."
        ),
    )
    latent.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
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
        "--threshold", type=float, default=0.01, help="active-unit threshold (0.01, Burda et al.)"
    )
    latent.add_argument(
        "--probe-max-train",
        type=int,
        default=10000,
        help="fit the linear probe on at most this many train items (a seeded sample; 10000)",
    )
    latent.add_argument("--output", type=Path, help="output folder (default: RUN/latent)")
    latent.add_argument("--batch-size", type=int, default=500, help="data points per batch")
    latent.add_argument("--seed", type=int, default=0)
    latent.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    latent.add_argument("--num-threads", type=int, help="torch CPU threads (default: torch's)")
    _add_application_parsers(sub, common)
    return parser


def _add_application_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser):
    """Subcommands of the applications: augment, ..."""
    from pyrovae.inference.anomaly import SCORES
    from pyrovae.inference.inpainting import CORRUPTIONS, MASKS
    from pyrovae.models import DRAWS

    def run_parser(name: str, help: str, description: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[common], help=help, description=description)
        parser.add_argument("run", type=Path, help="run folder (or its checkpoint.pt)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        return parser

    augment = run_parser(
        "augment",
        "write a labelled synthetic data set from a conditional run",
        "Class-conditional generation for data augmentation: draw z ~ p(z) and decode it "
        "with every label; writes an .npz with x and y (load it with --data).",
    )
    augment.add_argument(
        "--per-class", type=int, required=True, help="items per class", metavar="N"
    )
    augment.add_argument("--output", type=Path, required=True, help="the .npz file to write")

    def items_parser(name: str, help: str, description: str) -> argparse.ArgumentParser:
        parser = run_parser(name, help, description)
        parser.add_argument(
            "--data", help="take the items from this .npy/.npz file (default: the held-out split)"
        )
        parser.add_argument("--output", type=Path, help="output folder (default: the run folder)")
        return parser

    interpolate = items_parser(
        "interpolate",
        "decode the path between two items' latent means",
        "Linear (or spherical, --slerp) interpolation between the posterior means of two "
        "items; writes interpolation.png and interpolation.npy.",
    )
    interpolate.add_argument(
        "--items", type=int, nargs=2, required=True, metavar=("I", "J"), help="item indices"
    )
    interpolate.add_argument("--slerp", action="store_true", help="spherical interpolation")
    interpolate.add_argument("--steps", type=int, default=10, help="points on the path (10)")

    traverse = items_parser(
        "traverse",
        "vary each latent dimension around an item",
        "Decode the item's posterior mean with one latent coordinate at a time swept over "
        "[-span, span]; one row per dimension; writes traversal.png and traversal.npy.",
    )
    traverse.add_argument("--item", type=int, default=0, help="item index (default 0)")
    traverse.add_argument("--dims", type=int, nargs="+", help="latent dimensions (default: all)")
    traverse.add_argument("--span", type=float, default=3.0, help="sweep -span..span (3)")
    traverse.add_argument("--steps", type=int, default=9, help="values per dimension (9)")

    arithmetic = items_parser(
        "arithmetic",
        "decode mu(a) - mu(b) + mu(c)",
        "Latent arithmetic on posterior means: decode mu(a) - mu(b) + mu(c); writes "
        "arithmetic.png (a, b, c, result).",
    )
    arithmetic.add_argument(
        "--items", type=int, nargs=3, required=True, metavar=("A", "B", "C"), help="indices"
    )

    inpaint = items_parser(
        "inpaint",
        "fill in missing pixels from the posterior (masked likelihood)",
        "Hide pixels of the held-out items (or --data), condition on the observed ones only "
        "and fill in the missing ones by importance sampling; prints the error on the missing "
        "pixels next to the mean-image baseline; writes inpainting.png and inpainting.npy.",
    )
    inpaint.add_argument("--mask", choices=MASKS.names(), default="center", help="(center)")
    inpaint.add_argument(
        "--fraction", type=float, default=0.5, help="missing share for --mask random (0.5)"
    )
    inpaint.add_argument(
        "-k", "--num-samples", type=int, default=100, help="importance samples (100)"
    )
    inpaint.add_argument("--rounds", type=int, default=3, help="importance-sampling rounds (3)")
    inpaint.add_argument("--show", type=int, default=8, help="items in the figure (8)")

    denoise = items_parser(
        "denoise",
        "reconstruct corrupted items",
        "Corrupt the held-out items (or --data) and reconstruct them; prints the error of the "
        "corrupted and of the denoised items; writes denoising.png and denoising.npy.",
    )
    denoise.add_argument("--noise", choices=CORRUPTIONS.names(), default="flip", help="(flip)")
    denoise.add_argument(
        "--level", type=float, default=0.1, help="flip probability or Gaussian sd (0.1)"
    )
    denoise.add_argument("--show", type=int, default=8, help="items in the figure (8)")

    anomaly = run_parser(
        "anomaly",
        "score items as anomalies (negative ELBO, IWAE NLL, reconstruction error, KL)",
        "Score every item (higher = more anomalous), flag those above a percentile of the "
        "training items' scores, write a CSV and a histogram figure. With --labels or "
        "--anomalous, also report ROC-AUC and average precision of every score.",
    )
    anomaly.add_argument(
        "--data", help="the .npy/.npz items to score (default: the run's held-out split)"
    )
    group = anomaly.add_mutually_exclusive_group()
    group.add_argument(
        "--labels", help=".npy of 0 (normal) / 1 (anomalous), one per --data item: evaluation"
    )
    group.add_argument(
        "--anomalous", help=".npy/.npz of known anomalies, scored after --data: evaluation"
    )
    anomaly.add_argument(
        "--score", choices=SCORES, default="neg-elbo", help="the score to threshold"
    )
    anomaly.add_argument(
        "--percentile",
        type=float,
        default=99.0,
        help="threshold = this percentile of the training items' scores (default 99)",
    )
    anomaly.add_argument(
        "-k", "--num-samples", type=int, default=100, help="guide samples per item (default 100)"
    )
    anomaly.add_argument(
        "--reference-size",
        type=int,
        default=5000,
        help="training items scored for the threshold (the first N; default 5000)",
    )
    anomaly.add_argument("--batch-size", type=int, default=500, help="items per batch")
    anomaly.add_argument(
        "--output",
        type=Path,
        help="the CSV to write (default: RUN/anomaly_scores.csv); the figure gets its stem",
    )
    augment.add_argument(
        "--draw",
        choices=DRAWS,
        default="mean",
        help="mean: decoded means E[x|z,y]; sample: x ~ p(x|z,y), e.g. binary (default: mean)",
    )


def _config_from_args(args: argparse.Namespace) -> Config:
    names = {f.name for f in dataclasses.fields(Config)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    if "hidden" in flags:
        flags["hidden"] = tuple(flags["hidden"])
    config_file = args.config
    if args.resume and not (args.workdir / "checkpoint.pt").exists():
        raise PyroVAEError(
            f"there is no run to resume in {args.workdir}; drop --resume to start one"
        )
    if config_file is None and args.resume:
        config_file = args.workdir / "config.toml"
    if config_file is not None:
        return load_config(config_file, **flags)
    return from_dict(flags)


def _cmd_train(args: argparse.Namespace) -> int:
    from pyrovae.run import fit

    config = _config_from_args(args)
    try:
        result = fit(
            config, args.workdir, resume=args.resume, progress=False if args.no_progress else None
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the last finished epoch is saved. Continue with:\n  pyrovae train "
            f"--workdir {args.workdir} --resume",
            file=sys.stderr,
        )
        return 130
    last = result.history[-1] if result.history else {}
    print(
        json.dumps(
            {"workdir": str(args.workdir), **last, "evaluation": result.evaluation}, indent=2
        )
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pyro

    from pyrovae.inference.evaluation import evaluate
    from pyrovae.run import load_data, load_run

    if args.num_samples < 1 or args.batch_size < 1:
        raise ConfigError("-k/--num-samples and --batch-size must be >= 1")
    if args.num_items is not None and args.num_items < 1:
        raise ConfigError(f"--num-items must be >= 1, got {args.num_items}")
    vae, config, _ = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    if args.data:
        x, y = _load_items(args.data, config)
    else:
        data = load_data(config, vae.device)
        x, y = data.test, data.test_labels
    if args.num_items is not None:
        x = x[: args.num_items]
        y = None if y is None else y[: args.num_items]
    x = x.to(vae.device)
    vae.validate_data(x, "evaluation data")
    labels = {}
    if vae.requires_y:
        vae.validate_labels(y, len(x), f"the labels of {args.data or 'the test set'}")
        labels = {"y": y.to(vae.device)}
    results = evaluate(vae, x, args.num_samples, args.batch_size, **labels)
    if y is not None:
        results.update(vae.metrics(x, y.to(vae.device)))
    if args.run.is_dir() and not args.data and args.num_items is None:
        (args.run / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


def _load_items(path: str | Path, config: Config):
    """Every item of a .npy/.npz file (and its labels, if it has them), as a run scores them."""
    import torch

    from pyrovae.data import load_dataset

    # a dynamic binarization is drawn once, as for a test set
    binarize = "static" if config.binarize == "dynamic" else config.binarize
    data = load_dataset(path=path, binarize=binarize, seed=config.seed)
    x = torch.cat([data.train, data.test])
    y = None
    if data.train_labels is not None and data.test_labels is not None:
        y = torch.cat([data.train_labels, data.test_labels])
    return x, y


def _cmd_sample(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro

    from pyrovae import plots
    from pyrovae.run import load_run, save_figure

    matplotlib.use("Agg")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    vae, config, _ = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    if vae.needs_labels:
        samples = vae.sample(args.num_samples, y=args.label).cpu()
    elif args.label is not None:
        raise ConfigError(
            f"--label needs a run of a model with labels (--model cvae or m2); {args.run} is a "
            f"plain {config.model}: drop --label"
        )
    else:
        samples = vae.sample(args.num_samples).cpu()
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples.numpy())
    title, nrow = "samples from the prior", 8
    if vae.needs_labels:  # the classes in turn (one per column), or the requested one
        title, nrow = (
            (f"samples of class {args.label}", 8)
            if args.label is not None
            else ("samples, one class per column", vae.num_classes)
        )
    save_figure(plots.image_grid(samples, nrow=nrow, title=title), out / "samples.png")
    print(f"wrote {out / 'samples.png'} and {out / 'samples.npy'} ({tuple(samples.shape)})")
    return 0


def _load_conditional(args: argparse.Namespace, what: str):
    import pyro

    from pyrovae.run import load_run

    vae, config, _ = load_run(args.run, args.device)
    if not vae.needs_labels:
        raise ConfigError(
            f"{what} needs a run of a model with labels (--model cvae or m2); {args.run} is a "
            f"plain {config.model}"
        )
    pyro.set_rng_seed(args.seed)
    return vae, config


def _output_file(path: Path, suffix: str) -> Path:
    if path.suffix != suffix:
        raise ConfigError(f"--output {path} must end in {suffix}")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a {suffix} file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _cmd_augment(args: argparse.Namespace) -> int:
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {args.per_class}")
    output = _output_file(args.output, ".npz")
    vae, _ = _load_conditional(args, "augment")
    x, y = vae.generate(args.per_class, draw=args.draw)
    np.savez_compressed(output, x=x.cpu().numpy(), y=y.cpu().numpy())
    print(f"wrote {output}: x {tuple(x.shape)} and y ({len(y)} labels, {vae.num_classes} classes)")
    return 0


def _cmd_anomaly(args: argparse.Namespace) -> int:
    import csv

    import matplotlib
    import pyro
    import torch

    from pyrovae.inference import anomaly
    from pyrovae.run import load_data, load_run, save_figure

    matplotlib.use("Agg")
    if args.num_samples < 1 or args.batch_size < 1 or args.reference_size < 1:
        raise ConfigError("-k/--num-samples, --batch-size and --reference-size must be >= 1")
    if not 0.0 <= args.percentile <= 100.0:
        raise ConfigError(f"--percentile must be in [0, 100], got {args.percentile}")
    output = args.output or (args.run if args.run.is_dir() else args.run.parent) / (
        "anomaly_scores.csv"
    )
    output = _output_file(output, ".csv")
    vae, config, _ = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    data = load_data(config, vae.device)
    sources = []
    if args.data:
        x, y = _load_items(args.data, config)
    else:
        x, y = data.test, data.test_labels
    sources += [args.data or "held-out"] * len(x)
    is_anomaly = None
    if args.labels:
        is_anomaly = torch.as_tensor(_load_flags(args.labels, len(x)))
    elif args.anomalous:
        xa, ya = _load_items(args.anomalous, config)
        is_anomaly = torch.cat([torch.zeros(len(x)), torch.ones(len(xa))])
        x = torch.cat([x.to(vae.device), xa.to(vae.device)])
        y = None if y is None or ya is None else torch.cat([y.to(ya.device), ya])
        sources += [args.anomalous] * len(xa)
    x = x.to(vae.device)
    vae.validate_data(x, "the items to score")
    labels: dict = {}
    reference_labels: dict = {}
    reference = data.train[: args.reference_size]
    if vae.requires_y:
        vae.validate_labels(y, len(x), "the class labels of the items to score")
        labels = {"y": y.to(vae.device)}
        reference_labels = {"y": data.train_labels[: args.reference_size]}
    options = {"num_samples": args.num_samples, "batch_size": args.batch_size}
    scores = anomaly.anomaly_scores(vae, x, **options, **labels)
    reference_scores = anomaly.anomaly_scores(vae, reference, **options, **reference_labels)
    thresholds = {
        name: anomaly.threshold(values, args.percentile)
        for name, values in reference_scores.items()
    }
    flagged = scores[args.score] > thresholds[args.score]
    with output.open("w", newline="") as file:
        writer = csv.writer(file)
        names = list(scores)
        writer.writerow(
            [
                "item",
                "source",
                *(["anomalous"] if is_anomaly is not None else []),
                *names,
                f"flagged_by_{args.score}",
            ]
        )
        for i in range(len(x)):
            known = [int(is_anomaly[i])] if is_anomaly is not None else []
            values = [f"{float(scores[n][i]):.6g}" for n in names]
            writer.writerow([i, sources[i], *known, *values, int(flagged[i])])
    figure = output.with_suffix(".png")
    save_figure(anomaly.score_histograms(scores, is_anomaly, thresholds), figure)
    summary = {
        "score": args.score,
        "percentile": args.percentile,
        "threshold": thresholds[args.score],
        "num_items": len(x),
        "num_flagged": int(flagged.sum()),
        "reference_items": len(reference),
        "num_samples": args.num_samples,
        "csv": str(output),
        "figure": str(figure),
    }
    if is_anomaly is not None:
        summary["detection"] = anomaly.detection_metrics(scores, is_anomaly)
    print(json.dumps(summary, indent=2))
    return 0


def _run_items(args: argparse.Namespace):
    """The run's VAE, its data, the items to work on (--data, or the held-out split) and the
    output folder."""
    import pyro

    from pyrovae.run import load_data, load_run

    vae, config, _ = load_run(args.run, args.device)
    pyro.set_rng_seed(args.seed)
    data = load_data(config, vae.device)
    x = _load_items(args.data, config)[0].to(vae.device) if args.data else data.test
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    return vae, data, x, out


def _latent_items(args: argparse.Namespace, indices: Sequence[int]):
    """The run's VAE, the chosen items and the output folder."""
    vae, _, x, out = _run_items(args)
    bad = [i for i in indices if not -len(x) <= i < len(x)]
    if bad:
        raise ConfigError(f"item index {bad[0]} is out of range: there are {len(x)} items")
    return vae, x[list(indices)], out


def _save_images(images, out: Path, name: str, figure) -> None:
    import matplotlib

    from pyrovae.run import save_figure

    matplotlib.use("Agg")
    np.save(out / f"{name}.npy", images.cpu().numpy())
    save_figure(figure, out / f"{name}.png")
    print(f"wrote {out / (name + '.png')} and {out / (name + '.npy')} ({tuple(images.shape)})")


def _cmd_interpolate(args: argparse.Namespace) -> int:
    import torch

    from pyrovae.inference import latent_ops

    vae, x, out = _latent_items(args, args.items)
    method = "slerp" if args.slerp else "lerp"
    path = latent_ops.interpolate(vae, x[0], x[1], args.steps, method)
    rows = torch.cat([x[:1], path, x[1:]])[None]  # input, decoded path, input
    title = f"{method}: item {args.items[0]}, decoded path, item {args.items[1]}"
    _save_images(path, out, "interpolation", latent_ops.path_figure(rows, title))
    return 0


def _cmd_traverse(args: argparse.Namespace) -> int:
    from pyrovae.inference import latent_ops

    vae, x, out = _latent_items(args, [args.item])
    grid = latent_ops.traverse(vae, x[0], args.dims, args.span, args.steps)
    dims = args.dims or list(range(vae.latent_dim))
    title = f"item {args.item}: rows vary z{dims} over [-{args.span}, {args.span}]"
    _save_images(grid, out, "traversal", latent_ops.path_figure(grid, title))
    return 0


def _cmd_arithmetic(args: argparse.Namespace) -> int:
    import torch

    from pyrovae.inference import latent_ops

    vae, x, out = _latent_items(args, args.items)
    result = latent_ops.latent_arithmetic(vae, x[0], x[1], x[2])
    a, b, c = args.items
    figure = latent_ops.path_figure(
        torch.cat([x, result[None]])[None], f"mu({a}) - mu({b}) + mu({c}): a, b, c, result"
    )
    _save_images(result[None], out, "arithmetic", figure)
    return 0


def _all_items(args: argparse.Namespace):
    """The run's VAE, its mean training image, every item and the output folder."""
    if args.show < 1:
        raise ConfigError(f"--show must be >= 1, got {args.show}")
    vae, data, x, out = _run_items(args)
    return vae, data.train.mean(0), x, out


def _rows_figure(rows, title: str):
    import torch

    from pyrovae import plots

    return plots.image_grid(torch.cat(rows), nrow=len(rows[0]), title=title)


def _cmd_inpaint(args: argparse.Namespace) -> int:
    import torch

    from pyrovae.inference import inpainting

    if args.num_samples < 1 or args.rounds < 1:
        raise ConfigError("-k/--num-samples and --rounds must be >= 1")
    vae, mean, x, out = _all_items(args)
    mask = inpainting.make_mask(args.mask, len(x), x.shape[1:], args.fraction, args.seed)
    mask = mask.to(x.device)
    completed = inpainting.inpaint(
        vae, x, mask, fill=mean, num_samples=args.num_samples, rounds=args.rounds
    )
    filled = torch.where(mask, x, mean)
    missing = ~mask

    def error(estimate: torch.Tensor) -> float:
        return float((estimate - x).pow(2)[missing].mean())

    results = {
        "mask": args.mask,
        "num_items": len(x),
        "missing_fraction": float(missing.float().mean()),
        "num_samples": args.num_samples,
        "rounds": args.rounds,
        "mse_on_missing_pixels": {
            "inpainting": error(completed),
            "mean_image": error(filled),
            "reconstruct_mean_filled": error(torch.where(mask, x, vae.reconstruct(filled))),
        },
    }
    n = min(args.show, len(x))
    shown = torch.where(mask[:n], x[:n], torch.full_like(x[:n], 0.5))
    figure = _rows_figure(
        [shown, completed[:n], x[:n]],
        f"{args.mask}: masked (grey), inpainted, truth",
    )
    _save_images(completed, out, "inpainting", figure)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    from pyrovae.inference import inpainting

    vae, _, x, out = _all_items(args)
    noisy = inpainting.corrupt(x, args.noise, args.level, args.seed)
    clean = inpainting.denoise(vae, noisy)
    results = {
        "noise": args.noise,
        "level": args.level,
        "num_items": len(x),
        "mse": {
            "corrupted": float((noisy - x).pow(2).mean()),
            "denoised": float((clean - x).pow(2).mean()),
            "reconstruction_of_clean": float((vae.reconstruct(x) - x).pow(2).mean()),
        },
    }
    n = min(args.show, len(x))
    figure = _rows_figure(
        [x[:n], noisy[:n], clean[:n]], f"{args.noise} {args.level}: clean, noisy, denoised"
    )
    _save_images(clean, out, "denoising", figure)
    print(json.dumps(results, indent=2))
    return 0


def _load_flags(path: str, num_items: int) -> np.ndarray:
    from pyrovae.errors import DataError

    try:
        flags = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read --labels {path}: {e}; save 0/1 flags with numpy.save"
        ) from None
    if not isinstance(flags, np.ndarray) or flags.shape != (num_items,):
        raise DataError(
            f"--labels {path} must hold one 0/1 flag per item ({num_items}), got shape "
            f"{getattr(flags, 'shape', None)}"
        )
    if not np.isin(flags, (0, 1)).all():
        raise DataError(f"--labels {path} must hold 0 (normal) and 1 (anomalous) only")
    return flags.astype(np.int64)


def _set_threads(num_threads: int | None) -> None:
    import torch

    if num_threads is not None:
        if num_threads < 1:
            raise ConfigError(f"--num-threads must be >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)


def _output_folder(args: argparse.Namespace, default: str | None) -> Path:
    run_dir = args.run if args.run.is_dir() else args.run.parent
    out = args.output or (run_dir / default if default else run_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _inspect_inputs(args: argparse.Namespace, vae, config, heldout) -> tuple:
    """The inputs to inspect and their indices: held-out items, or rows of --data."""
    from pyrovae.data import load_items

    if args.data:
        binarize = "static" if config.binarize == "dynamic" else config.binarize
        pool, where = load_items(args.data, binarize=binarize, seed=config.seed), args.data
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
            f"{config.model}, whose guide also reads the label y"
        )


def _cmd_inspect(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro
    import torch

    from pyrovae import plots
    from pyrovae.inference.gaps import inference_gaps
    from pyrovae.inference.mcmc import max_r_hat, nuts_posterior
    from pyrovae.inference.posterior import (
        compare_posteriors,
        posterior_draws,
        posterior_summary,
        save_inference_data,
    )
    from pyrovae.run import load_data, load_run, save_figure

    matplotlib.use("Agg")
    _set_threads(args.num_threads)
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
    vae, config, _ = load_run(args.run, args.device)
    _refuse_labelled(vae, config, "inspect", "needs_labels")
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
            test.append(load_data(config, vae.device).test)
        return test[0]

    x, items = _inspect_inputs(args, vae, config, heldout)
    out = _output_folder(args, "inspect")
    pyro.set_rng_seed(args.seed)
    written = []

    q = posterior_draws(vae, x, args.num_samples, items=items)
    written.append(save_inference_data(q, out / "posterior.nc"))
    print(f"q(z|x): {args.num_samples} draws per input\n{posterior_summary(q).to_string()}\n")
    q_scale = q.constant_data["q_scale"].values
    dims = args.dims or sorted(np.argsort(q_scale.mean(0))[: min(4, vae.latent_dim)].tolist())
    forest_dims = None if vae.latent_dim <= 16 else dims  # every dim while the plot stays legible
    figures = {
        "posterior.png": lambda: plots.posterior_densities(q, dims=dims),
        "forest.png": lambda: plots.posterior_forest({"q(z|x)": q}, dims=forest_dims),
        "predictive.png": lambda: plots.posterior_predictive_grid(q),
    }
    if len(dims) >= 2:
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
        if not r_hat < 1.01:  # Vehtari et al. (2021); NaN when a chain never moved
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
    from pyrovae.run import load_data, load_run

    require_graphviz()  # before loading anything
    vae, config, _ = load_run(args.run, args.device)
    x = load_data(config, vae.device).test[:2]
    paths = save_graphs(vae, x, _output_folder(args, None), args.format)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _cmd_latent(args: argparse.Namespace) -> int:
    import matplotlib
    import pyro

    from pyrovae import plots
    from pyrovae.inference.latent import embed, encode_dataset, latent_report, save_codes
    from pyrovae.run import load_data, load_run, save_figure

    matplotlib.use("Agg")
    _set_threads(args.num_threads)
    if args.max_points < 2 or args.batch_size < 1 or args.probe_max_train < 2:
        raise ConfigError("--max-points and --probe-max-train must be >= 2, --batch-size >= 1")
    vae, config, _ = load_run(args.run, args.device)
    _refuse_labelled(vae, config, "latent", "requires_y")
    data = load_data(config, vae.device)
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


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "augment": _cmd_augment,
    "anomaly": _cmd_anomaly,
    "interpolate": _cmd_interpolate,
    "traverse": _cmd_traverse,
    "arithmetic": _cmd_arithmetic,
    "inpaint": _cmd_inpaint,
    "denoise": _cmd_denoise,
    "inspect": _cmd_inspect,
    "graph": _cmd_graph,
    "latent": _cmd_latent,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for a user error, with one message)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(message)s", level=logging.WARNING if args.quiet else logging.INFO
        )
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            return COMMANDS[args.command](args)
    except PyroVAEError as e:
        print(f"pyrovae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npyrovae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output stopped (e.g. `| head`): end quietly, as shell tools do;
        # stdout goes to devnull so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
