r"""Reconstruction errors of a table (the ``columns`` likelihood), where the squared error of
category codes means nothing.

A row :math:`x` is reconstructed at the posterior mean, :math:`\hat x = E[x \mid z =
\mu_\phi(x)]` (the most probable category of a categorical column, the probability of code 1
of a binary one), and its errors are taken over its observed cells :math:`O`, per type
(:attr:`~pyrovae.model.columns.ColumnType.error_name`):

.. math::

    \mathrm{RMSE}_{real} &= \Big(\frac{1}{|O_{real}|} \sum_{(n,d) \in O_{real}}
        (x_{nd} - \hat x_{nd})^2\Big)^{1/2} \quad\text{(standardised units)},\\
    \mathrm{RMSE}_{positive} &= \Big(\frac{1}{|O_{pos}|} \sum (\log x_{nd} -
        \log \hat x_{nd})^2\Big)^{1/2} \quad\text{(nats of } \log x),\\
    \mathrm{RMSE}_{count} &= \Big(\frac{1}{|O_{count}|} \sum (x_{nd} -
        \hat x_{nd})^2\Big)^{1/2} \quad\text{(counts)},\\
    \mathrm{error\ rate} &= \frac{1}{|O_{cat}|} \sum_{(n,d) \in O_{cat}}
        [\,\mathrm{mode}_{nd} \ne x_{nd}\,] \quad\text{(binary and categorical cells)},

and the negative log-likelihood of the row under its reconstruction,
:math:`-\log p(x_O \mid z = \mu_\phi(x)) = -\sum_{d \in O} \log p_d(x_d \mid \eta_d(\mu_\phi(x)))`
in nats, which adds the columns' errors on one scale (the ``reconstruction`` anomaly score
of a table; An & Cho's reconstruction probability at the posterior mean).

References
----------
- Nazábal, Olmos, Ghahramani & Valera (2020), Handling incomplete heterogeneous data using
  VAEs. Pattern Recognition 107.
- An & Cho (2015), Variational Autoencoder based Anomaly Detection using Reconstruction
  Probability.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pyrovae.inference.evaluation.weights import batches, eval_mode
from pyrovae.model.columns import ColumnsLikelihood

if TYPE_CHECKING:
    from pyrovae.variants import VAE

__all__ = ["columns_likelihood", "reconstruction_nll", "table_reconstruction_errors"]


def columns_likelihood(vae: VAE) -> ColumnsLikelihood | None:
    """The ``columns`` likelihood of a VAE trained on a table, else ``None``."""
    likelihood = getattr(getattr(vae, "model", None), "likelihood", None)
    return likelihood if isinstance(likelihood, ColumnsLikelihood) else None


def _reconstructions(vae: VAE, x: torch.Tensor, batch_size: int):
    """``(xb, distribution)`` per batch: ``p(x | z = mu(xb))``."""
    with eval_mode(vae):
        for xb, _ in batches(x.to(vae.device), batch_size):
            loc, _ = vae.encode(xb)
            yield xb, vae.model.likelihood(vae.model.decoder(loc))


@torch.no_grad()
def reconstruction_nll(vae: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    r"""Per row :math:`-\log p(x_O \mid z = \mu_\phi(x))` in nats, over its observed cells
    (see the module docstring); shape ``(N,)``."""
    return torch.cat([-d.log_prob(xb).sum(-1) for xb, d in _reconstructions(vae, x, batch_size)])


@torch.no_grad()
def table_reconstruction_errors(
    vae: VAE, x: torch.Tensor, batch_size: int = 500
) -> dict[str, float]:
    """The reconstruction errors of the rows ``x`` (NaN where missing) per column type, as
    the module docstring defines them: ``reconstruction_rmse_real``,
    ``reconstruction_rmse_positive_log``, ``reconstruction_rmse_count``,
    ``reconstruction_error_rate`` (each only when ``x`` has observed cells of such columns)
    and ``reconstruction_nll`` (nats per row)."""
    likelihood = columns_likelihood(vae)
    if likelihood is None:
        raise TypeError("table_reconstruction_errors needs a VAE with the columns likelihood")
    names = sorted({kind.error_name for kind in likelihood.types})
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)
    nll = 0.0
    for xb, d in _reconstructions(vae, x, batch_size):
        point = d.mean
        nll += float(-d.log_prob(xb).sum())
        for column, kind in enumerate(likelihood.types):
            v, p = xb[:, column], point[:, column]
            seen = ~torch.isnan(v)
            sums[kind.error_name] += float(kind.cell_error(v[seen], p[seen]).double().sum())
            counts[kind.error_name] += int(seen.sum())
    errors = {}
    for name in (n for n in names if counts[n]):
        mean = sums[name] / counts[name]
        errors[name] = math.sqrt(mean) if name.startswith("reconstruction_rmse") else mean
    errors["reconstruction_nll"] = nll / len(x)
    return errors
