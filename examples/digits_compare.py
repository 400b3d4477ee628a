"""The digits comparison through the Python API, on a small budget.

Runs what `flowtools compare` runs (digits 0 vs 1, a bias-free two-layer ReLU
network, exponential loss, single-sample SGD), with fewer steps and windows, and
prints the shadowing table: the distance of SGD to the mean-field flow falls
quickly, the distance to the inclusion slowly (THEORY section 5).

    python examples/digits_compare.py [--out DIR] [--quick] [--dry-run]
"""

import argparse
import os

from flowtools import experiment


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-out/digits_compare")
    parser.add_argument("--quick", action="store_true", help="a tiny budget")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the configuration and stop"
    )
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("FLOWTOOLS_EXAMPLE_QUICK") == "1"

    overrides = [
        f"sgd.num_steps={20_000 if quick else 200_000}",
        "model.widths=[16]",
        "shadowing.num_starts=4" if quick else "shadowing.num_starts=8",
        "shadowing.horizon=0.2",
        'output.formats=["png"]',
    ]
    config = experiment.load_config(None, overrides)
    if args.dry_run:
        print(config.to_toml())
        return config
    res = experiment.run_compare(config, args.out, progress=False)

    summary = res.summary
    print(f"late-stage entry step   {summary['late_stage_step']}")
    print(f"flow time reached       {summary['flow_time_reached']:.4f}")
    print(f"normalized margin       {summary['final']['margin']:.4f}")
    print(f"smoothed margin         {summary['final']['smoothed_margin']:.4f}")
    print("window start k   flow time   D_T mean-field   D_T inclusion")
    for row in summary["shadowing_table"]["windows"]:
        d = row["distance"]
        print(
            f"{row['start_step']:>14}   {row['flow_time']:9.4f}   "
            f"{d['mean_field']:14.3e}   {d['inclusion']:13.3e}"
        )
    print(f"results and figures in {args.out}")
    return summary


if __name__ == "__main__":
    main()
