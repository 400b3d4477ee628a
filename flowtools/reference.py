"""Independent reference answers: the hard-margin SVM and the l1 max-margin direction.

These are computed with numpy and scipy only (no JAX, no flowtools solver), so that
tests of the flow and of SGD compare against answers that share no code with them
(THEORY section 6):

- for a linear model ($L = 1$), the only D-critical point with positive margin is
  the hard-margin SVM direction without intercept, with margin $\\gamma_2$;
- for the two-layer diagonal network $\\langle u \\odot u - v \\odot v, x\\rangle$ the
  best normalized margin is the l1 max-margin value $\\gamma_1$.

Both take inputs `X` of shape `(n, d)` and labels `y` in $\\{-1, +1\\}$, and work
with the signed points $z_i = y_i x_i$.
"""

import numpy as np
import scipy.linalg
import scipy.optimize
from jaxtyping import Float

__all__ = ["l1_margin_direction", "svm_direction"]

_KKT_TOL = 1e-10


def _signed_points(X, y) -> np.ndarray:
    """Validate `(X, y)` and return the signed points $z_i = y_i x_i$."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty (n, d) array, got shape {X.shape}.")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"X has {X.shape[0]} rows but y has {y.shape[0]} labels; pass one label "
            "per row."
        )
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite; found NaN or infinite values.")
    bad = np.flatnonzero(np.abs(y) != 1.0)
    if bad.size:
        raise ValueError(
            f"labels y must be -1 or +1; rows {bad[:10].tolist()} hold "
            f"{np.unique(y[bad])[:10].tolist()}. Use flowtools.data.Dataset."
            "from_arrays to map 0/1 labels."
        )
    return y[:, None] * X


def _require_separable(Z: np.ndarray) -> None:
    """Raise unless some $w$ has $\\langle z_i, w\\rangle > 0$ for every $i$.

    Solves $\\max t$ subject to $Z w \\ge t$, $\\|w\\|_\\infty \\le 1$, $t \\le 1$.
    """
    n, d = Z.shape
    zero_rows = np.flatnonzero(np.all(Z == 0.0, axis=1))
    if zero_rows.size:
        raise ValueError(
            "the data are not linearly separable through the origin: rows "
            f"{zero_rows[:10].tolist()} are zero vectors, whose margin is 0 for "
            "every direction."
        )
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    result = scipy.optimize.linprog(
        cost,
        A_ub=np.hstack([-Z, np.ones((n, 1))]),
        b_ub=np.zeros(n),
        bounds=[(-1.0, 1.0)] * d + [(None, 1.0)],
        method="highs",
    )
    scale = float(np.max(np.sum(np.abs(Z), axis=1)))
    if result.status != 0 or -result.fun <= 1e-10 * scale:
        best = -result.fun + 0.0 if result.status == 0 else float("nan")
        raise ValueError(
            "the data are not linearly separable through the origin: no w has "
            "y_i <w, x_i> > 0 for every sample (the best margin with "
            f"||w||_inf <= 1 is {best:.3g}). A model without bias cannot reach the "
            "late stage on them; drop conflicting samples or add a constant "
            "feature."
        )


def _svm_kkt_residual(Z: np.ndarray, w: np.ndarray) -> float:
    """Relative KKT residual of $w$ for $\\min \\|w\\|^2/2$ s.t. $Z w \\ge 1$.

    The maximum of the primal infeasibility $\\max(0, 1 - \\min_i z_i \\cdot w)$ and
    of the stationarity residual
    $\\min_{a \\ge 0} \\|Z_T^\\top a - w\\| / \\|w\\|$ over the rows $T$ that are
    tight to $10^{-9}$ (complementary slackness).
    """
    margins = Z @ w
    infeasibility = max(0.0, 1.0 - float(np.min(margins)))
    tight = margins <= 1.0 + 1e-9
    _, stationarity = scipy.optimize.nnls(Z[tight].T, w)
    return max(infeasibility, stationarity / float(np.linalg.norm(w)))


def _svm_least_distance(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve $\\min \\|w\\|$ s.t. $Z w \\ge 1$ as a least-distance program.

    Lawson & Hanson (1974, ch. 23): with $E = [Z^\\top; 1^\\top]$ and
    $f = e_{d+1}$, solve the nonnegative least squares problem
    $\\min_{a \\ge 0} \\|E a - f\\|$ (an exact active-set method on a dual of the
    SVM); with $r = E a - f$, $w = -r_{1:d} / r_{d+1}$. Returns `(w, a)`.
    """
    n, d = Z.shape
    E = np.vstack([Z.T, np.ones((1, n))])
    f = np.zeros(d + 1)
    f[-1] = 1.0
    a, _ = scipy.optimize.nnls(E, f, maxiter=50 * (n + d))
    r = E @ a - f
    return -r[:d] / r[d], a


