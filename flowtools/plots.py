"""Figures drawn from saved results only.

Every function here reads a [`Results`][flowtools.results.Results] (as written by
[`flowtools.experiment.run_compare`][] or [`flowtools.experiment.run_flow`][]) and
draws from its arrays; nothing is recomputed. Figures use matplotlib's
object-oriented interface on the Agg canvas (no display is needed) and are saved
as PNG and PDF.

Flow time is the clock $t_k = \\sum_{j<k} \\eta_j$ of THEORY section 4 (a
dimensionless time, the flow's own), SGD steps are counts, margins are
normalized by $\\|\\theta\\|^L$ and therefore dimensionless.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "FIGURES",
    "decomposition_figure",
    "draw_all",
    "flow_figure",
    "margins_figure",
    "scales_figure",
    "shadowing_figure",
    "sphere_figure",
    "stationarity_figure",
]

_RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
}
_COLORS = {
    "sgd": "#1f4e79",
    "smoothed": "#6fa8dc",
    "inclusion": "#c0392b",
    "mean_field": "#e67e22",
    "fit": "#555555",
}
_REF_LABELS = {
    "mean_field": "mean-field flow (noise + discretization)",
    "inclusion": "inclusion (the theorem's flow)",
}
_K_LABEL = "SGD step $k$ (iterations)"
_T_LABEL = "flow time $t$ (dimensionless; $t_k$ = sum of $\\eta_j$ over $j < k$)"


def _array(res, *names, required=True):
    for name in names:
        if name in res.arrays:
            return np.asarray(res.arrays[name])
    if required:
        raise KeyError(
            f"the results hold none of the arrays {', '.join(names)}; they were not "
            "written by flowtools.experiment, or by another version."
        )
    return None


def _figure(ncols=1, width=3.4, height=2.6):
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _positive_k(k):
    return np.maximum(np.asarray(k, dtype=np.float64), 1.0)


def _late(res):
    """Mask of records in the late stage, and the step it starts at.

    The late stage is counted from the first record after which SGD classifies
    every sample at every record (`flows_from_step`, where the flows start), or
    from the entry step when the results do not record it.
    """
    k = _array(res, "trace.k")
    entry = res.summary.get("flows_from_step", res.summary.get("late_stage_step"))
    if entry is None:
        return np.ones(k.shape, bool), None
    return k >= entry, entry


def _mark_entry(ax, entry, *, in_time=None):
    if entry is None:
        return
    x = in_time if in_time is not None else max(entry, 1)
    ax.axvline(x, color="0.5", lw=0.8, ls=":", label="late-stage entry")


# ------------------------------------------------------------------------ figures


def margins_figure(res) -> Figure:
    """Normalized and smoothed margins against flow time, SGD and flows together.

    **Arguments:** `res`, results of a comparison run.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax,) = _figure(width=5.2, height=3.0)
    late, entry = _late(res)
    t = _array(res, "trace.t")
    ax.plot(
        t[late],
        _array(res, "trace.margin")[late],
        color=_COLORS["sgd"],
        label="SGD: normalized margin $\\bar\\gamma(u_k)$",
    )
    ax.plot(
        t[late],
        _array(res, "trace.smoothed")[late],
        color=_COLORS["smoothed"],
        ls="--",
        label="SGD: smoothed margin $\\tilde\\gamma(\\theta_k)$",
    )
    for ref, style in (("inclusion", "-"), ("mean_field", "-.")):
        tf = _array(res, f"flow.{ref}.t", required=False)
        if tf is None:
            continue
        ax.plot(
            tf,
            _array(res, f"flow.{ref}.margin"),
            color=_COLORS[ref],
            ls=style,
            label=f"{_REF_LABELS[ref].split(' (')[0]}: normalized margin",
        )
        smooth = _array(res, f"flow.{ref}.smoothed", required=False)
        if smooth is not None:
            ax.plot(
                tf,
                smooth,
                color=_COLORS[ref],
                ls=":",
                label=f"{_REF_LABELS[ref].split(' (')[0]}: smoothed margin",
            )
    ax.set_xlabel(_T_LABEL)
    ax.set_ylabel("margin (normalized by $\\|\\theta\\|^L$)")
    ax.set_title("Margins after the late-stage entry")
    ax.legend(loc="lower right")
    return fig


