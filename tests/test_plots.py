"""Figures drawn from saved results only, on hand-made results with known content."""

import matplotlib.image
import numpy as np
import pytest

from flowtools import plots
from flowtools.results import Results


def _compare_results(num_params=2):
    """Results shaped like those of `run_compare`, built by hand (no computation)."""
    m, w = 50, 5
    k = np.unique(np.geomspace(1, 1e5, m).astype(np.int64))
    m = len(k)
    t = np.log1p(np.log1p(k.astype(float)))
    angle = np.linspace(0.8, 0.05, m)
    u = np.stack([np.cos(angle), np.sin(angle)] + [np.zeros(m)] * (num_params - 2), 1)
    run = k >= 10
    starts_k = k[run][:: max(1, run.sum() // w)][:w]
    arrays = {
        "trace.k": k,
        "trace.t": t,
        "trace.eta": 0.02 / k,
        "trace.log_rho": 0.5 * np.log(np.log(k + 2.0)),
        "trace.u": u,
        "trace.margin": 0.3 - 0.2 * angle,
        "trace.smoothed": 0.25 - 0.2 * angle,
        "trace.v_norm": np.full(m, 0.4),
        "trace.xi_norm": np.full(m, 0.6),
        "trace.e_norm": 1e-3 / k,
        "shadowing.k": k[run],
        "shadowing.t": t[run],
        "shadowing.stationarity": 0.3 / np.log(k[run] + 1.0),
        "shadowing.stationarity_fixed": np.full(run.sum(), 1.5),
        "shadowing.kkt_residual": 2.0 / np.sqrt(k[run]),
        "shadowing.starts_k": starts_k,
        "shadowing.starts_t": np.log1p(np.log1p(starts_k.astype(float))),
        "shadowing.distance.mean_field": 0.1 * starts_k**-0.6,
        "shadowing.distance.inclusion": 0.2 / np.log(starts_k + 1.0),
        "flow.inclusion.t": np.linspace(t[run][0], t[-1], 30),
        "flow.inclusion.margin": np.linspace(0.2, 0.3, 30),
        "flow.mean_field.t": np.linspace(t[run][0], t[-1], 30),
        "flow.mean_field.margin": np.linspace(0.15, 0.28, 30),
        "flow.mean_field.smoothed": np.linspace(0.1, 0.26, 30),
    }
    if num_params == 2:
        grid = np.linspace(-np.pi, np.pi, 181)
        arrays["map.angle"] = grid
        arrays["map.margin"] = np.cos(np.abs(grid) + 0.4)
        arrays["map.flow_t"] = np.linspace(0, 1, 20)
        arrays["map.flow_u"] = np.stack(
            [np.stack([np.cos(a), np.sin(a)], 1) for a in (np.linspace(1.2, 0, 20),)]
        )
    summary = {
        "kind": "compare",
        "late_stage_step": 10,
        "config": {"flow": {"t1": 1.0}},
        "shadowing_table": {
            "horizon": 0.25,
            "references": ["mean_field", "inclusion"],
            "fits": {
                "mean_field": {
                    "vs_k": {"slope": -0.6, "stderr": 0.01},
                    "vs_t": {"slope": -3.0, "stderr": 0.2},
                },
                "inclusion": {"vs_k": {"slope": -0.1, "stderr": 0.02}},
            },
        },
    }
    return Results(summary=summary, arrays=arrays)


def test_draw_all_writes_every_figure(tmp_path):
    res = _compare_results()
    written = plots.draw_all(res, tmp_path / "figs", formats=("png", "pdf"), dpi=60)
    names = {p.stem for p in written}
    assert names == set(plots.FIGURES)
    assert len(written) == 2 * len(plots.FIGURES)
    for path in written:
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        else:
            assert path.read_bytes()[:4] == b"%PDF"


def test_draw_all_draws_only_the_named_figures(tmp_path):
    res = _compare_results()
    written = plots.draw_all(
        res, tmp_path, formats=("png",), dpi=60, names=("shadowing",)
    )
    assert [p.name for p in written] == ["shadowing.png"]
    with pytest.raises(ValueError, match="not figures of these results"):
        plots.draw_all(res, tmp_path, names=("nonsense",))


def test_every_axis_is_labelled_and_log_where_it_spans_decades():
    res = _compare_results()
    for name, make in plots.FIGURES.items():
        fig = make(res)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), name
    shadow = plots.shadowing_figure(res)
    assert [ax.get_yscale() for ax in shadow.axes] == ["log", "log"]
    assert shadow.axes[0].get_xscale() == "log"
    scales = plots.scales_figure(res)
    assert all(ax.get_xscale() == "log" for ax in scales.axes)
    assert scales.axes[1].get_yscale() == "log"
    assert plots.decomposition_figure(res).axes[0].get_yscale() == "log"


def test_fitted_line_has_the_stored_slope():
    # The dashed fit line of the left panel has exactly the stored log-log slope.
    res = _compare_results()
    fig = plots.shadowing_figure(res)
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 2
    x, y = dashed[0].get_data()
    slope = np.diff(np.log(y)) / np.diff(np.log(x))
    np.testing.assert_allclose(slope, -0.6, rtol=1e-10)  # float64 rounding only

    # The right panel's line has the stored exponential rate in flow time.
    dashed = [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"]
    t, y = dashed[0].get_data()
    rate = np.diff(np.log(y)) / np.diff(t)
    np.testing.assert_allclose(rate, -3.0, rtol=1e-10)  # float64 rounding only


def test_sgd_margins_are_the_saved_ones():
    res = _compare_results()
    fig = plots.margins_figure(res)
    sgd_line = fig.axes[0].get_lines()[0]
    late = res.arrays["trace.k"] >= 10
    np.testing.assert_array_equal(
        sgd_line.get_ydata(), res.arrays["trace.margin"][late]
    )


def test_sphere_map_only_for_small_models(tmp_path):
    res = _compare_results(num_params=4)
    assert plots.sphere_figure(res) is None
    written = plots.draw_all(res, tmp_path, formats=("png",), dpi=50)
    assert "sphere" not in {p.stem for p in written}


def test_sphere_map_on_the_two_sphere():
    lon = np.linspace(-np.pi, np.pi, 37)
    lat = np.linspace(-np.pi / 2, np.pi / 2, 19)
    LON, LAT = np.meshgrid(lon, lat)
    # A path that crosses the seam at longitude +-180 degrees: it must be broken
    # there instead of drawn across the whole map.
    a = np.linspace(3.0, 3.3, 10)
    path = np.stack([np.cos(a), np.sin(a), np.zeros(10)], 1)
    res = Results(
        summary={"kind": "compare"},
        arrays={
            "map.lon": lon,
            "map.lat": lat,
            "map.margin": np.cos(LAT) * np.cos(LON),
            "map.flow_u": path[None],
        },
    )
    fig = plots.sphere_figure(res)
    lines = fig.axes[0].get_lines()
    x = max((line.get_xdata() for line in lines), key=len)  # the flow path
    assert np.isnan(x).sum() == 1
    assert np.nanmax(np.abs(np.diff(x))) < 20  # degrees: no jump across the map


def test_flow_results_get_flow_figures(tmp_path):
    t = np.linspace(0, 2, 50)
    res = Results(
        summary={"kind": "flow"},
        arrays={
            "flow.t": t,
            "flow.margin": 0.3 - 0.2 * np.exp(-t),
            "flow.stationarity": np.exp(-3 * t),
        },
    )
    written = plots.draw_all(res, tmp_path, formats=("png",), dpi=50)
    assert [p.name for p in written] == ["flow.png"]


def test_missing_arrays_are_named():
    res = Results(summary={"kind": "compare"}, arrays={})
    with pytest.raises(KeyError, match="trace.k"):
        plots.margins_figure(res)