def _svm_dual_lbfgsb(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve the bound-constrained SVM dual by L-BFGS-B.

    The dual is $\\max_{a \\ge 0} \\sum a - \\|Z^\\top a\\|^2/2$; returns
    `(w, a)` with $w = Z^\\top a$.
    """
    K = Z @ Z.T
    n = Z.shape[0]

    def objective(a):
        Ka = K @ a
        return 0.5 * a @ Ka - a.sum(), Ka - 1.0

    result = scipy.optimize.minimize(
        objective,
        np.full(n, 1.0 / max(float(np.trace(K)), 1e-300)),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * n,
        options={"maxiter": 100_000, "ftol": 1e-16, "gtol": 1e-14, "maxcor": 30},
    )
    return Z.T @ result.x, result.x


def _refine_on_support(Z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The minimum-norm $w$ with $z_i \\cdot w = 1$ on the support $\\{a_i > 0\\}$.

    Solved exactly (least squares on the support rows); if the support is the
    right active set and $w$ is feasible, it is the SVM solution to rounding
    error.
    """
    support = a > 1e-12 * max(float(np.max(a)), 1e-300)
    w, *_ = scipy.linalg.lstsq(Z[support], np.ones(int(support.sum())))
    return w


def svm_direction(
    X: Float[np.ndarray, "n d"], y: Float[np.ndarray, " n"]
) -> tuple[Float[np.ndarray, " d"], float]:
    """The hard-margin SVM direction without intercept, and its margin $\\gamma_2$.

    Solves $w^\\star = \\arg\\min \\|w\\|^2$ subject to
    $y_i \\langle w, x_i\\rangle \\ge 1$ through a dual of it (a nonnegative least
    squares problem, solved by an exact active-set method; L-BFGS-B on the
    bound-constrained dual $\\max_{a \\ge 0} \\sum_i a_i - \\|\\sum_i a_i y_i
    x_i\\|^2 / 2$ as a second attempt), then refines by solving the equality
    constraints on the support exactly, and certifies the KKT conditions to a
    relative residual of $10^{-10}$. For a linear model this is the only
    D-critical direction with positive margin (THEORY section 6); the cosine
    error of the returned direction is at the level of rounding error.

    **Arguments:**

    - `X`: inputs of shape `(n, d)`.
    - `y`: labels in $\\{-1, +1\\}$, shape `(n,)`.

    **Returns:**

    `(w, gamma_2)`: the unit vector $w^\\star / \\|w^\\star\\|$ and the margin
    $\\gamma_2 = \\min_i y_i \\langle w, x_i\\rangle = 1 / \\|w^\\star\\|$.

    **Raises:**

    - `ValueError`: for bad inputs, or when the data are not linearly separable
      through the origin.
    - `RuntimeError`: when no attempt reaches the KKT tolerance (it names the
      residual reached).
    """
    Z = _signed_points(X, y)
    _require_separable(Z)

    best_w, best_residual = None, np.inf
    for solve in (_svm_least_distance, _svm_dual_lbfgsb):
        w_dual, a = solve(Z)
        for w in (_refine_on_support(Z, a), w_dual):
            if not np.all(np.isfinite(w)) or not np.any(w):
                continue
            residual = _svm_kkt_residual(Z, w)
            if residual < best_residual:
                best_w, best_residual = w, residual
        if best_residual <= _KKT_TOL:
            break
    if best_residual > _KKT_TOL:
        raise RuntimeError(
            "svm_direction could not certify the SVM solution: the best relative "
            f"KKT residual reached is {best_residual:.3g} (tolerance {_KKT_TOL:g}); "
            "the problem may be badly scaled."
        )

    w = best_w / np.linalg.norm(best_w)
    return w, float(np.min(Z @ w))


def l1_margin_direction(
    X: Float[np.ndarray, "n d"], y: Float[np.ndarray, " n"]
) -> tuple[Float[np.ndarray, " d"], float]:
    """The l1 max-margin direction and its margin $\\gamma_1$.

    Solves the linear program
    $\\gamma_1 = \\max_{\\|\\beta\\|_1 \\le 1} \\min_i y_i \\langle \\beta, x_i\\rangle$
    with `scipy.optimize.linprog` (HiGHS), writing $\\beta = \\beta^+ - \\beta^-$,
    then refines the vertex found by solving its defining linear system (tight
    rows and nonzero coordinates) exactly when that system is well posed. For the
    two-layer diagonal network $\\langle u \\odot u - v \\odot v, x\\rangle$ this is
    the best normalized margin (THEORY section 6). The maximizer need not be
    unique; the margin is.

    **Arguments:**

    - `X`: inputs of shape `(n, d)`.
    - `y`: labels in $\\{-1, +1\\}$, shape `(n,)`.

    **Returns:**

    `(beta, gamma_1)` with $\\|\\beta\\|_1 = 1$ and
    $\\gamma_1 = \\min_i y_i \\langle \\beta, x_i\\rangle$.

    **Raises:**

    - `ValueError`: for bad inputs, or when the data are not linearly separable
      through the origin.
    - `RuntimeError`: when the linear program fails (with HiGHS's message).
    """
    Z = _signed_points(X, y)
    _require_separable(Z)
    n, d = Z.shape

    # maximize gamma s.t. Z (b+ - b-) >= gamma, sum(b+ + b-) <= 1, b+-, >= 0
    cost = np.zeros(2 * d + 1)
    cost[-1] = -1.0
    A_ub = np.vstack(
        [
            np.hstack([-Z, Z, np.ones((n, 1))]),
            np.concatenate([np.ones(2 * d), [0.0]])[None, :],
        ]
    )
    b_ub = np.concatenate([np.zeros(n), [1.0]])
    result = scipy.optimize.linprog(
        cost,
        A_ub=A_ub,
        b_ub=b_ub,
        bounds=[(0.0, None)] * (2 * d) + [(None, None)],
        method="highs",
        options={
            "primal_feasibility_tolerance": 1e-10,
            "dual_feasibility_tolerance": 1e-10,
        },
    )
    if result.status != 0:
        raise RuntimeError(f"l1_margin_direction: linprog failed: {result.message}")

    beta = result.x[:d] - result.x[d : 2 * d]
    beta = beta / np.sum(np.abs(beta))
    gamma = float(np.min(Z @ beta))

    refined = _refine_l1_vertex(Z, beta, gamma)
    if refined is not None:
        beta, gamma = refined
    return beta, gamma


def _refine_l1_vertex(
    Z: np.ndarray, beta: np.ndarray, gamma: float
) -> tuple[np.ndarray, float] | None:
    """Solve exactly for the LP vertex near `beta`; `None` when not well posed.

    Unknowns $\\beta_J$ (the nonzero coordinates) and $\\gamma$; equations
    $z_{i, J} \\cdot \\beta_J = \\gamma$ on the tight rows and
    $\\mathrm{sign}(\\beta_J) \\cdot \\beta_J = 1$. The solution is accepted only
    if it keeps the signs, stays feasible and does not lower the margin.
    """
    scale = float(np.max(np.abs(Z)))
    support = np.flatnonzero(np.abs(beta) > 1e-9)
    tight = np.flatnonzero(Z @ beta <= gamma + 1e-8 * scale)
    signs = np.sign(beta[support])
    system = np.vstack(
        [
            np.hstack([Z[np.ix_(tight, support)], -np.ones((tight.size, 1))]),
            np.concatenate([signs, [0.0]])[None, :],
        ]
    )
    rhs = np.concatenate([np.zeros(tight.size), [1.0]])
    if system.shape[0] < system.shape[1] or np.linalg.cond(system) > 1e12:
        return None
    solution, *_ = scipy.linalg.lstsq(system, rhs)
    if np.linalg.norm(system @ solution - rhs) > 1e-12 * max(scale, 1.0):
        return None

    candidate = np.zeros_like(beta)
    candidate[support] = solution[:-1]
    if np.any(np.sign(candidate[support]) != signs):
        return None
    candidate /= np.sum(np.abs(candidate))
    new_gamma = float(np.min(Z @ candidate))
    if new_gamma < gamma - 1e-12 * max(scale, 1.0):
        return None
    return candidate, new_gamma
