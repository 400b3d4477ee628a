"""Tests for flowtools.margins: margins, smoothed margins, late stage, KKT residual."""

import warnings

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from flowtools import data, margins, models, reference

mpmath.mp.dps = 60


@pytest.fixture(scope="module")
def blobs():
    return data.make_blobs(n=12, d=3, margin=0.3, seed=0)


@pytest.fixture(scope="module")
def linear3():
    return models.linear(3)


def _circle(a):
    """Two samples with signed points (cos a, +-sin a) (THEORY section 6)."""
    X = np.array([[np.cos(a), np.sin(a)], [np.cos(a), -np.sin(a)]])
    return data.Dataset.from_arrays(X, np.ones(2), name="circle")


def _mp_smoothed(q, rho_L, loss):
    """Smoothed margin from the margins q_i(theta), in 60-digit arithmetic."""
    q = [mpmath.mpf(float(x)) for x in q]
    if loss == "exponential":
        return float(-mpmath.log(sum(mpmath.exp(-x) for x in q)) / rho_L)
    S = sum(mpmath.log1p(mpmath.exp(-x)) for x in q)
    return float(-mpmath.log(mpmath.expm1(S)) / rho_L)


# -------------------------------------------------------------- margins


def test_per_sample_and_normalized_for_a_linear_model(blobs, linear3):
    w = np.array([0.3, -1.2, 2.0])
    expected = blobs.y * (blobs.X @ w)
    # One matrix-vector product: agreement to 1e-15 relative (a few ulps).
    np.testing.assert_allclose(
        margins.per_sample(linear3, (jnp.asarray(w),), blobs), expected, rtol=1e-14
    )
    np.testing.assert_allclose(
        margins.per_sample(linear3, jnp.asarray(w), (blobs.X, blobs.y)),
        expected,
        rtol=1e-14,
    )
    gbar = float(margins.normalized(linear3, jnp.asarray(w), blobs))
    assert gbar == pytest.approx(expected.min() / np.linalg.norm(w), rel=1e-14)


def test_normalized_is_scale_invariant_for_degree_two(blobs):
    model = models.mlp(3, widths=(4,))
    theta = model.init(jax.random.key(1))
    q = np.asarray(margins.per_sample(model, theta, blobs))
    rho = float(np.sqrt(sum(np.sum(np.asarray(leaf) ** 2) for leaf in theta)))
    expected = q.min() / rho**2
    for c in (1e-3, 1.0, 1e4):
        scaled = tuple(c * leaf for leaf in theta)
        # Homogeneity holds to rounding: 1e-13 relative.
        got = float(margins.normalized(model, scaled, blobs))
        assert got == pytest.approx(expected, rel=1e-13)


def test_zero_parameters_are_rejected(linear3, blobs):
    with pytest.raises(ValueError, match="theta is the zero vector"):
        margins.normalized(linear3, jnp.zeros(3), blobs)
    with pytest.raises(ValueError, match="theta is the zero vector"):
        margins.smoothed(linear3, jnp.zeros(3), blobs)


def test_bad_data_argument(linear3):
    with pytest.raises(TypeError, match="ds must be a flowtools.data.Dataset"):
        margins.per_sample(linear3, jnp.ones(3), np.ones((2, 3)))


# ------------------------------------------------------------ smoothed margin


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0, 1e3, 1e5])
def test_smoothed_matches_mpmath_across_scales(blobs, linear3, loss, scale):
    # scale 1e3 and 1e5 put every exp(-q_i) far below the float64 range.
    w_unit, _ = reference.svm_direction(blobs.X, blobs.y)
    w = scale * w_unit
    q = blobs.y * (blobs.X @ w)
    expected = _mp_smoothed(q, scale, loss)
    got = float(margins.smoothed(linear3, jnp.asarray(w), blobs, loss=loss))
    # 1e-13 relative: rounding of q and of the log-space reductions.
    assert got == pytest.approx(expected, rel=1e-13)
    gbar = q.min() / scale
    n = blobs.n
    if loss == "exponential":
        # Lyu & Li's sandwich: gbar - log(n) / rho^L <= gtilde <= gbar.
        assert gbar - np.log(n) / scale - 1e-15 <= got <= gbar + 1e-15


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_smoothed_with_misclassified_samples_and_huge_S(loss):
    # Negative margins at scale 1e3: S is about 1e3, expm1(S) overflows naively.
    X = np.array([[1.0, 0.2], [-0.5, 1.0], [0.3, -1.0]])
    ds = data.Dataset.from_arrays(X, np.array([1.0, 1.0, -1.0]))
    model = models.linear(2)
    w = 1e3 * np.array([0.6, -0.8])
    q = ds.y * (ds.X @ w)
    assert q.min() < 0
    got = float(margins.smoothed(model, jnp.asarray(w), ds, loss=loss))
    assert np.isfinite(got)
    assert got == pytest.approx(_mp_smoothed(q, 1e3, loss), rel=1e-13)


