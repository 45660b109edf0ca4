r"""The training loop: stochastic variational inference with a plain ``torch.optim`` optimizer.

``make_elbo(...)(model, guide)`` gives an :class:`pyro.infer.elbo.ELBOModule`
whose ``parameters()`` are the model's and the guide's, and whose call returns the
differentiable loss :math:`-\mathrm{ELBO}`; Adam steps on it. Parameters are
module-local (``pyro.settings.set(module_local_params=True)``), so every piece of
state lives in ``state_dict()``: there is no global param store to save or clear.

The loss of a minibatch is scaled by ``N / B`` through the data plate, so the
per-data-point ELBO is ``-loss / N``.
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
from pyrovae.inference.objectives import elbo_context, make_elbo
from pyrovae.vae import VAE

if TYPE_CHECKING:
    from pyrovae.config import Config

__all__ = ["ARCHITECTURE_KEYS", "SVITrainer", "refuse_overwrite", "train"]

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
)


#: what a checkpoint written by :func:`train` holds
CHECKPOINT_KEYS = ("config", "event_shape", "epoch", "vae", "optimizer", "rng", "history")


class SVITrainer:
    """One SVI step at a time: ``loss = -ELBO``, backward, optional clipping, Adam step.

    Parameters
    ----------
    vae : VAE
        The model and guide to train.
    config : Config
        Reads ``elbo``, ``num_particles``, ``vectorize_particles``, ``beta``,
        ``learning_rate`` and ``clip_norm``.
    num_data : int
        Size of the training set, for the plate's minibatch scaling.
    """

    def __init__(self, vae: VAE, config: Config, num_data: int) -> None:
        self.vae = vae
        self.config = config
        self.num_data = num_data
        elbo = make_elbo(config.elbo, config.num_particles, config.vectorize_particles)
        self.loss = vae.training_loss(elbo)
        self.parameters = list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)

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
        """One pass over shuffled training minibatches; returns the mean train ELBO per point.

        A last batch smaller than ``batch_size`` is dropped (the JIT's traced graph
        fixes the batch size, and equal batches keep the gradient noise constant).
        """
        self.vae.train()
        total = torch.zeros((), device=self.vae.device)
        steps = 0
        drop_last = self.num_data > self.config.batch_size
        # a plain VAE yields {"x": x}; conditional variants add their labels (VAE hooks)
        batches = self.vae.training_batches(
            data, self.config.batch_size, shuffle=True, drop_last=drop_last
        )
        for batch in batches:
            total += self.step(**_to_device(batch, self.vae.device))
            steps += 1
        return -total.item() / (steps * self.num_data)


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
    from pyrovae.config import Config

    # keys added later (model, num_classes) read as their defaults in older checkpoints
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
        One row per epoch: ``epoch``, ``train_elbo`` and ``test_elbo`` (nats per data
        point), ``beta`` and ``seconds``.
    """
    workdir = Path(workdir) if workdir is not None else None
    # the config as it applies to this VAE: its own spec wins over the config's model keys
    resolved = {**config.to_dict(), **vae.spec}
    checkpoint = workdir / "checkpoint.pt" if workdir is not None else None
    vae.validate_data(data.train, "training data")
    vae.validate_data(data.test, "held-out data")
    with elbo_context(config.elbo):
        trainer = SVITrainer(vae, config, num_data=vae.training_size(data))
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
        steps = max(1, trainer.num_data // config.batch_size)
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
                "train_elbo": train_elbo,
                "test_elbo": heldout_elbo(vae, data.test, config.eval_batch_size, **test_labels),
                **vae.metrics(data.test, data.test_labels),
                "beta": config.beta,
                "seconds": time.perf_counter() - begin,
            }
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
                "epoch %(epoch)d: train ELBO %(train_elbo).3f, held-out ELBO "
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
