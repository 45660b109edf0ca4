r"""What the SVI benchmarks share: the plain-PyTorch reference VAE, paired timing and the table.

The reference is the VAE a PyTorch user would write by hand, with the same network,
initial weights, optimizer and loss as pyrovae's default model (standard normal
prior, Bernoulli likelihood in logits, diagonal Gaussian guide). For a minibatch of
:math:`B` out of :math:`N` data points both minimise

.. math::

    \mathrm{loss} = \frac{N}{B} \sum_{n=1}^{B} \Big(
        \mathrm{BCE}\big(\eta_\theta(z_n), x_n\big) + \mathrm{KL}_n \Big),
    \qquad z_n = \mu_\phi(x_n) + \sigma_\phi(x_n) \odot \epsilon_n,
    \quad \epsilon_n \sim \mathcal{N}(0, I),

where BCE is ``binary_cross_entropy_with_logits`` summed over pixels. ``Trace_ELBO``
uses the Monte Carlo estimate :math:`\mathrm{KL}_n = \log q(z_n \mid x_n) - \log p(z_n)`
at the sampled :math:`z_n`; ``TraceMeanField_ELBO`` the closed form

.. math::

    \mathrm{KL}_n = \tfrac12 \sum_j \big(\mu_{nj}^2 + \sigma_{nj}^2 - 1 - \log \sigma_{nj}^2\big).

A third candidate, :class:`MinimalPyroVAE`, is the same VAE written the shortest way
in Pyro (Pyro's VAE tutorial with logits, minibatch scaling and module-local
parameters): it separates what Pyro's ``Trace_ELBO`` itself costs per step from what
pyrovae adds on top. Two more are compiled: pyrovae's step with ``--compile`` (the SVI
step traced and compiled as one graph, with a fused Adam:
:mod:`pyrovae.inference.training.compiled`) and the reference with its loss wrapped in
``torch.compile`` (what a PyTorch user would do first; the default Adam).

Times are only comparable within one process on a machine that drifts, so the
methods alternate round by round (the order flips every round) and the reported
ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from torch import nn
from torch.nn import functional as F

from pyrovae import VAE, Config
from pyrovae.config import DEVICES
from pyrovae.data import Dataset
from pyrovae.errors import ConfigError
from pyrovae.inference.training import ELBOS, Trainer, make_elbo
from pyrovae.run import resolve_device

__all__ = [
    "CANDIDATES",
    "KL_ESTIMATORS",
    "MinimalPyroVAE",
    "PyrovaeTrainer",
    "ReferenceTrainer",
    "ReferenceVAE",
    "Timing",
    "add_common_arguments",
    "build_candidates",
    "environment",
    "markdown_table",
    "parse_args",
    "report",
    "synchronize",
    "time_paired",
]

#: how the reference estimates the KL term of each ELBO it is compared with
KL_ESTIMATORS = {
    "Trace_ELBO": "monte-carlo",
    "JitTrace_ELBO": "monte-carlo",
    "TraceMeanField_ELBO": "closed-form",
}

#: the trainers timed, in table order; the ratios divide by "torch"
CANDIDATES = ("pyrovae", "pyrovae --compile", "minimal Pyro", "torch", "torch.compile")

#: the network of the issue: MLP 784-400-50 (Pyro's VAE tutorial)
HIDDEN = (400,)
LATENT_DIM = 50
LEARNING_RATE = 1e-3

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLUs between them, the layout of ``pyrovae.networks.mlp``."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    """A plain-PyTorch VAE: encoder ``x -> (loc, log_var)``, decoder ``z -> logits``.

    Parameters
    ----------
    num_pixels : int
        Size of one flattened data point.
    hidden : sequence of int
        Hidden layer sizes in encoder order; the decoder mirrors them.
    latent_dim : int
        Dimension of :math:`z`.
    kl : {"monte-carlo", "closed-form"}
        How :meth:`loss` estimates the KL term (see the module docstring).
    """

    def __init__(
        self, num_pixels: int, hidden: Sequence[int], latent_dim: int, kl: str = "monte-carlo"
    ) -> None:
        super().__init__()
        if kl not in ("monte-carlo", "closed-form"):
            raise ValueError(f"kl must be 'monte-carlo' or 'closed-form', got {kl!r}")
        self.kl = kl
        self.encoder = _mlp([num_pixels, *hidden, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(tuple(hidden)), num_pixels])

    def loss(self, x: torch.Tensor, num_data: int, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Minus the minibatch ELBO scaled by ``num_data / len(x)``; ``eps`` fixes the noise."""
        x = x.flatten(1)
        loc, log_var = self.encoder(x).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        if eps is None:
            eps = torch.randn_like(loc)
        z = loc + scale * eps
        nll = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        if self.kl == "monte-carlo":
            # log N(z | loc, scale) - log N(z | 0, 1), as Normal.log_prob writes them
            log_q = -((z - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_2PI
            log_p = -(z**2) / 2 - _HALF_LOG_2PI
            kl = (log_q - log_p).sum()
        else:
            kl = 0.5 * (loc**2 + scale**2 - 1 - log_var).sum()
        return (nll + kl) * (num_data / len(x))


class MinimalPyroVAE(nn.Module):
    """The same VAE in the fewest lines of Pyro: Pyro's VAE tutorial, in logits.

    ``model`` and ``guide`` are plain ``nn.Module``s whose ``forward`` calls
    ``pyro.sample``; ``elbo(model, guide)`` collects their parameters, and the
    minibatch is scaled by ``N / B`` with ``poutine.scale``, so the loss is
    :class:`ReferenceVAE`'s.
    """

    class Model(nn.Module):
        def __init__(self, decoder: nn.Module, latent_dim: int, num_data: int) -> None:
            super().__init__()
            self.decoder, self.latent_dim, self.num_data = decoder, latent_dim, num_data

        def forward(self, x: torch.Tensor) -> None:
            x = x.flatten(1)
            with pyro.plate("data", len(x)), poutine.scale(scale=self.num_data / len(x)):
                loc = x.new_zeros(len(x), self.latent_dim)
                z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
                # grey levels allowed, as in pyrovae's Bernoulli (a cross-entropy on [0, 1])
                likelihood = dist.Bernoulli(logits=self.decoder(z), validate_args=False)
                pyro.sample("x", likelihood.to_event(1), obs=x)

    class Guide(nn.Module):
        def __init__(self, encoder: nn.Module, num_data: int) -> None:
            super().__init__()
            self.encoder, self.num_data = encoder, num_data

        def forward(self, x: torch.Tensor) -> None:
            x = x.flatten(1)
            with pyro.plate("data", len(x)), poutine.scale(scale=self.num_data / len(x)):
                loc, log_var = self.encoder(x).chunk(2, dim=-1)
                pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))

    def __init__(self, reference: ReferenceVAE, num_data: int, elbo: str) -> None:
        super().__init__()
        latent_dim = reference.decoder[0].in_features
        self.model = self.Model(reference.decoder, latent_dim, num_data)
        self.guide = self.Guide(reference.encoder, num_data)
        options = {"max_plate_nesting": 1}
        if elbo.startswith("Jit"):
            options["ignore_jit_warnings"] = True
        self.loss = ELBOS[elbo](**options)(self.model, self.guide)


