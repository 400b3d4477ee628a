"""The `flowtools` command: `compare`, `flow` and `figures`.

This is the only part of flowtools that talks to a person directly. Every error
that a user can cause (a bad configuration key, an unreadable data file, an
unwritable output folder, a diverging run, a run without a late stage) ends the
command with a one-paragraph message on standard error and a non-zero exit status,
without a traceback, and leaves earlier results in the output folder untouched.
"""

import argparse
import sys
import textwrap
import warnings
from collections.abc import Sequence

__all__ = ["main"]

_EPILOG = """\
Configuration: a TOML file with sections [data], [model], [loss], [sgd], [flow],
[shadowing], [output]; every field can also be set as section.field=value, the
value read as a TOML literal (e.g. sgd.step=0.02 model.widths=[64]
data.spec=digits:3,8). Run 'flowtools compare --show-config' to see every key
with its default.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowtools",
        description=(
            "Late-stage SGD on homogeneous networks against the margin flow: run "
            "the comparison, the flow alone, or redraw figures."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    compare = commands.add_parser(
        "compare",
        help="SGD vs the margin flow on real data (the main job)",
        description=(
            "Run normalized SGD, measure how closely it shadows the margin flow, "
            "and write report.json, arrays.npz, config.toml and figures/ into "
            "the output folder. With no arguments: digits 0 vs 1, a bias-free "
            "two-layer ReLU network, exponential loss, single-sample SGD."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flow = commands.add_parser(
        "flow",
        help="the margin flow alone from a random or given start",
        description=(
            "Integrate the margin-ascent flow on the sphere from a random start "
            "(or --u0 FILE), print the limit direction's margin, stationarity and "
            "KKT residual, and save the trajectory."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for sub in (compare, flow):
        sub.add_argument("--config", metavar="FILE", help="TOML configuration file")
        sub.add_argument(
            "--out",
            metavar="DIR",
            help="output folder (default: output.out for compare, output.out "
            "followed by '-flow' for flow)",
        )
        sub.add_argument(
            "--no-progress", action="store_true", help="hide progress meters"
        )
        sub.add_argument(
            "--show-config",
            action="store_true",
            help="print the resolved configuration as TOML and exit",
        )
        sub.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="configuration overrides, e.g. sgd.step=0.02",
        )
    flow.add_argument(
        "--u0",
        metavar="FILE",
        help="starting direction: .npy, .npz or text file with num_params numbers",
    )

    figures = commands.add_parser(
        "figures",
        help="redraw every figure from saved results",
        description="Redraw DIR/figures/* from DIR/report.json and DIR/arrays.npz.",
    )
    figures.add_argument("dir", metavar="DIR", help="a folder of saved results")
    figures.add_argument(
        "--formats",
        default=None,
        help="comma-separated formats (default: those of the saved config)",
    )
    return parser


def _err(message: str) -> None:
    text = " ".join(str(message).split())
    print(
        textwrap.fill(text, width=88, initial_indent="flowtools: error: "),
        file=sys.stderr,
    )


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # Warnings from the library reach a person as one line each, without the
    # source location that Python shows by default.
    text = " ".join(str(message).split())
    print(
        textwrap.fill(text, width=88, initial_indent="flowtools: warning: "),
        file=sys.stderr,
    )


def _log(message: str) -> None:
    print(f"[flowtools] {message}", file=sys.stderr, flush=True)


def _fmt(value, spec=".4g") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _compare_summary(res, out) -> str:
    s = res.summary
    final = s["final"]
    lines = [
        "",
        f"flowtools compare: {s['data']['name']} (n={s['data']['n']}), "
        f"{s['model']['description']}",
        f"  SGD steps                 {s['num_steps']:,}",
        f"  late-stage entry step     {s['late_stage_step']:,} "
        f"(flow time {_fmt(s['flow_time_at_entry'])})",
        f"  flow time reached         {_fmt(s['flow_time_reached'])}",
        f"  normalized margin         {_fmt(final['margin'])}",
        f"  smoothed margin           {_fmt(final['smoothed_margin'])}",
        f"  stationarity s(u)         {_fmt(final['stationarity'])}",
        f"  KKT residual              {_fmt(final['kkt_residual'])}",
        f"  log rho, eta (last)       {_fmt(final['log_rho'])}, {_fmt(final['eta'])}",
    ]
    table = s["shadowing_table"]
    windows = table["windows"]
    lines.append(
        f"  shadowing, horizon T={_fmt(table['horizon'])} in flow time, "
        f"{len(windows)} windows from k={windows[0]['start_step']:,} to "
        f"k={windows[-1]['start_step']:,}:"
    )
    refs = table["references"]
    if sum(r.startswith("inclusion") for r in refs) < 2:
        refs = [r for r in refs if r != "closest"]
    for ref in refs:
        first = windows[0]["distance"][ref]
        last = windows[-1]["distance"][ref]
        fit = table["fits"].get(ref, {}).get("vs_k")
        rate = (
            f", fitted D ~ k^({_fmt(fit['slope'], '.2f')}"
            f" +- {_fmt(fit['stderr'], '.2f')})"
            if fit
            else ""
        )
        lines.append(
            f"    D_T vs {ref:<11} {_fmt(first, '.3e')} -> {_fmt(last, '.3e')} "
            f"(x{_fmt(first / last if last else float('inf'), '.3g')} smaller)"
            f"{rate}"
        )
    wall = s.get("wall_time_s", {}).get("total")
    lines.append(f"  results in {out}" + (f" ({_fmt(wall, '.1f')} s)" if wall else ""))
    return "\n".join(lines)


def _flow_summary(res, out) -> str:
    s = res.summary
    final = s["final"]
    return "\n".join(
        [
            "",
            f"flowtools flow: {s['data']['name']} (n={s['data']['n']}), "
            f"{s['model']['description']}, start {s['start']}, "
            f"flow time {_fmt(s['flow_time'])}",
            f"  limit direction's normalized margin  {_fmt(final['margin'])}",
            f"  stationarity s(u)                    {_fmt(final['stationarity'])}",
            f"  KKT residual                         {_fmt(final['kkt_residual'])}",
            f"  trajectory saved in {out}",
        ]
    )


def _run(args) -> int:
    from flowtools import experiment

    if args.command == "figures":
        return _figures(args)

    config = experiment.load_config(args.config, args.overrides)
    if args.show_config:
        print(config.to_toml())
        return 0
    out = args.out
    if out is None:
        # the flow alone gets a folder of its own, so that it never overwrites the
        # results of a comparison run
        suffix = "-flow" if args.command == "flow" else ""
        out = f"{config.output.out}{suffix}"
    progress = not args.no_progress
    if args.command == "compare":
        res = experiment.run_compare(config, out, progress=progress, log=_log)
        print(_compare_summary(res, out))
    else:
        res = experiment.run_flow(config, out, u0=args.u0, progress=progress, log=_log)
        print(_flow_summary(res, out))
    return 0


def _figures(args) -> int:
    from flowtools import plots, results

    res = results.Results.load(args.dir)
    config = res.summary.get("config", {}).get("output", {})
    if args.formats:
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    else:
        formats = config.get("formats", ["png", "pdf"])
    written = plots.draw_all(
        res, f"{args.dir}/figures", formats=formats, dpi=config.get("dpi", 200)
    )
    for path in written:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flowtools` command.

    **Arguments:**

    - `argv`: the arguments after the program name (default: `sys.argv[1:]`).

    **Returns:** the exit status: 0 on success, 1 for an error in the run or its
    inputs, 2 for a usage error, 130 when interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _run(args)
    except KeyboardInterrupt:
        _err(
            "interrupted; results already in the output folder were left as they were."
        )
        return 130
    except Exception as err:  # the command line reports every failure in words
        if args.debug:
            raise
        _err(_describe(err, writes=args.command in ("compare", "flow")))
        return 1
    finally:
        warnings.showwarning = show


def _describe(err: Exception, writes: bool) -> str:
    from flowtools import experiment, sgd

    if isinstance(err, experiment.ConfigError | experiment.ExperimentError):
        return str(err)
    text = str(err)
    if not isinstance(err, sgd.SGDDivergenceError | ValueError | OSError):
        # an unexpected failure: say what kind it is
        text += f" ({type(err).__name__})"
    if writes:
        text += " Earlier results in the output folder were left as they were."
    return text + " Rerun with --debug for the full traceback."


if __name__ == "__main__":
    sys.exit(main())
