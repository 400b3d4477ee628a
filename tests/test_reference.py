"""Tests for flowtools.reference: SVM and l1 max-margin directions."""

import itertools

import numpy as np
import pytest
import scipy.optimize

from flowtools import data, reference


def _signed(X, y):
    return np.asarray(y)[:, None] * np.asarray(X)


def _assert_svm_kkt(X, y, w, gamma):
    """KKT conditions of min ||v||^2/2 s.t. y_i <v, x_i> >= 1 at v = w / gamma.

    Sufficient for optimality of a convex QP: primal feasibility, and v in the
    cone of the tight constraints (complementary slackness, multipliers >= 0).
    """
    Z = _signed(X, y)
    assert np.linalg.norm(w) == pytest.approx(1.0, abs=1e-15)
    margins = Z @ w
    # gamma is the attained margin (to rounding of one dot product).
    assert gamma == pytest.approx(margins.min(), rel=1e-15)
    v = w / gamma
    tight = Z @ v <= 1.0 + 1e-9
    _, residual = scipy.optimize.nnls(Z[tight].T, v)
    # 1e-10 relative: the accuracy svm_direction certifies.
    assert residual <= 1e-10 * np.linalg.norm(v)


# ---------------------------------------------------------------------- SVM


@pytest.mark.parametrize("a", [0.1, 0.4, 1.2])
def test_svm_symmetric_pair_is_the_bisector(a):
    # Signed points (cos a, +-sin a): the SVM direction is (1, 0), margin cos a.
    X = np.array([[np.cos(a), np.sin(a)], [-np.cos(a), np.sin(a)]])
    y = np.array([1.0, -1.0])
    w, gamma = reference.svm_direction(X, y)
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-15)
    assert gamma == pytest.approx(np.cos(a), rel=1e-15)


def test_svm_two_axis_points_and_a_passive_point():
    # Constraints 2 w1 >= 1, w2 >= 1: w* = (0.5, 1); (3, 3) is not a support vector.
    X = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    y = np.ones(3)
    w, gamma = reference.svm_direction(X, y)
    np.testing.assert_allclose(w, np.array([0.5, 1.0]) / np.sqrt(1.25), rtol=1e-15)
    assert gamma == pytest.approx(1.0 / np.sqrt(1.25), rel=1e-15)
    _assert_svm_kkt(X, y, w, gamma)


def test_svm_more_support_vectors_than_dimensions_and_duplicates():
    # All three constraints are tight at w* = (1, 0); the multipliers are not
    # unique, and a duplicated row makes the dual degenerate.
    X = np.array([[1.0, 0.5], [1.0, -0.5], [1.0, 0.0], [1.0, 0.0]])
    y = np.ones(4)
    w, gamma = reference.svm_direction(X, y)
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-15)
    assert gamma == pytest.approx(1.0, rel=1e-15)


def test_svm_orthonormal_points_in_three_dimensions():
    X = np.eye(3)
    y = np.array([1.0, -1.0, 1.0])
    w, gamma = reference.svm_direction(X * y[:, None], y)
    np.testing.assert_allclose(w, np.ones(3) / np.sqrt(3.0), rtol=1e-15)
    assert gamma == pytest.approx(1.0 / np.sqrt(3.0), rel=1e-15)


@pytest.mark.parametrize("spec", ["blobs:n=80,d=6,margin=0.2,seed=3", "digits:0,1"])
def test_svm_kkt_on_real_and_synthetic_data(spec):
    ds = data.load(spec)
    w, gamma = reference.svm_direction(ds.X, ds.y)
    _assert_svm_kkt(ds.X, ds.y, w, gamma)