class ReferenceTrainer:
    """Adam on :meth:`ReferenceVAE.loss` (or a :class:`MinimalPyroVAE`'s ELBO), mirroring
    the pyrovae trainer's step and epoch; ``compile=True`` wraps the reference's loss in
    ``torch.compile``."""

    def __init__(
        self,
        vae: ReferenceVAE | MinimalPyroVAE,
        num_data: int,
        learning_rate: float,
        batch_size: int,
        compile: bool = False,
    ) -> None:
        self.vae = vae
        self.num_data = num_data
        self.batch_size = batch_size
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=learning_rate)
        self.loss = None
        if isinstance(vae, ReferenceVAE):
            self.loss = torch.compile(vae.loss, dynamic=False) if compile else vae.loss

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One gradient step on minibatch ``x``; returns the detached loss, not synced."""
        if isinstance(self.vae, MinimalPyroVAE):
            with pyro.validation_enabled(False):  # as pyrovae's trainer: no per-step checks
                loss = self.vae.loss(x)
        else:
            loss = self.loss(x, self.num_data)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def epoch(self, data: Dataset) -> float:
        """One shuffled pass (``randperm`` + index, last short batch dropped); mean ELBO."""
        self.vae.train()
        train, batch_size = data.train, self.batch_size
        num_items = len(train)
        stop = num_items - num_items % batch_size if num_items > batch_size else num_items
        order = torch.randperm(num_items, device=train.device)
        total = torch.zeros((), device=train.device)
        steps = 0
        for start in range(0, stop, batch_size):
            total += self.step(train[order[start : start + batch_size]])
            steps += 1
        return -total.item() / (steps * self.num_data)


class PyrovaeTrainer:
    """pyrovae's side, built as :func:`pyrovae.train` builds it: the variant's training step
    (SVI with one Adam) run by the :class:`~pyrovae.inference.training.Trainer`."""

    def __init__(self, vae: VAE, trainer: Trainer, num_data: int) -> None:
        self.vae = vae
        self.trainer = trainer
        self.num_data = num_data
        self.parameters = trainer.step.parameters

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One SVI step on minibatch ``x``, as the trainer's epoch takes it (with its checks
        for a non-finite loss or gradient)."""
        return self.trainer.take_step({"x": x}, num_data=self.num_data, beta=1.0)["loss"]

    def epoch(self, data: Dataset) -> float:
        return self.trainer.epoch(data)