def _fit_line(x, y, slope):
    """A line of the given log-log slope through the geometric mean of the points."""
    ok = (x > 0) & (y > 0)
    c = np.mean(np.log(y[ok]) - slope * np.log(x[ok]))
    xs = np.geomspace(x[ok].min(), x[ok].max(), 50)
    return xs, np.exp(c + slope * np.log(xs))


def shadowing_figure(res) -> Figure:
    """Shadowing distance $D_T(k)$ against the window start, in steps and flow time.

    The fitted log-log slopes stored in the summary are drawn as dashed lines: a
    power of $k$ (left) and a power of $t_k$ (right).

    **Arguments:** `res`, results of a comparison run.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax_k, ax_t) = _figure(ncols=2, width=3.5, height=2.9)
    table = res.summary.get("shadowing_table", {})
    refs = table.get("references") or sorted(
        name.split(".", 2)[2]
        for name in res.arrays
        if name.startswith("shadowing.distance.")
    )
    inclusions = [r for r in refs if r.startswith("inclusion")]
    if len(inclusions) < 2:
        refs = [r for r in refs if r != "closest"]  # the same curve as the inclusion
    k = _positive_k(_array(res, "shadowing.starts_k"))
    t = _array(res, "shadowing.starts_t")
    fits = table.get("fits", {})
    handles = []
    for ref in refs:
        d = _array(res, f"shadowing.distance.{ref}")
        color = _COLORS.get(ref, None)
        fit = fits.get(ref, {})
        slopes = []
        for ax, x, axis, var in ((ax_k, k, "vs_k", "k"), (ax_t, t, "vs_t", "t_k")):
            (line,) = ax.plot(x, d, "o-", ms=3.5, color=color)
            color = line.get_color()
            if axis not in fit or not np.isfinite(fit[axis]["slope"]):
                continue
            slope, stderr = fit[axis]["slope"], fit[axis]["stderr"]
            xs, ys = _fit_line(x, d, slope)
            ax.plot(xs, ys, "--", color=color, lw=0.9, alpha=0.8)
            slopes.append(f"${var}^{{{slope:.2f}\\pm{stderr:.2f}}}$")
        label = _REF_LABELS.get(ref, ref)
        if slopes:
            label += ": fit $\\propto$ " + ", ".join(slopes)
        handles.append((line, label))
    horizon = table.get("horizon")
    what = f"$D_T(k)$, $T={horizon:g}$" if horizon is not None else "$D_T(k)$"
    for ax in (ax_k, ax_t):
        ax.set_yscale("log")
        ax.set_ylabel(f"shadowing distance {what} (chordal)")
    ax_k.set_xscale("log")
    ax_k.set_xlabel("window start: SGD step $k$ (iterations)")
    ax_t.set_xlabel("window start: flow time $t_k$ (dimensionless)")
    ax_k.set_title("against the window's first step")
    ax_t.set_title("against the window's flow time")
    fig.legend(
        [h for h, _ in handles],
        [label for _, label in handles],
        loc="outside lower center",
        ncols=1,
        frameon=False,
    )
    return fig


def stationarity_figure(res) -> Figure:
    """Stationarity $s(u_k)$ and the KKT residual along the run (log-log).

    **Arguments:** `res`, results of a comparison run.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax,) = _figure(width=4.6, height=3.0)
    k = _array(res, "shadowing.k", "trace.k")
    late, entry = _late(res)
    if len(k) != len(late):
        late = np.ones(k.shape, bool)
    k = _positive_k(k)
    series = [
        (
            "shadowing.stationarity",
            "stationarity $s_\\epsilon(u_k)$, $\\epsilon\\propto\\tau_k$",
            "-",
            _COLORS["sgd"],
        ),
        (
            "shadowing.stationarity_fixed",
            "stationarity, fixed $\\epsilon$",
            "--",
            _COLORS["smoothed"],
        ),
        (
            "shadowing.kkt_residual",
            "KKT residual (relative)",
            "-",
            _COLORS["inclusion"],
        ),
    ]
    for name, label, style, color in series:
        y = _array(res, name, required=False)
        if y is None or len(y) != len(k):
            continue
        ok = late & (y > 0)
        ax.plot(k[ok], y[ok], style, color=color, label=label)
    _mark_entry(ax, entry)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_K_LABEL)
    ax.set_ylabel("residual (dimensionless)")
    ax.set_title("Distance from D-criticality along SGD")
    ax.legend(loc="best")
    return fig


