"""The driver of normalized SGD: validation, chunks, checks, checkpoints."""

import hashlib
import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flowtools import losses
from flowtools.sgd import _engine
from flowtools.sgd._trace import (
    TRACE_FIELDS,
    Record,
    SGDDivergenceError,
    SGDTrace,
    Warmup,
    load_checkpoint,
    save_checkpoint,
)

SAMPLINGS = ("iid", "reshuffle", "full")
STEP_RULES = ("constant", "loss_scaled", "flow_clock")
CLOCKS = ("estimate", "exact")
_LOCATE_STRIDE = 16
_SEARCH_CHUNK = 256


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {list(valid)}, got {value!r}.")


def _positive(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite positive number, got {value}.")
    return value


def _data_digest(X, y) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:16]


class _Phase:
    """The compiled engine and constants of one phase (warm-up or main)."""

    def __init__(self, cfg, consts, step, loss):
        self.cfg, self.consts, self.step, self.loss = cfg, consts, step, loss


def _initial_state(model, theta0, full_pass) -> _engine.State:
    theta = model.as_tree(theta0)
    sq = float(sum(jnp.vdot(a, a) for a in theta))
    if not math.isfinite(sq):
        raise ValueError("`theta0` has NaN or infinite entries; pass a finite start.")
    if sq == 0.0:
        raise ValueError(
            "`theta0` is zero; the direction is undefined. Use model.init."
        )
    norm = math.sqrt(sq)
    return _engine.canonical_state(
        _engine.State(
            z=tuple(jnp.asarray(a, jnp.float64) / norm for a in theta),
            log_a=math.log(norm),
            s=1.0,
            k=0,
            t=0.0,
            t_exact=0.0 if full_pass else math.nan,
            next_t=0.0,
        )
    )