@pytest.mark.parametrize("scale", [1e-4, 0.3, 1.0, 50.0, 1e4, 1e6])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_logistic_smoothed_of_one_sample_is_its_normalized_margin(scale, sign):
    # THEORY section 2: for one sample, gtilde = q / rho^L exactly.
    ds = data.Dataset.from_arrays(np.array([[sign * 0.6, 0.8]]), np.ones(1))
    model = models.linear(2)
    w = jnp.asarray([scale, 0.0])
    got = float(margins.smoothed(model, w, ds, loss="logistic"))
    # 1e-12: log(expm1(softplus(-q))) = -q holds to a few ulps of max(1, |q|).
    assert got == pytest.approx(sign * 0.6, rel=1e-12, abs=1e-12 / scale)


def test_smoothed_from_margins_at_astronomical_norms():
    q_u = jnp.asarray([0.25, 0.5, 0.25, 2.0])
    for loss in ("exponential", "logistic"):
        for log_rho in (400.0, 1e4):
            got = float(margins.smoothed_from_margins(q_u, log_rho, 2, loss))
            # The correction log(2) / rho^L is below 1e-300: exactly gbar.
            assert got == 0.25
    # Moderate norm, degree 2: against mpmath.
    log_rho = 3.0
    rho_L = np.exp(2 * log_rho)
    got = float(margins.smoothed_from_margins(q_u, log_rho, 2, "logistic"))
    expected = _mp_smoothed(np.asarray(q_u) * rho_L, rho_L, "logistic")
    assert got == pytest.approx(expected, rel=1e-13)


# ------------------------------------------------------ loss and late stage


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_log_loss_matches_mpmath_when_the_loss_underflows(blobs, linear3, loss):
    w_unit, _ = reference.svm_direction(blobs.X, blobs.y)
    w = 5e3 * w_unit
    q = blobs.y * (blobs.X @ w)
    mq = [mpmath.mpf(float(x)) for x in q]
    ell = mpmath.exp if loss == "exponential" else None
    if loss == "exponential":
        total = sum(ell(-x) for x in mq)
    else:
        total = sum(mpmath.log1p(mpmath.exp(-x)) for x in mq)
    expected = float(mpmath.log(total / len(mq)))
    got = float(margins.log_loss(linear3, jnp.asarray(w), blobs, loss))
    assert expected < -1000  # the loss itself is 0 in float64
    assert got == pytest.approx(expected, rel=1e-14)


def test_training_error_and_late_stage(blobs, linear3):
    w_unit, _ = reference.svm_direction(blobs.X, blobs.y)
    w = jnp.asarray(w_unit)
    assert margins.is_late_stage(linear3, w, blobs) is True
    assert float(margins.training_error(linear3, w, blobs)) == 0.0
    margins.check_late_stage(linear3, w, blobs)  # no error
    assert margins.is_late_stage(linear3, -w, blobs) is False
    assert float(margins.training_error(linear3, -w, blobs)) == 1.0


def test_check_late_stage_names_indices_error_and_loss():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
    ds = data.Dataset.from_arrays(X, np.array([1.0, 1.0, 1.0, 1.0]))
    model = models.linear(2)
    w = jnp.asarray([1.0, -1.0])  # q = (1, -1, 0, -3): rows 1, 2, 3 fail (0 counts)
    assert float(margins.training_error(model, w, ds)) == 0.75
    with pytest.raises(margins.NotLateStageError, match=r"indices \[1, 2, 3\]") as info:
        margins.check_late_stage(model, w, ds, loss="logistic")
    error = info.value
    assert isinstance(error, ValueError)
    assert "training error 0.75" in str(error) and "logistic loss" in str(error)
    np.testing.assert_array_equal(error.indices, [1, 2, 3])
    expected_log_loss = np.log(np.mean(np.log1p(np.exp(-np.array([1.0, -1, 0, -3])))))
    assert error.log_loss == pytest.approx(expected_log_loss, rel=1e-14)


# ---------------------------------------------------------------- KKT residual


