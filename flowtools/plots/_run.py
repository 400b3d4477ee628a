"""Figures of a comparison run along SGD: margins, shadowing distance,
stationarity, the scales $\\rho_k$ and $\\eta_k$, and the step decomposition.
"""

import numpy as np
from matplotlib.figure import Figure

from flowtools.plots._style import (
    _COLORS,
    _K_LABEL,
    _REF_LABELS,
    _T_LABEL,
    _array,
    _figure,
    _late,
    _mark_entry,
    _positive_k,
)


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
    ax.set_title("Margins in the late stage")
    ax.legend(loc="lower right")
    return fig


def _fit_line(x, y, slope, log_x=True):
    """The fitted line through the points' mean: of log-log slope `slope`, or of
    exponential rate `slope` when `log_x` is false."""
    ok = (y > 0) & ((x > 0) if log_x else np.isfinite(x))
    X = np.log(x[ok]) if log_x else x[ok]
    c = np.mean(np.log(y[ok]) - slope * X)
    if log_x:
        xs = np.geomspace(x[ok].min(), x[ok].max(), 50)
        return xs, np.exp(c + slope * np.log(xs))
    xs = np.linspace(x[ok].min(), x[ok].max(), 50)
    return xs, np.exp(c + slope * xs)


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
            power = axis == "vs_k"
            xs, ys = _fit_line(x, d, slope, log_x=power)
            ax.plot(xs, ys, "--", color=color, lw=0.9, alpha=0.8)
            if power:
                slopes.append(f"${var}^{{{slope:.2f}\\pm{stderr:.2f}}}$")
            else:
                slopes.append(f"$e^{{({slope:.2f}\\pm{stderr:.2f})\\,{var}}}$")
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
    eps = res.summary.get("config", {}).get("flow", {}).get("eps")
    fixed = "fixed $\\epsilon$" if eps is None else f"fixed $\\epsilon$ = {eps:g}"
    series = [
        (
            "shadowing.stationarity",
            "stationarity $s_\\epsilon(u_k)$, $\\epsilon\\propto\\tau_k$",
            "-",
            _COLORS["sgd"],
        ),
        (
            "shadowing.stationarity_fixed",
            f"stationarity, {fixed}",
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
    fig, (ax,) = _figure(width=4.6, height=3.4)
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
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _running_median(y, width=15):
    """Median of the log-values over a centred window of records (for display)."""
    log_y = np.log(y)
    half = width // 2
    padded = np.pad(log_y, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.exp(np.median(windows, axis=-1))
