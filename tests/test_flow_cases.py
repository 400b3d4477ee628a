"""Margin flows of models on data: SVM and l1 limits, ReLU diagnostics, batches."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from flowtools import data, flow, models, reference
from flowtools.fields import MarginField


def _separable(key, n, d, margin=0.3):
    """Points with |<w, x>| >= margin for a random unit w; labels sign(<w, x>)."""
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, (d,))
    w = w / jnp.linalg.norm(w)
    X = jax.random.normal(k2, (4 * n, d))
    s = X @ w
    keep = np.flatnonzero(np.abs(np.asarray(s)) >= margin)[:n]
    X, y = np.asarray(X)[keep], np.sign(np.asarray(s)[keep])
    return data.Dataset.from_arrays(X, y), np.asarray(w)


@pytest.fixture(scope="module")
def linear_case():
    ds, w = _separable(jax.random.key(1), 24, 4)
    return ds, MarginField(models.linear(4), ds, eps=1e-9, k=24), w


def test_linear_converges_to_svm_with_monotone_margin(linear_case):
    """From 3 starts with positive margin (one batch, one compile) the flow reaches
    the hard-margin SVM direction (scipy dual QP): cosine error < 1e-8; the margin
    never decreases along the steps (1e-12)."""
    ds, field, w = linear_case
    w_svm, gamma = reference.svm_direction(ds.X, ds.y)
    noise = jax.random.normal(jax.random.key(2), (3, 4))
    U0 = jnp.asarray(w)[None] + 0.05 * noise
    U0 = U0 / jnp.linalg.norm(U0, axis=1, keepdims=True)
    assert np.all(np.min(np.asarray(U0) @ (ds.X * ds.y[:, None]).T, axis=1) > 0)

    sol = flow.integrate_batch(field, U0, 8.0, dt0=0.01, saveat="steps")
    cos_error = 1 - np.asarray(sol.u_final) @ np.asarray(w_svm)
    assert np.max(np.abs(cos_error)) < 1e-8, cos_error
    margins = np.asarray(sol.margin)
    diffs = np.diff(np.where(np.isfinite(margins), margins, np.nan), axis=1)
    assert np.nanmin(diffs) >= -1e-12
    assert np.max(sol.stats.max_margin_decrease) <= 1e-12
    assert np.max(sol.drift) <= 1e-10
    final = [float(field.objective(0.0, u)) for u in sol.u_final]
    np.testing.assert_allclose(final, gamma, atol=1e-8)


def test_batch_matches_single_solves(linear_case):
    """Row j of a batch equals the single solve from the same start (1e-12)."""
    ds, field, w = linear_case
    U0 = jnp.stack([jnp.asarray(w), jnp.asarray(w) + 0.03 * jnp.ones(4)])
    batch = flow.integrate_batch(field, U0, 1.0, dt0=0.01, saveat=11)
    for j in range(2):
        single = flow.integrate(field, U0[j], 1.0, dt0=0.01, saveat=11)
        np.testing.assert_allclose(batch.us[j], single.us, atol=1e-12)
    assert batch.stats.stop_reason == ("t1", "t1")


def test_negative_margin_start_warns(linear_case):
    ds, field, w = linear_case
    with pytest.warns(UserWarning, match="late-stage theory"):
        flow.integrate(field, -jnp.asarray(w), 0.1, dt0=0.01)


def test_diagonal_network_reaches_l1_margin():
    """Two-layer diagonal net: the limit margin never exceeds gamma_1 (linprog)
    and matches it from generic starts to 1e-6 (first-order steps of 0.02 over
    t = 40 from normal starts)."""
    ds, w = _separable(jax.random.key(3), 16, 3, margin=0.4)
    model = models.diagonal(3)
    field = MarginField(model, ds, eps=1e-9, k=16)
    _, gamma1 = reference.l1_margin_direction(ds.X, ds.y)
    # generic starts with every coordinate alive: beta = u*u - v*v near w
    base = jnp.concatenate([jnp.sqrt(jnp.maximum(w, 0)), jnp.sqrt(jnp.maximum(-w, 0))])
    starts = []
    for seed in range(20):
        noise = jax.random.uniform(jax.random.key(10 + seed), (6,), minval=0.05)
        u = base + 0.2 * noise
        u = u / jnp.linalg.norm(u)
        if float(field.objective(0.0, u)) > 0:
            starts.append(u)
        if len(starts) == 3:
            break
    assert len(starts) == 3
    sol = flow.integrate_batch(field, jnp.stack(starts), 40.0, dt0=0.02, saveat=5)
    final = np.asarray(sol.margin)[:, -1]
    assert np.all(final <= gamma1 + 1e-10)
    np.testing.assert_allclose(final, gamma1, atol=1e-6)


def test_relu_sign_flips_counted_independently():
    """A bias-free 2-layer ReLU net on a digits pair: the solver's count of steps
    with a pre-activation sign change equals a count over the saved steps, and
    the largest margin decrease is reported (no monotonicity claimed)."""
    full = data.load("digits:0,1")
    ds = data.Dataset.from_arrays(full.X[:40], full.y[:40])
    model = models.mlp(ds.dim, widths=(6,))
    field = MarginField(model, ds, eps=1e-6, k=8)
    u0 = model.ravel(model.init(jax.random.key(4)))
    with warnings.catch_warnings():  # the start need not have a positive margin
        warnings.simplefilter("ignore", UserWarning)
        sol = flow.integrate(field, u0, 0.5, dt0=0.01, saveat="steps")
    patterns = np.stack(
        [
            np.concatenate([np.ravel(z > 0) for z in model.preactivations(u, ds.X)])
            for u in sol.us
        ]
    )
    changed = np.any(patterns[1:-1] != patterns[:-2], axis=1)
    assert sol.stats.sign_flips == int(np.sum(changed))
    assert np.isfinite(sol.stats.max_margin_decrease)
    assert sol.drift <= 1e-10


def test_mean_field_matches_scipy(linear_case):
    """The (u, log rho) mean-field ODE against solve_ivp of an independent numpy
    right-hand side (exponential loss; rtol 1e-10 both; agreement 1e-7)."""
    ds, field, w = linear_case
    Z = ds.X * ds.y[:, None]
    u0 = np.asarray(w) + 0.04
    u0 = u0 / np.linalg.norm(u0)

    def rhs(t, y):
        u, log_rho = y[:-1], y[-1]
        q = Z @ u
        a = -np.exp(log_rho) * q
        lam = np.exp(a - a.max())
        lam /= lam.sum()
        g = lam @ Z
        return np.concatenate([g - (g @ u) * u, [lam @ q]])

    ref = scipy.integrate.solve_ivp(
        rhs, (0, 2.0), np.concatenate([u0, [1.0]]), rtol=1e-10, atol=1e-12
    )
    sol = flow.integrate_mean_field(
        field, jnp.asarray(u0), 1.0, 2.0, rtol=1e-10, atol=1e-12, saveat=[2.0]
    )
    u_ref = ref.y[:-1, -1] / np.linalg.norm(ref.y[:-1, -1])
    np.testing.assert_allclose(sol.us[-1], u_ref, atol=1e-7)
    np.testing.assert_allclose(sol.log_rho[-1], ref.y[-1, -1], atol=1e-7)

    batch = flow.integrate_mean_field(
        field,
        jnp.stack([jnp.asarray(u0)] * 2),
        jnp.array([1.0, 1.0]),
        2.0,
        rtol=1e-10,
        atol=1e-12,
        saveat=[2.0],
    )
    np.testing.assert_allclose(batch.us[:, -1], np.stack([sol.us[-1]] * 2), atol=1e-12)
