"""The main comparison: normalized SGD, shadowing of the reference flows, the flows
over the whole late stage, and the summary that reports them.

Reference: Schechtman & Schreuder (2025), *Late-stage dynamics of SGD on
homogeneous networks*; Benaim, Hofbauer & Sorin (2005), *Stochastic
approximations and differential inclusions*.
"""

import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowtools.config import Config
from flowtools.experiment._common import (
    ExperimentError,
    _describe,
    _flow_kwargs,
    _header,
    _load_data,
    _now,
    _say,
    _sphere_map,
    _unit_margins,
    build_model,
)
from flowtools.experiment._output import _guarded, _write_outputs


def run_compare(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
):
    """Run SGD, the flow and the shadowing measurement, and write the results.

    The stages: load the data, build the model and its random start, run normalized
    SGD until `sgd.num_steps` (stopping with an error if the late stage is never
    reached), measure how closely the iterates shadow the reference flows over
    windows of length `shadowing.horizon` in flow time (Benaim, Hofbauer & Sorin
    2005), integrate the flows from the late-stage entry over the whole run, and
    write `report.json`, `arrays.npz`, `config.toml` and `figures/` into `out_dir`.

    **Arguments:**

    - `config`: the resolved [`Config`][flowtools.config.Config].
    - `out_dir`: the output folder (default: `config.output.out`).
    - `progress`: show a progress bar during SGD (the other stages are logged).
    - `log`: called with one line of text at the start of each stage (the command
      line prints them; the library itself prints nothing).

    **Returns:** the [`Results`][flowtools.results.Results] that were written.

    **Raises:** `ExperimentError` for an unwritable output folder (before any
    computation), unreadable data, or a run that never reaches the late stage;
    the errors of [`flowtools.sgd.run`][] for a diverging run. On any error the
    files already in `out_dir` are left untouched.
    """
    target = config.output.out if out_dir is None else out_dir
    return _guarded(target, lambda out: _compare(config, out, progress, log))


def _compare(config: Config, out: Path, progress: bool, log):
    from flowtools import fields, results, shadowing

    times = {}
    start = _clock = _now()

    _say(log, f"loading data {config.data.spec!r}")
    ds = _load_data(config.data.spec)
    model = build_model(config.model, ds)
    _say(log, f"model {_describe(model)}")

    _say(log, f"SGD: {config.sgd.num_steps} steps of size {config.sgd.step}")
    trace = _run_sgd(config, model, ds, progress)
    times["sgd"], _clock = _now() - _clock, _now()
    if trace.late_stage_step is None:
        raise _no_late_stage(trace, config)

    _say(log, "shadowing: flows from the window starts")
    field = fields.MarginField(model, ds, eps=config.flow.eps, k=config.flow.k)
    sh = config.shadowing
    report = shadowing.measure(
        trace,
        field,
        sh.horizon,
        num_starts=sh.num_starts,
        reference=sh.references,
        selection=sh.selections,
        loss=config.loss.name,
        dt=sh.dt or None,
        eps=config.flow.eps,
        tau=config.flow.tau or None,
        clock=sh.clock,
        rtol=sh.rtol,
        atol=sh.atol,
        key=jax.random.key(config.flow.seed),
        # Progress meters inside the batched diffrax solves cost more memory and
        # time than the solves themselves here; the stages are logged instead.
        progress=False,
    )
    times["shadowing"], _clock = _now() - _clock, _now()

    _say(log, "flows over the whole late stage")
    i0 = shadowing.late_stage_index(trace)
    extra = _whole_run_flows(config, field, trace, i0)
    if model.num_params in (2, 3):
        starts = np.asarray(trace.u)[[i0]]
        tau = float(np.exp(-model.degree * np.asarray(trace.log_rho)[-1]))
        extra.update(_portrait(config, field, starts, tau))
    extra["u.entry"] = np.asarray(trace.u)[i0]
    extra["u.final"] = np.asarray(trace.u)[-1]
    times["flows"] = _now() - _clock
    times["total"] = _now() - start

    summary = _compare_summary(config, ds, model, trace, report, i0, times)
    res = results.merge(
        results.trace_to_results(trace),
        results.report_to_results(report),
        results.Results(summary=summary, arrays=extra),
    )
    _say(log, f"writing results into {out}")
    _write_outputs(out, res, config)
    return res


