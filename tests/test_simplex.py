"""Tests for the certified simplex QP (flowtools.simplex).

Every reference value is computed independently of the JAX code: closed forms for
the field cases, a numpy brute force over all supports for k <= 8, a numpy KKT
solve on the support for k = 64 with its own Frank-Wolfe gap, Wolfe's dual bound
computed from G (not from the Gram matrix), and an mpmath evaluation of the
primal-dual bracket. Each shape is compiled once and vmapped over many problems.
"""

import itertools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from sklearn.datasets import load_digits

from flowtools import simplex

KINDS = ("random", "duplicates", "collinear", "near", "origin", "lowdim", "scaled")


# ----------------------------------------------------------------------------
# Independent references (numpy / mpmath only)
# ----------------------------------------------------------------------------


def _problems(rng, count, k, p):
    """Random and degenerate problems; odd ones carry a linear term."""
    Gs, cs, masks = [], [], []
    for b in range(count):
        kind = KINDS[b % len(KINDS)]
        G = rng.normal(size=(k, p))
        half = k // 2
        if kind == "duplicates":
            G[rng.permutation(k)[:half]] = G[rng.integers(0, k, size=half)]
        elif kind == "collinear":
            G = rng.normal(size=p) + rng.normal(size=(k, 1)) * rng.normal(size=p)
        elif kind == "near":
            source = G[rng.integers(0, k, size=half)]
            G[rng.permutation(k)[:half]] = source + 1e-9 * rng.normal(size=(half, p))
        elif kind == "origin":
            G[half:] = -G[: k - half] * rng.uniform(0.5, 2.0, size=(k - half, 1))
        elif kind == "lowdim":
            G = rng.normal(size=(k, 2)) @ rng.normal(size=(2, p))
        elif kind == "scaled":
            G *= 10.0 ** rng.uniform(-3, 3)
        size = np.mean(np.sum(G**2, axis=1))
        c = np.zeros(k)
        if b % 2 == 1:
            c = rng.normal(size=k) * rng.choice([0.01, 1.0, 10.0]) * size
            if kind == "duplicates" and b % 4 == 1:
                c = np.round(c)  # ties in c on duplicated rows as well
        mask = rng.random(k) < 0.8
        mask[rng.integers(k)] = True
        if b % 3 == 0:
            mask[:] = True
        Gs.append(G)
        cs.append(c)
        masks.append(mask)
    return np.array(Gs), np.array(cs), np.array(masks)


def _scale(G, c, mask):
    """The scale of the tolerance, as documented in flowtools.simplex."""
    return max(np.max(np.sum(G[mask] ** 2, axis=1)), np.ptp(c[mask]))


def _certificate(G, c, mask, lam):
    """Objective, Frank-Wolfe gap and point of `lam`, from G in numpy.

    The gap equals primal minus Wolfe's dual bound at w = G^T lam:
    min_i (c_i + <g_i, w>) - |w|^2 / 2 <= optimum <= objective.
    """
    d = G.T @ lam
    grad = c + G @ d
    objective = c @ lam + 0.5 * d @ d
    dual = np.min(grad[mask]) - 0.5 * d @ d
    return objective, objective - dual, d


def _kkt_solve(G, c, support):
    """Weights solving the KKT system of the QP restricted to `support`."""
    index = np.flatnonzero(support)
    n = len(index)
    K = np.zeros((n + 1, n + 1))
    K[:n, :n] = G[index] @ G[index].T
    K[:n, n] = K[n, :n] = 1.0
    rhs = np.concatenate([-c[index], [1.0]])
    solution = np.linalg.lstsq(K, rhs, rcond=None)[0]
    solution += np.linalg.lstsq(K, rhs - K @ solution, rcond=None)[0]
    lam = np.zeros(len(c))
    lam[index] = solution[:n]
    return lam


