"""Tests of flowtools.teaching: autodiff outputs of small ReLU functions, the
conservative field they generate, and the Clarke subdifferential (THEORY 3, 6)."""

import jax.numpy as jnp
import numpy as np
import pytest

from flowtools.models import relu
from flowtools.teaching import EXAMPLES, interval, relu_field

CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)


def test_relu_difference_at_zero():
    # relu(x) - relu(-x) = x: autodiff gives 2s at 0, Clarke {1}, field [0, 2].
    report = relu_field(lambda x, s: relu(x, s) - relu(-x, s), 0.0, CHOICES)
    np.testing.assert_array_equal(report.autodiff[:, 0], 2 * np.asarray(CHOICES))
    assert interval(report.field) == (0.0, 2.0)
    assert interval(report.clarke_estimate) == (1.0, 1.0)
    # s = 0 declares 0 critical for the identity: spurious for the field.
    assert report.spurious


def test_examples_against_known_clarke_sets():
    # (autodiff as a function of s, field interval, Clarke interval) at x = 0.
    expected = {
        "relu(x) - relu(-x)": (lambda s: 2 * s, (0.0, 2.0), (1.0, 1.0)),
        "|x| = relu(x) + relu(-x)": (lambda s: 0 * s, (-1.0, 1.0), (-1.0, 1.0)),
        "max(x, 2x) = x + relu(x)": (lambda s: 1 + s, (1.0, 2.0), (1.0, 2.0)),
    }
    for name, (autodiff, field, clarke) in expected.items():
        example = EXAMPLES[name]
        report = relu_field(example.fn, example.point, CHOICES, clarke=example.clarke)
        np.testing.assert_array_equal(
            report.autodiff[:, 0], autodiff(np.asarray(CHOICES))
        )
        assert interval(report.field) == field
        assert interval(report.clarke_estimate) == clarke
        assert interval(report.clarke) == clarke
        assert report.spurious == (name == "relu(x) - relu(-x)")


def test_two_variables_max():
    # max(x1, x2) = x2 + relu(x1 - x2) at the origin: autodiff (s, 1 - s); the
    # field and the Clarke set are the segment from (1, 0) to (0, 1).
    example = EXAMPLES["max(x1, x2) = x2 + relu(x1 - x2)"]
    report = relu_field(example.fn, example.point, CHOICES, clarke=example.clarke)
    s = np.asarray(CHOICES)
    np.testing.assert_array_equal(report.autodiff, np.stack([s, 1 - s], axis=1))
    # Both hulls are the segment: support values and distances in closed form.
    for hull in (report.field, report.clarke_estimate):
        assert float(hull.support(jnp.array([1.0, 0.0]))) == 1.0
        assert float(hull.support(jnp.array([-1.0, -1.0]))) == -1.0
        np.testing.assert_allclose(
            hull.distance(jnp.zeros(2)), np.sqrt(0.5), atol=1e-14
        )
    assert not report.spurious


def test_errors():
    with pytest.raises(ValueError, match="one or two variables"):
        relu_field(lambda x, s: jnp.sum(x), jnp.zeros(3))
    with pytest.raises(ValueError, match="at least one choice"):
        relu_field(lambda x, s: relu(x, s), 0.0, ())
    with pytest.raises(ValueError, match="must return a scalar"):
        relu_field(lambda x, s: jnp.stack([x, x]), 0.0)
    with pytest.raises(ValueError, match="shape \\(k, 1\\)"):
        interval(
            relu_field(EXAMPLES["max(x1, x2) = x2 + relu(x1 - x2)"].fn, [0, 0]).field
        )
