"""Tests for flowtools.losses: log-space losses against mpmath and closed forms."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from flowtools import losses

mpmath.mp.dps = 50

EXTREME_Q = [
    -1e4,
    -745.0,
    -700.0,
    -50.0,
    -1.0,
    -1e-3,
    0.0,
    1e-8,
    1.0,
    30.0,
    50.0,
    104.0,
    700.0,
    708.5,
    710.0,
    745.0,
    1e3,
    1e4,
    1e6,
]


def _mp_logistic_log_value(q):
    return float(mpmath.log(mpmath.log1p(mpmath.exp(-mpmath.mpf(q)))))


def _mp_logistic_log_weight(q):
    return float(-mpmath.log1p(mpmath.exp(mpmath.mpf(q))))


def test_logistic_log_value_matches_mpmath_at_extreme_margins():
    got = np.asarray(losses.LOGISTIC.log_value(jnp.asarray(EXTREME_Q)))
    expected = np.array([_mp_logistic_log_value(q) for q in EXTREME_Q])
    # 4 ulps relative: a few rounding steps (exp, log1p, division, log).
    np.testing.assert_allclose(got, expected, rtol=1e-15 * 4, atol=0)


def test_logistic_log_weight_matches_mpmath_at_extreme_margins():
    got = np.asarray(losses.LOGISTIC.log_weight(jnp.asarray(EXTREME_Q)))
    expected = np.array([_mp_logistic_log_weight(q) for q in EXTREME_Q])
    # Relative 4 ulps; absolute 1e-300 because -exp(q) for q <= -745 is below
    # the normal range (XLA flushes subnormals to zero, THEORY section 2).
    np.testing.assert_allclose(got, expected, rtol=4e-15, atol=1e-300)


def test_exponential_is_exact_in_log_space():
    q = jnp.asarray(EXTREME_Q)
    np.testing.assert_array_equal(losses.EXPONENTIAL.log_value(q), -q)
    np.testing.assert_array_equal(losses.EXPONENTIAL.log_weight(q), -q)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("loss", [losses.EXPONENTIAL, losses.LOGISTIC])
def test_log_quantities_finite_over_the_whole_range(loss, dtype):
    q = jnp.concatenate(
        [
            -jnp.logspace(4, -6, 200),
            jnp.zeros(1),
            jnp.logspace(-6, 6, 400),
        ]
    ).astype(dtype)
    for values in (loss.log_value(q), loss.log_weight(q), losses.weights(q, loss)):
        assert values.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(values)))
    # No silent zero: far out the log-loss is -q itself, not 0 and not -inf.
    assert float(loss.log_value(jnp.asarray(1e6, dtype))) == -1e6


@pytest.mark.parametrize("loss", [losses.EXPONENTIAL, losses.LOGISTIC])
def test_values_match_mpmath_where_representable(loss):
    q = np.array([-700.0, -20.0, -1.0, 0.0, 0.5, 3.0, 40.0, 700.0])
    if loss.name == "exponential":
        expected = [float(mpmath.exp(-mpmath.mpf(x))) for x in q]
    else:
        expected = [float(mpmath.log1p(mpmath.exp(-mpmath.mpf(x)))) for x in q]
    # 4 ulps relative (one exp, one log1p).
    np.testing.assert_allclose(loss.value(jnp.asarray(q)), expected, rtol=4e-15)
    assert float(loss.value(0.0)) == pytest.approx(loss.zero_value, rel=1e-15)


@pytest.mark.parametrize("loss", [losses.EXPONENTIAL, losses.LOGISTIC])
def test_log_weight_is_log_of_minus_derivative(loss):
    q = jnp.linspace(-20.0, 20.0, 41)
    minus_derivative = -jax.vmap(jax.grad(loss.value))(q)
    # 1e-13 relative: autodiff of exp/softplus versus their closed-form logs.
    np.testing.assert_allclose(
        jnp.exp(loss.log_weight(q)), minus_derivative, rtol=1e-13
    )


def test_log_value_gradient_stays_finite_late():
    # d/dq log l(q) = l'(q)/l(q) -> -1 for large q; at 0 it is -(1/2)/log 2.
    grad = jax.grad(losses.LOGISTIC.log_value)
    assert float(grad(1e6)) == pytest.approx(-1.0, abs=1e-15)
    assert float(grad(0.0)) == pytest.approx(-0.5 / np.log(2.0), rel=1e-14)
    assert np.isfinite(float(grad(-1e4)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_case7_logistic_weights_in_float32_and_float64(dtype):
    q = jnp.asarray([104.0, 105.0], dtype)
    # The trap: the naive weights 1/(1 + e^q) are 0 in float32, and 0/0 is NaN.
    if dtype == jnp.float32:
        naive = 1.0 / (1.0 + jnp.exp(q))
        assert not bool(jnp.all(jnp.isfinite(naive / naive.sum())))
    expected = np.array([1.0, np.exp(-1.0)]) / (1.0 + np.exp(-1.0))  # (0.731, 0.269)
    got = losses.weights(q, "logistic")
    assert got.dtype == dtype
    # float32: 2 ulps of float32; float64: 4 ulps.
    rtol = 2 * float(jnp.finfo(dtype).eps) if dtype == jnp.float32 else 4e-16
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol)
    np.testing.assert_allclose(expected, [0.731, 0.269], atol=5e-4)


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_weights_match_direct_formula_and_sum_to_one(loss):
    q = np.linspace(-5.0, 5.0, 11)
    w = np.exp(-q) if loss == "exponential" else 1.0 / (1.0 + np.exp(q))
    got = losses.weights(jnp.asarray(q), loss)
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-14)
    assert float(jnp.sum(got)) == pytest.approx(1.0, abs=1e-15)


def test_weights_normalize_along_last_axis():
    q = jnp.asarray([[1000.0, 1001.0, 1002.0], [0.0, 0.0, 0.0]])
    got = losses.weights(q, "exponential")
    expected = np.exp(-np.arange(3.0)) / np.exp(-np.arange(3.0)).sum()
    np.testing.assert_allclose(got[0], expected, rtol=1e-15 * 4)
    np.testing.assert_allclose(got[1], np.full(3, 1 / 3), rtol=1e-15 * 4)


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_log_risk_matches_mpmath_when_every_loss_underflows(loss):
    q = [800.0, 900.0, 1000.0]
    ell = (
        (lambda x: mpmath.exp(-x))
        if loss == "exponential"
        else (lambda x: mpmath.log1p(mpmath.exp(-x)))
    )
    expected = float(mpmath.log(sum(ell(mpmath.mpf(x)) for x in q) / 3))
    got = float(losses.log_risk(jnp.asarray(q), loss))
    assert got == pytest.approx(expected, rel=4e-16)
    assert got == pytest.approx(-800.0 - np.log(3.0), rel=1e-15)


def test_log_risk_rejects_empty():
    with pytest.raises(ValueError, match="at least one margin"):
        losses.log_risk(jnp.zeros(0))


def test_get_names_and_errors():
    assert losses.get("exponential") is losses.EXPONENTIAL
    assert losses.get(" Logistic ") is losses.LOGISTIC
    assert losses.get(losses.LOGISTIC) is losses.LOGISTIC
    with pytest.raises(ValueError, match="valid names are .*exponential.*logistic"):
        losses.get("hinge")
    with pytest.raises(TypeError, match="loss must be a string"):
        losses.get(3)
    with pytest.raises(ValueError, match="Loss name must be one of"):
        losses.Loss("square", 0.0)


def test_loss_is_a_static_jit_argument():
    assert hash(losses.EXPONENTIAL) != hash(losses.LOGISTIC)

    @jax.jit
    def f(q):
        return losses.weights(q, losses.LOGISTIC)

    np.testing.assert_allclose(f(jnp.zeros(4)), np.full(4, 0.25), rtol=1e-15)


def test_integer_input_is_promoted():
    got = losses.LOGISTIC.log_value(jnp.asarray([0, 1]))
    assert jnp.issubdtype(got.dtype, jnp.floating)
    np.testing.assert_allclose(
        got, [np.log(np.log(2.0)), np.log(np.log1p(np.exp(-1.0)))], rtol=1e-15 * 4
    )
