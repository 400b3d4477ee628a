"""Time the certified simplex QP against scipy's SLSQP on digits-like generators.

The generators are the margin gradients of a random bias-free 2-layer ReLU net
(width 32) on digits 0 vs 1 (pixels / 16), for the k smallest margins, projected
orthogonally to the unit parameter vector (p = 2080). For k = 32 and k = 64 the
script times `min_norm_point` and `proximal_weights` (h = 0.05) after
compilation (median of repeats), and `scipy.optimize.minimize(method="SLSQP")` on
the same problem, with the Gram matrix precomputed, the exact gradient given,
`ftol=1e-12` and at most 200 iterations (more iterations barely help SLSQP here and
cost seconds each).

Accuracy is the Frank-Wolfe gap of each answer computed here in numpy from G
(objective minus Wolfe's dual bound: a certified bound on objective - optimum),
relative to the problem scale. Run: `python benchmarks/bench_simplex.py`.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from sklearn.datasets import load_digits

from flowtools import simplex

WIDTH = 32
STEP = 0.05
REPEATS = 7
SLSQP_REPEATS = 3


def digits_generators(k, seed=0):
    """Projected margin gradients (k, p) and margins (k,) on digits 0 vs 1."""
    X, y = load_digits(return_X_y=True)
    keep = y < 2
    X = jnp.asarray(X[keep] / 16.0)
    y = jnp.where(jnp.asarray(y[keep]) == 1, 1.0, -1.0)
    dim = X.shape[1]
    key_w, key_a = jax.random.split(jax.random.key(seed))
    W = jax.random.normal(key_w, (WIDTH, dim)) / np.sqrt(dim)
    a = jax.random.normal(key_a, (WIDTH,)) / np.sqrt(WIDTH)
    u = jnp.concatenate([W.ravel(), a])
    u = u / jnp.linalg.norm(u)

    def margin(theta, x, label):
        W = theta[: WIDTH * dim].reshape(WIDTH, dim)
        return label * (theta[WIDTH * dim :] @ jax.nn.relu(W @ x))

    q = jax.vmap(margin, (None, 0, 0))(u, X, y)
    smallest = jnp.argsort(q)[:k]
    J = jax.vmap(jax.grad(margin), (None, 0, 0))(u, X[smallest], y[smallest])
    J = J - (J @ u)[:, None] * u[None, :]
    return np.asarray(J), np.asarray(q[smallest])


def certified_gap(G, c, lam):
    """Objective minus Wolfe's dual bound at d = G^T lam, relative to the scale."""
    d = G.T @ lam
    grad = c + G @ d
    scale = max(np.max(np.sum(G**2, axis=1)), np.ptp(c))
    return (lam @ grad - np.min(grad)) / scale, c @ lam + 0.5 * d @ d


def median_time(fn, repeats=REPEATS, warm_up=True):
    """Median wall time of `fn()` over `repeats` calls, and its last result."""
    if warm_up:
        fn()  # compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def slsqp(G, c):
    Q = G @ G.T
    k = len(c)

    def objective(lam):
        return c @ lam + 0.5 * lam @ Q @ lam

    def gradient(lam):
        return c + Q @ lam

    constraint = {
        "type": "eq",
        "fun": lambda lam: np.sum(lam) - 1.0,
        "jac": lambda lam: np.ones(k),
    }
    result = scipy.optimize.minimize(
        objective,
        np.full(k, 1.0 / k),
        jac=gradient,
        bounds=[(0.0, 1.0)] * k,
        constraints=[constraint],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 200},
    )
    lam = np.maximum(result.x, 0.0)
    return lam / lam.sum(), result.nit


def main():
    rows = []
    for k in (32, 64):
        G, q = digits_generators(k)
        for name, c in (
            ("min_norm_point", np.zeros(k)),
            ("proximal_weights", q / STEP),
        ):
            if name == "min_norm_point":

                def ours(G=G):
                    return jax.block_until_ready(simplex.min_norm_point(G))
            else:

                def ours(G=G, q=q):
                    return jax.block_until_ready(simplex.proximal_weights(q, G, STEP))

            t_ours, result = median_time(ours)
            gap_ours, obj_ours = certified_gap(G, c, np.asarray(result.weights))

            t_slsqp, (lam_slsqp, nit_slsqp) = median_time(
                lambda G=G, c=c: slsqp(G, c), SLSQP_REPEATS, warm_up=False
            )
            gap_slsqp, obj_slsqp = certified_gap(G, c, lam_slsqp)
            rows.append(
                (
                    k,
                    name,
                    int(result.iterations),
                    t_ours * 1e3,
                    gap_ours,
                    nit_slsqp,
                    t_slsqp * 1e3,
                    gap_slsqp,
                    t_slsqp / t_ours,
                    obj_slsqp - obj_ours,
                )
            )

    header = (
        f"{'k':>3} {'problem':<17} {'iters':>5} {'ms':>8} {'rel. gap':>9}"
        f" | {'SLSQP it':>8} {'ms':>8} {'rel. gap':>9} | {'SLSQP/ours':>10}"
        f" {'obj diff':>9}"
    )
    print("flowtools.simplex vs scipy SLSQP, digits-like generators (p = 2080)")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row[0]:>3} {row[1]:<17} {row[2]:>5} {row[3]:>8.3f} {row[4]:>9.1e}"
            f" | {row[5]:>8} {row[6]:>8.3f} {row[7]:>9.1e} | {row[8]:>10.1f}"
            f" {row[9]:>9.1e}"
        )
    print(
        "rel. gap: Frank-Wolfe gap from numpy, / max(|g_i|^2, spread of c), a "
        "certified bound on (objective - optimum) / scale; obj diff: SLSQP - ours."
    )


if __name__ == "__main__":
    main()
