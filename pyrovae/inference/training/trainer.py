r"""The trainer: epochs of a variant's training steps, logging, checkpoints and exact resume.

The variant supplies its step (:mod:`pyrovae.inference.training.step`): by default
``make_elbo(...)(model, guide)``, an :class:`pyro.infer.elbo.ELBOModule` whose
``parameters()`` are the model's and the guide's and whose call returns the
differentiable loss :math:`-\mathrm{ELBO}`, stepped by Adam. Parameters are
module-local (``pyro.settings.set(module_local_params=True)``), so every piece of
state lives in ``state_dict()`` and the optimizers' ``state_dict()``: there is no
global param store to save or clear.

The loss of a minibatch is scaled by ``N / B`` through the data plate, so the
per-data-point ELBO is ``-loss / N``.

The KL weight of step ``t`` comes from a schedule (:mod:`pyrovae.inference.training.schedules`)
and after every epoch the variant evaluates itself (:meth:`pyrovae.VAE.evaluate_epoch`:
the held-out ELBO and the collapse diagnostics of each latent site: total KL, KL per
dimension, active units and the mutual information :math:`I(x; z)`). A warning is
logged when the code looks collapsed (a KL below :data:`COLLAPSE_KL` nats per data
point, summed over dimensions, or no active unit) for a tenth of the run's epochs in a row (at least
:data:`COLLAPSE_PATIENCE`).

Under ``torchrun`` the trainer is one of several ranks
(:mod:`pyrovae.inference.training.distributed`): each rank trains on its share of every
epoch, the step averages the gradients over the ranks, the logged numbers are the ranks'
means (the evaluation's are exact means over the held-out items), and rank 0 alone writes
the checkpoint and ``metrics.jsonl``. In one process everything is as it always was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch

from pyrovae.errors import CheckpointError, ConfigError, DataError, NumericsError, PyroVAEError
from pyrovae.inference.training import distributed
from pyrovae.inference.training.checkpoint import (
    CHECKPOINT_KEYS,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from pyrovae.inference.training.numerics import (
    NonFinite,
    check_loss,
    parameter_names,
    quiet_nan_warnings,
    watch_gradients,
)
from pyrovae.inference.training.optimization import (
    PLATEAU_SETTINGS,
    is_plateau,
    normalize_gradients,
)
from pyrovae.inference.training.schedules import ConstantSchedule, Schedule
from pyrovae.inference.training.step import TrainingStep
from pyrovae.progress import enabled as progress_enabled
from pyrovae.progress import progress_bar
from pyrovae.registry import closest
from pyrovae.runfolder import write_text

if TYPE_CHECKING:
    from tqdm import tqdm

    from pyrovae.data import Dataset
    from pyrovae.variants import VAE

__all__ = [
    "COLLAPSE_KL",
    "COLLAPSE_PATIENCE",
    "POSTFIX_EVERY",
    "EpochCallback",
    "Trainer",
    "best_epoch",
    "epochs_without_improvement",
    "refuse_overwrite",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)

#: total KL (nats per held-out data point, summed over dimensions) below which the
#: trainer warns that the posterior is collapsing onto the prior
COLLAPSE_KL = 0.1

#: consecutive collapsed-looking epochs before the warning: at least this many, and a
#: tenth of the run (a fresh model starts near the prior); a run's last epoch warns sooner
COLLAPSE_PATIENCE = 3

#: steps between updates of the progress bar's running objective (reading it waits for
#: the device, so not every step)
POSTFIX_EVERY = 10

#: called after every epoch, once its row is recorded and checkpointed, as
#: ``callback(trainer, row)`` (e.g. a TensorBoard writer); on every rank of a data-parallel
#: run, with the same row, so a callback that writes checks
#: :func:`~pyrovae.inference.training.distributed.is_main_process`
EpochCallback = Callable[["Trainer", dict[str, Any]], None]


class Trainer:
    """Runs a variant's training step over epochs; logs, checkpoints and resumes exactly.

    Parameters
    ----------
    vae : VAE
        The variant to train (any :data:`pyrovae.variants.VARIANTS` entry), on its device.
    step : TrainingStep
        Its step, from ``vae.training_step(...)``.
    schedule : Schedule, optional
        The KL weight :math:`\beta_t` of step ``t`` (default: 1 throughout).
    num_epochs, batch_size : int
        Passes over the training data, and minibatch size.
    kl_site_weights : dict of str to float, optional
        A factor on :math:`\beta_t` for each named latent site (the others keep
        :math:`\beta_t`), for models with several latent sites.
    eval_batch_size : int
        Data points per evaluation batch.
    diagnostic_items : int
        Held-out points of the per-epoch collapse diagnostics (0: none).
    seed : int
        Seeds Pyro's random streams at the start of a fresh run (``seed + r`` on rank
        ``r`` of a data-parallel run), and the data order of its epochs.
    time_limit : float, optional
        Stop after the first epoch that ends once the run's epochs (their ``seconds``,
        training and per-epoch evaluation, over every session of a resumed run) add up to
        this many seconds: equal wall-clock budgets for models whose epochs differ in cost.
    patience : int, optional
        Early stopping: stop once this many epochs in a row have not improved on the best
        validation score (``fit(validation=...)``), counting only the epochs after the KL
        schedule's warm-up
        (:meth:`~pyrovae.inference.training.schedules.Schedule.settled_step`). The state
        lives in the history, so a resumed run keeps it.
    lr_schedulers : dict of str to scheduler, optional
        A :mod:`torch.optim.lr_scheduler` scheduler per optimizer of the step (by its name),
        stepped after every epoch (``ReduceLROnPlateau`` on the monitored score) and saved
        in the checkpoint (:mod:`~pyrovae.inference.training.optimization`).
    normalize_gradients : bool
        Divide each parameter's gradient by its norm before every update
        (:func:`~pyrovae.inference.training.optimization.normalize_gradients`).

    Attributes
    ----------
    step_count : int
        Steps taken so far in the run (``t`` of the next step); a resumed run sets it.
    epoch_stats : dict
        After :meth:`epoch`: ``train_objective``, ``train_elbo`` (the true ELBO where
        the step provides it, else ``None``), ``beta`` (of the epoch's last step),
        ``beta_mean`` and ``train_<name>`` for the step's other logged scalars.
    """

    def __init__(
        self,
        vae: VAE,
        step: TrainingStep,
        schedule: Schedule | None = None,
        *,
        num_epochs: int = 1,
        batch_size: int = 64,
        kl_site_weights: Mapping[str, float] | None = None,
        eval_batch_size: int = 500,
        diagnostic_items: int = 1000,
        seed: int = 0,
        time_limit: float | None = None,
        patience: int | None = None,
        lr_schedulers: Mapping[str, Any] | None = None,
        normalize_gradients: bool = False,
    ) -> None:
        self.vae = vae
        self.step = step
        self.schedule = schedule or ConstantSchedule(1.0)
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.kl_site_weights = dict(kl_site_weights or {})
        unknown = [s for s in self.kl_site_weights if s not in vae.latent_sites]
        if unknown:
            raise ConfigError(
                f"kl_site_weights names {unknown[0]!r}{closest(unknown[0], vae.latent_sites)}, "
                f"not a latent site of --model {vae.name} ({', '.join(vae.latent_sites)})"
            )
        self.eval_batch_size = eval_batch_size
        self.diagnostic_items = diagnostic_items
        self.seed = seed
        self.time_limit = time_limit
        self.patience = patience
        self.lr_schedulers = dict(lr_schedulers or {})
        unknown = [k for k in self.lr_schedulers if k not in step.optimizers]
        if unknown:
            raise ConfigError(
                f"lr_schedulers names the optimizer {unknown[0]!r}, which the step lacks "
                f"(it has {', '.join(step.optimizers)})"
            )
        self.normalize_gradients = normalize_gradients
        self.step_count = 0
        self.epoch_stats: dict[str, Any] = {}
        # what the progress bar shows after its counts: epoch, running objective, held-out
        self._bar_fields: dict[str, str] = {}
        # the optimizers whose gradients are checked before each update (by id; the
        # optimizer is kept so that its id is not reused), and the names of the parameters
        self._watched: dict[int, tuple[torch.optim.Optimizer, Any]] = {}
        self._names = parameter_names(vae.named_parameters())

    def site_weights(self, beta: float) -> float | dict[str, float]:
        """The KL weight ``beta`` of a step as the model takes it: one number, or one per
        latent site when some have a factor of their own."""
        if not self.kl_site_weights:
            return beta
        return {s: beta * self.kl_site_weights.get(s, 1.0) for s in self.vae.latent_sites}

    def check(self, data: Dataset, num_data: int) -> None:
        """Evaluate the step's losses once on the variant's ``check_batches`` (a first
        minibatch of every kind of step) with Pyro's validation on.

        Catches shape and support errors (e.g. in a user's prior or likelihood) and an
        objective that does not fit the model, with one message, before training; the
        epochs then run without per-step validation, which costs about 20% of a step (the
        data were checked once).
        """
        likelihood = getattr(getattr(self.vae, "model", None), "likelihood", None)
        bins = getattr(likelihood, "discrete_bins", None)
        binarize = getattr(data, "binarize", "none")
        if bins is not None and binarize != "none":  # 0/1 pixels on a grid of bins
            raise ConfigError(
                f"the {likelihood.name} likelihood models grey values on a grid of {bins}, "
                f"but --binarize {binarize} makes every pixel 0 or 1 (its bits per "
                "dimension would not compare with anything): use --binarize none, or the "
                "bernoulli likelihood for binary images"
            )
        for split, what in (("train", "training data"), ("test", "held-out data")):
            # memory-mapped items are checked a chunk at a time, never held whole
            chunks = data.batches(split, 4096) if data.mapped else [getattr(data, split)]
            for x in chunks:
                self.vae.validate_data(x, what)
        world = distributed.world_size()
        if num_data < world:
            raise DataError(
                f"{num_data} training items cannot be shared by {world} processes; use more "
                "data (--limit) or fewer processes (--nproc-per-node)"
            )
        beta = self.site_weights(self.schedule(self.step_count))
        for batch in self.vae.check_batches(data, self.batch_size):
            with pyro.validation_enabled(True):
                self.step.check(_to_device(batch, self.vae.device), num_data=num_data, beta=beta)

    def epoch(self, data: Dataset, bar: tqdm | None = None, *, index: int | None = None) -> float:
        """One pass over shuffled training minibatches; returns the mean objective per point.

        A last batch smaller than ``batch_size`` is dropped (the JIT's traced graph
        fixes the batch size, and equal batches keep the gradient noise constant).
        Step ``t`` uses the KL weight ``schedule(t)``. The returned value is the
        training objective (the ELBO with :math:`\beta_t`, or the IWAE, free-bits,
        InfoVAE objective); :attr:`epoch_stats` has the true ELBO next to it.

        ``bar`` (a tqdm bar over the run's steps) advances by one per step and shows the
        epoch's running mean objective every :data:`POSTFIX_EVERY` steps.

        In data-parallel training the pass is this rank's share of the epoch's order
        (:func:`~pyrovae.inference.training.distributed.epoch_shard`, seeded by ``seed`` and
        ``index``, the epoch's number from 0: by default the one :attr:`step_count` is in),
        and the returned objective and :attr:`epoch_stats` are means over the ranks.
        """
        show = bar is not None and not bar.disable
        self.vae.train()
        num_data = self.vae.training_size(data)
        world = distributed.world_size()
        if index is None:
            index = self.step_count // self.vae.steps_per_epoch(data, self.batch_size, world)
        totals: dict[str, torch.Tensor] = {}
        has_elbo = True
        betas = []
        drop_last = num_data // world > self.batch_size  # as steps_per_epoch counts
        shard = distributed.epoch_shard(self.seed, index)
        # one process passes no shard: a variant's own training_batches need not take one
        sharding = {} if shard is None else {"shard": shard}
        batches = self.vae.training_batches(
            data, self.batch_size, shuffle=True, drop_last=drop_last, **sharding
        )
        for batch in batches:
            beta = self.schedule(self.step_count)
            try:
                stats = self.take_step(batch, num_data=num_data, beta=self.site_weights(beta))
            except NonFinite as e:
                e.step, e.epoch = self.step_count + 1, index + 1
                raise
            has_elbo = has_elbo and "elbo" in stats
            for key, value in stats.items():
                if key in totals:
                    totals[key] += value
                else:
                    totals[key] = value.clone()
            betas.append(beta)
            self.step_count += 1
            if bar is not None:
                bar.update(1)
                if show and len(betas) % POSTFIX_EVERY == 0:
                    running = -totals["loss"].item() / (len(betas) * num_data)
                    self._bar_fields["objective"] = f"{running:.2f}"
                    bar.set_postfix(self._bar_fields, refresh=False)
        steps = len(betas)
        totals = distributed.mean(totals)  # every rank's share of the epoch
        objective = -totals["loss"].item() / (steps * num_data)
        self.epoch_stats = {
            "train_objective": objective,
            "train_elbo": totals["elbo"].item() / (steps * num_data) if has_elbo else None,
            "beta": betas[-1],
            "beta_mean": sum(betas) / steps,
            **{
                f"train_{k}": v.item() / steps
                for k, v in totals.items()
                if k not in ("loss", "elbo")
            },
        }
        return objective

    def take_step(
        self, batch: Mapping[str, Any], *, num_data: int, beta: float | Mapping[str, float]
    ) -> dict[str, torch.Tensor]:
        """One update of :attr:`step` on ``batch`` (moved to the variant's device), checked.

        Before each of the step's optimizers updates, the gradients of its parameters are
        checked (:mod:`~pyrovae.inference.training.numerics`), and the loss the step returns
        after it; either raises :class:`~pyrovae.inference.training.numerics.NonFinite`,
        a non-finite gradient before its update is applied.
        """
        for optimizer in self.step.optimizers.values():  # a compiled step has a new one
            if id(optimizer) not in self._watched:
                handle = watch_gradients(optimizer, self._names)
                if self.normalize_gradients:  # after the check: a NaN is reported as one
                    normalize_gradients(optimizer)
                self._watched[id(optimizer)] = (optimizer, handle)
        stats = self.step(_to_device(batch, self.vae.device), num_data=num_data, beta=beta)
        check_loss(stats["loss"])
        return stats

    def fit(
        self,
        data: Dataset,
        workdir: str | os.PathLike | None = None,
        *,
        resume: bool = False,
        progress: bool | None = None,
        config: Mapping[str, Any] | None = None,
        check: bool = True,
        callbacks: Sequence[EpochCallback] = (),
        validation: Dataset | None = None,
    ) -> list[dict[str, Any]]:
        r"""Train for ``num_epochs`` epochs (from where a resumed run stopped), or until
        early stopping (``patience``) ends the run.

        Parameters
        ----------
        data : Dataset
            Training and held-out data (preloaded tensors).
        workdir : path, optional
            Run folder. After every epoch, ``checkpoint.pt`` (atomic) and
            ``metrics.jsonl`` are written there; with ``validation``, ``best.pt`` too
            whenever the epoch's validation score is the best so far (before the
            checkpoint, so an interruption between them redoes the epoch and the same best).
        resume : bool
            Continue from ``workdir/checkpoint.pt``: parameters, every optimizer's state,
            random number generator states and metrics are restored, so the run continues
            exactly as if it had not stopped (on as many ranks as it had; see
            :meth:`restore` for another number).
        progress : bool, optional
            Show a tqdm bar over the run's steps (steps/s, and the epoch, the epoch's
            running mean objective and the last held-out ELBO); ``None`` shows it only on
            a terminal. The per-epoch evaluation shows no bar of its own.
        config : mapping, optional
            The run's configuration as plain data, stored in the checkpoint.
        check : bool
            Validate the data and one loss evaluation first (:meth:`check`); the run
            layer does it itself before it writes anything. In data-parallel training the
            step is then wrapped for DistributedDataParallel, once its parameters exist.
        callbacks : sequence of callables
            Each is called as ``callback(trainer, row)`` after every epoch, once the row
            is in the history (and checkpointed, with ``workdir``).
        validation : Dataset, optional
            A validation split (:meth:`Dataset.split_validation
            <pyrovae.data.Dataset.split_validation>`): the per-epoch evaluation reads its
            ``test`` items instead of ``data.test``, and its numbers are logged as
            ``validation_<name>`` (``validation_elbo``) where they would be ``test_<name>``;
            the variant's :attr:`~pyrovae.variants.VAE.monitor` on it chooses the best
            epoch (``best.pt``) and drives early stopping.

        Returns
        -------
        list of dict
            One row per epoch: ``epoch``; ``train_objective`` (what the steps optimised,
            nats per data point, averaged over the epoch), ``train_elbo`` (the true ELBO
            of the same steps, or ``None`` for a Pyro ELBO trained with
            :math:`\beta \ne 1`); ``beta`` (the KL weight of the epoch's last step) and
            ``beta_mean``; what the variant's ``evaluate_epoch`` adds (``test_elbo``, the
            diagnostics ``kl``, ``kl_per_dim``, ``active_units``, ``mutual_information``
            of each latent site, a classifier's accuracy; ``validation_elbo`` and the
            others on the validation items with ``validation``); ``lr_<optimizer>`` with a
            learning-rate schedule; ``seconds``.
        """
        vae = self.vae
        workdir = Path(workdir) if workdir is not None else None
        checkpoint = workdir / "checkpoint.pt" if workdir is not None else None
        num_data = vae.training_size(data)
        steps = vae.steps_per_epoch(data, self.batch_size, distributed.world_size())
        main = distributed.is_main_process()
        if check:
            self.check(data, num_data)
        history: list[dict[str, Any]] = []
        if resume:
            if checkpoint is None:
                raise PyroVAEError("resume needs the run folder (workdir) to resume from")
            history = self.restore(load_checkpoint(checkpoint), checkpoint)
            logger.info("resuming %s after epoch %d", workdir, len(history))
        else:
            if workdir is not None:
                refuse_overwrite(workdir)
            pyro.set_rng_seed(distributed.rank_seed(self.seed))  # seed + rank
        if distributed.is_distributed():
            self.distribute()
        start = len(history)
        self.step_count = start * steps  # the schedule continues where the run stopped
        # epochs whose steps all have the final KL weight come after this one
        settled = math.ceil(self.schedule.settled_step() / steps)
        monitor = self.monitor_key(validation is not None)
        if self.patience is not None and validation is None:
            raise ConfigError(
                "early stopping (patience) needs a validation split to watch; give fit() "
                "validation= (--validation-fraction)"
            )
        collapsed_for = 0  # epochs in a row that looked collapsed
        patience = max(COLLAPSE_PATIENCE, self.num_epochs // 10)
        bar = progress_bar(
            total=self.num_epochs * steps,
            initial=start * steps,
            unit="step",
            desc="SVI",
            leave=True,
            disable=(None if progress is None else not progress) if main else True,
        )
        self._bar_fields = {}
        for epoch in range(start, self.num_epochs):
            stop = self._early_stop(history, monitor, settled)
            if stop is not None:
                logger.info(stop)
                break
            spent = sum(r["seconds"] for r in history)
            if self.time_limit is not None and spent > self.time_limit:
                logger.info(
                    "time limit: %.1f s of epochs spent (limit %.1f s); stopping after epoch "
                    "%d of %d",
                    spent,
                    self.time_limit,
                    epoch,
                    self.num_epochs,
                )
                break
            begin = time.perf_counter()
            self._bar_fields["epoch"] = f"{epoch + 1}/{self.num_epochs}"
            try:  # Pyro's NaN warnings would repeat what a NonFinite reports once
                with quiet_nan_warnings():
                    train_objective = self.epoch(data, bar)  # its index: from step_count
                    evaluation = self._evaluate(validation or data, epoch)
            except NonFinite as e:
                bar.close()
                raise NumericsError(self._diverged(e, history, checkpoint)) from None
            if validation is not None:
                evaluation = {_validation_key(k): v for k, v in evaluation.items()}
            row = {"epoch": epoch + 1, **self.epoch_stats, **evaluation}
            if self.patience is not None and monitor not in row:  # before anything is saved
                bar.close()
                raise ConfigError(
                    f"--patience stops on {monitor}, which --model {vae.name}'s evaluation "
                    "does not report; train it without --patience"
                )
            self._step_lr_schedulers(row, monitor if validation is not None else None)
            if "kl" in row:
                last = epoch + 1 == self.num_epochs
                collapsed_for = _warn_if_collapsed(row, epoch + 1, collapsed_for, last, patience)
            # the slowest rank's seconds: the time limit stops every rank after one epoch
            row["seconds"] = distributed.maximum(time.perf_counter() - begin)
            history.append(row)
            # a variant may evaluate nothing per epoch: the held-out ELBO is shown when there
            split = "validation" if validation is not None else "test"
            shown = row.get(f"{split}_elbo")
            heldout = "-" if shown is None else f"{shown:.2f}"
            self._bar_fields.update({"objective": f"{train_objective:.2f}", split: heldout})
            bar.set_postfix(self._bar_fields)
            # every epoch is in metrics.jsonl and on the progress bar; log about ten of them
            every = max(1, self.num_epochs // 10)
            level = logging.INFO if (epoch + 1) % every == 0 or epoch == start else logging.DEBUG
            logger.log(
                level,
                "epoch %d: train objective %.3f, %s ELBO %s nats/point (%.1f s)",
                row["epoch"],
                train_objective,
                "validation" if validation is not None else "held-out",
                heldout,
                row["seconds"],
            )
            best = best_epoch(history, monitor, self.monitor_mode)
            if workdir is not None and validation is not None and main and best == len(history):
                self.save_best(workdir / "best.pt", history, config, monitor)
            if workdir is not None:
                self.save(checkpoint, history, config)
            if workdir is not None and main:
                _write_metrics(history, workdir / "metrics.jsonl")
            for callback in callbacks:
                callback(self, row)
        bar.close()
        return history

    def monitor_key(self, validating: bool = True) -> str:
        """The row key of the variant's monitored score (:attr:`VAE.monitor
        <pyrovae.variants.VAE.monitor>`), as logged with a validation split or without."""
        key = self.vae.monitor[0]
        return _validation_key(key) if validating else key

    @property
    def monitor_mode(self) -> str:
        """``"max"`` when a larger monitored score is better, ``"min"`` when a smaller is."""
        return self.vae.monitor[1]

    def _early_stop(self, history: list[dict[str, Any]], monitor: str, settled: int) -> str | None:
        """Why the run stops before its next epoch (``patience`` epochs after the best one,
        or after the warm-up's end ``settled``, whichever is later), or ``None``."""
        if self.patience is None or not history:
            return None
        best, since = epochs_without_improvement(history, monitor, self.monitor_mode, settled)
        if since < self.patience:
            return None
        value = "none" if best is None else f"{history[best - 1][monitor]:.6g}"
        return (
            f"early stopping after epoch {len(history)}: {monitor} has not improved for "
            f"{since} epochs (patience {self.patience}); the best was {value} at epoch {best}, "
            "kept in best.pt"
        )

    def _step_lr_schedulers(self, row: dict[str, Any], monitor: str | None) -> None:
        """Log each optimizer's learning rate of the epoch as ``lr_<name>``, then step its
        scheduler; ``ReduceLROnPlateau`` on ``row[monitor]`` (the validation score), or on
        the training objective when the run has no validation split (``monitor`` is
        ``None``): a test-set score must not steer training."""
        for name, scheduler in self.lr_schedulers.items():
            row[f"lr_{name}"] = self.step.optimizers[name].param_groups[0]["lr"]
            if not is_plateau(scheduler):
                scheduler.step()
            elif monitor is None:
                scheduler.step(row["train_objective"])
            else:
                sign = 1.0 if self.monitor_mode == "max" else -1.0
                scheduler.step(sign * row[monitor])

    def _evaluate(self, data: Dataset, epoch: int) -> dict[str, Any]:
        """The variant's per-epoch evaluation; :class:`NonFinite` when the parameters the
        last step left make the held-out numbers non-finite (an update that was too large)."""
        try:
            with progress_enabled(False):  # a quick evaluation: the training bar is enough
                evaluation = self.vae.evaluate_epoch(
                    data, batch_size=self.eval_batch_size, probe_items=self.diagnostic_items
                )
        except ValueError as e:  # a distribution's parameter out of its support: NaN, inf
            found = re.match(r"Expected parameter (\w+) .* of distribution (\w+)", str(e))
            if found is None or "found invalid values" not in str(e):
                raise
            name, family = found.groups()
            what = f"the held-out evaluation met a {family} whose {name} is NaN or out of range"
            raise NonFinite(what, step=self.step_count, epoch=epoch + 1, after=True) from None
        elbo = evaluation.get("test_elbo")
        if elbo is not None and not math.isfinite(elbo):
            what = f"the held-out ELBO is {elbo}"
            raise NonFinite(what, step=self.step_count, epoch=epoch + 1, after=True)
        return evaluation

    def _diverged(
        self, e: NonFinite, history: list[dict[str, Any]], checkpoint: Path | None
    ) -> str:
        """The one message of a run stopped by a non-finite number: what, where, what is
        kept, and the fix."""
        where = f"after step {e.step}" if e.after else f"at step {e.step}"
        applied = "; its update was not applied" if e.what.startswith("the gradient") else ""
        if checkpoint is None:
            kept = "nothing was saved (no run folder)"
        elif history:
            kept = f"{checkpoint} keeps epoch {len(history)}, the last good one"
        else:
            kept = "no epoch had finished, so no checkpoint was written"
        rates = sorted({g["lr"] for o in self.step.optimizers.values() for g in o.param_groups})
        clip = getattr(self.step, "clip_norm", None)
        fix = f"lower --learning-rate (now {', '.join(f'{r:g}' for r in rates)})"
        if clip is not None:
            fix += f" or --clip-norm (now {clip:g})"
        else:
            fix += " or clip the gradients with --clip-norm (e.g. 10)"
        if checkpoint is not None and history:
            fix += ", and continue with --resume"
        return f"training diverged {where} (epoch {e.epoch}): {e.what}{applied}; {kept}; {fix}"

    def distribute(self) -> None:
        """Average the step's gradients over the ranks from now on (its ``distribute()``,
        e.g. :meth:`SVIStep.distribute <pyrovae.inference.training.SVIStep.distribute>`).

        Raises
        ------
        ConfigError
            If the step has no ``distribute`` (it cannot train data-parallel).
        """
        distribute = getattr(self.step, "distribute", None)
        if distribute is None:
            raise ConfigError(
                f"--model {self.vae.name} cannot train data-parallel: its training step "
                f"({type(self.step).__name__}) has no distribute(); train it in one process"
            )
        distribute()

    def save(
        self, path: Path, history: list[dict[str, Any]], config: Mapping[str, Any] | None
    ) -> None:
        """Write the checkpoint after epoch ``len(history)`` (atomically, rank 0 only).

        A data-parallel run gathers every rank's random states to rank 0 first (all ranks
        call this), and its checkpoint holds them as ``rank_rng`` next to ``world_size``.
        """
        spread = distributed.is_distributed()
        ranks = distributed.gather(get_rng_state(self.vae.device if spread else None))
        if ranks is None:  # a rank other than 0
            return
        state = {
            "config": dict(config or {}),
            "event_shape": list(self.vae.event_shape),
            "epoch": len(history),
            "vae": self.vae.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.step.optimizers.items()},
            "rng": ranks[0],
            "history": history,
        }
        if self.lr_schedulers:
            state["lr_schedulers"] = {k: s.state_dict() for k, s in self.lr_schedulers.items()}
        if spread:
            state.update(world_size=len(ranks), rank_rng=ranks)
        save_checkpoint(state, path)

    def save_best(
        self,
        path: Path,
        history: list[dict[str, Any]],
        config: Mapping[str, Any] | None,
        monitor: str,
    ) -> None:
        """Write ``best.pt``: the parameters after epoch ``len(history)``, the best on
        validation so far, with the config and data shape that rebuild the VAE
        (:func:`pyrovae.run.load_run` reads it as it reads ``checkpoint.pt``); no optimizer
        or random state: a run resumes from ``checkpoint.pt``."""
        save_checkpoint(
            {
                "config": dict(config or {}),
                "event_shape": list(self.vae.event_shape),
                "epoch": len(history),
                "vae": self.vae.state_dict(),
                "monitor": monitor,
                "score": history[-1][monitor],
            },
            path,
        )

    def restore(self, state: dict[str, Any], path: Path) -> list[dict[str, Any]]:
        """Load a checkpoint's parameters, optimizer and RNG states; returns its history.

        The optimizers' settings as built for this run (a changed ``--learning-rate``)
        win over the saved ones; their moments and step counts are restored.

        A run resumed on as many ranks as wrote the checkpoint restores each rank's random
        states and continues bit for bit. On another number of ranks (or from a one-process
        run), the parameters, the optimizers' moments, the epoch and so the KL schedule and
        the epochs' data order continue; the ranks' random streams cannot (there is one per
        rank), so each rank seeds a new one
        (:func:`~pyrovae.inference.training.distributed.rank_seed`), and the global
        minibatch becomes ``ranks * batch_size`` items. One process resuming a data-parallel
        run takes rank 0's streams, and draws its data order from them again.
        """
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it cannot resume")
        optimizers = self.step.optimizers
        if set(state["optimizers"]) != set(optimizers):
            raise CheckpointError(
                f"checkpoint {path} holds the optimizers {sorted(state['optimizers'])}, this "
                f"model's step has {sorted(optimizers)}; resume with the run's own --model"
            )
        try:
            self.vae.load_state_dict(state["vae"])
            for name, optimizer in optimizers.items():
                settings = [
                    {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
                ]
                optimizer.load_state_dict(state["optimizers"][name])
                for group, fresh in zip(optimizer.param_groups, settings):
                    group.update(fresh)
            saved = state.get("lr_schedulers", {})
            for name, scheduler in self.lr_schedulers.items():
                if name in saved:  # the schedule continues: its learning rate, not the flag's
                    # ...and its counters, with this version's notion of a better score (a
                    # plateau schedule saved before it was "any larger score")
                    scheduler.load_state_dict(saved[name])
                    if is_plateau(scheduler):
                        vars(scheduler).update(PLATEAU_SETTINGS)
                    for group, lr in zip(optimizers[name].param_groups, scheduler.get_last_lr()):
                        group["lr"] = lr
            self._restore_rng(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None
        return list(state["history"])

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """Each rank's random states of ``state``, or new streams (see :meth:`restore`)."""
        saved = state.get("world_size", 1)
        world = distributed.world_size()
        if not distributed.is_distributed():
            set_rng_state(state["rng"])
            if saved != 1:
                logger.info(
                    "resuming in one process a run of %d processes: rank 0's random streams "
                    "continue here",
                    saved,
                )
            return
        ranks = state.get("rank_rng")
        if ranks is not None and len(ranks) == world:
            set_rng_state(ranks[distributed.rank()])
            return
        pyro.set_rng_seed(distributed.rank_seed(self.seed, state["epoch"]))
        logger.info(
            "resuming on %d processes a run of %d: parameters, optimizer moments and the "
            "epoch continue; each rank's noise starts a new random stream",
            world,
            saved,
        )


def steps_per_epoch(num_data: int, batch_size: int, world_size: int = 1) -> int:
    """The SVI steps of an epoch: full minibatches only (a last short one is dropped),
    or one when the data fit a single minibatch; with ``world_size`` ranks, those of one
    rank's share of ``num_data // world_size`` items (every rank takes as many)."""
    return max(1, num_data // world_size // batch_size)


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


def _validation_key(key: str) -> str:
    """A per-epoch evaluation's ``test_<name>`` as measured on a validation split."""
    return "validation_" + key[len("test_") :] if key.startswith("test_") else key


def best_epoch(history: Sequence[dict[str, Any]], key: str, mode: str = "max") -> int | None:
    """The epoch (from 1) whose ``key`` is best (``mode`` ``"max"`` or ``"min"``; the
    earliest of equals; NaN never), or ``None`` when no epoch has a number there."""
    best, epoch = None, None
    for row in history:
        value = row.get(key)
        if value is None or math.isnan(value):
            continue
        if best is None or (value > best if mode == "max" else value < best):
            best, epoch = value, row["epoch"]
    return epoch


def epochs_without_improvement(
    history: Sequence[dict[str, Any]], key: str, mode: str = "max", settled: int = 0
) -> tuple[int | None, int]:
    """``(best, since)``: the :func:`best_epoch` of ``key`` and the epochs run after it or
    after epoch ``settled`` (the KL warm-up's end), whichever is later: what early stopping
    compares with its patience."""
    best = best_epoch(history, key, mode)
    return best, len(history) - max(best or 0, settled)


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def refuse_overwrite(workdir: Path) -> None:
    """Raise unless ``workdir`` is free for a new run (nothing of an old run is lost)."""
    if (workdir / "checkpoint.pt").exists():
        raise PyroVAEError(
            f"{workdir} already holds a run; continue it with --resume or choose another --workdir"
        )
