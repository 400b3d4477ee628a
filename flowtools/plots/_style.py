"""The shared look of the figures: rc settings, colors, axis labels, and helpers
that read arrays from the results and mark the late stage.
"""

import matplotlib
import numpy as np
from matplotlib.figure import Figure

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
    ax.axvline(x, color="0.5", lw=0.8, ls=":", label="late stage from here on")
