"""Progress bars of long computations, switched on in one place.

The library's long evaluations (the IWAE bound, sample-quality scoring, NUTS, encoding a
data set, anomaly scores, inpainting, the per-item guides of the inference gaps) draw
their bars with :func:`progress_bar`. The bars are hidden unless the code runs inside an
:func:`enabled` block, and even there they are shown only when stderr is a terminal
(tqdm's ``disable=None``), so logs, pipes and tests stay clean. The command line runs
every command in ``enabled(not args.no_progress)``; a script opts in the same way::

    from pyrovae import progress

    with progress.enabled():
        pyrovae.evaluate(vae, x, num_samples=5000)  # a bar over the items

The training loop's bar has a switch of its own (``progress`` of
:meth:`~pyrovae.inference.training.Trainer.fit` and :func:`pyrovae.fit`).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["active", "enabled", "progress_bar"]

#: whether the innermost :func:`enabled` block shows bars (hidden outside every block)
_SHOW: contextvars.ContextVar[bool] = contextvars.ContextVar("pyrovae_progress", default=False)


@contextlib.contextmanager
def enabled(show: bool = True) -> Iterator[None]:
    """Show (``show=True``) or hide the library's progress bars within the block.

    Shown bars still appear only when stderr is a terminal. Blocks nest; the innermost
    one decides (the trainer hides the bars of its per-epoch evaluation this way).
    """
    token = _SHOW.set(bool(show))
    try:
        yield
    finally:
        _SHOW.reset(token)


def active() -> bool:
    """Whether a bar would be drawn now: inside an ``enabled(True)`` block, with stderr a
    terminal. For progress reports that are not :func:`progress_bar`'s own (Pyro's MCMC
    takes ``disable_progbar``)."""
    if not _SHOW.get():
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A ``tqdm`` bar, hidden unless an :func:`enabled` block shows bars and stderr is a
    terminal.

    Parameters
    ----------
    iterable : iterable, optional
        What to iterate over; without it, advance the bar with ``update(n)``.
    total : float, optional
        The count of a full bar (e.g. items, when ``update`` counts items).
    desc, unit : str
        The bar's label and the unit of its rate (``"item"`` gives items/s).
    leave : bool
        Keep the finished bar on the screen (evaluations report their result in a log
        line, so their bars go away by default).
    **kwargs
        More ``tqdm`` arguments; ``disable`` given here wins over the :func:`enabled`
        blocks (``None``: on a terminal, as tqdm reads it).
    """
    kwargs.setdefault("disable", None if _SHOW.get() else True)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, **kwargs)
