"""Linear SGD against the margin flow, with the hard-margin SVM as the answer.

For a linear model the only D-critical direction with positive margin is the
hard-margin SVM direction without intercept (THEORY section 6). This script runs
single-sample SGD with the exponential loss, integrates the margin flow (the
inclusion solver) from the SGD iterate at the late-stage entry, and measures how
close both get to the SVM direction computed independently by scipy.

    python examples/linear_svm.py [--out DIR] [--quick]
"""

import argparse
import os
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import flowtools as ft  # noqa: E402
from flowtools import data, fields, flow, models, reference, sgd  # noqa: E402


def _angle(U, w):
    """Angle between unit vectors, accurate down to rounding (2 arcsin(chord/2))."""
    return 2 * np.arcsin(np.clip(np.linalg.norm(U - w, axis=-1) / 2, 0, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-out/linear_svm")
    parser.add_argument("--quick", action="store_true", help="a tiny budget")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("FLOWTOOLS_EXAMPLE_QUICK") == "1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Data, model and the independent reference answer.
    ds = data.load("blobs:n=60,d=2,margin=0.3,seed=3")
    model = models.linear(ds.dim)
    w_svm, gamma = reference.svm_direction(ds.X, ds.y)

    # Constant-step, single-sample SGD (the theorem's setting).
    num_steps = 20_000 if quick else 400_000
    theta0 = model.init(jax.random.key(0))
    trace = sgd.run(model, ds, theta0, 0.1, num_steps, record={"log_points": 150})
    entry = int(np.searchsorted(trace.k, trace.late_stage_step))

    # The margin flow (inclusion solver) from the late-stage entry.
    field = fields.MarginField(model, ds)
    sol = flow.integrate(field, trace.u[entry], t1=3.0, dt0=1e-3, saveat=301)

    cos_sgd = trace.u @ w_svm
    cos_flow = np.asarray(sol.us) @ w_svm
    print(f"SVM margin gamma_2                 {gamma:.6f}")
    print(f"SGD: normalized margin at k={trace.k[-1]:>8}  {trace.margin[-1]:.6f}")
    print(f"SGD: 1 - cos(u_k, w_svm)            {1 - cos_sgd[-1]:.3e}")
    print(f"flow: normalized margin at t=3      {float(sol.margin[-1]):.6f}")
    print(f"flow: 1 - cos(u(3), w_svm)          {1 - cos_flow[-1]:.3e}")

    # Angle to the SVM direction: SGD in flow time against the flow.
    fig, ax = plt.subplots(figsize=(4.6, 3.0), layout="constrained")
    angle = _angle(trace.u, w_svm)
    ax.semilogy(trace.t[entry:], angle[entry:], ".", ms=3, label="SGD $u_k$")
    flow_angle = _angle(np.asarray(sol.us), w_svm)
    ok = flow_angle > 0
    ax.semilogy(
        trace.t[entry] + np.asarray(sol.ts)[ok],
        flow_angle[ok],
        label="inclusion flow from $u_{k_0}$",
    )
    ax.set_xlabel("flow time $t$ (dimensionless)")
    ax.set_ylabel("angle to the SVM direction (rad)")
    ax.legend()
    fig.savefig(out / "linear_svm.png", dpi=150)
    print(f"figure: {out / 'linear_svm.png'}")
    return {
        "gamma": gamma,
        "sgd_margin": float(trace.margin[-1]),
        "flow_margin": float(sol.margin[-1]),
        "version": ft.__version__,
    }


if __name__ == "__main__":
    main()
