"""Redraw the README picture from the results of `flowtools compare`.

Usage: `python docs/make_readme_figure.py [RESULTS_DIR]` (default
`flowtools-out`, the folder the README's first command writes). The figure is
the shadowing panel of the default run, drawn from the saved results only.
"""

import sys
from pathlib import Path

from flowtools import plots, results


def main(folder: str = "flowtools-out") -> Path:
    res = results.Results.load(folder)
    fig = plots.shadowing_figure(res)
    target = Path(__file__).parent / "images" / "compare.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    return target


if __name__ == "__main__":
    print(main(*sys.argv[1:2]))
