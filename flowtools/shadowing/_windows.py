"""Window starts on the flow clock, the late-stage entry and the trace's clocks."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Int


def window_starts(
    k: Int[np.ndarray, " m"],
    t: Float[np.ndarray, " m"],
    horizon: float,
    *,
    first: int = 0,
    starts: Sequence[int] | None = None,
    num_starts: int = 12,
) -> np.ndarray:
    """Record indices of window starts, log-spaced in the step count.

    Automatic starts are `num_starts` values log-spaced in $k$ between the
    record `first` and the last record whose window $[t_k, t_k + T]$ lies
    inside the run, each snapped to the nearest recorded step (in $\\log k$);
    duplicates are dropped. Given starts (SGD steps) are snapped the same way.

    **Arguments:**

    - `k`, `t`: recorded steps (increasing) and flow times (non-decreasing).
    - `horizon`: the window length $T > 0$.
    - `first`: the first record allowed as a start (the late-stage entry).
    - `starts`: SGD steps to start windows at, or `None` for automatic starts.
    - `num_starts`: how many automatic starts to aim for.

    **Returns:**

    Increasing record indices, shape `(w,)`.

    **Raises:**

    - `ValueError`: when no complete window fits after `first`, or a given start
      lies outside the late-stage records or too close to the end of the run.
    """
    k = np.asarray(k, dtype=np.int64)
    t = np.asarray(t, dtype=np.float64)
    last_ok = np.nonzero(t <= t[-1] - horizon)[0]
    last_ok = last_ok[last_ok >= first]
    if last_ok.size == 0:
        raise ValueError(
            f"horizon={horizon} does not fit in the late-stage part of the run: "
            f"flow time goes from {t[first]:.6g} (step {k[first]}) to {t[-1]:.6g} "
            f"(step {k[-1]}). Use a shorter horizon or a longer run."
        )
    last = int(last_ok[-1])
    logk = np.log(np.maximum(k, 1).astype(np.float64))

    if starts is None:
        if num_starts < 1:
            raise ValueError(f"num_starts={num_starts} must be at least 1.")
        targets = np.linspace(logk[first], logk[last], num_starts)
    else:
        requested = np.asarray(starts, dtype=np.int64).reshape(-1)
        if requested.size == 0:
            raise ValueError("starts is empty; give at least one SGD step, or None.")
        bad = requested[(requested < k[first]) | (requested > k[last])]
        if bad.size:
            raise ValueError(
                f"starts {bad.tolist()} lie outside the steps where a complete "
                f"window of horizon {horizon} starts after the late-stage entry "
                f"({k[first]} to {k[last]}); choose starts in that range."
            )
        targets = np.log(np.maximum(requested, 1).astype(np.float64))

    candidates = np.arange(first, last + 1)
    idx = candidates[
        np.argmin(np.abs(logk[candidates][None, :] - targets[:, None]), axis=1)
    ]
    return np.unique(idx)


# ---------------------------------------------------------------------------
# Reading the trace


def _trace_array(trace: Any, name: str, required: bool = True) -> np.ndarray | None:
    value = getattr(trace, name, None)
    if value is None:
        if required:
            raise TypeError(
                f"trace has no field {name!r}; pass a flowtools.sgd.SGDTrace (or an "
                "object with arrays k, t, u, log_rho)."
            )
        return None
    return np.asarray(value)


def _clock(trace: Any, clock: str) -> tuple[np.ndarray, str]:
    t = _trace_array(trace, "t")
    t_exact = _trace_array(trace, "t_exact", required=False)
    exact_ok = t_exact is not None and t_exact.shape == t.shape
    exact_ok = exact_ok and bool(np.all(np.isfinite(t_exact)))
    if clock == "auto":
        return (t_exact, "exact") if exact_ok else (t, "estimate")
    if clock == "exact":
        if not exact_ok:
            raise ValueError(
                "clock='exact' but the trace has no finite exact clock t_exact at "
                "every record; run SGD with the exact clock or use clock='estimate'."
            )
        return t_exact, "exact"
    if clock == "estimate":
        return t, "estimate"
    raise ValueError(f"clock={clock!r}; use 'auto', 'exact' or 'estimate'.")


def _late_stage_first(trace: Any, k: np.ndarray, margin: np.ndarray) -> int:
    # A warm-up phase (another loss or step) is not the theorem's setting: windows
    # start in the main phase only.
    index = np.arange(len(k))
    phase = getattr(trace, "phase", None)
    lower = 0
    if phase is not None:
        main = np.nonzero(np.asarray(phase) != 0)[0]
        if main.size == 0:
            raise ValueError(
                "Every record belongs to the warm-up phase; run the main phase "
                "longer before measuring shadowing."
            )
        lower = int(main[0])

    step = getattr(trace, "late_stage_step", None)
    if step is not None:
        after = np.nonzero((k >= int(step)) & (index >= lower))[0]
        if after.size == 0:
            raise ValueError(
                f"The late stage starts at step {step}, after the last record "
                f"(step {k[-1]}); record further or give starts explicitly."
            )
        return _stays_positive(int(after[0]), margin)
    positive = np.nonzero((margin > 0) & (index >= lower))[0]
    if positive.size == 0:
        raise ValueError(
            "No recorded iterate classifies every sample correctly (all normalized "
            f"margins <= 0, the largest is {np.max(margin):.3g}): the late stage is "
            "never reached and shadowing of the margin flow does not apply. Run "
            "longer or with another step size."
        )
    return int(positive[0])


def _stays_positive(entry: int, margin: np.ndarray) -> int:
    # SGD may misclassify a sample again for a while just after the entry step:
    # windows start at the first record after which the margin stays positive.
    negative = np.nonzero(margin[entry:] <= 0)[0]
    if negative.size and entry + negative[-1] + 1 < len(margin):
        return entry + int(negative[-1]) + 1
    return entry


def late_stage_index(trace: Any) -> int:
    """Index of the first record from which SGD stays in the late stage.

    That is the first record at or after the late-stage entry step (and after any
    warm-up phase) after which the normalized margin stays positive at every
    record: SGD may misclassify a sample again for a while just after entering.

    **Raises:**

    - `ValueError`: when no record is in the late stage.
    """
    k = np.asarray(trace.k)
    return _late_stage_first(trace, k, np.asarray(trace.margin))