def _brute_force(G, c, mask):
    """Enumerate every support, for a batch of problems at once.

    For each support the KKT system is solved with a pseudo-inverse (singular
    systems included); among the feasible points, each problem keeps the one with
    the smallest Frank-Wolfe gap. Returns objectives, gaps and points.
    """
    count, k, _ = G.shape
    best = (np.full(count, np.inf), np.full(count, np.inf), np.zeros(G.shape[::2]))
    Q = G @ np.swapaxes(G, 1, 2)
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(k), size):
            index = list(subset)
            K = np.zeros((count, size + 1, size + 1))
            K[:, :size, :size] = Q[:, index][:, :, index]
            K[:, :size, size] = K[:, size, :size] = 1.0
            rhs = np.concatenate([-c[:, index], np.ones((count, 1))], axis=1)
            solution = np.einsum("bij,bj->bi", np.linalg.pinv(K), rhs)[:, :size]
            lam = np.zeros((count, k))
            lam[:, index] = solution
            feasible = (
                np.all(mask[:, index], axis=1)
                & (lam.min(axis=1) >= -1e-12)
                & (np.abs(lam.sum(axis=1) - 1.0) <= 1e-12)
            )
            for b in np.flatnonzero(feasible):
                point = np.maximum(lam[b], 0.0) / np.sum(np.maximum(lam[b], 0.0))
                objective, gap, d = _certificate(G[b], c[b], mask[b], point)
                if gap < best[1][b]:
                    best[0][b], best[1][b], best[2][b] = objective, gap, d
    return best


def _digits_generators(seeds, k, width=32):
    """Projected margin gradients of random bias-free 2-layer ReLU nets.

    Digits 0 vs 1 with pixels / 16; for each seed the rows are the gradients of
    the k smallest margins, projected orthogonally to the unit parameter vector.
    Returns the generators (seeds, k, p) and the margins (seeds, k).
    """
    X, y = load_digits(return_X_y=True)
    keep = y < 2
    X = jnp.asarray(X[keep] / 16.0)
    y = jnp.where(jnp.asarray(y[keep]) == 1, 1.0, -1.0)
    dim = X.shape[1]

    def margin(theta, x, label):
        W = theta[: width * dim].reshape(width, dim)
        return label * (theta[width * dim :] @ jax.nn.relu(W @ x))

    @jax.jit
    def generators(key):
        key_w, key_a = jax.random.split(key)
        W = jax.random.normal(key_w, (width, dim)) / np.sqrt(dim)
        a = jax.random.normal(key_a, (width,)) / np.sqrt(width)
        u = jnp.concatenate([W.ravel(), a])
        u = u / jnp.linalg.norm(u)
        q = jax.vmap(margin, (None, 0, 0))(u, X, y)
        smallest = jnp.argsort(q)[:k]
        J = jax.vmap(jax.grad(margin), (None, 0, 0))(u, X[smallest], y[smallest])
        return J - (J @ u)[:, None] * u[None, :], q[smallest]

    pairs = [generators(jax.random.key(seed)) for seed in seeds]
    return np.array([J for J, _ in pairs]), np.array([q for _, q in pairs])


@jax.jit
def _vmapped_solve(G, c, mask, max_iter):
    return jax.vmap(lambda G, c, m: simplex.solve(G, c, m, max_iter=max_iter))(
        G, c, mask
    )


def _batched_solve(G, c, mask, max_iter=None):
    """`solve` vmapped over problems; one compilation per shape."""
    max_iter = 5 * G.shape[1] + 50 if max_iter is None else max_iter
    return _vmapped_solve(G, c, mask, np.int32(max_iter))


# ----------------------------------------------------------------------------
# Field cases (CASES 1-4), one compiled shape with masks for padding
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def field_cases():
    G = np.array(
        [
            [[2.0, 0.0], [0.0, 1.0], [np.nan, np.inf]],  # 1. ties, masked NaN row
            [[1.0, 0.0], [1.0, 0.0], [7.0, 7.0]],  # 2. duplicates
            [[1.0, 0.0], [-1.0, 0.0], [9.0, 9.0]],  # 3. origin in the hull
            [[1.0, 0.0], [1.0, 1e-9], [0.0, 1.0]],  # 4. near-duplicates
            [[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]],  # one point
            [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],  # three copies
            [[1.0, 0.0], [np.nan, 0.0], [0.0, 1.0]],  # a NaN in a usable row
        ]
    )
    mask = np.array(
        [
            [True, True, False],
            [True, True, False],
            [True, True, False],
            [True, True, True],
            [True, False, False],
            [True, True, True],
            [True, True, True],
        ]
    )
    return G, _batched_solve(G, np.zeros(G.shape[:2]), mask)


def test_case_1_ties(field_cases):
    _, result = field_cases
    # Closed form: the foot of the perpendicular from 0 to the segment.
    # Tolerance 1e-15: a few roundings of numbers of size 1.
    np.testing.assert_allclose(result.point[0], [0.4, 0.8], atol=1e-15)
    np.testing.assert_allclose(result.weights[0], [0.2, 0.8, 0.0], atol=1e-15)
    assert result.weights[0, 2] == 0.0
    assert result.converged[0]


