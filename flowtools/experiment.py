"""Experiments described by a configuration: data, model, loss, SGD, flow, shadowing.

A [`Config`][flowtools.config.Config] (defined in `flowtools.config`, re-exported
here) is read from a TOML file (with the standard library's `tomllib`: no code is
ever evaluated) and adjusted by `key=value` overrides with dotted keys, such as
`sgd.step=0.02` or `model.widths=[64]`. The resolved configuration is saved with
the results as `config.toml` and reproduces the run.

[`run_compare`][flowtools.experiment.run_compare] runs the main comparison of
normalized SGD with the margin flow (Schechtman & Schreuder 2025) and writes
`report.json`, `arrays.npz`, `config.toml` and `figures/` into an output folder;
[`run_flow`][flowtools.experiment.run_flow] integrates the flow alone.

!!! warning "Limits"

    The output folder receives its files one by one at the very end of a run, each
    by an atomic rename, so a failed run leaves earlier results untouched; the set of
    files is not replaced as one transaction (a crash between two renames leaves a
    mix of old and new files, each of them whole).
"""

import dataclasses
import importlib.metadata
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowtools.config import (
    Config,
    ConfigError,
    DataConfig,
    FlowConfig,
    LossConfig,
    ModelConfig,
    OutputConfig,
    SGDConfig,
    ShadowingConfig,
    apply_overrides,
    load_config,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ExperimentError",
    "FlowConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SGDConfig",
    "ShadowingConfig",
    "apply_overrides",
    "build_model",
    "check_writable",
    "load_config",
    "run_compare",
    "run_flow",
]


class ExperimentError(RuntimeError):
    """A run that cannot produce results (no late stage, an unusable output folder)."""