def scales_figure(res) -> Figure:
    """The norm $\\rho_k$ and the effective step $\\eta_k$ against $k$ (log scales).

    **Arguments:** `res`, results of a comparison run.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax_rho, ax_eta) = _figure(ncols=2, width=3.3, height=2.7)
    k = _positive_k(_array(res, "trace.k"))
    late, entry = _late(res)
    log_rho = _array(res, "trace.log_rho")
    if np.nanmax(log_rho) < 700:
        ax_rho.plot(k, np.exp(log_rho), color=_COLORS["sgd"])
        if np.ptp(log_rho) > np.log(20.0):  # log scale once it spans decades
            ax_rho.set_yscale("log")
        ax_rho.set_ylabel("parameter norm $\\rho_k=\\|\\theta_k\\|$")
    else:
        ax_rho.plot(k, log_rho, color=_COLORS["sgd"])
        ax_rho.set_ylabel("$\\log\\rho_k$ (natural log of $\\|\\theta_k\\|$)")
    eta = _array(res, "trace.eta")
    ok = eta > 0
    ax_eta.plot(k[ok], eta[ok], color=_COLORS["inclusion"])
    ax_eta.set_yscale("log")
    ax_eta.set_ylabel("effective step $\\eta_k$ (flow time per step)")
    for ax in (ax_rho, ax_eta):
        ax.set_xscale("log")
        ax.set_xlabel(_K_LABEL)
        _mark_entry(ax, entry)
    ax_rho.set_title("the norm grows")
    ax_eta.set_title("the effective step decays")
    ax_eta.legend(loc="lower left")
    return fig


def decomposition_figure(res) -> Figure:
    """Norms of the decomposition $g_k = v_k + \\xi_k + e_k$ against $k$.

    $v_k$ is the projected full-batch direction (a selection of the field),
    $\\xi_k$ the sampling noise and $e_k$ the remainder (THEORY section 4). Each
    record is drawn faintly, with a running median over 15 records on top.

    **Arguments:** `res`, results of a comparison run.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax,) = _figure(width=4.6, height=3.0)
    k = _positive_k(_array(res, "trace.k"))
    late, entry = _late(res)
    series = [
        ("trace.v_norm", "$\\|v_k\\|$ (field selection)", _COLORS["sgd"]),
        ("trace.xi_norm", "$\\|\\xi_k\\|$ (sampling noise)", _COLORS["mean_field"]),
        ("trace.e_norm", "$\\|e_k\\|$ (remainder)", _COLORS["inclusion"]),
    ]
    for name, label, color in series:
        y = _array(res, name, required=False)
        if y is None:
            continue
        ok = y > 0
        ax.plot(k[ok], y[ok], color=color, lw=0.6, alpha=0.35)
        ax.plot(
            k[ok],
            _running_median(y[ok]),
            color=color,
            lw=1.6,
            label=label + ", running median",
        )
    _mark_entry(ax, entry)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_K_LABEL)
    ax.set_ylabel("norm of the term (dimensionless)")
    ax.set_title("Decomposition of the normalized SGD step")
    ax.legend(loc="lower left")
    return fig


