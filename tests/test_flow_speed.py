"""The smooth vector fields take one reverse pass, never the (n, p) Jacobian."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from flowtools import data, losses, models
from flowtools.fields import MarginField
from flowtools.flow.terms import _MeanField, _SelectionField

TAU = 0.05


@pytest.fixture(scope="module")
def setup():
    ds = data.load("blobs:n=40,d=5,margin=0.5,seed=0")
    model = models.mlp(ds.dim, widths=(6,))
    field = MarginField(model, ds)
    u = model.ravel(model.init(jax.random.key(1)))
    return field, u / jnp.linalg.norm(u)


def _shapes(jaxpr):
    """Every intermediate shape of a jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        found += [tuple(v.aval.shape) for v in eqn.outvars]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _shapes(sub)
    return found


def test_softmin_field_is_the_weighted_jacobian(setup):
    field, u = setup
    vf = _SelectionField(field, "softmin", False, jnp.asarray(TAU), None)

    # Independent value: softmax weights times every projected generator.
    q, G = field.all_pieces(u)
    expected = jax.nn.softmax(-q / TAU) @ G
    # 1e-12: the same float64 sums in a different order.
    np.testing.assert_allclose(vf(0.0, u, None), expected, atol=1e-12)


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_mean_field_is_the_weighted_jacobian(setup, loss):
    field, u = setup
    loss = losses.get(loss)
    log_rho = jnp.asarray(1.5)
    vf = _MeanField(field, loss, field.degree)
    du, dlog_rho = vf(0.0, (u, log_rho), None)

    q, G = field.all_pieces(u)
    lam = jax.nn.softmax(loss.log_weight(np.exp(field.degree * 1.5) * q))
    # 1e-12: the same float64 sums in a different order.
    np.testing.assert_allclose(du, lam @ G, atol=1e-12)
    np.testing.assert_allclose(dlog_rho, field.degree * lam @ q, atol=1e-12)


def test_no_per_sample_jacobian_is_formed(setup):
    field, u = setup
    n, p = field.X.shape[0], field.dim
    softmin = _SelectionField(field, "softmin", False, jnp.asarray(TAU), None)
    mean = _MeanField(field, losses.get("exponential"), field.degree)

    for fn, y in ((softmin, u), (mean, (u, jnp.asarray(0.0)))):
        jaxpr = jax.make_jaxpr(lambda y, fn=fn: fn(0.0, y, None))(y).jaxpr
        assert (n, p) not in _shapes(jaxpr)

    # The check can see a Jacobian when one is there.
    jaxpr = jax.make_jaxpr(field.all_pieces)(u).jaxpr
    assert (n, p) in _shapes(jaxpr)
