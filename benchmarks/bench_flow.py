"""Benchmarks of the flow solvers.

(a) 256 softmin flows on the digits pair 0/1 with a bias-free 2-layer ReLU net:
    one batched `flow.integrate_batch` against a loop of
    `scipy.integrate.solve_ivp` (RK45) on the same field and tolerances. The scipy
    loop runs on `--scipy-solves` starts and is extrapolated linearly to 256
    (each solve is independent, so its cost is additive).
(b) The inclusion solver on dy/dt in -sign(y) and on the circle case, against
    diffrax Tsit5 + PID and scipy RK45 driven by an explicit selection: steps
    taken and final error side by side.
(c) One proximal step on the digits margin field with 32 candidate rows.

Run: `python benchmarks/bench_flow.py` (a few minutes on 2 CPU cores).
"""

import argparse
import math
import time
import warnings

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

from flowtools import data, flow, models
from flowtools.fields import MarginField, PiecewiseField
from flowtools.flow import PiecesTerm, ProximalEuler
from flowtools.flow.solver import initial_track


def _block(tree):
    return jax.tree_util.tree_map(
        lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree
    )


# ---------------------------------------------------------------------------
# (a) batched softmin flows vs a scipy loop.


def bench_softmin(num_flows, scipy_solves, t1, tau, rtol, atol):
    ds = data.load("digits:0,1")
    model = models.mlp(ds.dim, widths=(32,))
    field = MarginField(model, ds)
    keys = jax.random.split(jax.random.key(0), num_flows)
    U0 = jnp.stack([model.ravel(model.init(k)) for k in keys])
    U0 = U0 / jnp.linalg.norm(U0, axis=1, keepdims=True)
    kwargs = dict(tau=tau, rtol=rtol, atol=atol, saveat=[t1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        start = time.perf_counter()
        first = flow.integrate_batch(field, U0, t1, "softmin", **kwargs)
        with_compile = time.perf_counter() - start
        start = time.perf_counter()
        sol = flow.integrate_batch(field, U0, t1, "softmin", **kwargs)
        after_compile = time.perf_counter() - start
    assert np.allclose(first.u_final, sol.u_final)

    direction = jax.jit(lambda u: field.softmin_direction(0.0, u, tau))
    direction(U0[0]).block_until_ready()

    def rhs(t, u):
        return np.asarray(direction(jnp.asarray(u)))

    start = time.perf_counter()
    errors, nfev = [], []
    for j in range(scipy_solves):
        ref = scipy.integrate.solve_ivp(
            rhs, (0.0, t1), np.asarray(U0[j]), method="RK45", rtol=rtol, atol=atol
        )
        u_ref = ref.y[:, -1] / np.linalg.norm(ref.y[:, -1])
        errors.append(np.linalg.norm(u_ref - np.asarray(sol.u_final[j])))
        nfev.append(ref.nfev)
    scipy_time = (time.perf_counter() - start) * num_flows / scipy_solves

    print(
        f"(a) {num_flows} softmin flows, digits 0/1, mlp(32) p={model.num_params}, "
        f"t1={t1}, tau={tau}, rtol={rtol}, atol={atol}"
    )
    print(
        f"    flowtools batch: {after_compile:.2f} s after compile, "
        f"{with_compile:.2f} s with compile; mean steps "
        f"{np.mean(sol.stats.num_steps):.0f}"
    )
    print(
        f"    scipy RK45 loop: {scipy_time:.2f} s for {num_flows} (extrapolated from "
        f"{scipy_solves}); mean nfev {np.mean(nfev):.0f}"
    )
    print(
        f"    ratio (scipy / flowtools): {scipy_time / after_compile:.1f}x excluding "
        f"compile, {scipy_time / with_compile:.1f}x including it"
    )
    print(f"    final-direction difference flowtools vs scipy: max {max(errors):.2e}")


# ---------------------------------------------------------------------------
# (b) the inclusion solver vs adaptive explicit schemes.

A, TH0 = 0.4, 1.2


def _circle_pieces(t, u):
    Z = jnp.array([[math.cos(A), math.sin(A)], [math.cos(A), -math.sin(A)]])
    return Z @ u


def _abs_pieces(t, y):
    return jnp.stack([y[0], -y[0]])


def _circle_numpy(t, u):
    Z = np.array([[math.cos(A), math.sin(A)], [math.cos(A), -math.sin(A)]])
    g = Z[np.argmin(Z @ u)]
    return g - (g @ u) * u


def _row(name, steps, error, note=""):
    print(f"    {name:<34} steps {steps:>9}   final error {error:.2e}  {note}")


def bench_kinks(rk45_rtols):
    abs_field = PiecewiseField(_abs_pieces, 1, kind="max", direction="descent")
    circle = PiecewiseField(_circle_pieces, 2, on_sphere=True)
    u_circle = jnp.array([math.cos(TH0), math.sin(TH0)])

    print("(b) dy/dt in -sign(y), y0 = 1, t in [0, 2] (exact y(2) = 0)")
    sol = flow.integrate(abs_field, jnp.array([1.0]), 2.0, dt0=0.05)
    _row("flowtools proximal, h = 0.05", sol.stats.num_steps, abs(sol.us[-1, 0]))
    for rtol in (1e-3, 1e-6):
        sol = flow.integrate(
            abs_field,
            jnp.array([1.0]),
            2.0,
            "autodiff",
            solver=diffrax.Tsit5(),
            rtol=rtol,
            atol=rtol * 1e-3,
            max_steps=4096,
            throw=False,
        )
        _row(
            f"diffrax Tsit5+PID rtol {rtol:g}",
            sol.stats.num_steps,
            abs(sol.u_final[0]),
            f"stop: {sol.stats.stop_reason} at t = {sol.stats.t_final:.3f}",
        )
    for rtol in rk45_rtols:
        ref = scipy.integrate.solve_ivp(
            lambda t, y: -np.sign(y), (0, 2), [1.0], rtol=rtol, atol=rtol * 1e-3
        )
        _row(
            f"scipy RK45 rtol {rtol:g}",
            ref.t.size - 1,
            abs(ref.y[0, -1]),
            f"nfev {ref.nfev}",
        )

    print("(b) circle case a = 0.4, th0 = 1.2, t in [0, 3] (exact th(3) = 0)")
    for h in (0.01, 0.001):
        sol = flow.integrate(circle, u_circle, 3.0, dt0=h)
        th = math.atan2(sol.us[-1, 1], sol.us[-1, 0])
        _row(f"flowtools proximal, h = {h:g}", sol.stats.num_steps, abs(th))
    for rtol in (1e-3, 1e-6):
        sol = flow.integrate(
            circle,
            u_circle,
            3.0,
            "autodiff",
            solver=diffrax.Tsit5(),
            rtol=rtol,
            atol=rtol * 1e-3,
            max_steps=4096,
            throw=False,
        )
        th = math.atan2(sol.u_final[1], sol.u_final[0])
        _row(
            f"diffrax Tsit5+PID rtol {rtol:g}",
            sol.stats.num_steps,
            abs(th),
            f"stop: {sol.stats.stop_reason} at t = {sol.stats.t_final:.3f}",
        )
    for rtol in rk45_rtols:
        ref = scipy.integrate.solve_ivp(
            _circle_numpy, (0, 3), np.asarray(u_circle), rtol=rtol, atol=rtol * 1e-3
        )
        th = math.atan2(ref.y[1, -1], ref.y[0, -1])
        _row(f"scipy RK45 rtol {rtol:g}", ref.t.size - 1, abs(th), f"nfev {ref.nfev}")


# ---------------------------------------------------------------------------
# (c) one proximal step.


def bench_step(repeats):
    ds = data.load("digits:0,1")
    model = models.mlp(ds.dim, widths=(32,))
    field = MarginField(model, ds, k=32)
    u = model.ravel(model.init(jax.random.key(0)))
    u = u / jnp.linalg.norm(u)
    solver, term = ProximalEuler(on_sphere=True), PiecesTerm(field)
    y0 = (u, initial_track(0.0, field.objective(0.0, u)))
    args = {"window": jnp.inf}

    @jax.jit
    def step(y0):
        state = solver.init(term, 0.0, 1e-3, y0, args)
        return solver.step(term, 0.0, 1e-3, y0, args, state, False)[0]

    _block(step(y0))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(step(y0))
        times.append(time.perf_counter() - start)
    print(
        f"(c) one proximal step, digits 0/1, mlp(32) p={model.num_params}, k=32: "
        f"median {1e3 * np.median(times):.2f} ms over {repeats} "
        "(includes the pre-activation pattern of the sign-flip count)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=256)
    parser.add_argument("--scipy-solves", type=int, default=8)
    parser.add_argument("--t1", type=float, default=1.0)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument(
        "--rk45-rtols",
        type=float,
        nargs="*",
        default=[1e-3],
        help="RK45 tolerances for (b); 1e-6 takes about 10^7 steps (minutes)",
    )
    parser.add_argument("--parts", default="abc", help="which parts to run")
    args = parser.parse_args()
    if "c" in args.parts:
        bench_step(repeats=50)
    if "b" in args.parts:
        bench_kinks(args.rk45_rtols)
    if "a" in args.parts:
        bench_softmin(
            args.flows, args.scipy_solves, args.t1, args.tau, args.rtol, args.atol
        )


if __name__ == "__main__":
    main()