def _running_median(y, width=15):
    """Median of the log-values over a centred window of records (for display)."""
    log_y = np.log(y)
    half = width // 2
    padded = np.pad(log_y, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.exp(np.median(windows, axis=-1))


def _angles(u):
    return np.arctan2(u[..., 1], u[..., 0])


def _lonlat(u):
    return np.arctan2(u[..., 1], u[..., 0]), np.arcsin(np.clip(u[..., 2], -1, 1))


def _break_wraps(x, y):
    """Insert NaN where a path jumps across the map's seam (|dx| > pi)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    jumps = np.nonzero(np.abs(np.diff(x)) > np.pi)[0] + 1
    return np.insert(x, jumps, np.nan), np.insert(y, jumps, np.nan)


def sphere_figure(res) -> Figure | None:
    """The normalized margin on the circle ($p=2$) or the sphere ($p=3$), with paths.

    SGD iterates and flow trajectories are drawn on the margin map; `None` for
    models with more than 3 parameters.

    **Arguments:** `res`, results holding a margin map (`map.*` arrays).

    **Returns:** a matplotlib `Figure`, or `None`.
    """
    margin = _array(res, "map.margin", required=False)
    if margin is None:
        return None
    flows = _array(res, "map.flow_u", required=False)
    sgd_u = _array(res, "trace.u", required=False)
    if margin.ndim == 1:
        return _circle_figure(res, margin, flows, sgd_u)
    return _sphere_map_figure(res, margin, flows, sgd_u)


def _circle_figure(res, margin, flows, sgd_u):
    angle = _array(res, "map.angle")
    fig, (ax_map, ax_time) = _figure(ncols=2, width=3.4, height=2.8)
    ax_map.plot(angle, margin, color="0.3", lw=1.2, label="$\\bar\\gamma(u)$")
    best = np.argmax(margin)
    ax_map.plot(
        angle[best],
        margin[best],
        "*",
        color="gold",
        mec="k",
        ms=11,
        zorder=5,
        label="best grid direction",
    )
    if flows is not None:
        ts = _array(res, "map.flow_t")
        for j, path in enumerate(flows):
            a = _angles(path)
            q = np.interp(a, angle, margin)
            ax_map.plot(
                a,
                q,
                color=_COLORS["inclusion"],
                lw=2.0,
                alpha=0.7,
                label="flow trajectories" if j == 0 else None,
            )
            ax_map.plot(a[0], q[0], "o", color=_COLORS["inclusion"], ms=3)
            ax_time.plot(
                ts,
                a,
                color=_COLORS["inclusion"],
                lw=1.0,
                alpha=0.7,
                label=None,
            )
    if sgd_u is not None:
        a = _angles(sgd_u)
        ax_map.scatter(
            a,
            np.interp(a, angle, margin),
            s=6,
            c=_COLORS["sgd"],
            zorder=3,
            label="SGD iterates $u_k$",
        )
        t = _array(res, "trace.t", required=False)
        k = _array(res, "trace.k", required=False)
        if t is not None and k is not None:
            # The first flow starts at the SGD record `flows_from_step`: align there.
            first = res.summary.get("flows_from_step", k[0])
            i0 = int(min(np.searchsorted(k, first), len(k) - 1))
            ax_time.plot(
                t[i0:] - t[i0],
                a[i0:],
                ".",
                ms=3,
                color=_COLORS["sgd"],
                label=f"SGD $u_k$ at flow time $t_k - t_{{{int(k[i0])}}}$",
            )
    ax_map.set_xlabel("angle of $u$ on the circle (rad)")
    ax_map.set_ylabel("normalized margin $\\bar\\gamma(u)$")
    ax_map.set_title("margin on the circle")

    ax_time.set_xlabel("flow time (dimensionless)")
    ax_time.set_ylabel("angle of $u$ (rad)")
    ax_time.set_title("angle along the paths")
    handles, labels = ax_map.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False)
    return fig


def _sphere_map_figure(res, margin, flows, sgd_u):
    from matplotlib.colors import TwoSlopeNorm

    lon = np.degrees(_array(res, "map.lon"))
    lat = np.degrees(_array(res, "map.lat"))
    fig, (ax_all, ax_zoom) = _figure(ncols=2, width=3.6, height=3.0)
    low, high = float(np.min(margin)), float(np.max(margin))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=min(low, -1e-12), vmax=max(high, 1e-12))
    i, j = np.unravel_index(np.argmax(margin), margin.shape)
    for ax in (ax_all, ax_zoom):
        image = ax.pcolormesh(
            lon, lat, margin, cmap="RdBu", norm=norm, shading="auto", rasterized=True
        )
        ax.contour(lon, lat, margin, levels=[0.0], colors="k", linewidths=0.7)
        if flows is not None:
            for n, path in enumerate(flows):
                x, y = (np.degrees(v) for v in _break_wraps(*_lonlat(path)))
                ax.plot(
                    x,
                    y,
                    color=_COLORS["mean_field"],
                    lw=1.5,
                    label="flow trajectories" if n == 0 else None,
                )
                ax.plot(x[0], y[0], "o", color=_COLORS["mean_field"], ms=3)
        if sgd_u is not None:
            x, y = (np.degrees(v) for v in _lonlat(sgd_u))
            ax.plot(x, y, ".", ms=2.5, color="k", label="SGD iterates $u_k$")
        ax.plot(
            lon[j],
            lat[i],
            "*",
            color="gold",
            mec="k",
            ms=11,
            zorder=5,
            label="best grid direction",
        )
        ax.set_xlabel("longitude of $u$ (degrees)")
        ax.set_ylabel("latitude of $u$ (degrees)")
        ax.grid(False)
    ax_all.set_xlim(-180, 180)
    ax_all.set_ylim(-90, 90)
    ax_all.set_title("normalized margin on the sphere $S^2$")
    # Zoom on the region of positive margin, where the late-stage dynamics live.
    rows, cols = np.nonzero(margin > 0)
    if rows.size:
        pad_lon, pad_lat = 0.25 * np.ptp(lon[cols]) + 5, 0.25 * np.ptp(lat[rows]) + 5
        ax_zoom.set_xlim(lon[cols].min() - pad_lon, lon[cols].max() + pad_lon)
        ax_zoom.set_ylim(lat[rows].min() - pad_lat, lat[rows].max() + pad_lat)
        ax_zoom.contour(
            lon,
            lat,
            margin,
            levels=np.linspace(0, high, 6)[1:],
            colors="0.3",
            linewidths=0.4,
        )
    ax_zoom.set_title("zoom: the region of positive margin")
    bar = fig.colorbar(
        image,
        ax=[ax_all, ax_zoom],
        label="normalized margin $\\bar\\gamma(u)$",
        shrink=0.9,
    )
    ticks = np.concatenate([np.linspace(low, 0, 4), np.linspace(0, high, 3)[1:]])
    bar.set_ticks(ticks[(ticks >= low) & (ticks <= high)])
    bar.ax.set_yticklabels([f"{v:.2g}" for v in bar.get_ticks()])
    handles, labels = ax_all.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    return fig


def flow_figure(res) -> Figure:
    """Margin and stationarity along a standalone flow (`flowtools flow`).

    **Arguments:** `res`, results of [`flowtools.experiment.run_flow`][].

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax_m, ax_s) = _figure(ncols=2, width=3.3, height=2.7)
    t = _array(res, "flow.t")
    ax_m.plot(t, _array(res, "flow.margin"), color=_COLORS["inclusion"])
    ax_m.set_ylabel("normalized margin $\\bar\\gamma(u(t))$")
    ax_m.set_title("the margin increases along the flow")
    s = _array(res, "flow.stationarity")
    ok = s > 0
    ax_s.plot(t[ok], s[ok], color=_COLORS["sgd"])
    ax_s.set_yscale("log")
    eps = res.summary.get("config", {}).get("flow", {}).get("eps")
    where = f", $\\epsilon={eps:g}$" if eps is not None else ""
    ax_s.set_ylabel(f"stationarity $s_\\epsilon(u(t))${where}")
    ax_s.set_title("distance from D-criticality")
    for ax in (ax_m, ax_s):
        ax.set_xlabel("flow time $t$ (dimensionless)")
    return fig


