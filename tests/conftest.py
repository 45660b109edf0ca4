"""Shared pytest fixtures: every test runs seeded and with Pyro's validation checks on, and
leaves torch's thread count as it found it."""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pytest
import torch
from pyro.util import get_rng_state, set_rng_state


@pytest.fixture(autouse=True)
def seeded_and_validated() -> Iterator[None]:
    """Seed torch, numpy and random with 0 and enable Pyro's validation for one test.

    A test's random draws then do not depend on which tests ran before it. Afterwards
    the random number generators and the validation flags are put back as they were,
    so a test cannot leak either setting into the next one. So is torch's thread count,
    which ``pyrovae train`` and the commands on a run set (:mod:`pyrovae.threads`).
    """
    rng_state = get_rng_state()
    threads = torch.get_num_threads()
    pyro.set_rng_seed(0)
    try:
        with pyro.validation_enabled(True):
            yield
    finally:
        set_rng_state(rng_state)
        torch.set_num_threads(threads)
