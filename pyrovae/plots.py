"""Figures. Every function returns a :class:`matplotlib.figure.Figure` and never shows it;
the CLI saves them as PNG."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = [
    "as_images",
    "elbo_curves",
    "image_grid",
    "image_rows",
    "latent_scatter",
    "posterior_comparison",
    "posterior_densities",
    "posterior_forest",
    "posterior_pair",
    "posterior_predictive_grid",
    "reconstructions",
    "score_histograms",
    "side_by_side",
    "traversal_rows",
]


def as_images(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images in [0, 1], C in {1, 3}.

    ``(N, H, W)`` items are greyscale images, other channel counts are shown channel by
    channel, and any other shape as one-row strips of its flattened values.
    """
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() == 4 and x.shape[1] not in (1, 3):
        x = x.reshape(-1, 1, *x.shape[2:])
    elif x.dim() != 4:
        x = x.reshape(len(x), 1, 1, -1)
    return x.clamp(0, 1)


def image_grid(
    images: torch.Tensor, *, nrow: int = 8, title: str | None = None, scale: float = 0.6
) -> Figure:
    """A grid of images (``torchvision.utils.make_grid``) as a figure."""
    images = as_images(images)
    from torchvision.utils import make_grid  # torchvision's import takes ~2 s; only here

    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    height, width = grid.shape[1:]
    fig = Figure(figsize=(max(2.0, width * scale / 10), max(2.0, height * scale / 10)))
    ax = fig.add_subplot()
    ax.imshow(
        grid.permute(1, 2, 0).squeeze(-1).numpy(),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def side_by_side(
    panels: Mapping[str, torch.Tensor],
    *,
    nrow: int = 8,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """Grids of images next to each other, one per entry of ``panels`` (its key the panel's
    title), e.g. the samples of several models; ``ncols`` panels per row (default: all)."""
    from torchvision.utils import make_grid

    grids = [
        make_grid(as_images(images), nrow=nrow, padding=1, pad_value=1.0)
        for images in panels.values()
    ]
    ncols = min(ncols or len(grids), len(grids))
    nrows = math.ceil(len(grids) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.8 * nrows + (0.3 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axes[len(grids) :]:
        ax.axis("off")
    for ax, name, grid in zip(axes, panels, grids):
        ax.imshow(
            grid.permute(1, 2, 0).squeeze(-1).numpy(),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_rows(rows: torch.Tensor | Sequence[torch.Tensor], title: str) -> Figure:
    """Rows of images of equal length: a tensor ``(R, S, *event)`` or ``R`` tensors
    ``(S, *event)`` (decoded paths, traversals, masked / inpainted / true items)."""
    rows = torch.stack(list(rows)) if not isinstance(rows, torch.Tensor) else rows
    return image_grid(rows.flatten(0, 1), nrow=rows.shape[1], title=title)


def traversal_rows(
    rows: torch.Tensor, row_labels: Sequence[str], values: Sequence[float], title: str
) -> Figure:
    """Traversals ``(R, S, *event)`` as :func:`image_rows`, each row labelled on the left
    (e.g. the code dimension and the factor it holds) and each column with its value."""
    fig = image_rows(rows, title)
    ax = fig.axes[0]
    ax.axis("on")
    height, width = as_images(rows[0, :1]).shape[-2:]
    # make_grid puts a 1-pixel border before every cell
    ax.set_yticks([1 + r * (height + 1) + height / 2 for r in range(len(row_labels))])
    ax.set_yticklabels(row_labels, fontsize=9)
    ax.set_xticks([1 + c * (width + 1) + width / 2 for c in range(len(values))])
    ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    return fig


def reconstructions(inputs: torch.Tensor, recons: torch.Tensor, *, nrow: int = 8) -> Figure:
    """Inputs (odd rows) directly above their reconstructions (even rows)."""
    inputs, recons = as_images(inputs), as_images(recons)
    rows = [
        t for i in range(0, len(inputs), nrow) for t in (inputs[i : i + nrow], recons[i : i + nrow])
    ]
    return image_grid(torch.cat(rows), nrow=nrow, title="inputs (odd rows) and reconstructions")


def elbo_curves(history: Sequence[dict[str, Any]], best: int | None = None) -> Figure:
    """Train and held-out ELBO (nats per data point) against the epoch: the validation
    ELBO, with its best epoch starred, for a run with a validation split. ``best`` is the
    epoch the run kept (``best.pt``), chosen on the variant's monitor, which need not be
    the ELBO (the M2 model's accuracy); by default the best validation ELBO's.

    A variant without an ELBO of the data shows the bound it has instead: the training
    objective and its held-out ``test_<name>_elbo`` (the VAE-GAN's ``test_feature_elbo``),
    or no held-out curve when it evaluates none."""
    from pyrovae.inference.training.trainer import best_epoch

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    first = history[0] if history else {}
    split = "validation" if any(k.startswith("validation_") for k in first) else "test"
    bounds = [k for k in first if k.startswith(f"{split}_") and k.endswith("elbo")]
    heldout = f"{split}_elbo" if f"{split}_elbo" in first else next(iter(bounds), None)
    plain = heldout in (None, f"{split}_elbo")
    if plain:
        train = [
            math.nan if row.get("train_elbo") is None else row["train_elbo"] for row in history
        ]
        ax.plot(epochs, train, label="train (running average)")
    else:
        ax.plot(epochs, [row["train_objective"] for row in history], label="train objective")
    if heldout is not None:
        name = "validation" if split == "validation" else "held-out"
        label = name if plain else f"{name} ({heldout[len(split) + 1 :]})"
        values = [row.get(heldout, math.nan) for row in history]
        ax.plot(epochs, values, label=label)
        if best is None and split == "validation":
            best = best_epoch(history, heldout)
        if best is not None and split == "validation":
            ax.plot(best, values[best - 1], "k*", label=f"best (epoch {best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point)" if plain else "nats per data point")
    ax.grid(alpha=0.3)
    # a fixed place: matplotlib warns when its search for the best one takes over a
    # second, which a loaded machine reaches (and the tests turn warnings into errors)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# --- posteriors and the latent space -----------------------------------------------------


@contextlib.contextmanager
def _arviz_plotting() -> Iterator[Any]:
    """ArviZ, with its matplotlib >= 3.11 deprecation warning silenced (ArviZ 0.23 passes a
    dict to ``normalize_kwargs``; nothing a pyrovae user can act on)."""
    from pyrovae.inference.inspection.posterior import import_arviz

    az = import_arviz()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        yield az


def _arviz_figure(axes: Any) -> Figure:
    """The Figure of ArviZ's axes, detached from pyplot's registry (ArviZ draws with pyplot)."""
    import matplotlib.pyplot as plt

    fig = np.ravel(axes)[0].figure
    plt.close(fig)
    return fig


def _coords(items: Sequence[int] | None, dims: Sequence[int] | None) -> dict[str, list[int]]:
    coords = {}
    if items is not None:
        coords["item"] = list(items)
    if dims is not None:
        coords["latent_dim"] = list(dims)
    return coords


def posterior_densities(
    idata: Any, *, items: Sequence[int] | None = None, dims: Sequence[int] | None = None
) -> Figure:
    """``arviz.plot_posterior`` of ``z``: a density with its 94% HDI per item (rows) and
    latent dim (columns)."""
    z = idata.posterior["z"]
    items = list(z["item"].values) if items is None else list(items)
    dims = list(z["latent_dim"].values) if dims is None else list(dims)
    with _arviz_plotting() as az:
        axes = az.plot_posterior(
            idata,
            var_names=["z"],
            coords={"item": items, "latent_dim": dims},
            grid=(len(items), len(dims)),
            figsize=(3.2 * len(dims), 2.8 * len(items)),
            textsize=9,
        )
    return _arviz_figure(axes)


def posterior_forest(
    posteriors: dict[str, Any],
    *,
    items: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
) -> Figure:
    """``arviz.plot_forest`` of ``z`` across inputs: 94% HDI bars of one or more posteriors
    (e.g. ``{"q(z|x)": q, "NUTS": nuts}``) per item and latent dim."""
    names, datas = list(posteriors), list(posteriors.values())
    with _arviz_plotting() as az:
        axes = az.plot_forest(
            datas,
            model_names=names if len(datas) > 1 else None,
            var_names=["z"],
            coords=_coords(items, dims),
            combined=True,
            textsize=8,
        )
    return _arviz_figure(axes)


def posterior_pair(idata: Any, *, item: int, dims: Sequence[int]) -> Figure:
    """``arviz.plot_pair`` of the selected latent dims of one item (scatter and marginals)."""
    if len(dims) < 2:
        raise ValueError("a pair plot needs at least two latent dims")
    with _arviz_plotting() as az:
        axes = az.plot_pair(
            idata,
            var_names=["z"],
            coords={"item": [item], "latent_dim": list(dims)},
            marginals=True,
            scatter_kwargs={"alpha": 0.3, "s": 6},
            figsize=(2.6 * len(dims), 2.6 * len(dims)),
            textsize=9,
        )
    return _arviz_figure(axes)


def posterior_comparison(
    approximate: Any,
    reference: Any,
    *,
    items: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    labels: tuple[str, str] = ("q(z|x)", "NUTS p(z|x)"),
) -> Figure:
    """1-D marginals: a histogram of the reference draws (NUTS) under the guide's Gaussian
    density, one panel per item (rows) and latent dim (columns)."""
    from scipy.stats import norm

    from pyrovae.inference.inspection.posterior import guide_moments

    mean_q, sd_q = guide_moments(approximate)
    z = reference.posterior["z"]
    item_coords = list(z["item"].values)
    items = item_coords if items is None else list(items)
    dims = list(z["latent_dim"].values) if dims is None else list(dims)
    fig = Figure(figsize=(2.2 * len(dims), 1.8 * len(items)))
    axes = fig.subplots(len(items), len(dims), squeeze=False)
    for r, item in enumerate(items):
        i = item_coords.index(item)
        for c, d in enumerate(dims):
            ax = axes[r, c]
            draws = z.sel(item=item, latent_dim=d).values.ravel()
            ax.hist(draws, bins=40, density=True, color="0.7", label=labels[1])
            lo = min(draws.min(), mean_q[i, d] - 4 * sd_q[i, d])
            hi = max(draws.max(), mean_q[i, d] + 4 * sd_q[i, d])
            grid = np.linspace(lo, hi, 200)
            ax.plot(grid, norm.pdf(grid, mean_q[i, d], sd_q[i, d]), color="C0", label=labels[0])
            ax.set_yticks([])
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"z[{d}]", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"item {item}", fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("posterior marginals: guide (line) vs NUTS (histogram)", fontsize=10)
    fig.tight_layout()
    return fig


def posterior_predictive_grid(idata: Any, *, num_draws: int = 7) -> Figure:
    """Each input (first column) followed by the decoded means :math:`E[x \\mid z]` of
    ``num_draws`` posterior draws :math:`z \\sim q(z \\mid x)`, one row per item."""
    observed = torch.as_tensor(idata.observed_data["x"].values)
    decoded = idata.posterior_predictive["x_mean"].values[0]  # (draw, item, ...)
    num_draws = min(num_draws, decoded.shape[0])
    rows = [
        torch.cat([observed[i : i + 1], torch.as_tensor(decoded[:num_draws, i])])
        for i in range(len(observed))
    ]
    return image_grid(
        torch.cat(rows),
        nrow=num_draws + 1,
        title="input, then decoded draws of q(z|x)",
    )


def latent_scatter(
    embeddings: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    title: str = "posterior means of the held-out items",
) -> Figure:
    """One scatter panel per 2-D embedding (``latent``, ``pca``, ``tsne``), coloured by label."""
    titles = {"latent": "z", "pca": "PCA of the means", "tsne": "t-SNE of the means"}
    fig = Figure(figsize=(5 * len(embeddings), 4.6))
    axes = fig.subplots(1, len(embeddings), squeeze=False)[0]
    for ax, (name, xy) in zip(axes, embeddings.items()):
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
        else:
            classes = np.unique(labels)
            cmap = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis"
            points = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=labels,
                cmap=cmap,
                s=6,
                alpha=0.8,
                vmin=-0.5,
                vmax=classes.max() + 0.5,
            )
            if len(classes) <= 20:
                fig.colorbar(points, ax=ax, ticks=classes, label="label")
        ax.set_title(titles.get(name, name))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- applications --------------------------------------------------------------------------


def score_histograms(
    scores: dict[str, torch.Tensor],
    is_anomaly: torch.Tensor | np.ndarray | None = None,
    thresholds: dict[str, float] | None = None,
    names: Sequence[str] | None = None,
) -> Figure:
    """One histogram panel per anomaly score: normal and anomalous items (when labelled)
    overlaid, with the threshold as a vertical line."""
    names = list(names or scores)
    fig = Figure(figsize=(4 * len(names), 3.2))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    labels = None if is_anomaly is None else np.asarray(torch.as_tensor(is_anomaly).cpu())
    for ax, name in zip(axes, names):
        values = np.asarray(scores[name].cpu(), dtype=np.float64)
        bins = np.histogram_bin_edges(values, bins=40)
        if labels is None:
            ax.hist(values, bins=bins, alpha=0.7, label="items")
        else:
            ax.hist(values[labels == 0], bins=bins, alpha=0.6, density=True, label="normal")
            ax.hist(values[labels == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        if thresholds and name in thresholds:
            ax.axvline(thresholds[name], color="k", linestyle="--", label="threshold")
        ax.set_xlabel(name)
        ax.legend(fontsize=7, loc="upper right")  # fixed: see elbo_curves
    axes[0].set_ylabel("density" if labels is not None else "count")
    fig.tight_layout()
    return fig
