"""The graphical model, drawn from the code: ``pyro.render_model`` of the model and the guide.

Pyro traces the program and draws each sample site as a node (observed sites shaded),
each plate as a box, the dependencies between sites as edges, and with
``render_distributions=True`` the distribution of each site. Drawing needs the
``graphviz`` Python package (``pip install -e '.[graph]'``) and Graphviz's ``dot``
program (e.g. ``apt-get install graphviz``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch

from pyrovae.errors import ConfigError

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = ["FORMATS", "render_graph", "require_graphviz", "save_graphs"]

#: output formats of :func:`save_graphs`
FORMATS = ("svg", "png", "pdf", "dot")

_INSTALL = (
    "install the optional extra from the checkout with `pip install -e '.[graph]'` (or "
    "`pip install graphviz`) and Graphviz's dot program (e.g. `apt-get install graphviz`)"
)


def require_graphviz() -> Any:
    """The ``graphviz`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import graphviz
    except ImportError:
        raise ConfigError(
            f"drawing the model needs the graphviz Python package; {_INSTALL}"
        ) from None
    return graphviz


def render_graph(vae: VAE, x: torch.Tensor, which: str = "model") -> Any:
    """``pyro.render_model`` of ``vae.model`` or ``vae.guide`` run on ``x``: a ``graphviz.Digraph``.

    Parameters
    ----------
    vae : VAE
        The VAE to draw.
    x : torch.Tensor
        A few data points to run the program on (their number is the plate's size).
    which : {"model", "guide"}
        The program to draw.
    """
    require_graphviz()
    if which not in ("model", "guide"):
        raise ConfigError(f"draw the 'model' or the 'guide', not {which!r}")
    program = vae.model if which == "model" else vae.guide
    with torch.no_grad():
        return pyro.render_model(program, model_args=(x,), render_distributions=True)


def save_graphs(
    vae: VAE, x: torch.Tensor, output: str | os.PathLike, fmt: str = "svg"
) -> list[Path]:
    """Draw the model and the guide to ``output/model.<fmt>`` and ``output/guide.<fmt>``."""
    graphviz = require_graphviz()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown graph format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder")
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for which in ("model", "guide"):
        graph = render_graph(vae, x, which)
        path = output / f"{which}.{fmt}"
        if fmt == "dot":
            path.write_text(graph.source)
        else:
            try:
                path.write_bytes(graph.pipe(format=fmt))
            except graphviz.ExecutableNotFound:
                raise ConfigError(
                    f"Graphviz's dot program was not found; {_INSTALL}, or use --format dot"
                ) from None
        paths.append(path)
    return paths