def run(
    model,
    ds,
    theta0,
    step: float,
    num_steps: int,
    batch_size: int = 1,
    loss="exponential",
    seed: int = 0,
    *,
    sampling: str = "iid",
    step_rule: str = "constant",
    clock: str = "estimate",
    max_step: float | None = None,
    record=200,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = False,
    warmup=None,
    chunk: int = 8192,
    divergence_patience: int = 20,
) -> SGDTrace:
    """Runs (mini-batch) SGD on $\\theta$ in polar form and records the normalized
    iterates on the flow clock.

    The step $\\theta_{k+1} = \\theta_k + \\frac{\\alpha_k}{|B_k|}\\sum_{i\\in B_k}
    w_i(\\theta_k) J_i(\\theta_k)$ is computed as $u_{k+1} \\propto u_k + \\eta_k g_k$,
    $\\log\\rho_{k+1} = \\log\\rho_k + \\log\\|u_k + \\eta_k g_k\\|$, with the weights
    $\\log w_i$ in log space: the same iterates as plain SGD while plain SGD is
    representable, and no underflow however large $\\rho$ grows. The flow clock
    $t_k = \\sum_{j<k}\\eta_j$ uses the unbiased mini-batch estimate
    $\\hat\\eta_k = \\alpha_k\\rho_k^{L-2}|B_k|^{-1}\\sum_{i\\in B_k} w_i$ by default,
    with the exact $\\eta_k$ at every recorded step.

    Sampling: step $k$ of `sampling="iid"` uses the samples
    `jax.random.randint(jax.random.fold_in(jax.random.key(seed), k),
    (batch_size,), 0, n)`; `"reshuffle"` walks through
    `jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n)`
    in batches (the last `n % batch_size` samples of an epoch are skipped);
    `"full"` is gradient descent.

    Step rules: `"constant"` ($\\alpha_k$ = `step`, the setting of the theory);
    `"loss_scaled"` ($\\alpha_k$ = `step` $/R(\\theta_k)$, capped at `max_step`;
    Lyu & Li 2020); `"flow_clock"` ($\\alpha_k$ chosen so that $\\eta_k$ = `step`).
    The last two, and `clock="exact"`, take a forward pass over all samples at
    every step (about $n/3$ single-sample steps each).

    The late-stage entry (first step with every sample classified) is exact
    when every step has a full pass; otherwise classification is checked every
    256 steps until the late stage is seen, and the entry is located by
    replaying those steps with a check every 16 steps, then every step. A
    brief earlier visit to the late stage that no check sees is not reported.

    **Arguments:**

    - `model`, `ds`: a homogeneous `Model` and a `Dataset`.
    - `theta0`: start (pytree or flat vector).
    - `step`: $\\alpha$ (or the base step of the step rule; the target $\\eta$ for
      `"flow_clock"`).
    - `num_steps`: total number of steps $N$ (warm-up included).
    - `batch_size`, `loss` (`"exponential"`/`"logistic"`), `seed`.
    - `sampling`, `step_rule`, `clock` (`"estimate"`/`"exact"`), `max_step`
      (cap of `"loss_scaled"`, `None`: no cap).
    - `record`: a `Record`, an int (log-spaced records), a dict or a list of steps.
    - `checkpoint`: path of an NPZ checkpoint written atomically every
      `checkpoint_every` steps and at the end; with `resume=True` an existing
      checkpoint of the same run is continued, with bit-identical results.
    - `progress`: show a progress bar (updated per chunk).
    - `warmup`: a `Warmup` (or dict / loss name) phase before the main run.
    - `chunk`: steps per compiled chunk; $z$ is renormalized at multiples of it.
    - `divergence_patience`: chunk ends with a rising loss after the late stage
      that count as divergence.

    **Returns:** an `SGDTrace`.

    **Raises:** `ValueError`/`TypeError` for bad arguments or a checkpoint of
    another run; `SGDDivergenceError` when the run diverges.

    !!! warning
        When the late stage is not reached within the budget the run ends
        normally with `status="late stage not reached"` and a warning.

    Reference: Schechtman & Schreuder (2025); Lyu & Li (2020).
    """
    # --- validation, before anything is traced ---
    step = _positive("step", step)
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"`num_steps` must be an integer >= 0, got {num_steps!r}.")
    num_steps = int(num_steps)
    _check_choice("sampling", sampling, SAMPLINGS)
    _check_choice("step_rule", step_rule, STEP_RULES)
    _check_choice("clock", clock, CLOCKS)
    n = int(ds.n)
    if sampling == "full":
        batch_size = n
    if not (1 <= int(batch_size) <= n):
        raise ValueError(f"`batch_size` must be in [1, n={n}], got {batch_size}.")
    batch_size = int(batch_size)
    if int(chunk) < 1:
        raise ValueError(f"`chunk` must be >= 1, got {chunk}.")
    chunk = int(chunk)
    log_max_step = (
        math.inf if max_step is None else math.log(_positive("max_step", max_step))
    )
    loss = losses.get(loss)
    record = Record.coerce(record)
    warmup = Warmup.coerce(warmup)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and not checkpoint.parent.is_dir():
        raise ValueError(f"`checkpoint` folder {checkpoint.parent} does not exist.")
    if checkpoint_every is None:
        checkpoint_every = max(chunk, (num_steps // 10) // chunk * chunk)

    X = jnp.asarray(ds.X, jnp.float64)
    y = jnp.asarray(ds.y, jnp.float64)
    capacity = int(max(4, min(64, 2**22 // max(model.num_params, 1))))
    base_key = jax.random.key(int(seed))

    def make_phase(phase_loss, phase_step):
        cfg = _engine.Config(
            model,
            phase_loss,
            n,
            batch_size,
            sampling,
            step_rule,
            clock == "exact",
            capacity,
        )
        consts = _engine.Consts(
            X,
            y,
            jnp.asarray(math.log(phase_step), jnp.float64),
            jnp.asarray(log_max_step, jnp.float64),
            base_key,
            jnp.asarray(record.dt if record.dt else 1.0, jnp.float64),
        )
        return _Phase(cfg, consts, phase_step, phase_loss)

    main = make_phase(loss, step)
    warm = None
    if warmup is not None:
        warm_loss = losses.get(warmup.loss) if warmup.loss is not None else loss
        warm_step = (
            step if warmup.step is None else _positive("warmup.step", warmup.step)
        )
        warm = make_phase(warm_loss, warm_step)
    config = {
        "model": model.name,
        "num_params": int(model.num_params),
        "degree": int(model.degree),
        "data": ds.name,
        "n": n,
        "data_digest": _data_digest(ds.X, ds.y),
        "step": step,
        "loss": loss.name,
        "seed": int(seed),
        "batch_size": batch_size,
        "sampling": sampling,
        "step_rule": step_rule,
        "clock": clock,
        "max_step": max_step,
        "record": record.as_dict(),
        "chunk": chunk,
        "warmup": None if warmup is None else warmup.as_dict(),
    }

    # --- start, or resume from a checkpoint ---
    stored = {name: [] for name in TRACE_FIELDS}
    late_stage_step, warmup_steps = None, None
    in_warmup = warm is not None
    prev_log_loss, rising = math.inf, 0
    if checkpoint is not None and resume and checkpoint.exists():
        saved_config, saved, saved_records = load_checkpoint(checkpoint)
        differ = sorted(k for k in config if saved_config.get(k) != config[k])
        if differ:
            raise ValueError(
                f"checkpoint {checkpoint} belongs to another run (differs in "
                f"{differ}); remove it or pass resume=False."
            )
        state = _engine.State(
            z=tuple(jnp.asarray(saved[f"z{i}"]) for i in range(len(model.shapes))),
            **{f: jnp.asarray(saved[f]) for f in _engine.State._fields[1:]},
        )
        if int(state.k) > num_steps:
            raise ValueError(
                f"checkpoint {checkpoint} is at step {int(state.k)}, past "
                f"`num_steps`={num_steps}; ask for at least that many steps."
            )
        late_stage_step = int(saved["late_stage_step"])
        late_stage_step = None if late_stage_step < 0 else late_stage_step
        warmup_steps = int(saved["warmup_steps"])
        warmup_steps = None if warmup_steps < 0 else warmup_steps
        in_warmup = bool(saved["in_warmup"])
        prev_log_loss, rising = float(saved["prev_log_loss"]), int(saved["rising"])
        for name in TRACE_FIELDS:
            stored[name].append(saved_records[name])
    else:
        state = _initial_state(model, theta0, main.cfg.full_pass)

    schedule = record.schedule(num_steps)
    pad = np.full(capacity + 1, np.iinfo(np.int64).max, np.int64)

    def bookkeeping():
        return {
            "late_stage_step": -1 if late_stage_step is None else late_stage_step,
            "warmup_steps": -1 if warmup_steps is None else warmup_steps,
            "in_warmup": in_warmup,
            "prev_log_loss": prev_log_loss,
            "rising": rising,
        }

    def records_so_far():
        return {
            name: np.concatenate(parts) if parts else np.zeros((0,))
            for name, parts in stored.items()
        }

    def write_checkpoint(at_state):
        if checkpoint is None:
            return
        arrays = {f"z{i}": np.asarray(a) for i, a in enumerate(at_state.z)}
        arrays |= {
            f: np.asarray(getattr(at_state, f)) for f in _engine.State._fields[1:]
        }
        arrays |= bookkeeping()
        recs = records_so_far()
        if recs["u"].ndim == 1:
            recs["u"] = np.zeros((0, model.num_params))
        save_checkpoint(checkpoint, config, arrays, recs)

    def make_trace(extra, status, messages):
        recs = records_so_far()
        for name in TRACE_FIELDS:
            if extra is not None:
                recs[name] = np.concatenate([recs[name], extra[name]])
        if recs["u"].ndim == 1:
            recs["u"] = np.zeros((0, model.num_params))
        return SGDTrace(
            **{name: recs[name] for name in TRACE_FIELDS},
            late_stage_step=late_stage_step,
            warmup_steps=warmup_steps,
            status=status,
            messages=tuple(messages),
            degree=int(model.degree),
            loss=loss.name,
            step=step,
            seed=int(seed),
            batch_size=batch_size,
            sampling=sampling,
            step_rule=step_rule,
            clock=clock,
            num_steps=num_steps,
        )

    def diverge(reason, k_reached, good_state, phase):
        write_checkpoint(good_state)
        where = f"; last good checkpoint: {checkpoint}" if checkpoint else ""
        raise SGDDivergenceError(
            f"SGD diverged ({reason}) at step {k_reached} with step size "
            f"{phase.step:g}{where}. Try a smaller step (e.g. {phase.step / 10:g}), "
            "a warm-up (warmup=Warmup(loss='logistic')) or a smaller initial scale.",
            step=phase.step,
            step_reached=k_reached,
            reason=reason,
            trace=make_trace(None, "diverged", [reason]),
            checkpoint=checkpoint,
        )

    # --- the chunk loop ---
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=int(state.k), unit="step", desc="sgd")
    last_check = state
    warm_budget = (
        num_steps if warm is None or warmup.max_steps is None else int(warmup.max_steps)
    )
    try:
        while int(state.k) < num_steps:
            phase = warm if in_warmup else main
            k = int(state.k)
            k_stop = min((k // chunk + 1) * chunk, num_steps)
            if late_stage_step is None:
                # short stretches until the late stage, so that locating its
                # entry replays at most `_SEARCH_CHUNK` steps
                k_stop = min((k // _SEARCH_CHUNK + 1) * _SEARCH_CHUNK, k_stop)
            upcoming = schedule[np.searchsorted(schedule, k) :][: capacity + 1]
            window = pad.copy()
            window[: len(upcoming)] = upcoming
            out = _engine.run_chunk(
                phase.cfg,
                phase.consts,
                state,
                k_stop,
                window,
                record.dt is not None,
            )
            num_records = int(out.num_records)
            if num_records:
                fetched = jax.device_get(out.records)
                for name, values in fetched.items():
                    # a copy, so that the whole record buffer is not kept alive
                    stored[name].append(np.array(values[:num_records]))
                stored["phase"].append(np.full(num_records, 0 if in_warmup else 1))
            if int(out.bad_step) >= 0:
                diverge("NaN or infinite values", int(out.bad_step), state, phase)
            steps_taken = int(out.state.k) - k
            if steps_taken == 0:
                # a full record buffer without a single step: the flow-time
                # schedule no longer advances, because eta_k is so large that
                # t_k + dt rounds to t_k
                diverge(
                    "the flow time stopped advancing (the effective step eta_k is "
                    "so large that t_k + dt rounds to t_k)",
                    k,
                    state,
                    phase,
                )
            if steps_taken >= 100 and not bool(out.moved):
                diverge(
                    "the direction froze: every step is below float64 resolution, "
                    "all weights have underflowed",
                    int(out.state.k),
                    state,
                    phase,
                )
            if late_stage_step is None and int(out.late_step) >= 0:
                late_stage_step = int(out.late_step)
            state = out.state
            k = int(state.k)
            if bar is not None:
                bar.update(steps_taken)
            if k < k_stop:
                continue  # the record buffer was full; carry on within the chunk

            # --- chunk end: late stage, divergence, warm-up, renormalization ---
            log_loss, min_q = float(out.log_loss), float(out.min_q)
            if late_stage_step is None and min_q > 0:
                late_stage_step = _locate(phase, last_check, k)
            aligned = k % chunk == 0
            if aligned and late_stage_step is not None and not in_warmup:
                rising = rising + 1 if log_loss > prev_log_loss else 0
                prev_log_loss = log_loss
                if rising >= divergence_patience:
                    diverge(
                        f"the loss rose at {rising} chunk ends in a row after the "
                        "late stage",
                        k,
                        state,
                        phase,
                    )
            if in_warmup and (min_q > 0 or k >= warm_budget):
                in_warmup, warmup_steps = False, k
            if aligned:
                state = _engine.renormalize(state)
                if k % checkpoint_every == 0:
                    write_checkpoint(state)
            last_check = state
    finally:
        if bar is not None:
            bar.close()

    # --- the final record, status and checkpoint ---
    phase = warm if in_warmup else main
    write_checkpoint(state)
    final = _final_record(phase, state, pad)
    final["phase"] = np.array([0 if in_warmup else 1])
    if late_stage_step is None and final["train_error"][0] == 0:
        late_stage_step = num_steps
    messages = []
    if warm is not None and warmup_steps is not None:
        messages.append(f"warm-up ended at step {warmup_steps}")
    if late_stage_step is None:
        status = "late stage not reached"
        msg = (
            f"the late stage was not reached in {num_steps} steps: loss "
            f"{math.exp(float(final['log_loss'][0])):.4g}, training error "
            f"{float(final['train_error'][0]):.4g}. Run longer, use a larger model "
            "or a warm-up."
        )
        messages.append(msg)
        warnings.warn(msg, stacklevel=2)
    else:
        status = "late stage reached"
        messages.append(f"late stage reached at step {late_stage_step}")
    return make_trace(final, status, messages)


def _locate(phase, start, k_end) -> int:
    """The first step in $[start.k, k_{end}]$ with every sample classified."""
    out = _engine.locate_chunk(
        phase.cfg, phase.consts, start, k_end + 1, _LOCATE_STRIDE
    )
    found = int(out.late_step)
    if found < 0:
        return k_end
    out = _engine.locate_chunk(phase.cfg, phase.consts, out.saved, found + 1, 1)
    return int(out.late_step) if int(out.late_step) >= 0 else found


def _final_record(phase, state, pad) -> dict:
    """The record at `state.k`, taken by a one-step chunk whose state is dropped."""
    window = pad.copy()
    window[0] = int(state.k)
    out = _engine.run_chunk(phase.cfg, phase.consts, state, state.k + 1, window, False)
    return {name: np.asarray(v[:1]) for name, v in out.records.items()}