# ------------------------------------------------------------------ output folder


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Make sure results can be written into `out_dir`, before any computation.

    Creates the folder (and its parents) when missing and writes, then removes, a
    scratch file in it.

    **Arguments:**

    - `out_dir`: the output folder.

    **Returns:** the folder as an absolute `Path`.

    **Raises:** `ExperimentError` naming the folder and the reason when it cannot be
    created or written.
    """
    out = Path(out_dir).expanduser().absolute()
    try:
        if out.exists() and not out.is_dir():
            raise ExperimentError(
                f"the output folder {out} exists and is not a folder; choose another "
                "--out."
            )
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".flowtools-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ExperimentError(
            f"cannot write results into {out}: {reason}. Choose a writable folder "
            "with --out (or output.out=...); nothing was computed."
        ) from None
    return out


def _guarded(out_dir, body):
    """Check `out_dir`, run `body(out)`; remove `out_dir` again if the run created
    it and failed before writing anything."""
    existed = Path(out_dir).expanduser().exists()
    out = check_writable(out_dir)
    try:
        return body(out)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _publish(staging: Path, out: Path) -> None:
    """Move every file of `staging` into `out`, each by one atomic rename."""
    for src in sorted(staging.rglob("*")):
        if src.is_dir():
            continue
        dest = out / src.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)


def _write_outputs(
    out: Path,
    results,
    config: Config,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write results, config and figures to a staging folder, then publish them."""
    staging = Path(tempfile.mkdtemp(prefix=".flowtools-staging-", dir=out))
    try:
        results.save(staging)
        (staging / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        if config.output.figures:
            from flowtools import plots

            plots.draw_all(
                results,
                staging / "figures",
                formats=config.output.formats,
                dpi=config.output.dpi,
            )
        if extra is not None:
            extra(staging)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------- building


def build_model(config: ModelConfig, ds):
    """The homogeneous model that `config` describes, sized for the data `ds`.

    **Arguments:**

    - `config`: the model section of a [`Config`][flowtools.config.Config].
    - `ds`: the [`Dataset`][flowtools.data.Dataset] it will be trained on.

    **Returns:** a [`Model`][flowtools.models.Model].

    **Raises:** `ConfigError` when the model cannot be built for these data (a CNN on
    data without an image shape).
    """
    from flowtools import models

    if config.kind == "linear":
        return models.linear(ds.dim)
    if config.kind == "deep_linear":
        return models.deep_linear(ds.dim, config.depth, width=config.width or None)
    if config.kind == "diagonal":
        return models.diagonal(ds.dim, depth=config.depth)
    if config.kind == "cnn":
        if ds.image_shape is None:
            raise ConfigError(
                f"model.kind = 'cnn' needs image data, but {ds.name!r} has no image "
                "shape; use data.spec='digits:0,1' or another model.kind."
            )
        return models.cnn(
            image_shape=ds.image_shape,
            channels=config.channels,
            kernel=config.kernel,
            pool=config.pool,
            relu0=config.relu0,
        )
    return models.mlp(
        ds.dim,
        widths=config.widths,
        activation=config.activation,
        slope=config.slope,
        relu0=config.relu0,
        first_layer_bias=config.first_layer_bias,
    )


def _load_data(spec: str):
    from flowtools import data

    try:
        return data.load(spec)
    except OSError as err:
        reason = str(err.strerror or err).rstrip(".")
        raise ExperimentError(
            f"cannot read the data file {spec!r}: {reason}. Set "
            "data.spec to a readable CSV or NPZ file or a bundled set such as "
            "'digits:0,1'."
        ) from None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (
        "flowtools",
        "jax",
        "jaxlib",
        "diffrax",
        "equinox",
        "numpy",
        "scipy",
        "matplotlib",
        "scikit-learn",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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


def _unit_margins(field, U):
    """All per-sample margins $q_i(u)$ for a batch of flat unit vectors `U` (b, p)."""
    return np.asarray(jax.jit(jax.vmap(field.margins))(jnp.asarray(U)))


def _sphere_map(field, num_params):
    """The normalized margin on a grid of the circle (p = 2) or the sphere (p = 3)."""
    if num_params == 2:
        angle = np.linspace(-np.pi, np.pi, 721)
        U = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        return {"map.angle": angle, "map.margin": _unit_margins(field, U).min(-1)}
    lon = np.linspace(-np.pi, np.pi, 181)
    lat = np.linspace(-np.pi / 2, np.pi / 2, 91)
    LON, LAT = np.meshgrid(lon, lat)
    U = np.stack(
        [np.cos(LAT) * np.cos(LON), np.cos(LAT) * np.sin(LON), np.sin(LAT)], axis=-1
    ).reshape(-1, 3)
    margin = _unit_margins(field, U).min(-1).reshape(LAT.shape)
    return {"map.lon": lon, "map.lat": lat, "map.margin": margin}


def _describe(model) -> str:
    return model.describe().splitlines()[0]


def _say(log, message):
    if log is not None:
        log(message)


def _fit_entry(fit):
    slope, stderr = (float(v) for v in fit)
    return {"slope": slope, "stderr": stderr}


# ------------------------------------------------------------------ the main job


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


def _flow_kwargs(config: Config, tau_default: float) -> dict:
    """Keyword arguments of `flow.integrate` for the configured selection."""
    f = config.flow
    kwargs = {
        "selection": None if f.selection == "proximal" else f.selection,
        "dt0": f.dt,
    }
    if f.selection == "softmin":
        kwargs["tau"] = f.tau or tau_default
    if f.selection == "random":
        kwargs["key"] = jax.random.key(f.seed)
    return kwargs


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


def _header(kind: str, config: Config, ds, model) -> dict:
    """The part of a summary shared by every job: config, versions, data, model."""
    return {
        "kind": kind,
        "config": config.to_dict(),
        "versions": _versions(),
        "data": {"name": ds.name, "n": int(ds.n), "dim": int(ds.dim)},
        "model": {
            "description": _describe(model),
            "layers": model.describe(),
            "degree": int(model.degree),
            "num_params": int(model.num_params),
        },
    }


def _now() -> float:
    import time

    return time.perf_counter()


def _last(values) -> float:
    return float(np.asarray(values).reshape(-1)[-1])


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


# ------------------------------------------------------------------ the flow alone


def _read_start(path, num_params: int) -> np.ndarray:
    """A starting direction from a .npy, .npz (first array) or text file."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if not npz.files:
                    raise ExperimentError(f"the start file {path} holds no array.")
                name = "u0" if "u0" in npz.files else npz.files[0]
                u0 = np.asarray(npz[name], dtype=np.float64)
        elif path.suffix == ".npy":
            u0 = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        else:
            u0 = np.loadtxt(path, dtype=np.float64, delimiter=None, ndmin=1)
    except OSError as err:
        raise ExperimentError(
            f"cannot read the start file {path}: {err.strerror or err}."
        ) from None
    except ValueError as err:
        raise ExperimentError(
            f"the start file {path} does not hold a numeric vector ({err})."
        ) from None
    u0 = u0.reshape(-1)
    if u0.size != num_params:
        raise ExperimentError(
            f"the start in {path} has {u0.size} entries, the model has {num_params} "
            "parameters; save a flat vector of that length."
        )
    norm = np.linalg.norm(u0)
    if not np.all(np.isfinite(u0)) or norm == 0:
        raise ExperimentError(
            f"the start in {path} must be finite and nonzero (norm {norm})."
        )
    return u0 / norm


def run_flow(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    u0: str | os.PathLike | np.ndarray | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
):
    """Integrate the margin flow alone from a random or given start, and save it.

    Integrates $du/dt \\in D_S(u)$ (or the named selection's ODE) over
    `[0, flow.t1]` and records the trajectory, its normalized margin and
    stationarity, and the KKT residual of the final direction (Lyu & Li 2020).

    **Arguments:**

    - `config`: the resolved [`Config`][flowtools.config.Config] (data, model,
      flow and output sections are used).
    - `out_dir`: the output folder (default: `config.output.out`).
    - `u0`: a starting direction (flat vector of length `num_params`, or a .npy,
      .npz or text file holding one); default: the model's random start with seed
      `flow.seed`, normalized.
    - `progress`: show the solver's progress meter.
    - `log`: called with one line of text per stage.

    **Returns:** the [`Results`][flowtools.results.Results] that were written.

    **Raises:** `ExperimentError` for an unwritable output folder (before any
    computation), unreadable data or an unusable start.
    """
    target = config.output.out if out_dir is None else out_dir
    return _guarded(target, lambda out: _flow_alone(config, out, u0, progress, log))


def _flow_alone(config: Config, out: Path, u0, progress: bool, log):
    from flowtools import fields, flow, results

    _say(log, f"loading data {config.data.spec!r}")
    ds = _load_data(config.data.spec)
    model = build_model(config.model, ds)
    field = fields.MarginField(model, ds, eps=config.flow.eps, k=config.flow.k)

    if u0 is None:
        theta = model.init(jax.random.key(config.flow.seed))
        start = np.array(model.ravel(theta), dtype=np.float64)
        start /= np.linalg.norm(start)
    elif isinstance(u0, str | os.PathLike):
        start = _read_start(u0, model.num_params)
    else:
        start = _read_start_array(u0, model.num_params)

    _say(log, f"flow over [0, {config.flow.t1}] with selection {config.flow.selection}")
    ts = np.linspace(0.0, config.flow.t1, 401)
    sol = flow.integrate(
        field,
        jnp.asarray(start),
        config.flow.t1,
        saveat=ts,
        progress=progress,
        **_flow_kwargs(config, 1e-2),
    )
    us = np.asarray(sol.us)
    q = _unit_margins(field, us)
    kkt = float(field.kkt_residual(jnp.asarray(us[-1]), eps=config.flow.eps))
    stationarity = np.asarray(sol.stationarity)
    arrays = {
        "flow.t": np.asarray(sol.ts),
        "flow.u": us,
        "flow.margin": q.min(-1),
        "flow.stationarity": stationarity,
        "u.start": start,
        "u.final": us[-1],
    }
    if model.num_params in (2, 3):
        arrays.update(_sphere_map(field, model.num_params))
        arrays["map.flow_t"] = np.asarray(sol.ts)
        arrays["map.flow_u"] = us[None]
    summary = {
        **_header("flow", config, ds, model),
        "start": "random" if u0 is None else "given",
        "flow_time": float(np.asarray(sol.ts)[-1]),
        "final": {
            "margin": float(q[-1].min()),
            "stationarity": float(stationarity[-1]),
            "kkt_residual": kkt,
        },
        "solver": _json_stats(sol.stats),
    }
    res = results.Results(summary=summary, arrays=arrays)
    _say(log, f"writing results into {out}")
    _write_outputs(out, res, config)
    return res


def _read_start_array(u0, num_params: int) -> np.ndarray:
    u0 = np.asarray(u0, dtype=np.float64).reshape(-1)
    if u0.size != num_params or not np.all(np.isfinite(u0)) or not u0.any():
        raise ExperimentError(
            f"u0 must be a finite nonzero vector of length {num_params}, got shape "
            f"{u0.shape}."
        )
    return u0 / np.linalg.norm(u0)


def _json_stats(stats) -> dict:
    if isinstance(stats, dict):
        items = stats.items()
    elif dataclasses.is_dataclass(stats):
        items = ((f.name, getattr(stats, f.name)) for f in dataclasses.fields(stats))
    elif hasattr(stats, "_asdict"):
        items = stats._asdict().items()
    else:
        return {"description": str(stats)}
    out = {}
    for name, value in items:
        value = np.asarray(value) if hasattr(value, "shape") else value
        if isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tolist()
        out[name] = value
    return out