def _run_sgd(config: Config, model, ds, progress: bool):
    from flowtools import sgd

    s = config.sgd
    theta0 = model.init(
        jax.random.key(config.model.seed), scale=config.model.init_scale
    )
    record = {"log_points": s.log_points, "dt": s.record_dt or None}
    warmup = None
    if s.warmup != "none":
        warmup = {
            "loss": s.warmup,
            "step": s.warmup_step or None,
            "max_steps": s.warmup_steps or None,
        }
    return sgd.run(
        model,
        ds,
        theta0,
        s.step,
        s.num_steps,
        batch_size=s.batch_size,
        loss=config.loss.name,
        seed=s.seed,
        sampling=s.sampling,
        step_rule=s.step_rule,
        clock=s.clock,
        max_step=s.max_step or None,
        record=record,
        checkpoint=s.checkpoint or None,
        progress=progress,
        warmup=warmup,
    )


def _no_late_stage(trace, config: Config) -> ExperimentError:
    error = float(np.asarray(trace.train_error)[-1])
    log_loss = float(np.asarray(trace.log_loss)[-1])
    return ExperimentError(
        f"no late stage: after {int(np.asarray(trace.k)[-1])} SGD steps with step "
        f"{config.sgd.step} the training error is still {error:.3g} (log loss "
        f"{log_loss:.4g}), so the margin flow comparison does not apply. Run longer "
        "(sgd.num_steps), use a wider model (model.widths) or a warm-up "
        "(sgd.warmup='logistic'), or data that the model separates."
    )


def _whole_run_flows(config: Config, field, trace, i0: int):
    """The configured flow and the mean-field flow from the late-stage entry on."""
    from flowtools import flow

    t = np.asarray(trace.t)
    log_rho = np.asarray(trace.log_rho)
    u0 = jnp.asarray(np.asarray(trace.u)[i0])
    span = float(t[-1] - t[i0])
    arrays = {}
    if not span > 0:
        return arrays
    ts = np.linspace(0.0, span, 301)
    tau = float(np.exp(-field.degree * log_rho[-1]))
    inclusion = flow.integrate(field, u0, span, saveat=ts, **_flow_kwargs(config, tau))
    arrays["flow.inclusion.t"] = t[i0] + np.asarray(inclusion.ts)
    arrays["flow.inclusion.margin"] = np.asarray(inclusion.margin)
    sh = config.shadowing
    mean_field = flow.integrate_mean_field(
        field,
        u0,
        float(log_rho[i0]),
        span,
        loss=config.loss.name,
        saveat=ts,
        rtol=sh.rtol,
        atol=sh.atol,
        max_steps=sh.max_steps,
        throw=False,
    )
    # The mean-field flow stiffens as rho grows (its temperature is rho^-L); past
    # the step budget only the part reached is kept.
    reached = np.isfinite(np.asarray(mean_field.ts))
    reached &= np.all(np.isfinite(np.asarray(mean_field.us)), axis=-1)
    mean_field = mean_field._replace(
        ts=np.asarray(mean_field.ts)[reached],
        us=np.asarray(mean_field.us)[reached],
        log_rho=np.asarray(mean_field.log_rho)[reached],
    )
    q = _unit_margins(field, np.asarray(mean_field.us))
    arrays["flow.mean_field.t"] = t[i0] + np.asarray(mean_field.ts)
    arrays["flow.mean_field.margin"] = q.min(-1)
    arrays["flow.mean_field.smoothed"] = _log_smoothed(
        q, np.asarray(mean_field.log_rho), field.degree, config.loss.name
    )
    return arrays


