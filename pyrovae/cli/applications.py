"""``pyrovae augment | anomaly | interpolate | traverse | arithmetic | inpaint | impute |
denoise``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pyrovae.cli.common import (
    load_items,
    load_run,
    output_file,
    output_folder,
    run_parser,
)
from pyrovae.errors import ConfigError
from pyrovae.inference.sites import require


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Subcommands of the applications: augment, ..."""
    from pyrovae.inference.applications.anomaly import SCORES
    from pyrovae.inference.applications.inpainting import CORRUPTIONS, MASKS
    from pyrovae.variants.cvae import DRAWS

    def on_run(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return run_parser(sub, common, name, help=help, description=description)

    augment = on_run(
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
        parser = on_run(name, help, description)
        parser.add_argument(
            "--data", help="take the items from this .npy/.npz file (default: the held-out split)"
        )
        parser.add_argument("--output", type=Path, help="output folder (default: the run folder)")
        return parser

    interpolate = items_parser(
        "interpolate",
        "decode the path between two items' latent means",
        "Linear (or spherical, --slerp) interpolation between the posterior means of two "
        "items; writes interpolation.png and interpolation.npy. For a sentence run, the "
        "items may be two sentences given after RUN (Bowman et al.'s homotopies): the "
        "decoded (greedy) sentences are printed and written to interpolation.txt.",
    )
    interpolate.add_argument(
        "sentences", nargs="*", metavar="SENTENCE", help="two sentences (a sentence run)"
    )
    interpolate.add_argument("--items", type=int, nargs=2, metavar=("I", "J"), help="item indices")
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

    impute = on_run(
        "impute",
        "fill in a table's missing cells from the posterior",
        "Read a CSV/Parquet table with the columns of the run's training table, impute its "
        "empty cells from the posterior (importance sampling; the most probable category for "
        "categorical columns) and write the completed table as CSV with the original labels.",
    )
    impute.add_argument("table", type=Path, help="the .csv or .parquet table to complete")
    impute.add_argument(
        "--output", type=Path, help="the .csv file to write (default: RUN/imputed.csv)"
    )
    impute.add_argument(
        "-k", "--num-samples", type=int, default=100, help="importance samples (100)"
    )

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

    anomaly = on_run(
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


def _load_conditional(args: argparse.Namespace, what: str):
    import pyro

    vae, config, _ = load_run(args)
    if not vae.needs_labels:
        raise ConfigError(
            f"{what} needs a run of a model with labels (--model cvae or m2); {args.run} is a "
            f"plain {config.model['variant']['name']}"
        )
    pyro.set_rng_seed(args.seed)
    return vae, config


def _cmd_augment(args: argparse.Namespace) -> int:
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {args.per_class}")
    output = output_file(args.output, ".npz")
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

    from pyrovae import plots
    from pyrovae.inference.applications import anomaly
    from pyrovae.inference.evaluation import columns_likelihood
    from pyrovae.run import load_data, save_figure

    matplotlib.use("Agg")
    if args.num_samples < 1 or args.batch_size < 1 or args.reference_size < 1:
        raise ConfigError("-k/--num-samples, --batch-size and --reference-size must be >= 1")
    if not 0.0 <= args.percentile <= 100.0:
        raise ConfigError(f"--percentile must be in [0, 100], got {args.percentile}")
    output = args.output or (args.run if args.run.is_dir() else args.run.parent) / (
        "anomaly_scores.csv"
    )
    output = output_file(output, ".csv")
    vae, config, _ = load_run(args)
    if columns_likelihood(vae) is None:  # a table's rows are scored as rows
        require(vae, "images", "pyrovae anomaly (it scores pixel files and pixel errors)")
    pyro.set_rng_seed(args.seed)
    data = load_data(config, vae.device, args.run)
    sources = []
    if args.data:
        x, y = load_items(args.data, config, args.run)
    else:
        x, y = data.test, data.test_labels
    sources += [args.data or "held-out"] * len(x)
    is_anomaly = None
    if args.labels:
        is_anomaly = torch.as_tensor(_load_flags(args.labels, len(x)))
    elif args.anomalous:
        xa, ya = load_items(args.anomalous, config, args.run)
        vae.validate_data(xa, f"the --anomalous items ({args.anomalous})")
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
    save_figure(plots.score_histograms(scores, is_anomaly, thresholds), figure)
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


def _run_items(args: argparse.Namespace, images: bool = True):
    """The run's VAE, its data, the items to work on (--data, or the held-out split) and the
    output folder; a run whose items are not images is refused first (without ``images``,
    a sentence run is let through)."""
    import pyro

    from pyrovae.run import load_data

    vae, config, _ = load_run(args)
    if images or not vae.reads_text:
        require(vae, "images", f"pyrovae {args.command}")
    pyro.set_rng_seed(args.seed)
    data = load_data(config, vae.device, args.run)
    x = load_items(args.data, config, args.run)[0].to(vae.device) if args.data else data.test
    out = args.output or (args.run if args.run.is_dir() else args.run.parent)
    output_folder(out)
    return vae, data, x, out


def _latent_items(args: argparse.Namespace, indices: Sequence[int]):
    """The run's VAE, the chosen items and the output folder."""
    vae, _, x, out = _run_items(args)
    return vae, _pick(x, indices), out


def _pick(x, indices: Sequence[int]):
    """The items of ``x`` at ``indices``, each checked."""
    bad = [i for i in indices if not -len(x) <= i < len(x)]
    if bad:
        raise ConfigError(f"item index {bad[0]} is out of range: there are {len(x)} items")
    return x[list(indices)]


def _save_images(images, out: Path, name: str, figure) -> None:
    import matplotlib

    from pyrovae.run import save_figure

    matplotlib.use("Agg")
    np.save(out / f"{name}.npy", images.cpu().numpy())
    save_figure(figure, out / f"{name}.png")
    print(f"wrote {out / (name + '.png')} and {out / (name + '.npy')} ({tuple(images.shape)})")


def _cmd_interpolate(args: argparse.Namespace) -> int:
    import torch

    from pyrovae import plots
    from pyrovae.inference.applications import latent_ops

    if bool(args.sentences) == (args.items is not None) or len(args.sentences) not in (0, 2):
        raise ConfigError("give the two items to interpolate: --items I J, or two sentences")
    vae, data, x, out = _run_items(args, images=False)
    method = "slerp" if args.slerp else "lerp"
    if vae.reads_text:
        return _homotopy(args, vae, data.vocabulary, x, out, method)
    if args.sentences:
        raise ConfigError("sentences are items of a sentence run (--model sentence); give --items")
    x = _pick(x, args.items)
    path = latent_ops.interpolate(vae, x[0], x[1], args.steps, method)
    rows = torch.cat([x[:1], path, x[1:]])[None]  # input, decoded path, input
    title = f"{method}: item {args.items[0]}, decoded path, item {args.items[1]}"
    _save_images(path, out, "interpolation", plots.image_rows(rows, title))
    return 0


def _homotopy(args: argparse.Namespace, vae, vocabulary, x, out: Path, method: str) -> int:
    """Bowman et al.'s homotopy: the greedy sentences decoded along the path between the
    posterior means of two sentences (given, or held-out items), printed and written to
    ``interpolation.txt``."""
    from pyrovae.inference.applications import latent_ops
    from pyrovae.runfolder import write_text

    if args.sentences:
        x = vocabulary.tensor(args.sentences, vae.event_shape[0] - 1).to(vae.device)
    else:
        x = _pick(x, args.items)
    path = latent_ops.interpolate(vae, x[0], x[1], args.steps, method)
    lines = [f"{method} between the posterior means of:"]
    lines += [f"  > {vocabulary.decode(ends)}" for ends in x]
    lines += [f"{step:3d}  {vocabulary.decode(tokens)}" for step, tokens in enumerate(path)]
    text = "\n".join(lines) + "\n"
    write_text(out / "interpolation.txt", text)
    print(text + f"wrote {out / 'interpolation.txt'}", end="\n")
    return 0


def _cmd_traverse(args: argparse.Namespace) -> int:
    from pyrovae import plots
    from pyrovae.inference.applications import latent_ops

    vae, x, out = _latent_items(args, [args.item])
    grid = latent_ops.traverse(vae, x[0], args.dims, args.span, args.steps)
    dims = args.dims or list(range(vae.latent_dim))
    title = f"item {args.item}: rows vary z{dims} over [-{args.span}, {args.span}]"
    _save_images(grid, out, "traversal", plots.image_rows(grid, title))
    return 0


def _cmd_arithmetic(args: argparse.Namespace) -> int:
    import torch

    from pyrovae import plots
    from pyrovae.inference.applications import latent_ops

    vae, x, out = _latent_items(args, args.items)
    result = latent_ops.latent_arithmetic(vae, x[0], x[1], x[2])
    a, b, c = args.items
    figure = plots.image_rows(
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


def _cmd_inpaint(args: argparse.Namespace) -> int:
    import torch

    from pyrovae import plots
    from pyrovae.inference.applications import inpainting

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
    figure = plots.image_rows(
        [shown, completed[:n], x[:n]],
        f"{args.mask}: masked (grey), inpainted, truth",
    )
    _save_images(completed, out, "inpainting", figure)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    from pyrovae import plots
    from pyrovae.inference.applications import inpainting

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
    figure = plots.image_rows(
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


def _cmd_impute(args: argparse.Namespace) -> int:
    import pyro

    from pyrovae.cli.common import table_encoding
    from pyrovae.data.tables import is_table, read_table
    from pyrovae.inference.applications import impute

    if args.num_samples < 1:
        raise ConfigError("-k/--num-samples must be >= 1")
    if not is_table(args.table):
        raise ConfigError(f"{args.table} is not a table; give a .csv or .parquet file")
    output = args.output or (args.run if args.run.is_dir() else args.run.parent) / "imputed.csv"
    output = output_file(output, ".csv")
    vae, config, _ = load_run(args)
    pyro.set_rng_seed(args.seed)
    encoding = table_encoding(config, args.run)
    frame = read_table(args.table)
    x, _ = encoding.encode(frame, args.table.name, labels=False)
    completed = encoding.decode(impute(vae, x, num_samples=args.num_samples))
    missing = frame[encoding.names].isna()
    filled = frame.copy()
    for name in encoding.names:  # observed cells stay exactly as they were read
        filled[name] = frame[name].astype(object).where(~missing[name], completed[name])
    filled.to_csv(output, index=False)
    summary = {
        "rows": len(frame),
        "imputed_cells": {n: int(c) for n, c in missing.sum().items() if c},
        "num_samples": args.num_samples,
        "output": str(output),
    }
    print(json.dumps(summary, indent=2))
    return 0


COMMANDS = {
    "augment": _cmd_augment,
    "anomaly": _cmd_anomaly,
    "interpolate": _cmd_interpolate,
    "traverse": _cmd_traverse,
    "arithmetic": _cmd_arithmetic,
    "inpaint": _cmd_inpaint,
    "impute": _cmd_impute,
    "denoise": _cmd_denoise,
}
