"""Tests of normalized SGD in polar form (flowtools.sgd)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from scipy.special import logsumexp

import flowtools as ft
from flowtools import sgd
from flowtools.sgd import _engine


def _separable(n, d, seed, margin=0.3):
    """Linearly separable data (through the origin) with a known gap."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(4 * n, d))
    score = X @ w
    keep = np.abs(score) > margin
    X, score = X[keep][:n], score[keep][:n]
    return ft.data.Dataset.from_arrays(X, np.sign(score), name=f"separable{seed}")


@pytest.fixture(scope="module")
def ds():
    return _separable(40, 5, seed=1)


@pytest.fixture(scope="module")
def net(ds):
    return ft.models.mlp(ds.dim, widths=(8,))


@pytest.fixture(scope="module")
def theta0(net):
    return net.init(jax.random.key(3), scale=0.5)


def _plain_path(model, ds, theta0, alpha, steps, batch_size, seed, loss):
    """Flat theta_k of plain SGD at the requested steps."""
    X, y = jnp.asarray(ds.X), jnp.asarray(ds.y)
    key = jax.random.key(seed)

    def risk(theta, idx):
        q = y[idx] * model.apply(theta, X[idx])
        if loss == "exponential":
            return jnp.mean(jnp.exp(-q))
        return jnp.mean(jnp.log1p(jnp.exp(-q)))

    @jax.jit
    def run_to(theta, k0, k1):
        def body(k, theta):
            idx = jax.random.randint(jax.random.fold_in(key, k), (batch_size,), 0, ds.n)
            grad = jax.grad(risk)(theta, idx)
            return tuple(a - alpha * g for a, g in zip(theta, grad, strict=True))

        return jax.lax.fori_loop(k0, k1, body, theta)

    out, theta, k = {}, tuple(theta0), 0
    for target in steps:
        theta = run_to(theta, k, int(target))
        k = int(target)
        out[k] = np.concatenate([np.asarray(a).ravel() for a in theta])
    return out


# ----------------------------------------------------------------- equivalence


def test_same_iterates_as_plain_sgd(net, ds, theta0):
    """2,000 steps: polar form = plain SGD on theta to 1e-10 (rounding only)."""
    record = sgd.Record(log_points=0, every=250)
    trace = sgd.run(
        net, ds, theta0, 0.05, 2000, batch_size=2, seed=7, record=record, chunk=256
    )
    plain = _plain_path(net, ds, theta0, 0.05, trace.k[1:], 2, 7, "exponential")
    assert trace.k.tolist() == list(range(0, 2001, 250))
    for i, k in enumerate(trace.k[1:], start=1):
        theta = plain[int(k)]
        rho = np.linalg.norm(theta)
        theta_polar = np.exp(trace.log_rho[i]) * trace.u[i]
        # 1e-10: float64 rounding accumulated over 2,000 steps is ~1e-13
        assert np.linalg.norm(theta_polar - theta) / rho < 1e-10
    assert trace.late_stage_step is not None


def test_same_iterates_gd_logistic_linear(ds):
    """Full-batch GD, logistic loss, linear model: same iterates as plain GD."""
    model = ft.models.linear(ds.dim)
    theta0 = model.init(jax.random.key(0))
    record = sgd.Record(log_points=0, steps=(100, 300))
    trace = sgd.run(
        model,
        ds,
        theta0,
        0.5,
        300,
        loss="logistic",
        sampling="full",
        record=record,
        chunk=64,
    )
    X, y = ds.X, ds.y
    theta = np.asarray(model.ravel(theta0))
    for k in range(300):
        if k in (100,):
            rho = np.linalg.norm(theta)
            i = list(trace.k).index(k)
            np.testing.assert_allclose(trace.u[i], theta / rho, rtol=0, atol=1e-12)
        q = y * (X @ theta)
        weights = 1.0 / (1.0 + np.exp(q))
        theta = theta + 0.5 * (weights * y) @ X / len(y)
    # 1e-12: 300 steps of float64 rounding on a linear model
    np.testing.assert_allclose(trace.u[-1], theta / np.linalg.norm(theta), atol=1e-12)
    np.testing.assert_allclose(
        trace.log_rho[-1], np.log(np.linalg.norm(theta)), rtol=1e-12
    )
    # GD: the mini-batch clock is the exact clock
    np.testing.assert_allclose(trace.t, trace.t_exact, rtol=1e-12)
    # GD: no sampling noise; e_k is second order: ||e_k|| <= eta_k ||g_k||^2 and
    # ||g_k|| <= max_i ||x_i|| for a linear model
    assert np.all(trace.xi_norm <= 1e-9 * trace.v_norm)
    bound = trace.eta * np.max(np.sum(X**2, axis=1))
    assert np.all(trace.e_norm <= bound)


