"""Tests for flowtools.models: homogeneity, the ReLU'(0) choice, layouts, checks."""

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtools import models

# Float64 rounding through at most three layers of width <= 8 stays far below
# this; it is the tolerance for identities that hold exactly in real arithmetic.
RTOL = 1e-10

MODELS = {
    "linear": models.linear(4),
    "deep_linear": models.deep_linear(4, 3, width=3),
    "diagonal": models.diagonal(4),
    "diagonal3": models.diagonal(4, depth=3),
    "mlp": models.mlp(4, widths=(6,)),
    "mlp_deep": models.mlp(4, widths=(5, 3)),
    "mlp_leaky": models.mlp(4, widths=(6,), activation="leaky_relu", slope=0.1),
    "mlp_bias": models.mlp(4, widths=(6,), first_layer_bias=True),
    "cnn": models.cnn((8, 8), channels=(3,)),
    "cnn_avg": models.cnn((8, 8), channels=(2, 3), pool="avg"),
    "cnn_rgb": models.cnn((6, 6, 2), channels=(2,), kernel=2),
}


@partial(jax.jit, static_argnums=0)
def _identities(model, theta, X, c):
    """f and the per-row Jacobian (n, p), at theta and at c * theta."""
    theta_c = tuple(c * leaf for leaf in theta)

    def jacobian(point):
        jac = jax.jacrev(model.apply)(point, X)
        return jnp.concatenate([leaf.reshape(X.shape[0], -1) for leaf in jac], 1)

    return (
        model.apply(theta, X),
        model.apply(theta_c, X),
        jacobian(theta),
        jacobian(theta_c),
    )


def _assert_homogeneous(model, theta, X, c):
    """Check the three identities of THEORY section 1 at one point and scale."""
    L = model.degree
    f, fc, J, Jc = (np.asarray(a) for a in _identities(model, theta, X, c))
    scale = np.max(np.abs(f))
    assert scale > 0

    # f(c theta) = c^L f(theta).
    np.testing.assert_allclose(fc, c**L * f, rtol=RTOL, atol=RTOL * c**L * scale)

    # grad f(c theta) = c^(L-1) grad f(theta), row by row.
    atol = RTOL * c ** (L - 1) * np.abs(J).max()
    np.testing.assert_allclose(Jc, c ** (L - 1) * J, rtol=RTOL, atol=atol)

    # Euler: <grad f(theta; x_i), theta> = L f(theta; x_i).
    euler = J @ np.asarray(model.ravel(theta))
    np.testing.assert_allclose(euler, L * f, rtol=RTOL, atol=RTOL * scale)


def _data(model, n=5, seed=1):
    return np.random.default_rng(seed).normal(size=(n, model.in_dim))


def _jacobian(model, theta, X):
    """Per-row autodiff gradients as an (n, p) matrix."""
    return np.asarray(_identities(model, theta, X, 1.0)[2])


def _np_relu(z):
    return np.maximum(z, 0.0)


# ------------------------------------------------------------------- activations


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0])
def test_relu_identity_gradient_at_zero_is_2s(s):
    # relu(x) - relu(-x) = x, yet autodiff at 0 returns s + s (THEORY section 3).
    grad = jax.grad(lambda x: models.relu(x, s) - models.relu(-x, s))(0.0)
    assert float(grad) == 2 * s


def test_relu_matches_jax_away_from_zero_and_default_at_zero():
    x = jnp.array([-2.0, -1e-300, 0.0, 1e-300, 3.0])
    np.testing.assert_array_equal(models.relu(x), jax.nn.relu(x))
    ours = jax.vmap(jax.grad(models.relu))(x)
    np.testing.assert_array_equal(ours, [0.0, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(ours, jax.vmap(jax.grad(jax.nn.relu))(x))


@pytest.mark.parametrize("s", [0.0, 0.25, 1.0])
def test_leaky_relu_values_and_kink_derivative(s):
    slope = 0.1
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(
        models.leaky_relu(x, slope, s), [-0.2, 0.0, 3.0], rtol=0, atol=1e-15
    )
    grads = jax.vmap(jax.grad(lambda z: models.leaky_relu(z, slope, s)))(x)
    np.testing.assert_allclose(
        grads, [slope, s + (1 - s) * slope, 1.0], rtol=0, atol=1e-15
    )


def test_relu_rejects_bad_s():
    with pytest.raises(ValueError, match=r"relu0 .* must lie in \[0, 1\]"):
        models.relu(1.0, 1.5)
    with pytest.raises(TypeError, match="relu0 must be a Python float"):
        models.relu(1.0, "half")


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0])
def test_mlp_uses_relu0_at_the_kink(s):
    # f = a . relu(W x); with W = 0 and x = 1, df/dW_j = a_j * s * x exactly.
    model = models.mlp(1, widths=(2,)).with_relu0(s)
    theta = (jnp.zeros((2, 1)), jnp.array([1.0, -3.0]))
    grad = jax.grad(lambda th: model.apply(th, jnp.ones((1, 1)))[0])(theta)
    np.testing.assert_array_equal(grad[0], [[s], [-3.0 * s]])


