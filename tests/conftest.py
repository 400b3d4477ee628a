"""Shared test configuration: float64 on, seeded keys."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)

import flowtools  # noqa: E402,F401  (importing flowtools also turns on float64)


@pytest.fixture
def key():
    """A fixed PRNG key, so that every test is reproducible."""
    return jax.random.key(0)
