"""Drawing every figure a result supports, and saving it with fixed metadata."""

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from flowtools.plots._run import (
    decomposition_figure,
    margins_figure,
    scales_figure,
    shadowing_figure,
    stationarity_figure,
)
from flowtools.plots._sphere import flow_figure, sphere_figure
from flowtools.plots._style import _RC

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
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Draw every figure that the results support and save each in every format.

    **Arguments:**

    - `res`: [`Results`][flowtools.results.Results] of `run_compare` or `run_flow`.
    - `folder`: where to write `NAME.png`, `NAME.pdf`, ... (created when missing).
    - `formats`: file formats understood by matplotlib.
    - `dpi`: resolution of raster formats.
    - `names`: draw only these figures (keys of `FIGURES`, or `"flow"`); all
      by default.

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
    if names is not None:
        unknown = sorted(set(names) - set(makers))
        if unknown:
            raise ValueError(
                f"names={unknown} are not figures of these results; choose from "
                f"{sorted(makers)}."
            )
        makers = {name: makers[name] for name in names}
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