# ------------------------------------------------------------- forward values


def test_linear_deep_linear_diagonal_match_closed_forms(key):
    X = _data(MODELS["deep_linear"])
    (w,) = models.linear(4).init(key)
    np.testing.assert_allclose(models.linear(4).apply((w,), X), X @ w, rtol=RTOL)

    W1, W2, head = MODELS["deep_linear"].init(key)
    expected = X @ (np.asarray(W1).T @ np.asarray(W2).T @ np.asarray(head))
    np.testing.assert_allclose(
        MODELS["deep_linear"].apply((W1, W2, head), X), expected, rtol=RTOL
    )

    u, v = MODELS["diagonal3"].init(key)
    expected = X @ (np.asarray(u) ** 3 - np.asarray(v) ** 3)
    np.testing.assert_allclose(
        MODELS["diagonal3"].apply((u, v), X), expected, rtol=RTOL
    )

    lin, deep1 = models.linear(4), models.deep_linear(4, 1)
    assert deep1.degree == 1 and deep1.shapes == lin.shapes


def test_mlp_matches_numpy_forward(key):
    model = MODELS["mlp_bias"]
    X = _data(model)
    W1, b1, head = (np.asarray(a) for a in model.init(key))
    assert np.all(b1 != 0)  # the bias is a live parameter at init
    expected = _np_relu(X @ W1.T + b1) @ head
    np.testing.assert_allclose(model.apply((W1, b1, head), X), expected, rtol=RTOL)

    model = MODELS["mlp_leaky"]
    W1, head = (np.asarray(a) for a in model.init(key))
    Z = X @ W1.T
    expected = np.where(Z >= 0, Z, 0.1 * Z) @ head
    np.testing.assert_allclose(model.apply((W1, head), X), expected, rtol=RTOL)