def test_svm_matches_min_norm_point_of_the_hull_by_slsqp():
    # Independent method: the SVM direction is the minimum-norm point of the
    # hull of the signed points (min-max duality), solved here by SLSQP. Its
    # tolerance 1e-14 on the objective gives about 1e-7 on the point, so 1e-6 on
    # the cosine and the margin.
    ds = data.load("blobs:n=80,d=6,margin=0.2,seed=3")
    w, gamma = reference.svm_direction(ds.X, ds.y)
    Z = _signed(ds.X, ds.y)
    n = Z.shape[0]
    result = scipy.optimize.minimize(
        lambda lam: 0.5 * np.sum((Z.T @ lam) ** 2),
        np.full(n, 1.0 / n),
        jac=lambda lam: Z @ (Z.T @ lam),
        bounds=[(0.0, None)] * n,
        constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    point = Z.T @ result.x
    assert 1.0 - w @ point / np.linalg.norm(point) <= 1e-6
    assert gamma == pytest.approx(np.linalg.norm(point), rel=1e-6)


def test_svm_blobs_margin_is_at_least_the_planted_one():
    ds = data.make_blobs(n=50, d=4, margin=0.5, seed=2)
    _, gamma = reference.svm_direction(ds.X, ds.y)
    assert gamma >= 0.5


def test_svm_scale_equivariance_and_lbfgsb_path_agree():
    ds = data.make_blobs(n=40, d=5, margin=0.3, seed=7)
    w, gamma = reference.svm_direction(ds.X, ds.y)
    w3, gamma3 = reference.svm_direction(3.0 * ds.X, ds.y)
    # Both solves are exact to rounding; 1e-13 allows for the conditioning.
    np.testing.assert_allclose(w3, w, atol=1e-13)
    assert gamma3 == pytest.approx(3.0 * gamma, rel=1e-13)
    # The second attempt (L-BFGS-B dual, then exact refinement) agrees.
    Z = _signed(ds.X, ds.y)
    _, a = reference._svm_dual_lbfgsb(Z)
    v = reference._refine_on_support(Z, a)
    np.testing.assert_allclose(v / np.linalg.norm(v), w, atol=1e-12)


def test_svm_not_separable_raises():
    # z = (1, 0), (-1, 1), (-1, -1): 2 z_1 + z_2 + z_3 = 0, so no w works.
    X = np.array([[1.0, 0.0], [1.0, -1.0], [-1.0, -1.0]])
    y = np.array([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="not linearly separable through the origin"):
        reference.svm_direction(X, y)
    with pytest.raises(ValueError, match="not linearly separable through the origin"):
        reference.l1_margin_direction(X, y)
    with pytest.raises(ValueError, match=r"rows \[1\] are zero vectors"):
        reference.svm_direction(np.array([[1.0, 0.0], [0.0, 0.0]]), np.ones(2))


def test_input_validation():
    with pytest.raises(ValueError, match="labels y must be -1 or \\+1"):
        reference.svm_direction(np.eye(2), [0.0, 1.0])
    with pytest.raises(ValueError, match="X has 2 rows but y has 3 labels"):
        reference.l1_margin_direction(np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="non-empty"):
        reference.svm_direction(np.zeros((0, 2)), np.zeros(0))


# ----------------------------------------------------------------------- l1


def _brute_force_l1_2d(Z):
    """Exact max over ||beta||_1 = 1 of min_i <z_i, beta> in two dimensions.

    On each edge of the l1 diamond the objective is a concave piecewise-linear
    function of the edge parameter t, so its maximum is at an end of the edge or
    where two of the lines z_i . beta(t) cross: enumerate them all.
    """
    corners = [np.array(c, float) for c in [(1, 0), (0, 1), (-1, 0), (0, -1)]]
    best_value, best_beta = -np.inf, None
    for A, B in zip(corners, corners[1:] + corners[:1], strict=True):
        start, slope = Z @ A, Z @ (B - A)
        ts = [0.0, 1.0]
        for i, j in itertools.combinations(range(len(Z)), 2):
            if slope[i] != slope[j]:
                t = (start[j] - start[i]) / (slope[i] - slope[j])
                if 0.0 <= t <= 1.0:
                    ts.append(t)
        for t in ts:
            value = np.min(start + t * slope)
            if value > best_value:
                best_value, best_beta = value, A + t * (B - A)
    return best_value, best_beta


def _check_l1_answer(Z, beta, gamma):
    assert np.sum(np.abs(beta)) == pytest.approx(1.0, abs=1e-15)
    assert gamma == pytest.approx(np.min(Z @ beta), rel=1e-15)


def test_l1_closed_forms():
    beta, gamma = reference.l1_margin_direction(np.eye(2), np.ones(2))
    np.testing.assert_allclose(beta, [0.5, 0.5], rtol=1e-15)
    assert gamma == pytest.approx(0.5, rel=1e-15)

    X = np.array([[1.0, 0.5], [-1.0, 0.5]])
    beta, gamma = reference.l1_margin_direction(X, np.array([1.0, -1.0]))
    np.testing.assert_allclose(beta, [1.0, 0.0], atol=1e-15)
    assert gamma == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_l1_against_brute_force_in_two_dimensions(seed):
    rng = np.random.default_rng(seed)
    # Signed points in a cone around a random direction: separable through 0.
    angle = rng.uniform(0, 2 * np.pi)
    angles = angle + rng.uniform(-1.2, 1.2, size=7)
    Z = rng.uniform(0.5, 2.0, size=(7, 1)) * np.stack(
        [np.cos(angles), np.sin(angles)], axis=1
    )
    y = np.where(rng.uniform(size=7) < 0.5, -1.0, 1.0)
    beta, gamma = reference.l1_margin_direction(Z * y[:, None], y)
    _check_l1_answer(Z, beta, gamma)
    expected, _ = _brute_force_l1_2d(Z)
    # The LP vertex is refined by an exact solve: agreement to rounding (1e-13).
    assert gamma == pytest.approx(expected, abs=1e-13)


def test_l1_against_a_grid_in_three_dimensions():
    rng = np.random.default_rng(11)
    Z = np.abs(rng.standard_normal((5, 3))) + np.array([0.2, -0.3, 0.1])
    beta, gamma = reference.l1_margin_direction(Z, np.ones(5))
    _check_l1_answer(Z, beta, gamma)

    # Grid of the l1 sphere: every orthant's simplex at spacing 1/N. The grid
    # value is a lower bound within 2 max|z| / N of the optimum (Lipschitz bound
    # of min_i <z_i, .> in the l1 norm).
    N = 120
    a, b = np.meshgrid(np.arange(N + 1), np.arange(N + 1), indexing="ij")
    keep = a + b <= N
    simplex = np.stack([a[keep], b[keep], N - a[keep] - b[keep]], axis=1) / N
    grid_best = -np.inf
    for signs in itertools.product([-1.0, 1.0], repeat=3):
        grid_best = max(grid_best, np.max(np.min((simplex * signs) @ Z.T, axis=1)))
    assert grid_best <= gamma + 1e-12
    assert gamma <= grid_best + 2.0 * np.max(np.abs(Z)) / N


def test_l1_and_l2_margins_are_consistent():
    # ||w||_1 <= sqrt(d) ||w||_2, so the SVM direction rescaled to the l1 sphere
    # has margin gamma_2 / ||w||_1 >= gamma_2 / sqrt(d); the l1 optimum beats it.
    ds = data.make_blobs(n=60, d=5, margin=0.4, seed=1)
    w, gamma_2 = reference.svm_direction(ds.X, ds.y)
    beta, gamma_1 = reference.l1_margin_direction(ds.X, ds.y)
    _check_l1_answer(_signed(ds.X, ds.y), beta, gamma_1)
    assert gamma_1 >= gamma_2 / np.sum(np.abs(w)) - 1e-12
    assert gamma_1 <= gamma_2 + 1e-12  # ||beta||_2 <= ||beta||_1 = 1
