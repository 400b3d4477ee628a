"""Speed of `flowtools.sgd.run` against plain loops of the same computation.

Single-sample SGD on digits 0 vs 1 with a bias-free 2-layer ReLU network of
width 64, float64, exponential loss, 10^5 steps. Compared in the same process
with: a plain JAX `lax.scan` SGD on theta (target: flowtools within 1.3x), a
numpy loop with a hand-written gradient (target: flowtools at least 8x faster)
and, when PyTorch is importable, a PyTorch float64 CPU loop with autograd
(target: 40x). Also reports the exact-clock mode, the estimated clock's offset
from the exact clock, and the arithmetic bound (flops per step over the
measured float64 matrix-product peak).

Run: `python benchmarks/bench_sgd.py` (a few minutes at most).
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import flowtools as ft
from flowtools import sgd

NUM_STEPS = 100_000
STEP = 0.01
WIDTH = 64


def best_time(fn, repeats=3):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plain_jax(model, ds, theta0, num_steps):
    X, y = jnp.asarray(ds.X), jnp.asarray(ds.y)
    key = jax.random.key(0)

    @jax.jit
    def run(theta):
        def body(theta, k):
            idx = jax.random.randint(jax.random.fold_in(key, k), (1,), 0, ds.n)

            def risk(th):
                return jnp.mean(jnp.exp(-y[idx] * model.apply(th, X[idx])))

            grad = jax.grad(risk)(theta)
            return tuple(a - STEP * g for a, g in zip(theta, grad, strict=True)), None

        return jax.lax.scan(body, theta, jnp.arange(num_steps))[0]

    run(theta0)[0].block_until_ready()
    return best_time(lambda: run(theta0)[0].block_until_ready())


def numpy_loop(ds, theta0, num_steps):
    W0, a0 = (np.array(t) for t in theta0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, ds.n, num_steps)
    X, y = ds.X, ds.y

    def run():
        W, a = W0.copy(), a0.copy()
        for i in idx:
            x = X[i]
            pre = W @ x
            h = np.maximum(pre, 0.0)
            q = y[i] * (a @ h)
            coef = STEP * np.exp(-q) * y[i]
            grad_a = h
            grad_W = np.outer(a * (pre > 0), x)
            a += coef * grad_a
            W += coef * grad_W
        return W

    return best_time(run, repeats=1)


def torch_loop(ds, theta0, num_steps):
    import torch

    W = torch.tensor(np.array(theta0[0]), dtype=torch.float64, requires_grad=True)
    a = torch.tensor(np.array(theta0[1]), dtype=torch.float64, requires_grad=True)
    X = torch.tensor(ds.X, dtype=torch.float64)
    y = torch.tensor(ds.y, dtype=torch.float64)
    idx = np.random.default_rng(0).integers(0, ds.n, num_steps)

    def run():
        for i in idx:
            loss = torch.exp(-y[i] * (a @ torch.relu(W @ X[i])))
            gW, ga = torch.autograd.grad(loss, (W, a))
            with torch.no_grad():
                W.sub_(STEP * gW)
                a.sub_(STEP * ga)

    return best_time(run, repeats=1)


def matmul_peak():
    A = jnp.asarray(np.random.default_rng(0).normal(size=(512, 512)))
    product = jax.jit(lambda A: A @ A)
    product(A).block_until_ready()
    seconds = best_time(lambda: product(A).block_until_ready(), repeats=10)
    return 2 * 512**3 / seconds


def main():
    ds = ft.data.load("digits:0,1")
    model = ft.models.mlp(ds.dim, widths=(WIDTH,))
    theta0 = model.init(jax.random.key(0))
    print(f"digits 0/1: n={ds.n}, d={ds.dim}, p={model.num_params}, float64")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    record = sgd.Record(log_points=20)

    # --- flowtools, estimated clock (compile first, then time) ---
    sgd.run(model, ds, theta0, STEP, 5000, record=record)
    t_ft = best_time(lambda: sgd.run(model, ds, theta0, STEP, NUM_STEPS, record=record))
    rate_ft = NUM_STEPS / t_ft
    print(f"flowtools (estimated clock): {rate_ft:12,.0f} steps/s")

    t_jax = plain_jax(model, ds, theta0, NUM_STEPS)
    rate_jax = NUM_STEPS / t_jax
    print(
        f"plain JAX scan on theta:     {rate_jax:12,.0f} steps/s   "
        f"flowtools time / plain time = {t_ft / t_jax:.2f} (target <= 1.3)"
    )

    num_np = 20_000
    rate_np = num_np / numpy_loop(ds, theta0, num_np)
    print(
        f"numpy loop, hand gradient:   {rate_np:12,.0f} steps/s   "
        f"flowtools / numpy = {rate_ft / rate_np:.1f}x (target >= 8)"
    )

    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch loop: skipped (torch is not installed)")
    else:
        num_torch = 5_000
        rate_torch = num_torch / torch_loop(ds, theta0, num_torch)
        print(
            f"PyTorch loop, autograd:      {rate_torch:12,.0f} steps/s   "
            f"flowtools / torch = {rate_ft / rate_torch:.1f}x (target >= 40)"
        )

    # --- exact clock: speed and the estimated clock's offset ---
    num_exact = 20_000
    exact_record = sgd.Record(log_points=60)
    sgd.run(model, ds, theta0, STEP, 500, clock="exact", record=exact_record)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        trace = sgd.run(
            model, ds, theta0, STEP, num_exact, clock="exact", record=exact_record
        )
        seconds.append(time.perf_counter() - start)
    rate_exact = num_exact / min(seconds)
    print(f"flowtools (exact clock):     {rate_exact:12,.0f} steps/s")
    offset = trace.t - trace.t_exact
    for k in (100, 1000, 10_000, num_exact):
        i = int(np.searchsorted(trace.k, k))
        print(
            f"  k={trace.k[i]:>6}: t_exact={trace.t_exact[i]:.4f}  "
            f"t_estimate - t_exact = {offset[i]:+.4f}"
        )

    # --- arithmetic bound ---
    p = model.num_params
    hidden = WIDTH * ds.dim
    flops = 2 * hidden + 2 * WIDTH + hidden + 2 * p  # forward, outer product, update
    peak = matmul_peak()
    bound = peak / flops
    print(
        f"arithmetic bound: {flops:,} flops/step, matmul peak {peak / 1e9:.1f} "
        f"GFlop/s -> {bound:,.0f} steps/s; flowtools reaches "
        f"{100 * rate_ft / bound:.1f}% of it"
    )


if __name__ == "__main__":
    main()
