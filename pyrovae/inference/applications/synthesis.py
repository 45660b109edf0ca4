r"""Synthetic rows of a table from a trained VAE: draws from the model,

.. math::

    z \sim p(z), \qquad x \sim p(x \mid z) = \prod_d p_d(x_d \mid \eta_d(z)),

each column drawn from its own family (a category, a count, a real value), not its mean:
:meth:`~pyrovae.data.tables.TableEncoding.decode` turns them into rows with the table's
column names and labels (``pyrovae sample`` on a table run writes them as CSV).

References
----------
- Nazábal, Olmos, Ghahramani & Valera (2020), Handling incomplete heterogeneous data using
  VAEs. Pattern Recognition 107.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pyro import poutine

from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation import columns_likelihood, eval_mode

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = ["sample_rows"]


@torch.no_grad()
def sample_rows(vae: VAE, num_rows: int) -> torch.Tensor:
    """``num_rows`` encoded rows ``(num_rows, D)`` drawn from the model (the site ``x`` of
    the model run without data); see the module docstring."""
    if columns_likelihood(vae) is None:
        raise ConfigError(
            "sampling rows needs a run trained on a CSV/Parquet table (--likelihood columns)"
        )
    if num_rows < 1:
        raise ConfigError(f"the number of rows must be >= 1, got {num_rows}")
    with eval_mode(vae):
        trace = poutine.trace(vae.model).get_trace(batch_size=num_rows)
    return trace.nodes["x"]["value"]