FIGURES = {
    "margins": margins_figure,
    "shadowing": shadowing_figure,
    "stationarity": stationarity_figure,
    "scales": scales_figure,
    "sphere": sphere_figure,
    "decomposition": decomposition_figure,
}
"""Figure name -> function, for the results of a comparison run."""


def draw_all(
    res,
    folder: str | os.PathLike,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 200,
) -> list[Path]:
    """Draw every figure that the results support and save each in every format.

    **Arguments:**

    - `res`: [`Results`][flowtools.results.Results] of `run_compare` or `run_flow`.
    - `folder`: where to write `NAME.png`, `NAME.pdf`, ... (created when missing).
    - `formats`: file formats understood by matplotlib.
    - `dpi`: resolution of raster formats.

    **Returns:** the paths written.

    **Raises:** `KeyError` naming the missing arrays when the results lack what a
    figure needs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if res.summary.get("kind") == "flow":
        makers = {"flow": flow_figure, "sphere": sphere_figure}
    else:
        makers = FIGURES
    written = []
    for name, make in makers.items():
        with matplotlib.rc_context(_RC):
            fig = make(res)
            if fig is None:
                continue
            for fmt in formats:
                path = folder / f"{name}.{fmt}"
                fig.savefig(path, dpi=dpi, metadata=_metadata(fmt))
                written.append(path)
    return written


def _metadata(fmt: str) -> dict:
    # Fixed metadata keep the files byte-stable across runs where the format allows.
    if fmt == "pdf":
        return {"Creator": "flowtools", "Producer": "flowtools", "CreationDate": None}
    if fmt == "png":
        return {"Software": "flowtools"}
    return {}
