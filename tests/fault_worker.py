"""``pyrovae ARGS`` in a process that stops at a chosen moment, for tests/test_run_folder.py.

``python tests/fault_worker.py MOMENT MARKER ARGS...`` runs ``pyrovae ARGS`` with one
function patched so that, at ``MOMENT``, the process writes its id to the file ``MARKER``
and waits (up to two minutes) until the file ``MARKER.go`` appears: the test kills it
there, or lets it go on. The moments:

- ``startup``: before the data are loaded (:func:`pyrovae.run.load_data`);
- ``epoch:E``: at the third training step of epoch ``E`` (counted from 1 in this process);
- ``checkpoint:E``: the ``E``-th checkpoint of this process is in its temporary file,
  not yet in place;
- ``metrics:E``: half of the ``E``-th ``metrics.jsonl`` of this process is in its
  temporary file;
- ``evaluation``: before the final evaluation (:func:`pyrovae.run.evaluate_run`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pyrovae import run, runfolder
from pyrovae.inference.training import checkpoint, step, trainer


def pause(marker: Path) -> None:
    """Say where this process stopped, then wait for ``MARKER.go`` (or a signal)."""
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(marker)
    go = marker.with_name(marker.name + ".go")
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def nth(n: int):
    """A counter that is true at its ``n``-th call."""
    calls = [0]

    def hit() -> bool:
        calls[0] += 1
        return calls[0] == n

    return hit


def install(moment: str, marker: Path) -> None:
    name, _, number = moment.partition(":")
    n = int(number or 0)
    if name == "startup":
        load_data = run.load_data

        def paused_load(*args, **kwargs):
            pause(marker)
            return load_data(*args, **kwargs)

        run.load_data = paused_load
    elif name == "epoch":
        epoch, call = trainer.Trainer.epoch, step.SVIStep.__call__
        in_epoch, steps = nth(n), [0]

        def counted_epoch(self, *args, **kwargs):
            steps[0] = 1 if in_epoch() else -(10**9)  # count the steps of epoch n only
            return epoch(self, *args, **kwargs)

        def paused_call(self, *args, **kwargs):
            steps[0] += 1
            if steps[0] == 3:
                pause(marker)
            return call(self, *args, **kwargs)

        trainer.Trainer.epoch = counted_epoch
        step.SVIStep.__call__ = paused_call
    elif name == "checkpoint":
        write, hit = checkpoint.atomic_write, nth(n)

        def paused_write(path, fill):
            def fill_then_pause(f):
                fill(f)
                f.flush()
                pause(marker)

            return write(path, fill_then_pause if hit() else fill)

        checkpoint.atomic_write = paused_write
    elif name == "metrics":
        write_text, hit = trainer.write_text, nth(n)

        def paused_text(path, text):
            if Path(path).name != "metrics.jsonl" or not hit():
                return write_text(path, text)

            def half_then_pause(f):
                f.write(text[: len(text) // 2].encode())
                f.flush()
                pause(marker)
                f.write(text[len(text) // 2 :].encode())

            return runfolder.atomic_write(path, half_then_pause)

        trainer.write_text = paused_text
    elif name == "evaluation":
        evaluate_run = run.evaluate_run

        def paused_evaluation(*args, **kwargs):
            pause(marker)
            return evaluate_run(*args, **kwargs)

        run.evaluate_run = paused_evaluation
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    from pyrovae.cli import main

    install(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
