"""Containers of the SGD engine: record schedules, warm-up, traces, checkpoints."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from flowtools.sgd._engine import RECORD_FIELDS

__all__ = ["Record", "SGDDivergenceError", "SGDTrace", "Warmup"]

_FORMAT = 1
TRACE_FIELDS = ("k", *RECORD_FIELDS, "u", "phase")


@dataclasses.dataclass(frozen=True)
class Record:
    """When the SGD engine records the iterate.

    Records are taken at step $0$, at `log_points` steps spaced evenly in
    $\\log k$ up to the last step, every `every` steps, at the given `steps`,
    and each time the estimated flow clock $t_k$ passes a multiple of `dt`. The
    final step is always recorded.

    **Arguments:**

    - `log_points`: number of log-spaced steps in $[1, N]$ (0 for none).
    - `dt`: record whenever the flow clock passes a multiple of `dt` (`None`:
      never). With a constant step, one unit of flow time spans from step $k$
      to $k^{1.2}$ or more, so this is what spreads records evenly in $t$.
    - `every`: record every `every` steps (`None`: never).
    - `steps`: further steps to record.
    """

    log_points: int = 200
    dt: float | None = None
    every: int | None = None
    steps: tuple[int, ...] = ()

    def __post_init__(self):
        if int(self.log_points) < 0:
            raise ValueError(
                f"`log_points` must be >= 0, got {self.log_points}; use 0 for no "
                "log-spaced records."
            )
        if self.dt is not None and not (np.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"`dt` must be a positive number or None, got {self.dt}.")
        if self.every is not None and int(self.every) < 1:
            raise ValueError(f"`every` must be >= 1 or None, got {self.every}.")
        object.__setattr__(self, "steps", tuple(int(k) for k in self.steps))

    def schedule(self, num_steps: int) -> np.ndarray:
        """The scheduled record steps in $[0, N]$, sorted and unique."""
        steps = [np.array([0, num_steps]), np.array(self.steps, dtype=np.int64)]
        if self.log_points > 0 and num_steps > 0:
            log_k = np.geomspace(1, num_steps, self.log_points)
            steps.append(np.round(log_k).astype(np.int64))
        if self.every is not None:
            steps.append(np.arange(0, num_steps + 1, int(self.every)))
        all_steps = np.unique(np.concatenate(steps).astype(np.int64))
        return all_steps[(all_steps >= 0) & (all_steps <= num_steps)]

    def as_dict(self) -> dict:
        """A JSON-ready description (stored in checkpoints)."""
        return dataclasses.asdict(self) | {"steps": list(self.steps)}

    @classmethod
    def coerce(cls, record) -> "Record":
        """Accepts a `Record`, an int (log points), a dict, or a list of steps."""
        if isinstance(record, Record):
            return record
        if isinstance(record, bool):
            raise TypeError(f"`record` must be a Record, int, dict or steps: {record}")
        if isinstance(record, int):
            return cls(log_points=record)
        if isinstance(record, dict):
            unknown = set(record) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(
                    f"unknown `record` keys {sorted(unknown)}; valid keys are "
                    "log_points, dt, every, steps."
                )
            return cls(**record)
        if isinstance(record, (list, tuple, np.ndarray)):
            return cls(log_points=0, steps=tuple(int(k) for k in record))
        raise TypeError(
            "`record` must be a Record, an int (number of log-spaced records), a "
            f"dict of Record fields or a list of steps; got {type(record).__name__}."
        )


@dataclasses.dataclass(frozen=True)
class Warmup:
    """An optional first phase that runs until every sample is classified.

    The warm-up uses its own loss and/or step and stops at the first chunk end
    at which every training sample is classified correctly (or after
    `max_steps`); the main phase then continues from there with the run's own
    loss and step, so that the late-stage part of the run stays in the setting
    of the theory. Records carry `phase` 0 (warm-up) or 1 (main).

    **Arguments:**

    - `loss`: loss of the warm-up (`None`: the run's loss).
    - `step`: step of the warm-up (`None`: the run's step).
    - `max_steps`: budget of the warm-up (`None`: the run's whole budget).
    """

    loss: str | None = "logistic"
    step: float | None = None
    max_steps: int | None = None

    def as_dict(self) -> dict:
        """A JSON-ready description (stored in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, warmup) -> "Warmup | None":
        """Accepts `None`, a `Warmup`, a dict of its fields or a loss name."""
        if warmup is None or isinstance(warmup, Warmup):
            return warmup
        if isinstance(warmup, str):
            return cls(loss=warmup)
        if isinstance(warmup, dict):
            unknown = set(warmup) - {"loss", "step", "max_steps"}
            if unknown:
                raise ValueError(
                    f"unknown `warmup` keys {sorted(unknown)}; valid keys are "
                    "loss, step, max_steps."
                )
            return cls(**warmup)
        raise TypeError(
            "`warmup` must be None, a Warmup, a dict or a loss name; got "
            f"{type(warmup).__name__}."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SGDTrace:
    """The recorded iterates of a normalized SGD run ($m$ records).

    Per record (arrays of length $m$, `u` of shape $(m, p)$):

    - `k`: step; `t`: flow time $t_k = \\sum_{j<k} \\hat\\eta_j$ on the estimated
      clock (accumulated at every step); `t_exact`: $\\sum_{j<k} \\eta_j$ on the
      exact clock (NaN unless the run paid for it: `clock="exact"`, a
      loss-scaled or flow-clock step, or full-batch GD);
    - `eta`: the exact normalized step $\\eta_k = \\alpha_k \\rho_k^{L-2} W_k/n$;
      `eta_estimate`: its mini-batch estimate $\\hat\\eta_k$;
    - `log_rho`: $\\log\\|\\theta_k\\|$; `u`: the direction $\\theta_k/\\|\\theta_k\\|$
      (flat, `model.unravel` gives the pytree);
    - `log_loss`: $\\log R(\\theta_k)$; `margin`:
      $\\bar\\gamma(u_k) = \\min_i q_i(u_k)$; `smoothed`:
      $\\tilde\\gamma(\\theta_k)$; `train_error`: fraction of samples with
      $q_i \\le 0$;
    - `v_norm`, `xi_norm`, `e_norm`: norms of the terms of
      $u_{k+1} = u_k + \\eta_k(v_k + \\xi_k + e_k)$, with $v_k = P_{u_k}\\sum_i
      \\lambda_i J_i(u_k)$, $\\lambda = \\mathrm{softmax}(\\log w(\\theta_k))$ (the
      conditional mean of the tangential part of $g_k$), $\\xi_k = P_{u_k} g_k -
      v_k$ (sampling noise), and $e_k = (u_{k+1}-u_k)/\\eta_k - P_{u_k} g_k$ (the
      radial and second-order part of the renormalisation);
    - `phase`: 0 during a warm-up, 1 in the main phase.

    Run attributes: `late_stage_step` (first step found with every sample
    classified, or `None`), `warmup_steps` (steps of the warm-up, or `None`),
    `status` (`"late stage reached"` or `"late stage not reached"`), `messages`,
    and the settings `degree`, `loss`, `step`, `seed`, `batch_size`, `sampling`,
    `step_rule`, `clock`, `num_steps`.

    Reference: Schechtman & Schreuder (2025), section 4 of THEORY.md.
    """

    k: np.ndarray
    t: np.ndarray
    t_exact: np.ndarray
    eta: np.ndarray
    eta_estimate: np.ndarray
    log_rho: np.ndarray
    u: np.ndarray
    log_loss: np.ndarray
    margin: np.ndarray
    smoothed: np.ndarray
    train_error: np.ndarray
    v_norm: np.ndarray
    xi_norm: np.ndarray
    e_norm: np.ndarray
    phase: np.ndarray
    late_stage_step: int | None
    warmup_steps: int | None
    status: str
    messages: tuple[str, ...]
    degree: int
    loss: str
    step: float
    seed: int
    batch_size: int
    sampling: str
    step_rule: str
    clock: str
    num_steps: int

    def __len__(self) -> int:
        return int(self.k.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-record arrays by name."""
        return {name: getattr(self, name) for name in TRACE_FIELDS}


class SGDDivergenceError(RuntimeError):
    """Raised when an SGD run diverges (NaN/inf, a frozen direction, or a loss that
    keeps increasing in the late stage).

    Attributes: `step` (the step size), `step_reached` (the step $k$ at which the
    failure was seen), `reason`, `trace` (the records up to the last good state)
    and `checkpoint` (the path of the last good checkpoint, or `None`).
    """

    def __init__(self, message, *, step, step_reached, reason, trace, checkpoint):
        super().__init__(message)
        self.step = step
        self.step_reached = step_reached
        self.reason = reason
        self.trace = trace
        self.checkpoint = checkpoint


def save_checkpoint(path, config: dict, state_arrays: dict, records: dict) -> None:
    """Writes a checkpoint atomically (temporary file, then `os.replace`)."""
    path = Path(path)
    payload = {"format": np.asarray(_FORMAT), "config": np.asarray(json.dumps(config))}
    payload |= {f"state_{name}": np.asarray(v) for name, v in state_arrays.items()}
    payload |= {f"record_{name}": np.asarray(v) for name, v in records.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path) -> tuple[dict, dict, dict]:
    """Reads a checkpoint (pickling disabled): (config, state arrays, records)."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            if "format" not in f or int(f["format"]) != _FORMAT:
                raise ValueError(
                    f"checkpoint {path}: missing or unknown field `format`; it was "
                    "not written by flowtools.sgd.run."
                )
            config = json.loads(str(f["config"]))
            state = {n[6:]: f[n] for n in f.files if n.startswith("state_")}
            records = {n[7:]: f[n] for n in f.files if n.startswith("record_")}
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} could not be read: {err}") from err
    return config, state, records
