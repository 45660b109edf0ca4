r"""Vector quantization: a codebook of :math:`K` vectors, nearest-neighbour assignment,
the straight-through gradient, and the codebook's updates (EMA, dead-code restarts).

An encoder output :math:`z_e \in \mathbb{R}^D` (one per position of a code grid) is
assigned the index of its nearest codebook vector,

.. math::

    k = \operatorname*{arg\,min}_{j \in \{1, \dots, K\}} \lVert z_e - e_j \rVert_2^2,
    \qquad z_q = e_k,

and the decoder reads :math:`z_q`. The assignment has no gradient, so training copies the
decoder input's gradient to the encoder (the straight-through estimator):
:math:`z_q = e_k + (z_e - \mathrm{sg}[z_e])` has the value :math:`e_k` and the gradient
:math:`\partial z_q / \partial z_e = I`.

The codebook learns in one of two ways. With the **codebook loss**
:math:`\lVert \mathrm{sg}[z_e] - e_k \rVert^2` it is a parameter that the optimizer moves
towards the encoder outputs assigned to it. With **exponential moving averages** (the
paper's appendix) it is a buffer: with :math:`n_j` the batch's outputs assigned to code
:math:`j` and :math:`s_j` their sum, decay :math:`\gamma` and Laplace smoothing
:math:`\epsilon`,

.. math::

    N_j \leftarrow \gamma N_j + (1 - \gamma)\, n_j, \qquad
    m_j \leftarrow \gamma m_j + (1 - \gamma)\, s_j, \qquad
    \tilde N_j = \frac{N_j + \epsilon}{n + K \epsilon}\, n \quad (n = \textstyle\sum_j N_j),
    \qquad e_j = m_j / \tilde N_j .

The averages start at :math:`N_j = 1, m_j = e_j` (as if each code had been assigned
itself once), so a code that is never assigned keeps its place instead of being divided
by a near-zero count.

**Dead codes.** A code that no encoder output of a training batch chose for
``restart_after`` steps in a row is moved onto an encoder output of the current batch,
drawn at random with torch's global generator (the stream the trainer seeds and
checkpoints, so a resumed run restarts the same codes). Every code starts unused, so the
first training step draws the whole codebook from the first batch's encoder outputs
(``restart_after = 0`` turns restarts off, and the codebook keeps its initial draw from
:math:`U(-1/K, 1/K)`, as in the paper's code).

References
----------
- van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning.
- Bengio, Léonard & Courville (2013), Estimating or Propagating Gradients Through
  Stochastic Neurons for Conditional Computation (the straight-through estimator).
- Dhariwal et al. (2020), Jukebox: A Generative Model for Music (restarting dead codes
  from encoder outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from pyrovae.errors import ConfigError

__all__ = ["VectorQuantizer", "perplexity"]


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    r"""The perplexity :math:`\exp H(p)` of the code usage ``counts`` (shape ``(K,)``),
    :math:`p_j = c_j / \sum_i c_i`, :math:`H(p) = -\sum_j p_j \log p_j` (:math:`0 \log 0 = 0`):
    the number of codes a uniform usage of the same entropy would need, from 1 (one code
    takes everything) to :math:`K` (all equally used)."""
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of ``code_dim`` numbers and its updates.

    Parameters
    ----------
    num_codes : int
        :math:`K`, the number of codebook vectors.
    code_dim : int
        :math:`D`, the dimension of each vector (the encoder's output per position).
    ema : bool
        Learn the codebook by exponential moving averages (a buffer) rather than by the
        codebook loss (a parameter).
    decay : float
        :math:`\\gamma` of the moving averages, in [0, 1).
    epsilon : float
        :math:`\\epsilon`, the Laplace smoothing of the moving-average counts (> 0).
    restart_after : int
        Restart a code after this many training steps without an assignment (0: never).

    Attributes
    ----------
    codebook : torch.Tensor
        ``(K, D)``; an ``nn.Parameter`` with the codebook loss, a buffer with EMA.
    ema_count, ema_sum : torch.Tensor
        ``(K,)`` and ``(K, D)``, the moving averages :math:`N_j` and :math:`m_j` (EMA only).
    unused_steps : torch.Tensor
        ``(K,)`` training steps since each code was last assigned.
    restarts : torch.Tensor
        Codes restarted since :meth:`take_restarts` last read the count.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        ema: bool = True,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_after: int = 50,
    ) -> None:
        super().__init__()
        if num_codes < 2 or code_dim < 1:
            raise ConfigError(
                f"a codebook needs num_codes >= 2 and a code dimension >= 1, got {num_codes} "
                f"and {code_dim}"
            )
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"decay must be in [0, 1), got {decay}")
        if epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {epsilon}")
        if restart_after < 0:
            raise ConfigError(f"restart_after must be >= 0 (0: never), got {restart_after}")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.restart_after = restart_after
        codebook = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # every code starts unused: the first step draws them from encoder outputs
        self.register_buffer("unused_steps", torch.full((num_codes,), restart_after))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        r"""The index of the nearest codebook vector to each ``z`` (shape ``(..., D)``),
        :math:`\arg\min_j \lVert z - e_j \rVert^2` (the first of tied ones), shape ``(...)``."""
        e = self.codebook.detach()
        flat = z.detach().reshape(-1, self.code_dim)
        # ||z||^2 is the same for every j: -2 z.e_j + ||e_j||^2 ranks the codes
        distance = torch.addmm(e.pow(2).sum(-1), flat, e.T, alpha=-2.0)
        return distance.argmin(-1).reshape(z.shape[:-1])

    def lookup(self, k: torch.Tensor) -> torch.Tensor:
        """The codebook vectors :math:`e_k` of indices ``k`` (shape ``(...)``): ``(..., D)``."""
        return self.codebook[k]

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Quantize encoder outputs ``z_e`` (``(..., D)``): returns ``(k, e_k, z_q)``, with
        ``z_q`` the straight-through decoder input (value :math:`e_k`, gradient to
        ``z_e``) and ``e_k`` differentiable in the codebook (for the codebook loss)."""
        k = self.nearest(z_e)
        e = self.lookup(k)
        return k, e, e.detach() + (z_e - z_e.detach())

    def usage(self, k: torch.Tensor) -> torch.Tensor:
        """How many of the indices ``k`` chose each code: ``(K,)`` counts."""
        return torch.bincount(k.reshape(-1), minlength=self.num_codes).to(self.codebook.dtype)

    @torch.no_grad()
    def restart_dead(self, z_e: torch.Tensor) -> int:
        """Move every code unused for ``restart_after`` steps onto an encoder output of
        ``z_e`` (``(..., D)``, the current batch) drawn at random without replacement
        (with replacement if the batch has fewer outputs than dead codes); returns their
        number."""
        if self.restart_after == 0:
            return 0
        dead = (self.unused_steps >= self.restart_after).nonzero().flatten()
        if len(dead) == 0:
            return 0
        flat = z_e.detach().reshape(-1, self.code_dim)
        if len(dead) <= len(flat):
            chosen = torch.randperm(len(flat), device=flat.device)[: len(dead)]
        else:
            chosen = torch.randint(len(flat), (len(dead),), device=flat.device)
        self.codebook[dead] = flat[chosen].to(self.codebook.dtype)
        if self.ema:  # the restarted code has been assigned itself once
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = self.codebook[dead]
        self.unused_steps[dead] = 0
        self.restarts += len(dead)
        return len(dead)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, k: torch.Tensor) -> None:
        """Move the codebook by the moving averages of the encoder outputs ``z_e``
        assigned to each code (``k``, their indices): the module docstring's formula."""
        flat = z_e.detach().reshape(-1, self.code_dim).to(self.codebook.dtype)
        one_hot = nn.functional.one_hot(k.reshape(-1), self.num_codes).to(flat.dtype)
        # sums by a matrix product rather than index_add_, which is not deterministic on GPUs
        self.ema_count.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(one_hot.T @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (n + self.num_codes * self.epsilon) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def record_usage(self, k: torch.Tensor) -> None:
        """Count one more training step without an assignment for every code absent from ``k``."""
        used = self.usage(k) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)

    def take_restarts(self) -> int:
        """The codes restarted since the last call (the count starts again at 0)."""
        count = int(self.restarts)
        self.restarts.zero_()
        return count