def build_candidates(
    elbo: str,
    batch_size: int,
    event_shape: Sequence[int],
    num_data: int,
    device: torch.device,
    seed: int = 0,
    warm_up: torch.Tensor | None = None,
) -> dict[str, PyrovaeTrainer | ReferenceTrainer]:
    """The :data:`CANDIDATES` that apply to ``elbo``, by name, all with the same
    architecture and initial weights.

    The pyrovae side is built exactly as :func:`pyrovae.train` builds it; call this
    inside ``pyrovae.inference.training.elbo_context(elbo)``. The minimal Pyro VAE is
    left out for JIT objectives (Pyro's JIT finds parameters through the global param
    store, which the minimal version does not use), and ``pyrovae --compile`` where
    ``--compile`` does not apply (the JIT objectives). ``warm_up``, a minibatch, is
    where the compiled step traces and compiles its graph (untimed).
    """

    def pyrovae(compile: bool) -> PyrovaeTrainer:
        config = Config.from_flags(
            hidden=HIDDEN,
            latent_dim=LATENT_DIM,
            elbo=elbo,
            batch_size=batch_size,
            learning_rate=LEARNING_RATE,
            seed=seed,
        )
        pyro.set_rng_seed(seed)
        vae = VAE.from_section(config.model, event_shape).to(device)
        step = vae.training_step(make_elbo(elbo), learning_rate=LEARNING_RATE)
        if compile:
            step.compile()
            x = warm_up if warm_up is not None else torch.zeros(batch_size, *event_shape)
            step.check({"x": x.to(device)}, num_data=num_data)
        return PyrovaeTrainer(vae, Trainer(vae, step, batch_size=batch_size), num_data)

    trainer = pyrovae(compile=False)
    vae = trainer.vae

    def copy() -> ReferenceVAE:
        net = ReferenceVAE(math.prod(event_shape), HIDDEN, LATENT_DIM, KL_ESTIMATORS[elbo])
        net.encoder.load_state_dict(vae.guide.encoder.net.state_dict())
        net.decoder.load_state_dict(vae.model.decoder.net.state_dict())
        return net.to(device)

    reference = copy()
    sizes = [p.shape for p in trainer.parameters], [p.shape for p in reference.parameters()]
    if sorted(map(tuple, sizes[0])) != sorted(map(tuple, sizes[1])):
        raise RuntimeError(f"pyrovae and the reference train different parameters: {sizes}")
    options = (num_data, LEARNING_RATE, batch_size)
    candidates = {
        "pyrovae": trainer,
        "torch": ReferenceTrainer(reference, *options),
        "torch.compile": ReferenceTrainer(copy(), *options, compile=True),
    }
    if not elbo.startswith("Jit"):
        candidates["pyrovae --compile"] = pyrovae(compile=True)
        candidates["minimal Pyro"] = ReferenceTrainer(
            MinimalPyroVAE(copy(), num_data, elbo), *options
        )
    return {name: candidates[name] for name in CANDIDATES if name in candidates}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_paired(
    candidates: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, alternating them round by round.

    Round ``r`` runs every candidate once, in the given order for even ``r`` and in
    reverse for odd ``r``, so drift and order effects hit all of them alike.
    """
    names = list(candidates)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            synchronize(device)
            begin = time.perf_counter()
            candidates[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - begin)
    return seconds


@dataclass
class Timing:
    """Paired per-round times of the candidates (by name) at one setting."""

    batch_size: int
    objective: str
    seconds: dict[str, list[float]]

    #: the columns :meth:`summary` fills
    COLUMNS = (
        "batch size",
        "objective",
        "torch",
        *(f"{name} / torch" for name in CANDIDATES if name != "torch"),
    )

    def ratios(self, name: str) -> list[float]:
        """``name``'s time over the reference's, round by round."""
        return [a / t for a, t in zip(self.seconds[name], self.seconds["torch"], strict=True)]

    def ratio(self, name: str = "pyrovae") -> float:
        """Median over rounds of ``name``'s time divided by the reference's in that round."""
        return statistics.median(self.ratios(name))

    def summary(self, scale: float, digits: int) -> list[str]:
        """The :attr:`COLUMNS`: the reference's median time (multiplied by ``scale``), then
        each candidate's median ratio to it and the ratio's range over rounds (``-`` for a
        candidate not timed at this setting)."""
        cells = [str(self.batch_size), self.objective]
        cells.append(f"{statistics.median(self.seconds['torch']) * scale:.{digits}f}")
        for name in CANDIDATES:
            if name == "torch":
                continue
            if name not in self.seconds:
                cells.append("-")
                continue
            ratios = self.ratios(name)
            cells.append(f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
        return cells


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table, columns padded so it also reads as plain text."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def environment(device: torch.device) -> str:
    """One line naming what the numbers depend on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    wait_policy = os.environ.get("OMP_WAIT_POLICY")
    return (
        f"device {device} ({name}), torch threads: {torch.get_num_threads()}"
        f"{f' (OMP_WAIT_POLICY={wait_policy})' if wait_policy else ''}, "
        f"torch {torch.__version__}, pyro {pyro.__version__}, "
        f"validation: pyro {'on' if is_validation_enabled() else 'off'}, "
        f"torch.distributions {'on' if torch.distributions.Distribution._validate_args else 'off'}"
    )


class Parser(argparse.ArgumentParser):
    """An argument parser whose unknown option is an error naming the closest valid one, as
    the ``pyrovae`` command's is (``--score-reference-drw`` -> ``--score-reference-draw``)."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            from pyrovae.registry import closest

            unknown = next((a for a in message[len(prefix) :].split() if a.startswith("-")), "")
            flags = [f for action in self._actions for f in action.option_strings]
            message += closest(unknown.split("=")[0], flags) if unknown else ""
        super().error(message)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options both benchmarks take; ``None`` defaults are filled in by :func:`parse_args`."""
    parser.add_argument(
        "--device", default="auto", choices=DEVICES, help="auto picks cuda when available"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", metavar="B", help="minibatch sizes to time"
    )
    parser.add_argument("--rounds", type=int, help="alternating timed rounds per setting")
    parser.add_argument(
        "--elbo",
        nargs="+",
        choices=[name for name in ELBOS if name in KL_ESTIMATORS],
        default=["Trace_ELBO", "TraceMeanField_ELBO"],
        help="objectives to time (JitTrace_ELBO on request)",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps of each method before timing a setting"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads (default: torch's own choice); on a small shared machine, "
        "1 avoids OpenMP threads stalling each other",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and initial weights")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table here")


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    full: dict[str, object],
    quick: dict[str, object],
) -> tuple[argparse.Namespace, torch.device]:
    """Parse ``argv``; options left unset take the ``quick`` or ``full`` defaults."""
    args = parser.parse_args(argv)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("rounds", "warmup"):
        if getattr(args, name) < (1 if name == "rounds" else 0):
            parser.error(f"--{name} must be {'positive' if name == 'rounds' else '>= 0'}")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be positive")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ConfigError as e:
        parser.error(str(e))
    return args, device


def report(title: str, lines: Sequence[str], table: str, markdown: Path | None) -> str:
    """Print the titled table (and write it to ``markdown``); returns the text."""
    text = "\n\n".join([f"## {title}", *lines, table]) + "\n"
    print("\n" + text, end="", flush=True)
    if markdown is not None:
        markdown.write_text(text)
    return text
