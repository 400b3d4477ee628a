r"""A certified solver for small convex quadratic programs on the simplex.

The problem, for $k$ generators $g_1, \dots, g_k \in \mathbb{R}^p$ (the rows of
`G`), a linear term $c \in \mathbb{R}^k$ and a boolean `mask` selecting the usable
rows, is

$$\min_{\lambda \in \Delta} \; f(\lambda) = \langle c, \lambda \rangle
+ \tfrac12 \lambda^\top Q \lambda, \qquad Q = G G^\top,$$

where $\Delta = \{\lambda \ge 0,\ \sum_i \lambda_i = 1,\ \lambda_i = 0 \text{ for }
i \notin \text{mask}\}$. With $c = 0$ it is the minimum-norm point of the convex
hull $\mathrm{conv}\{g_i\}$ (the stationarity measure of THEORY section 3); with
$c = q / h$ it is the linearized proximal step of THEORY section 3b.

**Certificate.** With $\nabla f(\lambda) = c + Q\lambda$, the Frank-Wolfe gap

$$\mathrm{gap}(\lambda) = \langle \nabla f(\lambda), \lambda \rangle
- \min_{i \in \text{mask}} \nabla f(\lambda)_i$$

is an upper bound on $f(\lambda) - f^\star$ (Frank & Wolfe 1956): by convexity
$f^\star \ge f(\lambda) + \min_{\mu \in \Delta}
\langle \nabla f(\lambda), \mu - \lambda \rangle$. It is also the duality gap of
Wolfe's dual at $w = d = G^\top \lambda$: for every $w$,
$f^\star \ge \min_i (c_i + \langle g_i, w \rangle) - \frac12 \|w\|^2$. Because
$f(\lambda) - f^\star \ge \frac12 \|d - d^\star\|^2$, the point is certified too:
$\|d - d^\star\| \le \sqrt{2\,\mathrm{gap}}$. For $c = 0$ the gap is the optimality
residual $\|d\|^2 - \min_j \langle g_j, d \rangle$. It is a criterion on $d$, not
on $\lambda$: with near-duplicate generators the weights are ill-conditioned while
$d$ is not, and the gap sees only $d$.

**Algorithm.** A primal active-set method in the spirit of Wolfe's minimum-norm
point algorithm (Wolfe 1976), extended to a linear term. $Q$ is formed once;
everything afterwards works on $k \times k$ matrices. The state is a feasible
$\lambda$ and a support $S$. Each iteration takes the exact Newton step of $f$
restricted to $\{\sum_{i \in S} \lambda_i = 1\}$, computed from an eigenvalue
decomposition of $P_S Q P_S + \alpha (I - P_S)$ ($P_S$ the centering projector on
$S$; the shift $\alpha = \sum_{i \in S} Q_{ii}$ lifts the coordinates outside $S$
and the direction $1_S$, so the small eigenvalues left are exactly the affine
dependencies among the generators of $S$):

1. eigen-directions of curvature below $8 k \epsilon \alpha$ are *flat*
   (duplicates, collinear points, near-duplicates closer than the rounding
   level). If the gradient has a component along them (above the tolerance) the
   problem on $S$ is unbounded in exact arithmetic, so the step follows that
   component with an exact line search;
2. otherwise the full Newton step goes to the minimizer of $f$ on the affine
   hull of $S$, followed by one step of iterative refinement;
3. either step is cut by a ratio test at the boundary of the simplex, and the
   blocking index leaves $S$;
4. when the minimizer on $S$ is reached and the gap exceeds the tolerance, the
   Frank-Wolfe vertex $j = \arg\min_i \nabla f_i$ joins $S$ (in exact arithmetic
   its weight then grows, as in Wolfe's method); if $j$ is already in $S$ the
   next iteration refines the solve on $S$.

**Stopping rule.** With $\mathrm{scale} = \max(\max_i Q_{ii},\ \max_i c_i -
\min_i c_i)$ over the mask (the size of the rounding errors in $\nabla f$;
constant shifts of $c$ change nothing and are removed before solving), the
method stops and reports `converged=True` when

- at the minimizer on $S$, $\mathrm{gap} \le \mathrm{tol} \cdot \mathrm{scale}$;
  or
- the KKT conditions hold on $S$ to working precision: at the minimizer on $S$
  the most violated index is already in $S$, the objective no longer decreases,
  and $\mathrm{gap} \le \max(\mathrm{tol}, 4 k \epsilon) \cdot \mathrm{scale}$.

It stops with `converged=False` when the iteration cap is reached (default
$5k + 50$), when it stalls with a larger gap, when an index just added would be
dropped again by a step of length zero (impossible in exact arithmetic), or on a
non-finite input. It never raises inside the solver. The returned `gap` is
recomputed from the final weights with $G$ itself (not $Q$) and is the
certificate in every case; it can exceed the tolerance used inside the loop by
rounding of order $\sqrt{p}\,\epsilon \cdot \mathrm{scale}$. Everything runs
inside `jax.lax.while_loop` with fixed shapes (the support is a boolean mask), so
`solve` is jittable and vmappable; under `vmap` the loop runs until the last
problem of the batch stops.

**Accuracy.** On thousands of random and degenerate problems with $k \le 64$
(repeated, collinear and near-duplicate generators at distances from $10^{-12}$ to
$10^{-3}$, points in a plane, the origin inside the hull, all-zero generators,
with and without a linear term, with masks) and on margin gradients of ReLU
networks on digits, every problem converged, the returned gap stayed below
$10^{-14}$ times the scale, at most 84 iterations were used for $k = 64$, and the
objective agrees with an independent reference within $10^{-10}$ and the point $d$
within $10^{-8}$ (tests/test_simplex.py checks these bounds on about 300
problems).

!!! warning "Limits"
    Working with $Q = G G^\top$ squares the condition number: directions of the
    hull thinner than about $\sqrt{\epsilon}\,\|g\|$ (about $10^{-8}$
    relative) are invisible, so generators closer than that behave as
    duplicates; the answer is then exact for the rounded $Q$. The gap certifies
    $\|d - d^\star\| \le \sqrt{2\,\mathrm{gap}}$ (about $10^{-7} \|g\|$ at
    the default tolerance); in practice $d$ is accurate to rounding level. Since
    $d$ is formed from weights, its absolute resolution is about
    $\epsilon \max_i \|g_i\|$. An all-`False` mask (an empty simplex) returns
    zero weights, an infinite objective and gap, and `converged=False`. The
    solver is not meant to be differentiated (reverse mode does not pass
    through `jax.lax.while_loop`); differentiate the KKT system on the returned
    support instead.

**References:**

- P. Wolfe, "Finding the nearest point in a polytope", Mathematical Programming
  11 (1976), 128-149.
- M. Frank and P. Wolfe, "An algorithm for quadratic programming", Naval
  Research Logistics Quarterly 3 (1956), 95-110.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = ["QPResult", "min_norm_point", "proximal_weights", "solve"]


class QPResult(NamedTuple):
    r"""The solution of a simplex QP with its certificate.

    **Fields:**

    - `weights`: $\lambda$ on the simplex, exactly 0 outside the mask.
    - `point`: $d = G^\top \lambda$.
    - `objective`: $\langle c, \lambda \rangle + \frac12 \|d\|^2$.
    - `gap`: the Frank-Wolfe gap of `weights`, a certified bound
      $\text{objective} - \text{optimum} \le \text{gap}$.
    - `iterations`: the number of active-set iterations used.
    - `converged`: `True` when the stopping rule was met before the iteration
      cap (see the module docstring).
    """

    weights: Float[Array, " k"]
    point: Float[Array, " p"]
    objective: Float[Array, ""]
    gap: Float[Array, ""]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]


class _State(NamedTuple):
    lam: Array
    support: Array
    iteration: Array
    done: Array
    converged: Array


_FLOOR = 4.0  # a stall counts as converged when gap <= max(tol, 4 k eps) scale


def _default_max_iter(k: int) -> int:
    return 5 * k + 50


def _shifted_hessian(Q: Array, s: Array) -> tuple[Array, Array]:
    r"""$P_S Q P_S + \alpha (I - P_S)$, $P_S$ the centering projector on $S$.

    The shift moves the structural null space of $P_S Q P_S$ (the coordinates
    outside $S$ and the direction $1_S$) to the eigenvalue $\alpha \ge
    \|P_S Q P_S\|$, so that the small eigenvalues left are the affine
    dependencies among the generators of $S$.
    """
    m = jnp.sum(s)
    Qs = Q * s[:, None] * s[None, :]
    r = jnp.sum(Qs, axis=1) / m
    t = jnp.sum(r * s) / m
    centered = (Qs - r[:, None] - r[None, :] + t) * s[:, None] * s[None, :]
    alpha = jnp.sum(s * jnp.diagonal(Q))
    complement = jnp.diag(1.0 - s) + s[:, None] * s[None, :] / m
    return centered + alpha * complement, alpha


def _ratio_test(lam, support, direction, theta_max):
    """Largest step in [0, theta_max] keeping lam + theta direction >= 0."""
    shrinking = support & (direction < 0)
    safe = jnp.where(shrinking, -direction, 1.0)
    ratios = jnp.where(shrinking, lam / safe, jnp.inf)
    blocker = jnp.argmin(ratios)
    blocked = ratios[blocker] <= theta_max
    theta = jnp.minimum(ratios[blocker], theta_max)
    theta = jnp.where(jnp.isfinite(theta), theta, 0.0)
    futile = blocked & (lam[blocker] == 0)
    return theta, blocked, blocker, futile


def _iterate(Q, b, mask, tol_abs, floor_abs, scale, state):
    """One active-set iteration (see the module docstring, steps 1-4)."""
    k = Q.shape[0]
    eps = jnp.finfo(Q.dtype).eps
    indices = jnp.arange(k)
    lam, support = state.lam, state.support
    s = support.astype(Q.dtype)
    m = jnp.sum(s)

    def centered(v):
        return s * (v - jnp.sum(s * v) / m)

    # Newton and flat directions from the projected Hessian on the support.
    g = b + Q @ lam
    objective = 0.5 * lam @ (b + g)
    H, alpha = _shifted_hessian(Q, s)
    w, V = jnp.linalg.eigh(H)
    curved = w > 8.0 * k * eps * alpha
    safe_w = jnp.where(curved, w, 1.0)

    def newton(v):
        return -s * (V @ jnp.where(curved, (V.T @ centered(v)) / safe_w, 0.0))

    flat = s * (V @ jnp.where(curved, 0.0, V.T @ centered(g)))
    newton_step = newton(g)

    # A flat ray (exact line search) when the gradient has a component along the
    # affine dependencies; otherwise the Newton step. Ratio tests on both.
    curvature = flat @ (Q @ flat)
    flat_sq = flat @ flat
    theta_line = jnp.where(
        curvature > 0, flat_sq / jnp.where(curvature > 0, curvature, 1.0), jnp.inf
    )
    ray_test = _ratio_test(lam, support, -flat, theta_line)
    newton_test = _ratio_test(lam, support, newton_step, 1.0)
    ray = (jnp.sqrt(flat_sq) > tol_abs) & ~ray_test[3]
    direction = jnp.where(ray, -flat, newton_step)
    theta, blocked, blocker, futile = jax.tree.map(
        lambda r, n: jnp.where(ray, r, n), ray_test, newton_test
    )

    new = lam + theta * direction
    new = jnp.where(blocked & (indices == blocker), 0.0, new)
    new = jnp.maximum(new, 0.0) * s
    new = new / jnp.sum(new)

    # At the minimizer on the support: one refinement step, then the FW test.
    reached = ~blocked & ~ray
    refine = newton(b + Q @ new)
    refined = new + refine
    g_new = b + Q @ new
    gain = g_new @ refine + 0.5 * refine @ (Q @ refine)
    accept = reached & jnp.all(refined >= 0) & (gain <= 0)
    new = jnp.where(accept, refined / jnp.sum(refined), new)
    new_support = support & (new > 0)

    g_new = b + Q @ new
    new_objective = 0.5 * new @ (b + g_new)
    vertex = jnp.argmin(jnp.where(mask, g_new, jnp.inf))
    gap = new @ g_new - g_new[vertex]
    small_gap = reached & (gap <= tol_abs)
    inside = new_support[vertex]
    stalled = reached & inside & (new_objective >= objective - eps * scale)
    grow = reached & ~small_gap & ~inside & jnp.isfinite(gap)
    new_support = new_support | (grow & (indices == vertex))

    stop = small_gap | stalled | futile | ~jnp.isfinite(gap)
    at_floor = stalled & (gap <= floor_abs)
    return _State(
        lam=jnp.where(futile, lam, new),
        support=jnp.where(futile, support & (indices != blocker), new_support),
        iteration=state.iteration + 1,
        done=stop,
        converged=(small_gap | at_floor) & jnp.isfinite(gap),
    )


@jax.jit
def _solve(G, c, mask, tol, max_iter):
    k = G.shape[0]
    G = jnp.where(mask[:, None], G, 0.0)
    any_row = jnp.any(mask)

    # Remove a constant from c (the minimizer and the gap do not change).
    c_min = jnp.min(jnp.where(mask, c, jnp.inf))
    b = jnp.where(mask, c - jnp.where(any_row, c_min, 0.0), 0.0)
    Q = G @ G.T
    diag = jnp.diagonal(Q)
    scale = jnp.maximum(jnp.max(jnp.where(mask, diag, 0.0)), jnp.max(b))
    tol_abs = tol * scale
    floor_abs = jnp.maximum(tol, _FLOOR * k * jnp.finfo(G.dtype).eps) * scale

    # Start at the best vertex of the simplex.
    start = jnp.argmin(jnp.where(mask, b + 0.5 * diag, jnp.inf))
    lam0 = jnp.where(any_row, jax.nn.one_hot(start, k, dtype=G.dtype), 0.0)
    state = _State(
        lam=lam0,
        support=lam0 > 0,
        iteration=jnp.zeros((), jnp.int32),
        done=~any_row,
        converged=jnp.zeros((), bool),
    )
    state = jax.lax.while_loop(
        lambda st: ~st.done & (st.iteration < max_iter),
        lambda st: _iterate(Q, b, mask, tol_abs, floor_abs, scale, st),
        state,
    )

    # The certificate, recomputed from the final point with G itself.
    lam = state.lam
    d = G.T @ lam
    grad = b + G @ d
    gap = lam @ grad - jnp.min(jnp.where(mask, grad, jnp.inf))
    gap = jnp.where(any_row, jnp.maximum(gap, 0.0), jnp.inf)
    c_masked = jnp.where(mask, c, 0.0)
    objective = jnp.where(any_row, c_masked @ lam + 0.5 * d @ d, jnp.inf)
    return QPResult(
        weights=lam,
        point=d,
        objective=objective,
        gap=gap,
        iterations=state.iteration,
        converged=state.converged & any_row,
    )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def solve(
    G: Float[ArrayLike, "k p"],
    c: Float[ArrayLike, " k"] | None = None,
    mask: Bool[ArrayLike, " k"] | None = None,
    *,
    tol: float = 1e-14,
    max_iter: int | None = None,
) -> QPResult:
    r"""Minimize $\langle c, \lambda\rangle + \|G^\top \lambda\|^2 / 2$ on a simplex.

    The minimum runs over $\lambda \ge 0$ with $\sum_i \lambda_i = 1$ and
    $\lambda_i = 0$ outside `mask`. The active-set method, its stopping rule and
    the certificate are described in the module docstring (Wolfe 1976; Frank &
    Wolfe 1956). Jittable and vmappable; computed in float64.

    **Arguments:**

    - `G`: the generators, one per row, shape `(k, p)`.
    - `c`: the linear term, shape `(k,)`; `None` for zero.
    - `mask`: boolean, shape `(k,)`, the usable rows; `None` for all.
    - `tol`: relative tolerance on the Frank-Wolfe gap; the method stops when
      $\mathrm{gap} \le \mathrm{tol} \cdot \max(\max_i Q_{ii},
      \max_i c_i - \min_i c_i)$ (maxima over the mask).
    - `max_iter`: iteration cap, a positive integer (may be traced);
      `None` for $5k + 50$.

    **Returns:**

    A `QPResult` (weights, point, objective, gap, iterations, converged).

    **Raises:**

    - `ValueError`: when `G` is not 2-D or empty, when `c` or `mask` do not have
      shape `(k,)`, when `tol` is not positive or `max_iter` not a positive
      integer.
    - `TypeError`: when `mask` is not boolean.
    """
    G = jnp.asarray(G)
    if G.ndim != 2 or G.shape[0] == 0:
        raise ValueError(
            f"G must be a 2-D array with at least one row (k, p), got shape "
            f"{G.shape}; stack the generators as rows."
        )
    G = G.astype(jnp.float64)
    k = G.shape[0]

    if c is None:
        c = jnp.zeros(k, G.dtype)
    c = jnp.asarray(c)
    if c.shape != (k,):
        raise ValueError(
            f"c must have shape ({k},) to match G with {k} rows, got {c.shape}."
        )
    c = c.astype(G.dtype)

    if mask is None:
        mask = jnp.ones(k, bool)
    mask = jnp.asarray(mask)
    if mask.shape != (k,):
        raise ValueError(
            f"mask must have shape ({k},) to match G with {k} rows, got {mask.shape}."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"mask must be a boolean array, got dtype {mask.dtype}; pass "
            "mask=(index_array[:, None] == jnp.arange(k)).any(0) or a comparison."
        )

    if max_iter is None:
        max_iter = _default_max_iter(k)
    if _is_concrete(max_iter) and not (
        np.ndim(max_iter) == 0
        and np.issubdtype(np.asarray(max_iter).dtype, np.integer)
        and int(max_iter) >= 1
    ):
        raise ValueError(
            f"max_iter must be a positive integer, got {max_iter!r}; the default "
            f"is 5k + 50 = {_default_max_iter(k)}."
        )
    if _is_concrete(tol) and not float(tol) > 0:
        raise ValueError(
            f"tol must be positive, got {tol!r}; 1e-14 is near float64 rounding."
        )
    return _solve(
        G, c, mask, jnp.asarray(tol, G.dtype), jnp.asarray(max_iter, jnp.int32)
    )


def min_norm_point(
    G: Float[ArrayLike, "k p"],
    mask: Bool[ArrayLike, " k"] | None = None,
    **kwargs,
) -> QPResult:
    r"""The minimum-norm point of the convex hull of the rows of `G` in `mask`.

    Solves $\min \{\|d\| : d \in \mathrm{conv}\{g_i : i \in \text{mask}\}\}$
    (Wolfe 1976), i.e. `solve(G, None, mask)`. `result.point` is the minimum-norm
    element, `jnp.linalg.norm(result.point)` the stationarity measure of THEORY
    section 3, and `result.gap` the optimality residual
    $\|d\|^2 - \min_j \langle g_j, d \rangle$ (at most `tol` times
    $\max_i \|g_i\|^2$ on convergence).

    **Arguments:**

    - `G`: the generators, one per row, shape `(k, p)`.
    - `mask`: boolean, shape `(k,)`, the usable rows; `None` for all.
    - `**kwargs`: `tol`, `max_iter`, passed to `solve`.

    **Returns:**

    A `QPResult`; its objective is $\frac12 \|d\|^2$.

    **Raises:**

    As `solve`.
    """
    return solve(G, None, mask, **kwargs)


def proximal_weights(
    values: Float[ArrayLike, " k"],
    G: Float[ArrayLike, "k p"],
    h: float | Float[ArrayLike, ""],
    mask: Bool[ArrayLike, " k"] | None = None,
    **kwargs,
) -> QPResult:
    r"""The weights and direction of the linearized proximal step (THEORY 3b).

    For ascent of $F = \min_i q_i$ with pieces of values $q_i$ and gradients
    $g_i$ (the rows of `G`), the step of size $h$ is

    $$d^\star = \arg\max_d \min_i \big(q_i + h \langle g_i, d \rangle\big)
    - \tfrac{h}{2} \|d\|^2 = G^\top \lambda,$$

    $$\lambda = \arg\min_{\lambda \in \Delta} \sum_i \lambda_i q_i
    + \tfrac{h}{2} \|G^\top \lambda\|^2,$$

    computed as `solve(G, values / h, mask)`. `result.point` is $d^\star$ and the
    next iterate is $u + h d^\star$ (normalized on the sphere). `objective` and
    `gap` refer to the problem divided by $h$.

    **Arguments:**

    - `values`: the piece values $q_i$, shape `(k,)`.
    - `G`: the piece gradients, one per row, shape `(k, p)`.
    - `h`: the step size, positive.
    - `mask`: boolean, shape `(k,)`, the candidate pieces; `None` for all.
    - `**kwargs`: `tol`, `max_iter`, passed to `solve`.

    **Returns:**

    A `QPResult` whose `point` is the step direction $d^\star$.

    **Raises:**

    - `ValueError`: when `h` is not positive (checked when `h` is concrete), and
      as `solve`.
    """
    if _is_concrete(h) and not float(h) > 0:
        raise ValueError(f"h must be a positive step size, got {h!r}.")
    values = jnp.asarray(values)
    return solve(G, values / h, mask, **kwargs)
