"""A phase portrait of the margin flow on the sphere S^2.

A linear model on 3-D separable data has 3 parameters, so its directions live on
the two-sphere. The normalized margin is a minimum of linear functions there; the
flow (inclusion solver) climbs it from many random starts and ends at the
hard-margin SVM direction, sliding along the kinks where several samples tie.
SGD iterates are drawn on the same map. The figure is the one `flowtools compare`
draws for 2- and 3-parameter models, assembled here from the Python API.

    python examples/sphere_portrait.py [--out DIR] [--quick]
"""

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowtools import data, fields, flow, models, plots, reference, sgd
from flowtools.results import Results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-out/sphere_portrait")
    parser.add_argument("--quick", action="store_true", help="a tiny budget")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("FLOWTOOLS_EXAMPLE_QUICK") == "1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = data.load("blobs:n=40,d=3,margin=0.4,seed=2")
    model = models.linear(ds.dim)
    field = fields.MarginField(model, ds)

    # The margin on a longitude-latitude grid of the sphere.
    lon = np.linspace(-np.pi, np.pi, 91 if quick else 181)
    lat = np.linspace(-np.pi / 2, np.pi / 2, 46 if quick else 91)
    LON, LAT = np.meshgrid(lon, lat)
    grid = np.stack(
        [np.cos(LAT) * np.cos(LON), np.cos(LAT) * np.sin(LON), np.sin(LAT)], -1
    )
    margins = jax.jit(jax.vmap(field.margins))(jnp.asarray(grid.reshape(-1, 3)))
    gbar = np.asarray(margins).min(axis=1).reshape(LAT.shape)

    # Flows from random starts with positive margin (one compilation for all).
    starts = np.array(jax.random.normal(jax.random.key(1), (200, 3)))
    starts /= np.linalg.norm(starts, axis=1, keepdims=True)
    positive = np.asarray(jax.vmap(field.gbar)(jnp.asarray(starts))) > 0
    starts = starts[positive][: 4 if quick else 10]
    sol = flow.integrate_batch(field, jnp.asarray(starts), 2.0, dt0=2e-3, saveat=201)

    # SGD from a random start, for comparison.
    trace = sgd.run(
        model,
        ds,
        model.init(jax.random.key(0)),
        0.1,
        5_000 if quick else 100_000,
        record={"log_points": 120},
    )

    w_svm, gamma = reference.svm_direction(ds.X, ds.y)
    ends = np.asarray(sol.us)[:, -1]
    print(f"SVM direction {np.round(w_svm, 4)}, margin {gamma:.5f}")
    print(f"flows ended at margins {np.round(np.asarray(sol.margin)[:, -1], 5)}")
    print(
        f"largest distance of a flow's end to the SVM direction "
        f"{np.max(np.linalg.norm(ends - w_svm, axis=1)):.2e}"
    )
    print(f"SGD after {trace.k[-1]} steps: margin {trace.margin[-1]:.5f}")

    res = Results(
        summary={"kind": "compare"},
        arrays={
            "map.lon": lon,
            "map.lat": lat,
            "map.margin": gbar,
            "map.flow_u": np.asarray(sol.us),
            "trace.u": trace.u,
        },
    )
    fig = plots.sphere_figure(res)
    path = out / "sphere_portrait.png"
    fig.savefig(path, dpi=150)
    print(f"figure: {path}")
    return {"gamma": gamma, "ends": ends, "w_svm": w_svm}


if __name__ == "__main__":
    main()
