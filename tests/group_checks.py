"""Checks shared by the tests of the steps whose parameter groups each descend their own
objective (``test_vaegan.py``, ``test_factorvae.py``): the hand-written cross-entropy, each
group's gradient by ``torch.autograd.grad`` alone, and the comparison of a resumed run with
an uninterrupted one."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

#: float64 tolerance of a hand recomputation (rounding is ~1e-13; a lost term moves ~1e-3)
ATOL64 = 1e-9

#: ELBO name -> (class, whether its KL term is the closed form)
OBJECTIVES = {"Trace_ELBO": (Trace_ELBO, False), "TraceMeanField_ELBO": (TraceMeanField_ELBO, True)}


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy written out: -[t log D + (1 - t) log(1 - D)]."""
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()


def grad(objective: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The gradient of ``objective`` with respect to ``params`` alone (zeros where unused)."""
    found = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]


def assert_all_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=ATOL64)


def assert_resumed_exactly(whole: tuple[Any, Any, list], resumed: tuple[Any, Any, list]) -> None:
    """Two ``(vae, trainer, history)`` runs, one resumed, ended alike: the same rows (but
    their seconds), parameters and every optimizer's state."""
    (whole_vae, whole_trainer, whole_history), (vae, trainer, history) = whole, resumed
    for row, whole_row in zip(history, whole_history, strict=True):
        assert {k: v for k, v in row.items() if k != "seconds"} == {
            k: v for k, v in whole_row.items() if k != "seconds"
        }
    for key, value in whole_vae.state_dict().items():
        assert torch.equal(value, vae.state_dict()[key]), key
    for name, optimizer in whole_trainer.step.optimizers.items():
        a = optimizer.state_dict()["state"]
        b = trainer.step.optimizers[name].state_dict()["state"]
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i]), name
