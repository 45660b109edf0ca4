r"""Imputation of a table's missing cells from the posterior (HI-VAE, MIWAE).

The missing cells of a row :math:`x` (NaN) do not enter :math:`\log p(x_{obs} \mid z)`
(the ``columns`` likelihood gives them log-density 0), and the guide reads the row with
them zero-filled and flagged (:class:`~pyrovae.model.columns.TableInput`). ``K`` draws
:math:`z_k \sim q(z \mid x_{obs})` get self-normalised importance weights

.. math::

    \tilde w_k \propto \frac{p(x_{obs} \mid z_k)\, p(z_k)}{q(z_k \mid x_{obs})},

and a missing cell of column :math:`d` is imputed by the posterior predictive point
:math:`\hat x_d = \sum_k \tilde w_k\, E[x_d \mid z_k]` for real, positive and count
columns, and for binary and categorical columns by the category with the largest
posterior weight, :math:`\arg\max_c \sum_k \tilde w_k\, [\mathrm{mode}_k = c]` (binary:
:math:`\sum_k \tilde w_k\, p_k(1) > 1/2`). Observed cells are returned unchanged.

References
----------
- Nazábal, Olmos, Ghahramani & Valera (2020), Handling incomplete heterogeneous data using
  VAEs. Pattern Recognition 107.
- Mattei & Frellsen (2019), MIWAE: Deep Generative Modelling and Imputation of Incomplete
  Data Sets. ICML.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from pyrovae.errors import ConfigError
from pyrovae.inference.evaluation import chunk_size, eval_mode, importance_weights
from pyrovae.model.columns import BinaryColumn, ColumnsLikelihood

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = ["impute"]


@torch.no_grad()
def impute(
    vae: VAE, x: torch.Tensor, *, num_samples: int = 100, batch_size: int = 500
) -> torch.Tensor:
    """``x`` ``(N, D)`` with its missing cells (NaN) imputed from the posterior (see the
    module docstring).

    Parameters
    ----------
    vae : VAE
        A VAE trained with the ``columns`` likelihood (on a table).
    x : torch.Tensor
        Encoded rows (:meth:`~pyrovae.data.tables.TableEncoding.encode`), NaN where missing.
    num_samples : int
        Importance samples :math:`K` per row.
    batch_size : int
        Rows per pass.
    """
    likelihood = vae.model.likelihood
    if not isinstance(likelihood, ColumnsLikelihood):
        raise ConfigError(
            "imputation fills the missing cells of a table: it needs a run trained on a "
            "CSV/Parquet table (--likelihood columns); for images use pyrovae inpaint"
        )
    if num_samples < 1 or batch_size < 1:
        raise ConfigError("num_samples and batch_size must be >= 1")
    vae.validate_data(x, "the rows to impute")
    x = x.to(vae.device)
    chunk = chunk_size(batch_size, num_samples * math.prod(x.shape[1:]))
    parts = []
    with eval_mode(vae):
        for start in range(0, len(x), chunk):
            xb = x[start : start + chunk]
            w = importance_weights(vae, xb, num_samples, mean=True)
            weights = torch.softmax(w.log_weight, dim=0)  # (K, n)
            point = (weights.unsqueeze(-1) * w.mean).sum(0)  # (n, D)
            for d, kind in enumerate(likelihood.types):
                if kind.discrete_codes:  # the category with the largest posterior weight
                    votes = F.one_hot(w.mean[..., d].long(), kind.num_categories)
                    point[:, d] = (weights.unsqueeze(-1) * votes).sum(0).argmax(-1).to(x.dtype)
                elif isinstance(kind, BinaryColumn):
                    point[:, d] = (point[:, d] > 0.5).to(x.dtype)
            parts.append(torch.where(torch.isnan(xb), point, xb))
    return torch.cat(parts)
