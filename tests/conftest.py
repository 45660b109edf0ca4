"""Shared pytest fixtures: every test runs seeded and with Pyro's validation checks on."""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pytest
from pyro.util import get_rng_state, set_rng_state


@pytest.fixture(autouse=True)
def seeded_and_validated() -> Iterator[None]:
    """Seed torch, numpy and random with 0 and enable Pyro's validation for one test.

    A test's random draws then do not depend on which tests ran before it. Afterwards
    the random number generators and the validation flags are put back as they were,
    so a test cannot leak either setting into the next one.
    """
    rng_state = get_rng_state()
    pyro.set_rng_seed(0)
    try:
        with pyro.validation_enabled(True):
            yield
    finally:
        set_rng_state(rng_state)
