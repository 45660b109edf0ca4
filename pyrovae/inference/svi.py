r"""The training loop: stochastic variational inference with a plain ``torch.optim`` optimizer.

``make_elbo(...)(model, guide)`` gives an :class:`pyro.infer.elbo.ELBOModule`
whose ``parameters()`` are the model's and the guide's, and whose call returns the
differentiable loss :math:`-\mathrm{ELBO}`; Adam steps on it. Parameters are
module-local (``pyro.settings.set(module_local_params=True)``), so every piece of
state lives in ``state_dict()``: there is no global param store to save or clear.

The loss of a minibatch is scaled by ``N / B`` through the data plate, so the
per-data-point ELBO is ``-loss / N``.

The KL weight of step ``t`` comes from a schedule (:mod:`pyrovae.inference.schedules`)
and after every epoch the latent code is diagnosed on a fixed slice of the held-out
data (:mod:`pyrovae.inference.diagnostics`): total KL, KL per dimension, active
units and the mutual information :math:`I(x; z)`. A warning is logged when the code
looks collapsed (a KL below :data:`COLLAPSE_KL` nats per data point, summed over
dimensions, or no active unit) for a tenth of the run's epochs in a row (at least
:data:`COLLAPSE_PATIENCE`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro.infer.elbo import ELBOModule
from tqdm.auto import tqdm

from pyrovae.data import Dataset
from pyrovae.errors import CheckpointError, PyroVAEError
from pyrovae.inference.checkpoint import (
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from pyrovae.inference.evaluation import heldout_elbo
from pyrovae.inference.inspection.diagnostics import diagnose
from pyrovae.inference.objectives import elbo_context, make_elbo
from pyrovae.inference.schedules import Schedule, make_schedule
from pyrovae.vae import VAE

if TYPE_CHECKING:
    from pyrovae.config import Config

__all__ = ["ARCHITECTURE_KEYS", "COLLAPSE_KL", "SVITrainer", "refuse_overwrite", "train"]

logger = logging.getLogger(__name__)

#: config keys that decide the shapes in ``state_dict()``: a checkpoint only fits a
#: VAE built with the same values
ARCHITECTURE_KEYS = (
    "model",
    "num_classes",
    "latent_dim",
    "prior",
    "num_components",
    "likelihood",
    "learn_scale",
    "encoder",
    "decoder",
    "hidden",
    "guide",
    "guide_rank",
    "num_flows",
)

#: total KL (nats per held-out data point, summed over dimensions) below which the
#: trainer warns that the posterior is collapsing onto the prior
COLLAPSE_KL = 0.1

#: consecutive collapsed-looking epochs before the warning: at least this many, and a
#: tenth of the run (a fresh model starts near the prior); a run's last epoch warns sooner
COLLAPSE_PATIENCE = 3

#: config keys that the objectives read (each takes the ones it names)
OBJECTIVE_KEYS = ("free_bits", "mmd_alpha", "mmd_lambda", "mmd_kernel", "renyi_alpha")


#: what a checkpoint written by :func:`train` holds
CHECKPOINT_KEYS = ("config", "event_shape", "epoch", "vae", "optimizer", "rng", "history")


class SVITrainer:
    """One SVI step at a time: ``loss = -ELBO``, backward, optional clipping, Adam step.

    Parameters
    ----------
    vae : VAE
        The model and guide to train.
    config : Config
        Reads ``elbo`` and the objectives' options, ``num_particles``,
        ``vectorize_particles``, the KL schedule (``beta``, ``kl_schedule``, ...),
        ``learning_rate`` and ``clip_norm``.
    num_data : int
        Size of the training set, for the plate's minibatch scaling.
    steps_per_epoch : int, optional
        SVI steps in one epoch, for schedules counted in epochs (default: the number
        of full minibatches of ``num_data``).

    Attributes
    ----------
    schedule : Schedule
        :math:`\beta_t` for step ``t``; :meth:`epoch` steps with ``schedule(t)``.
    step_count : int
        Steps taken so far in the run (``t`` of the next step); a resumed run sets it.
    epoch_stats : dict
        After :meth:`epoch`: ``train_objective``, ``train_elbo`` (the true ELBO where
        the objective provides it, else ``None``), ``beta`` (of the epoch's last step)
        and ``beta_mean``.
    """

    def __init__(
        self, vae: VAE, config: Config, num_data: int, steps_per_epoch: int | None = None
    ) -> None:
        self.vae = vae
        self.config = config
        self.num_data = num_data
        options = {k: getattr(config, k) for k in OBJECTIVE_KEYS}
        elbo = make_elbo(config.elbo, config.num_particles, config.vectorize_particles, **options)
        self.loss = vae.training_loss(elbo)
        self.parameters = list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        if steps_per_epoch is None:
            steps_per_epoch = max(1, num_data // config.batch_size)
        self.schedule: Schedule = make_schedule(config, steps_per_epoch)
        self.step_count = 0
        self.epoch_stats: dict[str, Any] = {}

    def step(self, x: torch.Tensor, beta: float | None = None, **batch: Any) -> torch.Tensor:
        """One gradient step on minibatch ``x``; returns the (detached) loss, not synced.

        ``batch`` holds further keyword arguments of the loss, e.g. the labels ``y`` of a
        conditional VAE (see :meth:`pyrovae.VAE.training_batches`).
        """
        beta = self.config.beta if beta is None else beta
        # per-step validation costs ~0.3 ms; check() validated model, guide and data once
        with pyro.validation_enabled(False):
            loss = self.loss(x, num_data=self.num_data, beta=beta, **batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip_norm)
        self.optimizer.step()
        return loss.detach()

    def check(self, x: torch.Tensor, **batch: Any) -> None:
        """Evaluate the loss once with Pyro's validation on, without stepping.

        Catches shape and support errors (e.g. in a user's prior or likelihood) with
        Pyro's messages before training; the epochs then run without per-step
        validation, which costs about 20% of a step (the data were checked once).
        ``batch`` holds further keyword arguments of the loss (labels).
        """
        with pyro.validation_enabled(True):
            self.vae.check_loss({"x": x, **batch}, self.num_data)

    def epoch(self, data: Dataset) -> float:
        """One pass over shuffled training minibatches; returns the mean objective per point.

        A last batch smaller than ``batch_size`` is dropped (the JIT's traced graph
        fixes the batch size, and equal batches keep the gradient noise constant).
        Step ``t`` uses the KL weight ``schedule(t)``. The returned value is the
        training objective (the ELBO with :math:`\beta_t`, or the IWAE, free-bits,
        InfoVAE objective); :attr:`epoch_stats` has the true ELBO next to it.
        """
        self.vae.train()
        total = torch.zeros((), device=self.vae.device)
        elbo_total = torch.zeros((), device=self.vae.device)
        has_elbo = True
        betas = []
        drop_last = self.num_data > self.config.batch_size
        # a plain VAE yields {"x": x}; conditional variants add their labels (VAE hooks)
        batches = self.vae.training_batches(
            data, self.config.batch_size, shuffle=True, drop_last=drop_last
        )
        # a variant's own loss (M2: ELBOs plus a classification term) is not -ELBO
        is_elbo = isinstance(self.loss, ELBOModule)
        for batch in batches:
            beta = self.schedule(self.step_count)
            loss = self.step(**_to_device(batch, self.vae.device), beta=beta)
            total += loss
            last_elbo = getattr(getattr(self.loss, "elbo", None), "last_elbo", None)
            if last_elbo is not None:  # our objectives report the true ELBO of their draws
                elbo_total += last_elbo
            elif beta == 1.0 and is_elbo:  # a Pyro ELBO at beta = 1: the loss is -ELBO
                elbo_total -= loss
            else:
                has_elbo = False
            betas.append(beta)
            self.step_count += 1
        steps = len(betas)
        objective = -total.item() / (steps * self.num_data)
        self.epoch_stats = {
            "train_objective": objective,
            "train_elbo": elbo_total.item() / (steps * self.num_data) if has_elbo else None,
            "beta": betas[-1],
            "beta_mean": sum(betas) / steps,
        }
        return objective


def _warn_if_collapsed(
    row: dict[str, Any], epoch: int, collapsed_for: int, last: bool, patience: int
) -> int:
    """Warn when the code has looked collapsed for ``patience`` epochs in a row (or in the
    run's last epoch), once until it recovers; returns the new run length.

    A fresh model starts near the prior and often stays there for a while before the
    decoder starts using z (the default digits run does for 12 epochs), so a short run of
    collapsed-looking epochs early in training is not yet a collapse.
    """
    if not (row["kl"] < COLLAPSE_KL or row["active_units"] == 0):
        if collapsed_for >= patience:
            logger.info(
                "epoch %d: the code recovered (KL %.3f nats per point, %d active units)",
                epoch,
                row["kl"],
                row["active_units"],
            )
        return 0
    collapsed_for += 1
    if collapsed_for == patience or (last and collapsed_for < patience):
        logger.warning(
            "epoch %d: the posterior is collapsing onto the prior (KL %.3f nats per point, "
            "%d active units); consider --kl-schedule linear/cyclical or --elbo FreeBits_ELBO",
            epoch,
            row["kl"],
            row["active_units"],
        )
    return collapsed_for


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, path)


def refuse_overwrite(workdir: Path) -> None:
    """Raise unless ``workdir`` is free for a new run (nothing of an old run is lost)."""
    if (workdir / "checkpoint.pt").exists():
        raise PyroVAEError(
            f"{workdir} already holds a run; continue it with --resume or choose another --workdir"
        )


def check_resumable(workdir: Path, current: dict[str, Any]) -> dict[str, Any]:
    """Load ``workdir``'s checkpoint and check that ``current`` (config keys) can resume it."""
    path = workdir / "checkpoint.pt"
    if not path.exists():
        raise PyroVAEError(f"there is no run to resume in {workdir}; drop --resume to start one")
    state = load_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it cannot resume")
    _check_compatible(state["config"], current, path)
    return state


def _check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    from pyrovae.config import Config  # the defaults stand in for keys of older checkpoints

    defaults = Config().to_dict()
    changed = [k for k in ARCHITECTURE_KEYS if saved.get(k, defaults[k]) != current[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(
            f"checkpoint {path} was trained with another architecture ({detail}); "
            "resume with the run's own config or start a new --workdir"
        )


def train(
    vae: VAE,
    data: Dataset,
    config: Config,
    workdir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Train ``vae`` on ``data`` with SVI for ``config.num_epochs`` epochs.

    Parameters
    ----------
    vae : VAE
        Model and guide, already on the training device.
    data : Dataset
        Training and held-out data (preloaded tensors).
    config : Config
        The run's settings.
    workdir : path, optional
        Run folder. After every epoch, ``checkpoint.pt`` (atomic) and
        ``metrics.jsonl`` are written there.
    resume : bool
        Continue from ``workdir/checkpoint.pt``: parameters, optimizer state, random
        number generator states and metrics are restored, so the run continues
        exactly as if it had not stopped.
    progress : bool, optional
        Show a tqdm bar; ``None`` shows it only on a terminal.

    Returns
    -------
    list of dict
        One row per epoch: ``epoch``; ``train_objective`` (what the steps optimised,
        nats per data point, averaged over the epoch), ``train_elbo`` (the true ELBO
        of the same steps, or ``None`` for a Pyro ELBO trained with
        :math:`\beta \ne 1`) and ``test_elbo``; ``beta`` (the KL weight of the
        epoch's last step) and ``beta_mean``; the diagnostics of
        :func:`~pyrovae.inference.diagnostics.diagnose` on the first
        ``config.diagnostic_items`` held-out points (``kl``, ``kl_per_dim``,
        ``active_units``, ``mutual_information``; left out when it is 0); ``seconds``.
    """
    workdir = Path(workdir) if workdir is not None else None
    # the config as it applies to this VAE: its own spec wins over the config's model keys
    resolved = {**config.to_dict(), **vae.spec}
    checkpoint = workdir / "checkpoint.pt" if workdir is not None else None
    vae.validate_data(data.train, "training data")
    vae.validate_data(data.test, "held-out data")
    with elbo_context(config.elbo):
        num_data = vae.training_size(data)
        steps = max(1, num_data // config.batch_size)
        trainer = SVITrainer(vae, config, num_data=num_data, steps_per_epoch=steps)
        first = next(vae.training_batches(data, config.batch_size, shuffle=False))
        trainer.check(**_to_device(first, vae.device))
        # a VAE that conditions on labels is evaluated with the held-out labels
        test_labels = {"y": data.test_labels} if vae.requires_y else {}
        history: list[dict[str, Any]] = []
        if resume:
            if checkpoint is None:
                raise PyroVAEError("resume needs the run folder (workdir) to resume from")
            state = check_resumable(workdir, resolved)
            try:
                vae.load_state_dict(state["vae"])
                trainer.optimizer.load_state_dict(state["optimizer"])
                set_rng_state(state["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"checkpoint {checkpoint} does not fit this model: {e}"
                ) from None
            for group in trainer.optimizer.param_groups:  # a changed --learning-rate applies
                group["lr"] = config.learning_rate
            history = list(state["history"])
            logger.info("resuming %s after epoch %d", workdir, state["epoch"])
        else:
            if workdir is not None:
                refuse_overwrite(workdir)
            pyro.set_rng_seed(config.seed)
        start = len(history)
        trainer.step_count = start * steps  # the schedule continues where the run stopped
        probe = data.test[: config.diagnostic_items].to(vae.device)
        collapsed_for = 0  # epochs in a row that looked collapsed
        patience = max(COLLAPSE_PATIENCE, config.num_epochs // 10)
        bar = tqdm(
            total=config.num_epochs * steps,
            initial=start * steps,
            unit="step",
            disable=None if progress is None else not progress,
            desc="SVI",
        )
        for epoch in range(start, config.num_epochs):
            begin = time.perf_counter()
            train_elbo = trainer.epoch(data)
            if not math.isfinite(train_elbo):
                raise PyroVAEError(
                    f"the ELBO became {train_elbo} in epoch {epoch + 1}; lower --learning-rate "
                    "or set --clip-norm"
                )
            row = {
                "epoch": epoch + 1,
                **trainer.epoch_stats,
                "test_elbo": heldout_elbo(vae, data.test, config.eval_batch_size, **test_labels),
                **vae.metrics(data.test, data.test_labels),
            }
            if len(probe) >= 2 and not vae.requires_y:  # diagnostics encode x alone
                row.update(diagnose(vae, probe, batch_size=config.eval_batch_size))
                last = epoch + 1 == config.num_epochs
                collapsed_for = _warn_if_collapsed(row, epoch + 1, collapsed_for, last, patience)
            row["seconds"] = time.perf_counter() - begin
            history.append(row)
            bar.update(steps)
            bar.set_postfix(
                epoch=row["epoch"], train=f"{train_elbo:.2f}", test=f"{row['test_elbo']:.2f}"
            )
            # every epoch is in metrics.jsonl and on the progress bar; log about ten of them
            every = max(1, config.num_epochs // 10)
            level = logging.INFO if (epoch + 1) % every == 0 or epoch == start else logging.DEBUG
            logger.log(
                level,
                "epoch %(epoch)d: train objective %(train_objective).3f, held-out ELBO "
                "%(test_elbo).3f nats/point (%(seconds).1f s)",
                row,
            )
            if workdir is not None:
                save_checkpoint(
                    {
                        "config": resolved,
                        "event_shape": list(vae.event_shape),
                        "epoch": epoch + 1,
                        "vae": vae.state_dict(),
                        "optimizer": trainer.optimizer.state_dict(),
                        "rng": get_rng_state(),
                        "history": history,
                    },
                    checkpoint,
                )
                _write_metrics(history, workdir / "metrics.jsonl")
        bar.close()
    return history