def test_case_2_duplicates(field_cases):
    _, result = field_cases
    for b in (1, 5):
        assert np.all(np.isfinite(result.weights[b]))
        assert np.all(result.weights[b] >= 0)
        np.testing.assert_allclose(np.sum(result.weights[b]), 1.0, atol=1e-15)
        np.testing.assert_allclose(result.point[b], [1.0, 0.0], atol=1e-15)
        assert result.gap[b] <= 1e-15
        assert result.converged[b]


def test_case_3_origin_in_hull(field_cases):
    _, result = field_cases
    # The answer is exactly 0 with weights (1/2, 1/2): both are representable.
    assert np.all(result.point[2] == 0.0)
    assert result.gap[2] == 0.0
    assert result.objective[2] == 0.0
    np.testing.assert_array_equal(result.weights[2], [0.5, 0.5, 0.0])


def test_case_4_near_duplicates(field_cases):
    G, result = field_cases
    p = np.asarray(result.point[3])
    # The exact answer is (1/2, 1/2): (1, 1e-9) lies beyond the segment.
    np.testing.assert_allclose(p, [0.5, 0.5], atol=1e-15)
    # The optimality residual min_j <g_j, p> - |p|^2, recomputed here, is >= 0
    # up to rounding, and the reported gap is its negative part (here 0).
    residual = np.min(G[3] @ p) - p @ p
    assert residual >= -1e-15
    assert result.gap[3] <= 1e-15
    assert result.iterations[3] <= 10
    assert result.converged[3]