def _np_cnn(theta, images, pool):
    x = images
    for K in theta[:-1]:
        k = K.shape[0]
        lo = (k - 1) // 2  # 'SAME' puts the extra padding row at the end
        pad = ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0))
        xp = np.pad(x, pad)
        n, h, w, _ = x.shape
        z = np.zeros((n, h, w, K.shape[3]))
        for a in range(k):
            for b in range(k):
                z += np.einsum("nhwc,co->nhwo", xp[:, a : a + h, b : b + w], K[a, b])
        r = _np_relu(z)[:, : h // 2 * 2, : w // 2 * 2]
        blocks = r.reshape(n, h // 2, 2, w // 2, 2, -1)
        x = blocks.max(axis=(2, 4)) if pool == "max" else blocks.mean(axis=(2, 4))
    return x.reshape(x.shape[0], -1) @ theta[-1]


@pytest.mark.parametrize(
    "name,pool", [("cnn", "max"), ("cnn_avg", "avg"), ("cnn_rgb", "max")]
)
def test_cnn_matches_numpy_convolution(name, pool, key):
    model = MODELS[name]
    X = _data(model, n=4)
    theta = tuple(np.asarray(a) for a in model.init(key))
    images = X.reshape(X.shape[0], *((8, 8, 1) if name != "cnn_rgb" else (6, 6, 2)))
    np.testing.assert_allclose(
        model.apply(theta, X), _np_cnn(theta, images, pool), rtol=RTOL
    )


def test_cnn_on_8x8_layout_jit_and_jacobian(key):
    model = models.cnn()  # (8, 8) images, 8 channels, 3x3 kernels, max pooling
    assert model.degree == 2 and model.shapes == ((3, 3, 1, 8), (128,))
    assert model.num_params == 3 * 3 * 8 + 4 * 4 * 8
    X = _data(model, n=3)
    theta = model.init(key)
    out = jax.jit(model.apply)(theta, X)
    assert out.shape == (3,) and out.dtype == jnp.float64
    np.testing.assert_allclose(out, model.apply(theta, X), rtol=RTOL)
    assert _jacobian(model, theta, X).shape == (3, model.num_params)


# --------------------------------------------------------------- homogeneity


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.floats(0.1, 10.0))
def test_models_are_homogeneous(name, seed, c):
    model = MODELS[name]
    X = _data(model)
    theta = model.init(jax.random.key(seed))
    _assert_homogeneous(model, theta, X, c)

    report = models.check_homogeneous(
        model, X, jax.random.key(seed), num_points=1, scales=(c,)
    )
    assert report.degree == model.degree and report.rows_checked >= 1
    assert max(report.ratio_error, report.euler_error, report.grad_error) < RTOL


@pytest.mark.parametrize("name,s", [("mlp_deep", 0.5), ("cnn", 1.0)])
def test_relu0_choice_keeps_homogeneity_on_kinks(name, s, key):
    # The autodiff identities hold for any fixed ReLU'(0), also where neurons sit
    # exactly on the kink: zero the first unit (channel) of the first layer.
    model = MODELS[name].with_relu0(s)
    X = _data(model)
    theta = list(model.init(key))
    theta[0] = (
        theta[0].at[0].set(0.0) if name == "mlp_deep" else theta[0].at[..., 0].set(0.0)
    )
    assert np.any(np.asarray(model.preactivations(theta, X)[0]) == 0.0)
    for c in (0.5, 3.0):
        _assert_homogeneous(model, tuple(theta), X, c)
    report = models.check_homogeneous(model, X, key)
    assert report.num_points == 4 and report.ratio_error < RTOL


def test_first_layer_bias_is_homogeneous_and_matters(key):
    model = MODELS["mlp_bias"]
    X = _data(model)
    W1, b1, head = model.init(key)
    f = model.apply((W1, b1, head), X)
    f2 = model.apply((2 * W1, 2 * b1, 2 * head), X)
    np.testing.assert_allclose(f2, 4 * f, rtol=RTOL)
    unbiased = model.apply((W1, jnp.zeros_like(b1), head), X)
    assert np.max(np.abs(unbiased - f)) > 1e-3  # the bias changes the output
    models.check_homogeneous(model, X)


def _measured_ratio(message):
    return float(re.search(r"f\(c theta\)/f\(theta\) = ([-+0-9.e]+)", message)[1])


def _two_layer_output_bias(theta, X):
    W, a, b = theta
    return models.relu(X @ W.T) @ a + b


def _three_layer_hidden_bias(theta, X):
    W1, W2, b2, w3 = theta
    return models.relu(models.relu(X @ W1.T) @ W2.T + b2) @ w3


@pytest.mark.parametrize(
    "fn,degree,shapes",
    [
        (_two_layer_output_bias, 2, ((6, 4), (6,), ())),
        (_three_layer_hidden_bias, 3, ((5, 4), (3, 5), (3,), (3,))),
    ],
)
def test_hidden_biases_are_rejected_with_the_measured_ratio(fn, degree, shapes):
    # CASES 9: f(2 theta) / f(theta) is not 2^L; the message says what it is.
    model = models.custom(fn, degree, shapes)
    X = _data(models.linear(4))
    key = jax.random.key(3)
    with pytest.raises(models.NotHomogeneousError, match="measured ratio") as info:
        models.check_homogeneous(model, X, key, num_points=1, scales=(2.0,))
    message = str(info.value)
    assert f"c^L = {2.0**degree:.10g}" in message and "scale c=2" in message

    # The reported ratio is the one at the named row of the first point.
    theta = model.init(jax.random.split(key, 1)[0])
    row = int(re.search(r"row (\d+)", message)[1])
    ratio = fn(tuple(2 * a for a in theta), X)[row] / fn(theta, X)[row]
    np.testing.assert_allclose(_measured_ratio(message), ratio, rtol=1e-9)
    assert abs(ratio - 2.0**degree) > 1e-3
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("activation", [jnp.tanh, jax.nn.softplus])
@pytest.mark.parametrize("degree", [1, 2])
def test_smooth_activations_are_rejected(activation, degree):
    model = models.custom(
        lambda theta, X: activation(X @ theta[0].T) @ theta[1], degree, ((6, 4), (6,))
    )
    with pytest.raises(models.NotHomogeneousError, match="not positively homogeneous"):
        models.check_homogeneous(model, _data(models.linear(4)))


def test_wrong_declared_degree_is_rejected():
    def two_layer(theta, X):
        return models.relu(X @ theta[0].T) @ theta[1]

    model = models.custom(two_layer, 3, ((6, 4), (6,)))
    with pytest.raises(models.NotHomogeneousError, match=r"c\^L = 8 "):
        models.check_homogeneous(model, _data(MODELS["mlp"]), scales=(2.0,))
    models.check_homogeneous(
        models.custom(two_layer, 2, ((6, 4), (6,))), _data(MODELS["mlp"])
    )


def test_wrong_autodiff_rule_fails_euler():
    # Homogeneous values with a derivative rule that doubles the gradient.
    @jax.custom_jvp
    def same(x):
        return x

    same.defjvp(lambda primals, tangents: (primals[0], 2 * tangents[0]))
    model = models.custom(lambda theta, X: X @ same(theta[0]), 1, ((4,),))
    with pytest.raises(models.NotHomogeneousError, match="Euler's identity"):
        models.check_homogeneous(model, _data(models.linear(4)))


def test_check_homogeneous_rejects_all_zero_outputs_and_bad_arguments():
    zero = models.custom(lambda theta, X: 0.0 * (X @ theta[0]), 1, ((4,),))
    X = _data(models.linear(4))
    with pytest.raises(ValueError, match="returned 0 on every row"):
        models.check_homogeneous(zero, X)
    with pytest.raises(ValueError, match="scales must be positive"):
        models.check_homogeneous(MODELS["linear"], X, scales=(0.0,))
    with pytest.raises(ValueError, match="X must be a non-empty"):
        models.check_homogeneous(MODELS["linear"], X[0])


# -------------------------------------------------------------------- starts


def test_zero_first_layer_is_rejected_even_when_autodiff_moves(key):
    # CASES 8: every first-layer pre-activation sits on the kink.
    X = _data(MODELS["mlp"])
    _, head = MODELS["mlp"].init(key)
    theta = (jnp.zeros((6, 4)), head)
    for s in (0.0, 1.0):
        model = MODELS["mlp"].with_relu0(s)
        gradient_is_zero = not np.any(_jacobian(model, theta, X))
        assert gradient_is_zero == (s == 0.0)  # with s = 1 autodiff would move
        with pytest.raises(ValueError, match="on the ReLU kink.*model.init"):
            models.check_start(model, theta, X)


def test_zero_conv_layer_is_rejected(key):
    model = MODELS["cnn"]
    _, head = model.init(key)
    with pytest.raises(ValueError, match="hidden layer 'conv1'.*kink"):
        models.check_start(model, (jnp.zeros((3, 3, 1, 3)), head), _data(model))


def test_dead_network_and_zero_jacobian_are_rejected(key):
    # All pre-activations strictly negative: f = 0 and autodiff gives 0.
    model = MODELS["mlp"]
    X = np.abs(_data(model)) + 0.1
    _, head = model.init(key)
    with pytest.raises(ValueError, match="zero gradient.*perturb"):
        models.check_start(model, (-jnp.ones((6, 4)), head), X)

    # Deep linear with two zero factors: the Jacobian vanishes identically.
    model = MODELS["deep_linear"]
    _, _, head = model.init(key)
    theta = (jnp.zeros((3, 4)), jnp.zeros((3, 3)), head)
    with pytest.raises(ValueError, match="zero gradient"):
        models.check_start(model, theta, _data(model))


def test_check_start_accepts_generic_starts_and_rejects_degenerate_ones(key):
    for name in ("linear", "diagonal", "mlp_bias", "cnn"):
        model = MODELS[name]
        X = _data(model)
        theta = model.init(key)
        assert models.check_start(model, theta, X) is None, name
        assert models.check_start(model, model.ravel(theta), X) is None, name
    p = MODELS["diagonal"].num_params
    with pytest.raises(ValueError, match="zero vector"):
        models.check_start(MODELS["diagonal"], jnp.zeros(p), _data(MODELS["diagonal"]))
    with pytest.raises(ValueError, match="NaN or inf"):
        models.check_start(
            MODELS["diagonal"], jnp.full(p, jnp.nan), _data(MODELS["diagonal"])
        )


# ------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", list(MODELS))
def test_ravel_unravel_round_trip(name, key):
    model = MODELS[name]
    theta = model.init(key)
    flat = model.ravel(theta)
    expected = np.concatenate([np.ravel(leaf) for leaf in theta])
    np.testing.assert_array_equal(flat, expected)
    assert flat.shape == (model.num_params,)
    for a, b in zip(model.unravel(flat), theta, strict=True):
        np.testing.assert_array_equal(a, b)
    v = jax.random.normal(jax.random.key(7), (model.num_params,))
    np.testing.assert_array_equal(model.ravel(model.unravel(v)), v)
    np.testing.assert_array_equal(
        model.apply(flat, _data(model)), model.apply(theta, _data(model))
    )


def test_as_tree_accepts_both_forms_and_names_the_expected_length(key):
    model = MODELS["mlp"]  # W1 (6, 4), head (6,): 30 parameters
    theta = model.init(key)
    assert model.num_params == 30
    for form in (
        theta,
        list(theta),
        model.ravel(theta),
        np.asarray(model.ravel(theta)),
    ):
        for a, b in zip(model.as_tree(form), theta, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="must have length 30; got shape \\(29,\\)"):
        model.as_tree(jnp.zeros(29))
    with pytest.raises(ValueError, match="must have length 30"):
        model.as_tree(jnp.zeros((5, 6)))
    with pytest.raises(ValueError, match=r"expects 2 arrays with shapes"):
        model.as_tree(theta[:1])
    with pytest.raises(ValueError, match=r"\(6, 4\), \(6,\)"):
        model.as_tree((theta[0].T, theta[1]))
    with pytest.raises(TypeError, match="tuple of arrays or a flat vector"):
        model.as_tree({"W1": theta[0]})


def test_init_is_deterministic_float64_and_scaled(key):
    model = MODELS["cnn_avg"]
    a, b = model.init(key), model.init(key)
    c = model.init(jax.random.key(1))
    for x, y, z, shape in zip(a, b, c, model.shapes, strict=True):
        assert x.dtype == jnp.float64 and x.shape == shape
        np.testing.assert_array_equal(x, y)
        assert not np.allclose(x, z)
    for x, y in zip(model.init(key, scale=2.5), a, strict=True):
        np.testing.assert_allclose(x, 2.5 * y, rtol=1e-15)
    for x, y in zip(model.init(1), c, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="scale must be a positive"):
        model.init(key, scale=0.0)


def test_init_standard_deviations_follow_he_and_lecun(key):
    # He for the hidden layer (2 / fan_in), LeCun for the head (1 / fan_in).
    # With 120,000 and 300 draws the relative error of the sample std is about
    # 0.2% and 4%; the bounds below allow over four standard errors.
    W1, head = models.mlp(400, widths=(300,)).init(key)
    assert abs(np.std(W1) / np.sqrt(2 / 400) - 1) < 0.01
    assert abs(np.std(head) / np.sqrt(1 / 300) - 1) < 0.2


def test_describe_lists_layers_degree_and_count():
    text = MODELS["mlp_deep"].describe()
    assert (
        "degree L=3" in text and f"{MODELS['mlp_deep'].num_params} parameters" in text
    )
    for layer, shape in zip(("W1", "W2", "head"), ((5, 4), (3, 5), (3,)), strict=True):
        assert re.search(rf"{layer}\s+{re.escape(str(shape))}", text)


def test_model_is_a_static_jit_argument_hashed_by_identity(key):
    model = MODELS["mlp_deep"]
    assert model != models.mlp(4, widths=(5, 3)) and hash(model) == hash(model)
    apply = jax.jit(lambda m, theta, X: m.apply(theta, X), static_argnums=0)
    X = _data(model)
    theta = model.init(key)
    np.testing.assert_allclose(apply(model, theta, X), model.apply(theta, X), rtol=RTOL)
    assert model.apply(theta, X[0]).shape == ()
    with pytest.raises(ValueError, match="rows of length 4"):
        model.apply(theta, np.ones((2, 5)))


def test_with_relu0_copies_and_validates():
    base = MODELS["mlp"]
    half = base.with_relu0(0.5)
    assert half.relu0 == 0.5 and base.relu0 == 0.0 and half.shapes == base.shapes
    with pytest.raises(ValueError, match="must lie in"):
        base.with_relu0(-0.1)

    plain = models.custom(lambda theta, X: X @ theta[0], 1, ((4,),))
    with pytest.raises(ValueError, match="does not take relu0"):
        plain.with_relu0(0.5)

    def net(theta, X, s):
        return models.relu(X @ theta[0].T, s) @ theta[1]

    aware = models.custom(net, 2, ((2, 1), (2,)), relu0=0.0).with_relu0(1.0)
    grad = jax.grad(lambda th: aware.apply(th, jnp.ones((1, 1)))[0])
    np.testing.assert_array_equal(grad((jnp.zeros((2, 1)), jnp.ones(2)))[0], [[1], [1]])


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match="activation must be"):
        models.mlp(4, activation="tanh")
    with pytest.raises(ValueError, match="widths must hold"):
        models.mlp(4, widths=(), first_layer_bias=True)
    with pytest.raises(ValueError, match="pool must be"):
        models.cnn(pool="min")
    with pytest.raises(ValueError, match="too small"):
        models.cnn((2, 2), channels=(2, 2))
    with pytest.raises(ValueError, match="degree must be a positive integer"):
        models.custom(lambda theta, X: X @ theta[0], 0, ((4,),))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        models.linear(0)