def test_reshuffle_visits_every_sample_once_per_epoch(ds):
    """Reshuffle: step k uses the documented permutation of its epoch."""
    model = ft.models.linear(ds.dim)
    theta0 = model.init(jax.random.key(1))
    n, alpha = ds.n, 0.2
    trace = sgd.run(
        model,
        ds,
        theta0,
        alpha,
        2 * n,
        sampling="reshuffle",
        seed=4,
        record=[2 * n],
        chunk=32,
    )
    theta = np.asarray(model.ravel(theta0))
    for k in range(2 * n):
        perm = np.asarray(
            jax.random.permutation(jax.random.fold_in(jax.random.key(4), k // n), n)
        )
        i = perm[k % n]
        q = ds.y[i] * ds.X[i] @ theta
        theta = theta + alpha * np.exp(-q) * ds.y[i] * ds.X[i]
    np.testing.assert_allclose(trace.u[-1], theta / np.linalg.norm(theta), atol=1e-12)


# ------------------------------------------------------------------- underflow


def test_no_underflow_at_huge_scale(ds):
    """Flow-clock step from a scale where plain float64 SGD sees zero loss."""
    model = ft.models.linear(ds.dim)
    w = np.linalg.lstsq(ds.X, ds.y, rcond=None)[0]
    assert np.all(ds.y * (ds.X @ w) > 0), "the start must classify every sample"
    theta0 = (jnp.asarray(1e5 * w / np.linalg.norm(w)),)
    q_theta = ds.y * (ds.X @ np.asarray(theta0[0]))

    # plain float64 under JAX: every weight is exactly 0, so is the step
    weights = jnp.exp(-jnp.asarray(q_theta))
    assert float(jnp.sum(weights)) == 0.0

    eta = 0.1
    trace = sgd.run(
        model,
        ds,
        theta0,
        eta,
        1,
        sampling="full",
        step_rule="flow_clock",
        record=[0, 1],
    )
    u0 = np.asarray(theta0[0]) / 1e5
    log_w = -q_theta
    lam = np.exp(log_w - logsumexp(log_w))
    g = (lam * ds.y) @ ds.X  # sum_i lambda_i J_i(u), J_i(u) = y_i x_i
    moved = u0 + eta * g
    np.testing.assert_allclose(trace.u[1], moved / np.linalg.norm(moved), atol=1e-14)
    np.testing.assert_allclose(
        trace.log_rho[1] - trace.log_rho[0], np.log(np.linalg.norm(moved)), rtol=1e-12
    )
    # 1e-10: margins of order 1e4 enter log W_k, so rounding is amplified 1e4x
    np.testing.assert_allclose(trace.eta, eta, rtol=1e-10)
    assert trace.log_loss[0] < -1e3  # log R, finite although R underflows


# ----------------------------------------------------------------- step rules


@pytest.mark.filterwarnings("ignore:the late stage was not reached")
def test_step_rules_fix_eta(net, ds, theta0):
    """Loss-scaled with L=2 and the exponential loss, and flow-clock: eta_k = step."""
    record = sgd.Record(log_points=0, every=1)
    for rule in ("loss_scaled", "flow_clock"):
        trace = sgd.run(
            net, ds, theta0, 0.02, 60, batch_size=2, step_rule=rule, record=record
        )
        # W_k = n R(theta_k) for the exponential loss, so eta_k = step exactly
        np.testing.assert_allclose(trace.eta, 0.02, rtol=1e-12)
        # the exact clock is accumulated at every step
        np.testing.assert_allclose(trace.t_exact, 0.02 * trace.k, rtol=1e-12)


def test_exact_clock_accumulates_eta(net, ds, theta0):
    trace = sgd.run(
        net,
        ds,
        theta0,
        0.05,
        200,
        batch_size=2,
        clock="exact",
        record=sgd.Record(log_points=0, every=1),
    )
    np.testing.assert_allclose(np.diff(trace.t_exact), trace.eta[:-1], rtol=1e-12)
    np.testing.assert_allclose(np.diff(trace.t), trace.eta_estimate[:-1], rtol=1e-12)
    default = sgd.run(
        net,
        ds,
        theta0,
        0.05,
        200,
        batch_size=2,
        record=sgd.Record(log_points=0, every=1),
    )
    assert np.all(np.isnan(default.t_exact))
    # the clock does not change the iterates
    np.testing.assert_array_equal(default.u, trace.u)


def test_dt_records_spread_in_flow_time(net, ds, theta0):
    dt = 0.05
    trace = sgd.run(
        net, ds, theta0, 0.05, 1500, batch_size=2, record={"log_points": 0, "dt": dt}
    )
    crossed = np.floor(trace.t[:-1] / dt)
    # one record at the first step past each multiple of dt: no interval twice
    assert np.all(np.diff(crossed) >= 1)
    # and records spread over the whole flow time reached
    assert len(trace) - 1 >= 0.5 * trace.t[-1] / dt


def test_one_compilation_per_configuration(net, ds, theta0):
    """Chunks, renormalizations, the final record and a repeated run share one
    compiled engine: `run` only compiles again for a new configuration."""
    kwargs = dict(batch_size=2, seed=1, record={"log_points": 5, "dt": 0.1}, chunk=64)
    before = _engine._run_chunk._cache_size()
    sgd.run(net, ds, theta0, 0.05, 300, **kwargs)
    after_first = _engine._run_chunk._cache_size()
    assert after_first <= before + 1
    sgd.run(net, ds, theta0, 0.03, 300, **kwargs)
    assert _engine._run_chunk._cache_size() == after_first


# ------------------------------------------------------ late stage and margins


def test_late_stage_entry_is_first_classified_step(net, ds):
    theta0 = net.init(jax.random.key(11), scale=0.5)
    trace = sgd.run(
        net,
        ds,
        theta0,
        0.05,
        1200,
        seed=2,
        batch_size=2,
        record=sgd.Record(log_points=0, every=1),
        chunk=256,
    )
    first = int(trace.k[np.argmax(trace.train_error == 0)])
    assert trace.train_error[0] > 0
    # the reported entry is a classified step, never before the first one; a
    # short earlier visit between two checks may be skipped (documented)
    entry = trace.late_stage_step
    assert entry >= first and trace.train_error[entry] == 0
    assert trace.train_error[entry - 1] > 0
    assert trace.status == "late stage reached"


def test_svm_direction_and_smoothed_margin():
    """Linear model: GD and SGD directions approach the hard-margin SVM."""
    ds = _separable(30, 3, seed=5)
    X, y = ds.X, ds.y
    Z = y[:, None] * X

    def neg_dual(a):
        v = Z.T @ a
        return 0.5 * v @ v - a.sum(), Z @ v - 1.0

    res = scipy.optimize.minimize(
        neg_dual,
        np.zeros(len(y)),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * len(y),
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    w_svm = Z.T @ res.x
    w_svm /= np.linalg.norm(w_svm)

    model = ft.models.linear(ds.dim)
    theta0 = (jnp.asarray(np.ones(3) * 0.1),)
    record = sgd.Record(log_points=40)
    gd = sgd.run(model, ds, theta0, 1.0, 20000, sampling="full", record=record)
    dist = np.linalg.norm(gd.u - w_svm, axis=1)
    # GD on separable data approaches the SVM direction like 1/log k
    late = gd.k >= 100
    assert dist[-1] < 0.1 and dist[-1] < 0.5 * dist[late][0]
    slope = np.polyfit(np.log(np.log(gd.k[late])), np.log(dist[late]), 1)[0]
    assert slope < -0.5
    # smoothed margin non-decreasing for GD with a small step, once late
    after = gd.k >= (gd.late_stage_step or 0) + 10
    assert np.all(np.diff(gd.smoothed[after]) >= -1e-12)
    assert np.all(gd.smoothed <= gd.margin + 1e-12)

    sg = sgd.run(model, ds, theta0, 1.0, 20000, record=record)
    dist_sgd = np.linalg.norm(sg.u - w_svm, axis=1)
    assert dist_sgd[-1] < 0.2 and dist_sgd[-1] < dist_sgd[late][0]


# ----------------------------------------------------------- checkpoint, resume


def test_resume_is_bit_identical(net, ds, theta0, tmp_path):
    path = tmp_path / "run.npz"
    record = sgd.Record(log_points=0, every=97, dt=0.1)
    kwargs = dict(batch_size=2, seed=5, record=record, chunk=256)
    straight = sgd.run(net, ds, theta0, 0.05, 1200, **kwargs)
    first = sgd.run(net, ds, theta0, 0.05, 600, checkpoint=path, **kwargs)
    assert first.k[-1] == 600
    with np.load(path, allow_pickle=False) as f:
        assert int(f["state_k"]) == 600
    resumed = sgd.run(net, ds, theta0, 0.05, 1200, checkpoint=path, **kwargs)
    for name, value in straight.arrays().items():
        np.testing.assert_array_equal(resumed.arrays()[name], value, err_msg=name)
    assert resumed.late_stage_step == straight.late_stage_step

    with pytest.raises(ValueError, match="belongs to another run"):
        sgd.run(net, ds, theta0, 0.06, 1200, checkpoint=path, **kwargs)


# ----------------------------------------------------------- failure handling


def test_divergence_is_reported(net, ds, tmp_path):
    theta0 = net.init(jax.random.key(0), scale=3.0)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(sgd.SGDDivergenceError, match="step size 1000") as info:
        sgd.run(net, ds, theta0, 1e3, 500, batch_size=2, checkpoint=path, chunk=64)
    err = info.value
    assert err.step == 1e3 and 0 <= err.step_reached < 500
    assert "smaller step" in str(err)
    with np.load(path, allow_pickle=False) as f:
        assert np.isfinite(f["state_log_a"]) and int(f["state_k"]) <= err.step_reached


def test_late_stage_not_reached_warns(ds):
    model = ft.models.linear(2)
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = np.array([1.0, 1.0, 1.0, -1.0])  # x and -x with the same label
    data = ft.data.Dataset.from_arrays(X, y, name="inseparable")
    with pytest.warns(UserWarning, match="late stage was not reached"):
        trace = sgd.run(model, data, (jnp.array([0.3, 0.2]),), 0.1, 300, chunk=64)
    assert trace.status == "late stage not reached"
    assert trace.late_stage_step is None
    assert "training error 0.25" in trace.messages[-1]


def test_warmup_phase_is_recorded(net, ds):
    theta0 = net.init(jax.random.key(11), scale=0.5)
    trace = sgd.run(
        net,
        ds,
        theta0,
        0.05,
        1500,
        batch_size=2,
        warmup=sgd.Warmup("logistic"),
        record=sgd.Record(log_points=0, every=50),
        chunk=128,
    )
    assert trace.warmup_steps is not None and trace.warmup_steps % 128 == 0
    assert np.all(trace.phase[trace.k < trace.warmup_steps] == 0)
    assert np.all(trace.phase[trace.k >= trace.warmup_steps] == 1)
    i = int(np.searchsorted(trace.k, trace.warmup_steps))
    assert trace.train_error[i] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampling": "cyclic"}, "`sampling` must be one of"),
        ({"step_rule": "adam"}, "`step_rule` must be one of"),
        ({"clock": "wall"}, "`clock` must be one of"),
        ({"batch_size": 0}, "`batch_size` must be in"),
        ({"record": {"every_k": 3}}, "unknown `record` keys"),
        ({"warmup": {"steps": 3}}, "unknown `warmup` keys"),
    ],
)
def test_bad_arguments(net, ds, theta0, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sgd.run(net, ds, theta0, 0.01, 10, **kwargs)


def test_bad_step_and_start(net, ds, theta0):
    with pytest.raises(ValueError, match="`step` must be a finite positive"):
        sgd.run(net, ds, theta0, -0.1, 10)
    zero = tuple(jnp.zeros_like(a) for a in theta0)
    with pytest.raises(ValueError, match="`theta0` is zero"):
        sgd.run(net, ds, zero, 0.1, 10)


def test_exploding_flow_time_with_dt_records_is_divergence(net, ds):
    # A huge step makes eta_k so large that t_k + dt rounds to t_k: the flow-time
    # record schedule can no longer advance. That must end the run with a
    # divergence error in bounded time, not fill record buffers forever.
    theta0 = net.init(jax.random.key(0), scale=0.5)
    with pytest.raises(sgd.SGDDivergenceError, match="flow time stopped advancing"):
        sgd.run(
            net,
            ds,
            theta0,
            50.0,
            2000,
            batch_size=2,
            record={"log_points": 0, "dt": 0.02},
            chunk=64,
        )
