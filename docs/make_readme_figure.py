"""Redraw the README picture from the results of `flowtools compare`.

Usage: `python docs/make_readme_figure.py [RESULTS_DIR]` (default
`flowtools-out`, the folder the README's first command writes). The picture is
the shadowing figure of the default run, drawn from the saved results only.
"""

import sys
from pathlib import Path

from flowtools import plots, results


def main(folder: str = "flowtools-out") -> Path:
    res = results.Results.load(folder)
    target = Path(__file__).parent / "images"
    (written,) = plots.draw_all(
        res, target, formats=("png",), dpi=110, names=("shadowing",)
    )
    return written.replace(target / "compare.png")


if __name__ == "__main__":
    print(main(*sys.argv[1:2]))