def test_one_point(field_cases):
    _, result = field_cases
    np.testing.assert_array_equal(result.weights[4], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(result.point[4], [3.0, 4.0])
    assert result.objective[4] == 12.5


def test_nan_input_reports_failure(field_cases):
    _, result = field_cases
    # A masked-out NaN row is ignored (case 1 above); a usable one is reported.
    assert not result.converged[6]
    assert result.iterations[6] <= 5 * 3 + 50


def test_unbatched_matches_batched(field_cases):
    G, batched = field_cases
    result = simplex.min_norm_point(G[0, :2])
    np.testing.assert_allclose(result.point, batched.point[0], atol=1e-15)
    np.testing.assert_allclose(result.weights, batched.weights[0, :2], atol=1e-15)


def test_empty_mask_reports_failure():
    result = simplex.min_norm_point(jnp.ones((2, 2)), mask=jnp.zeros(2, bool))
    assert not result.converged
    np.testing.assert_array_equal(result.weights, [0.0, 0.0])
    assert result.objective == jnp.inf


# ----------------------------------------------------------------------------
# Against the brute force (k = 8) and the support KKT solve (k = 64)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_batch():
    G, c, mask = _problems(np.random.default_rng(0), 210, 8, 5)
    return G, c, mask, _batched_solve(G, c, mask)


def test_brute_force_small(small_batch):
    G, c, mask, result = small_batch
    assert np.all(result.converged)
    ref_objective, ref_gap, ref_d = _brute_force(G, c, mask)
    for b in range(len(G)):
        scale = _scale(G[b], c[b], mask[b])
        lam = np.asarray(result.weights[b])
        objective, gap, d = _certificate(G[b], c[b], mask[b], lam)
        assert ref_gap[b] <= 1e-12 * scale  # the brute force found the optimum
        # Objective 1e-10 and point 1e-8 (relative to the scale) are the
        # documented accuracy.
        assert abs(objective - ref_objective[b]) <= 1e-10 * scale
        assert np.max(np.abs(d - ref_d[b])) <= 1e-8 * np.sqrt(scale)
        assert gap <= 1e-12 * scale
        assert np.all(lam >= 0) and np.all(lam[~mask[b]] == 0)
        assert abs(lam.sum() - 1.0) <= 1e-14


def test_reported_fields_consistent(small_batch):
    G, c, mask, result = small_batch
    for b in range(0, len(G), 7):
        objective, gap, d = _certificate(
            G[b], c[b], mask[b], np.asarray(result.weights[b])
        )
        scale = _scale(G[b], c[b], mask[b])
        # Same formulas evaluated by XLA and numpy: rounding level.
        np.testing.assert_allclose(result.point[b], d, atol=1e-14 * np.sqrt(scale))
        assert abs(result.objective[b] - objective) <= 1e-14 * scale
        assert abs(result.gap[b] - max(gap, 0.0)) <= 1e-14 * scale


def test_mpmath_bracket(small_batch):
    G, c, mask, result = small_batch
    mpmath.mp.dps = 40
    for b in range(1, 12):
        lam = [mpmath.mpf(float(x)) for x in np.asarray(result.weights[b])]
        total = mpmath.fsum(lam)
        lam = [x / total for x in lam]
        rows = [[mpmath.mpf(float(x)) for x in row] for row in G[b]]
        d = [mpmath.fsum(lam[i] * rows[i][j] for i in range(8)) for j in range(5)]
        dd = mpmath.fsum(x * x for x in d)
        primal = mpmath.fsum(lam[i] * c[b, i] for i in range(8)) + dd / 2
        dual = min(
            c[b, i] + mpmath.fsum(rows[i][j] * d[j] for j in range(5))
            for i in range(8)
            if mask[b, i]
        )
        # Rigorous bracket: dual - |d|^2/2 <= optimum <= primal.
        assert primal - (dual - dd / 2) <= 1e-13 * _scale(G[b], c[b], mask[b])


@pytest.fixture(scope="module")
def large_batch():
    G, c, mask = _problems(np.random.default_rng(1), 70, 64, 40)
    # Two more: problem 1 with G scaled by 1e3 and c by 1e6 plus a constant.
    G = np.concatenate([G, 1e3 * G[1:2]])
    c = np.concatenate([c, 1e6 * c[1:2] + 7e6])
    mask = np.concatenate([mask, mask[1:2]])
    return G, c, mask, _batched_solve(G, c, mask)


def test_support_reference_large(large_batch):
    G, c, mask, result = large_batch
    assert np.all(result.converged)
    for b in range(len(G)):
        scale = _scale(G[b], c[b], mask[b])
        lam = np.asarray(result.weights[b])
        objective, gap, d = _certificate(G[b], c[b], mask[b], lam)
        reference = _kkt_solve(G[b], c[b], lam > 0)
        assert reference.min() >= -1e-12
        reference = np.maximum(reference, 0.0) / np.sum(np.maximum(reference, 0.0))
        ref_objective, ref_gap, ref_d = _certificate(G[b], c[b], mask[b], reference)
        # The reference is certified on its own (gap below 1e-12), so the
        # optimum lies within 1e-12 of it.
        assert ref_gap <= 1e-12 * scale
        assert gap <= 1e-12 * scale
        assert abs(objective - ref_objective) <= 1e-10 * scale
        assert np.max(np.abs(d - ref_d)) <= 1e-8 * np.sqrt(scale)
        assert np.all(lam[~mask[b]] == 0)


def test_iterations_linear_in_k(large_batch):
    _, _, _, result = large_batch
    # An active-set method adds each index about once: O(k), far below the cap.
    assert int(np.max(result.iterations)) <= 2 * 64


def test_gap_certifies_an_early_stop(large_batch):
    G, c, mask, converged = large_batch
    result = _batched_solve(G, c, mask, max_iter=3)
    optimum = np.asarray(converged.objective)
    stopped = np.asarray(result.iterations) == 3
    assert np.any(stopped & ~np.asarray(result.converged))
    assert not np.any(stopped & np.asarray(result.converged) & (result.gap > 1e-12))
    # objective - optimum <= gap at every iterate (the certificate); slack of
    # 1e-13 times the scale for rounding in the two objectives.
    scales = np.array([_scale(G[b], c[b], mask[b]) for b in range(len(G))])
    excess = np.asarray(result.objective) - optimum - np.asarray(result.gap)
    assert np.all(excess <= 1e-13 * scales)


def test_scale_and_shift_invariance(large_batch):
    _, _, _, result = large_batch
    # The last problem is problem 1 scaled; the weights of this well-posed
    # problem agree to 1e-8, the documented accuracy.
    np.testing.assert_allclose(result.weights[-1], result.weights[1], atol=1e-8)
    np.testing.assert_allclose(
        result.point[-1], 1e3 * result.point[1], rtol=0, atol=1e-8 * 1e3
    )


# ----------------------------------------------------------------------------
# Digits-like generators
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return _digits_generators(range(3), 64)


def test_digits_generators(digits):
    J, q = digits
    # k = 64, and k = 32 as the first 32 rows (the 32 smallest margins) through
    # the mask; each without and with the proximal linear term q / h, h = 0.05.
    G = np.concatenate([J, J, J, J])
    c = np.concatenate([np.zeros_like(q), q / 0.05, np.zeros_like(q), q / 0.05])
    mask = np.ones(c.shape, bool)
    mask[2 * len(q) :, 32:] = False
    result = _batched_solve(G, c, mask)
    assert np.all(result.converged)
    assert np.all(result.weights[2 * len(q) :, 32:] == 0)
    for b in range(len(G)):
        scale = _scale(G[b], c[b], mask[b])
        lam = np.asarray(result.weights[b])
        objective, gap, d = _certificate(G[b], c[b], mask[b], lam)
        reference = _kkt_solve(G[b], c[b], lam > 0)
        assert reference.min() >= -1e-12
        ref_objective, ref_gap, ref_d = _certificate(G[b], c[b], mask[b], reference)
        assert gap <= 1e-12 * scale and ref_gap <= 1e-12 * scale
        assert abs(objective - ref_objective) <= 1e-10 * scale
        assert np.max(np.abs(d - ref_d)) <= 1e-8 * np.sqrt(scale)


# ----------------------------------------------------------------------------
# The proximal step (THEORY 3b)
# ----------------------------------------------------------------------------

_kink_gradients = jnp.array([[1.0], [-1.0]])


@jax.jit
def _kink_step(y, h):
    """One proximal step for ascent of min(y, -y)."""
    return (
        y
        + h * simplex.proximal_weights(jnp.stack([y, -y]), _kink_gradients, h).point[0]
    )


def test_proximal_lands_on_kink():
    # From y = 0.05 with h = 0.1 the linearized proximal step returns 0 exactly.
    assert _kink_step(0.05, 0.1) == 0.0


def test_proximal_no_chattering():
    y = 1.0
    for step in range(1, 11):
        y = float(_kink_step(y, 0.1))
        # Explicit-Euler-like steps of h until the kink (rounding of 0.1 * n).
        assert abs(y - (1.0 - 0.1 * step)) <= 1e-15
    assert abs(y) <= 1e-15
    for _ in range(10):
        previous, y = y, float(_kink_step(y, 0.1))
        # Stays on the kink, no chattering (explicit Euler would oscillate with
        # amplitude h = 0.1): weights near 1/2 resolve d only to about eps, so
        # y may rest within h * eps of 0, and never moves away.
        assert abs(y) <= 0.1 * np.finfo(float).eps
        assert abs(y) <= abs(previous)


def test_proximal_weights_is_scaled_solve():
    rng = np.random.default_rng(3)
    G, q = rng.normal(size=(2, 2)), rng.normal(size=2)
    result = simplex.proximal_weights(q, G, 0.5)
    direct = simplex.solve(G, q / 0.5)
    np.testing.assert_array_equal(result.weights, direct.weights)
    # d* maximizes min_i (q_i + h <g_i, d>) - h |d|^2 / 2: no random trial does better.
    d = np.asarray(result.point)
    best = np.min(q + 0.5 * G @ d) - 0.25 * d @ d
    for trial in rng.normal(size=(400, 2)):
        value = np.min(q + 0.5 * G @ trial) - 0.25 * trial @ trial
        assert value <= best + 1e-14


# ----------------------------------------------------------------------------
# Transformations and errors
# ----------------------------------------------------------------------------


def test_jit():
    G = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    point = jax.jit(lambda G: simplex.min_norm_point(G).point)(G)
    np.testing.assert_allclose(point, [0.4, 0.8], atol=1e-15)
    assert point.dtype == jnp.float64


def test_iteration_cap_is_reported():
    G = np.random.default_rng(4).normal(size=(2, 2))
    result = simplex.min_norm_point(G, max_iter=1)
    assert result.iterations == 1
    assert not result.converged
    assert np.isfinite(result.gap) and result.gap > 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: simplex.solve(jnp.ones(3)), ValueError, "G must be a 2-D"),
        (lambda: simplex.solve(jnp.ones((3, 2)), jnp.ones(2)), ValueError, "c must"),
        (
            lambda: simplex.solve(jnp.ones((3, 2)), mask=jnp.ones(2, bool)),
            ValueError,
            "mask must have shape",
        ),
        (
            lambda: simplex.solve(jnp.ones((3, 2)), mask=jnp.ones(3, int)),
            TypeError,
            "mask must be a boolean",
        ),
        (lambda: simplex.solve(jnp.ones((3, 2)), tol=0.0), ValueError, "tol must"),
        (
            lambda: simplex.solve(jnp.ones((3, 2)), max_iter=0),
            ValueError,
            "max_iter must",
        ),
        (
            lambda: simplex.proximal_weights(jnp.ones(3), jnp.ones((3, 2)), 0.0),
            ValueError,
            "h must",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
