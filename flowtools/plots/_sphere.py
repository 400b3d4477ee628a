"""Figures on the sphere: the margin map on the circle ($p=2$) or the sphere
($p=3$) with SGD and flow paths, and the standalone flow's margin and stationarity.
"""

import numpy as np
from matplotlib.figure import Figure

from flowtools.plots._style import _COLORS, _array, _figure


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


def _mark_best(ax, x, y):
    """A star at the best direction of the grid."""
    ax.plot(
        x, y, "*", color="gold", mec="k", ms=11, zorder=5, label="best grid direction"
    )


def _circle_figure(res, margin, flows, sgd_u):
    angle = _array(res, "map.angle")
    fig, (ax_map, ax_time) = _figure(ncols=2, width=3.4, height=2.8)
    ax_map.plot(angle, margin, color="0.3", lw=1.2, label="$\\bar\\gamma(u)$")
    best = np.argmax(margin)
    _mark_best(ax_map, angle[best], margin[best])
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
        _mark_best(ax, lon[j], lat[i])
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