def test_kkt_residual_on_the_circle_closed_forms():
    a, th = 0.4, 0.3
    ds = _circle(a)
    model = models.linear(2)
    # At the kink th = 0 both samples are active and (z_1 + z_2) / 2 = gbar u.
    r0 = float(margins.kkt_residual(model, jnp.asarray([1.0, 0.0]), ds))
    assert r0 <= 1e-15
    # Away from it only z_2 is active: ||P_u z_2|| / gbar = tan(th + a).
    u = jnp.asarray([np.cos(th), np.sin(th)])
    r = float(margins.kkt_residual(model, u, ds, eps=1e-6))
    assert r == pytest.approx(np.tan(th + a), rel=1e-13)
    # A non-unit input is normalized first.
    assert float(margins.kkt_residual(model, 3.0 * u, ds)) == pytest.approx(
        r, rel=1e-13
    )
    # With eps = 1 both are active: minimize over lambda in [0, 1] in closed form.
    z1, z2 = np.array([np.cos(a), np.sin(a)]), np.array([np.cos(a), -np.sin(a)])
    gbar = np.cos(th + a)
    base, diff = z2 - gbar * np.asarray(u), z1 - z2
    lam = np.clip(-(base @ diff) / (diff @ diff), 0.0, 1.0)
    expected = np.linalg.norm(base + lam * diff) / gbar
    r_both = float(margins.kkt_residual(model, u, ds, eps=1.0))
    assert r_both == pytest.approx(expected, rel=1e-12)
    assert r_both < r


def test_kkt_residual_vanishes_at_the_svm_direction(blobs, linear3):
    w, _ = reference.svm_direction(blobs.X, blobs.y)
    # The support ties hold to rounding (1e-15), well inside eps = 1e-9.
    r = float(margins.kkt_residual(linear3, jnp.asarray(w), blobs, eps=1e-9))
    assert r <= 1e-12
    # Any other direction is not a KKT point of the linear problem.
    other = w + np.array([0.05, -0.02, 0.03])
    assert float(margins.kkt_residual(linear3, jnp.asarray(other), blobs)) > 1e-3


def test_kkt_residual_of_the_diagonal_network_at_the_l1_optimum():
    # theta = (sqrt(beta+), sqrt(beta-)) has ||theta||^2 = ||beta||_1 = 1 and
    # realizes the l1 max-margin predictor; LP duality makes it a KKT point.
    ds = data.make_blobs(n=15, d=3, margin=0.4, seed=5)
    beta, gamma_1 = reference.l1_margin_direction(ds.X, ds.y)
    model = models.diagonal(3)
    u = (jnp.sqrt(jnp.maximum(beta, 0.0)), jnp.sqrt(jnp.maximum(-beta, 0.0)))
    assert float(margins.normalized(model, u, ds)) == pytest.approx(gamma_1, rel=1e-14)
    r = float(margins.kkt_residual(model, u, ds, eps=1e-9))
    # The refined LP vertex has exact ties (1e-15); residual at rounding level.
    assert r <= 1e-10


def test_kkt_residual_single_active_sample_matches_hand_gradient():
    # A ReLU MLP (L = 2) labelling its own data: late stage by construction.
    d, width = 3, 5
    model = models.mlp(d, widths=(width,))
    theta = model.init(jax.random.key(3))
    X = np.asarray(jax.random.normal(jax.random.key(4), (20, d)))
    scores = np.asarray(model.apply(theta, X))
    X, y = X[np.abs(scores) > 1e-3], np.sign(scores[np.abs(scores) > 1e-3])
    ds = data.Dataset.from_arrays(X, y)
    W1, head = (np.asarray(leaf) for leaf in theta)
    rho = np.sqrt(np.sum(W1**2) + np.sum(head**2))
    W1, head = W1 / rho, head / rho

    # Hand-written margins and gradients of q_i = y_i head . relu(W1 x_i).
    pre = X @ W1.T
    q = y * (np.maximum(pre, 0.0) @ head)
    i = int(np.argmin(q))
    grad_W1 = y[i] * np.outer(head * (pre[i] > 0), X[i])
    grad_head = y[i] * np.maximum(pre[i], 0.0)
    J = np.concatenate([grad_W1.ravel(), grad_head])
    u = np.concatenate([W1.ravel(), head])
    expected = np.linalg.norm(J - 2 * q[i] * u) / (2 * q[i])

    r = float(margins.kkt_residual(model, jnp.asarray(u), ds, eps=0.0))
    # Autodiff and the hand gradient agree to rounding: 1e-12 relative.
    assert r == pytest.approx(expected, rel=1e-12)
    assert float(
        margins.kkt_residual(model, model.unravel(jnp.asarray(u)), ds, eps=0.0)
    ) == pytest.approx(r, rel=1e-14)


def test_kkt_residual_errors_and_overflow_warning():
    ds = _circle(0.4)
    model = models.linear(2)
    u = jnp.asarray([1.0, 0.0])
    with pytest.raises(ValueError, match="positive normalized margin"):
        margins.kkt_residual(model, -u, ds)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        margins.kkt_residual(model, u, ds, eps=-1.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        margins.kkt_residual(model, u, ds, k=0)
    with pytest.warns(UserWarning, match="upper bound"):
        r = float(margins.kkt_residual(model, u, ds, k=1))
    # One generator of the two: the residual of a single sample, tan(a).
    assert r == pytest.approx(np.tan(0.4), rel=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        margins.kkt_residual(model, u, ds, k=2)
