"""The margin flow alone, from a random start or one read from a file or array.

Reference: Lyu & Li (2020), *Gradient descent maximizes the margin of homogeneous
neural networks* (the KKT residual of the final direction).
"""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowtools.config import Config
from flowtools.experiment._common import (
    ExperimentError,
    _flow_kwargs,
    _header,
    _load_data,
    _say,
    _sphere_map,
    _unit_margins,
    build_model,
)
from flowtools.experiment._output import _guarded, _write_outputs


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
