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

import matplotlib

matplotlib.use("Agg")

from flowtools.plots._draw import FIGURES, draw_all  # noqa: E402
from flowtools.plots._run import (  # noqa: E402
    decomposition_figure,
    margins_figure,
    scales_figure,
    shadowing_figure,
    stationarity_figure,
)
from flowtools.plots._sphere import flow_figure, sphere_figure  # noqa: E402

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