def _portrait(config: Config, field, starts, tau: float):
    """Sphere map and flow trajectories for models with 2 or 3 parameters."""
    from flowtools import flow

    arrays = _sphere_map(field, field.dim)
    key = jax.random.key(config.flow.seed + 1)
    candidates = np.array(jax.random.normal(key, (64, field.dim)))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    positive = candidates[_unit_margins(field, candidates).min(-1) > 0]
    U0 = np.concatenate([starts, positive[: config.flow.num_portrait]], axis=0)
    ts = np.linspace(0.0, config.flow.t1, 201)
    sol = flow.integrate_batch(
        field,
        jnp.asarray(U0),
        config.flow.t1,
        saveat=ts,
        **_flow_kwargs(config, tau),
    )
    arrays["map.flow_t"] = ts
    arrays["map.flow_u"] = np.asarray(sol.us)
    return arrays


def _log_smoothed(q, log_rho, degree, loss_name):
    """Smoothed margin from unit-sphere margins `q` and `log rho` (log space)."""
    scale = np.exp(degree * np.asarray(log_rho))[..., None]
    z = scale * np.asarray(q)
    if loss_name == "exponential":
        zmin = z.min(axis=-1, keepdims=True)
        log_sum = -zmin[..., 0] + np.log(np.sum(np.exp(-(z - zmin)), axis=-1))
        return -log_sum / scale[..., 0]
    with np.errstate(over="ignore", divide="ignore"):
        log_softplus = np.where(
            z > 30.0,
            -z + np.log1p(-0.5 * np.exp(-np.maximum(z, 30.0))),
            np.log(np.logaddexp(0.0, -np.minimum(z, 30.0))),
        )
    top = log_softplus.max(axis=-1, keepdims=True)
    log_total = top[..., 0] + np.log(np.sum(np.exp(log_softplus - top), axis=-1))
    total = np.exp(log_total)
    log_expm1 = np.where(
        total < 1e-5, log_total + 0.5 * total, np.log(np.expm1(np.maximum(total, 1e-5)))
    )
    return -log_expm1 / scale[..., 0]


def _compare_summary(config, ds, model, trace, report, i0, times) -> dict:
    refs = list(report.distance)
    table = []
    for w, (k, t) in enumerate(zip(report.starts_k, report.starts_t, strict=True)):
        table.append(
            {
                "start_step": int(k),
                "flow_time": float(t),
                "distance": {r: float(report.distance[r][w]) for r in refs},
                "geodesic": {r: float(report.geodesic[r][w]) for r in refs},
            }
        )
    fits = {
        name: {axis: _fit_entry(fit) for axis, fit in by_axis.items()}
        for name, by_axis in report.fits.items()
    }
    t = np.asarray(trace.t)
    entry = int(min(np.searchsorted(trace.k, trace.late_stage_step), len(t) - 1))
    return {
        **_header("compare", config, ds, model),
        "num_steps": int(np.asarray(trace.k)[-1]),
        "late_stage_step": int(trace.late_stage_step),
        "flow_time_at_entry": float(t[entry]),
        "flows_from_step": int(np.asarray(trace.k)[i0]),
        "flow_time_reached": float(t[-1]),
        "final": {
            "margin": _last(trace.margin),
            "smoothed_margin": _last(trace.smoothed),
            "stationarity": _last(report.stationarity),
            "kkt_residual": _last(report.kkt_residual),
            "log_rho": _last(trace.log_rho),
            "eta": _last(trace.eta),
            "train_error": _last(trace.train_error),
        },
        "shadowing_table": {
            "horizon": float(report.horizon),
            "selection": config.flow.selection,
            "references": refs,
            "selections": dict(report.selections),
            "clock": report.clock,
            "windows": table,
            "fits": fits,
        },
        "wall_time_s": {name: round(v, 3) for name, v in times.items()},
    }


def _fit_entry(fit):
    slope, stderr = (float(v) for v in fit)
    return {"slope": slope, "stderr": stderr}


def _last(values) -> float:
    return float(np.asarray(values).reshape(-1)[-1])
