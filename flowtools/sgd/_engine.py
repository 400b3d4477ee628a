r"""The compiled core of normalized SGD: one step in polar form, records, chunks.

The iterate $\theta_k$ is held as $\theta_k = a z_k$ with a scalar $a$ (kept as
$\log a$) and an unnormalized vector $z_k$ whose squared norm $s_k = \|z_k\|^2$
is carried along. Then $\rho_k = a \sqrt{s_k}$ and $u_k = z_k / \sqrt{s_k}$.
Dividing the SGD update of $\theta$ by $a$ and using homogeneity
($J_i(a z) = a^{L-1} J_i(z)$) gives

$$z_{k+1} = z_k + d_k, \qquad d_k = \sum_{i \in B_k} \beta_i J_i(z_k), \qquad
\beta_i = \alpha_k a^{L-2} w_i(\theta_k) / |B_k|,$$

with $\beta_i$ formed in log space from $\log w_i$, so no weight underflows.
Euler's identity $\langle J_i(z), z\rangle = L q_i(z)$ updates the norm cheaply:
$s_{k+1} = s_k + 2 L \sum_i \beta_i q_i(z_k) + \|d_k\|^2$. For $L = 2$ the step
and the clock do not involve $\rho$ at all ($\rho^{L-2} = 1$), so $s$ is only
recomputed at chunk ends. The driver renormalizes ($z \leftarrow z/\|z\|$,
$\log a \leftarrow \log a + \log\|z\|$) once per chunk, at fixed global steps.
"""

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

RECORD_FIELDS = (
    "t",
    "t_exact",
    "eta",
    "eta_estimate",
    "log_rho",
    "log_loss",
    "margin",
    "smoothed",
    "train_error",
    "v_norm",
    "xi_norm",
    "e_norm",
)
_NO_STEP = -1


@dataclasses.dataclass(frozen=True)
class Config:
    """Static description of one compiled engine (hashable, a jit static arg)."""

    model: Any
    loss: Any
    n: int
    batch_size: int
    sampling: str
    step_rule: str
    exact_clock: bool
    capacity: int

    @property
    def full_pass(self) -> bool:
        """Whether every step needs the margins of all samples."""
        return (
            self.exact_clock or self.step_rule != "constant" or self.sampling == "full"
        )


class Consts(NamedTuple):
    """Dynamic inputs that do not change along a run."""

    X: jax.Array
    y: jax.Array
    log_step: jax.Array
    log_max_step: jax.Array
    key: jax.Array
    dt: jax.Array


class State(NamedTuple):
    """Everything that determines the rest of a run (saved in checkpoints)."""

    z: tuple
    log_a: jax.Array
    s: jax.Array
    k: jax.Array
    t: jax.Array
    t_exact: jax.Array
    next_t: jax.Array


class Transition(NamedTuple):
    d: tuple
    s_next: jax.Array
    log_alpha: jax.Array
    log_eta_estimate: jax.Array
    log_eta: jax.Array
    min_q: jax.Array


def _tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(a, b, strict=True))


def _tree_axpy(c, x, y):
    return tuple(c * xi + yi for xi, yi in zip(x, y, strict=True))


def _tree_scale(c, x):
    return tuple(c * xi for xi in x)


def _margins(cfg: Config, z, X, y):
    return y * cfg.model.apply(z, X)


def permutation(key, epoch, n):
    """The sample order of one epoch for `sampling="reshuffle"`."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _epoch_perm(cfg: Config, consts: Consts, k):
    """The permutation in use at step `k` (an empty placeholder unless reshuffling,
    so that the other samplings never pay for a shuffle)."""
    if cfg.sampling != "reshuffle":
        return jnp.zeros((0,), jnp.int32)
    per_epoch = max(cfg.n // cfg.batch_size, 1)
    return permutation(consts.key, k // per_epoch, cfg.n)


def _current_perm(cfg: Config, consts: Consts, k, perm):
    """The permutation for step `k`: a fresh one at each epoch start when
    reshuffling, `perm` otherwise."""
    if cfg.sampling != "reshuffle":
        return perm
    per_epoch = max(cfg.n // cfg.batch_size, 1)
    return jax.lax.cond(
        k % per_epoch == 0, lambda: _epoch_perm(cfg, consts, k), lambda: perm
    )


def _batch(cfg: Config, consts: Consts, k, perm):
    if cfg.sampling == "full":
        return consts.X, consts.y
    if cfg.sampling == "iid":
        step_key = jax.random.fold_in(consts.key, k)
        idx = jax.random.randint(step_key, (cfg.batch_size,), 0, cfg.n)
    else:
        per_epoch = cfg.n // cfg.batch_size
        start = (k % per_epoch) * cfg.batch_size
        idx = jax.lax.dynamic_slice(perm, (start,), (cfg.batch_size,))
    return consts.X[idx], consts.y[idx]


def transition(cfg: Config, consts: Consts, state: State, perm) -> Transition:
    """One SGD step from `state`: the increment $d_k$ of $z$ and its clock."""
    L = cfg.model.degree
    log_n = math.log(cfg.n)
    log_s = jnp.log(state.s)
    log_rho = state.log_a + 0.5 * log_s
    scale_L = jnp.exp(L * state.log_a)
    Xb, yb = _batch(cfg, consts, state.k, perm)

    def batch_margins(z):
        return _margins(cfg, z, Xb, yb)

    qb, pullback = jax.vjp(batch_margins, state.z)
    log_wb = cfg.loss.log_weight(scale_L * qb)

    # --- full-batch quantities: W_k, R(theta_k), min_i q_i (when needed) ---
    if cfg.sampling == "full":
        q_all, log_w_all = qb, log_wb
    elif cfg.full_pass:
        q_all = _margins(cfg, state.z, consts.X, consts.y)
        log_w_all = cfg.loss.log_weight(scale_L * q_all)
    if cfg.full_pass:
        log_W = logsumexp(log_w_all)
        min_q = jnp.min(q_all)
    else:
        log_W = jnp.nan
        min_q = jnp.nan

    # --- step rule: log alpha_k ---
    if cfg.step_rule == "constant":
        log_alpha = consts.log_step
    elif cfg.step_rule == "loss_scaled":
        log_R = logsumexp(cfg.loss.log_value(scale_L * q_all)) - log_n
        log_alpha = jnp.minimum(consts.log_step - log_R, consts.log_max_step)
    else:
        log_alpha = consts.log_step + log_n - (L - 2) * log_rho - log_W

    # --- increment of z, its norm through Euler's identity, and the clock ---
    log_beta = log_alpha + (L - 2) * state.log_a + log_wb - math.log(len(qb))
    beta = jnp.exp(log_beta)
    (d,) = pullback(beta)
    if L == 2:
        s_next = state.s  # rho^(L-2) = 1: the norm is only needed at chunk ends
    else:
        s_next = state.s + 2.0 * L * jnp.dot(beta, qb) + _tree_dot(d, d)
    log_eta_estimate = logsumexp(log_beta) + 0.5 * (L - 2) * log_s
    log_eta = log_alpha + (L - 2) * log_rho + log_W - log_n
    return Transition(d, s_next, log_alpha, log_eta_estimate, log_eta, min_q)


def advance(cfg: Config, state: State, tr: Transition) -> State:
    """Apply a transition: $z_{k+1} = z_k + d_k$ and the clocks."""
    eta_exact = jnp.exp(tr.log_eta) if cfg.full_pass else jnp.nan
    return state._replace(
        z=tuple(a + b for a, b in zip(state.z, tr.d, strict=True)),
        s=tr.s_next,
        k=state.k + 1,
        t=state.t + jnp.exp(tr.log_eta_estimate),
        t_exact=state.t_exact + eta_exact,
    )


def _log_expm1_of_exp(log_S):
    """$\\log(\\exp(S) - 1)$ from $\\log S$, accurate when $S$ underflows."""
    S = jnp.exp(jnp.minimum(log_S, 700.0))
    large = jnp.log(jnp.expm1(jnp.maximum(S, 1e-300)))
    return jnp.where(log_S < -30.0, log_S + 0.5 * jnp.exp(log_S), large)


def record(cfg: Config, consts: Consts, state: State, tr: Transition) -> dict:
    """The recorded quantities at step $k$, from the state and its transition."""
    L = cfg.model.degree
    n = cfg.n
    s_exact = _tree_dot(state.z, state.z)
    r = jnp.sqrt(s_exact)
    u = _tree_scale(1.0 / r, state.z)
    log_rho = state.log_a + 0.5 * jnp.log(s_exact)
    inv_rho_L = jnp.exp(-L * log_rho)

    def all_margins(v):
        return _margins(cfg, v, consts.X, consts.y)

    q, pullback = jax.vjp(all_margins, u)
    q_theta = jnp.exp(L * log_rho) * q
    log_w = cfg.loss.log_weight(q_theta)
    log_W = logsumexp(log_w)
    lam = jnp.exp(log_w - log_W)
    log_values = cfg.loss.log_value(q_theta)
    log_sum_values = logsumexp(log_values)
    if cfg.loss.name == "exponential":
        smoothed = -log_sum_values * inv_rho_L
    else:
        smoothed = -_log_expm1_of_exp(log_sum_values) * inv_rho_L

    # --- decomposition u_{k+1} = u_k + eta_k (v_k + xi_k + e_k) ---
    (mean_dir,) = pullback(lam)
    v = _tree_axpy(-_tree_dot(u, mean_dir), u, mean_dir)
    log_eta = tr.log_alpha + (L - 2) * log_rho + log_W - math.log(n)
    eta = jnp.exp(log_eta)
    step_u = _tree_scale(1.0 / r, tr.d)
    g_tangent = _tree_scale(1.0 / eta, _tree_axpy(-_tree_dot(u, step_u), u, step_u))
    xi = _tree_axpy(-1.0, v, g_tangent)
    z_next = tuple(a + b for a, b in zip(state.z, tr.d, strict=True))
    u_next = _tree_scale(1.0 / jnp.sqrt(_tree_dot(z_next, z_next)), z_next)
    moved = _tree_scale(1.0 / eta, _tree_axpy(-1.0, u, u_next))
    e = _tree_axpy(-1.0, g_tangent, moved)

    return {
        "k": state.k,
        "t": state.t,
        "t_exact": state.t_exact if cfg.full_pass else jnp.nan,
        "eta": eta,
        "eta_estimate": jnp.exp(tr.log_eta_estimate),
        "log_rho": log_rho,
        "u": cfg.model.ravel(u),
        "log_loss": log_sum_values - math.log(n),
        "margin": jnp.min(q),
        "smoothed": smoothed,
        "train_error": jnp.mean((q <= 0.0).astype(q.dtype)),
        "v_norm": jnp.sqrt(_tree_dot(v, v)),
        "xi_norm": jnp.sqrt(_tree_dot(xi, xi)),
        "e_norm": jnp.sqrt(_tree_dot(e, e)),
    }


def _empty_buffers(cfg: Config, dtype):
    p = cfg.model.num_params
    buffers = {name: jnp.zeros((cfg.capacity,), dtype) for name in RECORD_FIELDS}
    buffers["k"] = jnp.zeros((cfg.capacity,), jnp.int64)
    buffers["u"] = jnp.zeros((cfg.capacity, p), dtype)
    return buffers


class ChunkOut(NamedTuple):
    state: State
    records: dict
    num_records: jax.Array
    bad_step: jax.Array
    late_step: jax.Array
    log_loss: jax.Array
    min_q: jax.Array
    moved: jax.Array


def canonical_state(state: State) -> State:
    """`state` with fixed, strongly typed dtypes (float64, int64).

    The compiled functions are cached on the types of their arguments, and a
    weakly typed scalar (from a Python number) is a different type from the
    float64 array a chunk returns: without this every new kind of caller would
    compile the engine again.
    """
    f64, i64 = jnp.float64, jnp.int64
    return State(
        z=tuple(jnp.asarray(a, f64) for a in state.z),
        log_a=jnp.asarray(state.log_a, f64),
        s=jnp.asarray(state.s, f64),
        k=jnp.asarray(state.k, i64),
        t=jnp.asarray(state.t, f64),
        t_exact=jnp.asarray(state.t_exact, f64),
        next_t=jnp.asarray(state.next_t, f64),
    )


def run_chunk(cfg: Config, consts: Consts, state: State, k_stop, schedule, use_dt):
    """Steps from `state.k` to `k_stop` (or until the record buffer is full).

    `schedule` holds the next scheduled record steps in increasing order (padded
    with a step that is never reached); a record is also taken whenever the
    estimated clock passes `state.next_t` and `use_dt` is set. The loop runs
    plain steps between records, so a record costs nothing until it is due.
    With a full pass at every step, `late_step` is the first step of the chunk
    with every sample classified.

    One compilation serves every call with the same `cfg` and data shapes: the
    other arguments are converted to fixed dtypes before the compiled call.
    """
    return _run_chunk(
        cfg,
        consts,
        canonical_state(state),
        jnp.asarray(k_stop, jnp.int64),
        jnp.asarray(schedule, jnp.int64),
        jnp.asarray(use_dt, jnp.bool_),
    )


@functools.partial(jax.jit, static_argnums=0)
def _run_chunk(cfg: Config, consts: Consts, state: State, k_stop, schedule, use_dt):
    minus_one = jnp.asarray(_NO_STEP, jnp.int64)
    zero = jnp.asarray(0, jnp.int64)

    def clock_due(state):
        return use_dt & (state.t >= state.next_t)

    # --- the inner loop: plain steps until a record is due ---
    def step_going(carry):
        state, _, _, k_next = carry
        return (state.k < k_next) & jnp.isfinite(state.t) & ~clock_due(state)

    def step(carry):
        state, perm, late_step, k_next = carry
        perm = _current_perm(cfg, consts, state.k, perm)
        tr = transition(cfg, consts, state, perm)
        if cfg.full_pass:
            late = tr.min_q > 0
            late_step = jnp.where(late & (late_step < 0), state.k, late_step)
        return advance(cfg, state, tr), perm, late_step, k_next

    # --- the outer loop: one record (when due), then steps up to the next ---
    def keep_going(carry):
        state, _, num_records, _, _ = carry
        go = (state.k < k_stop) & (num_records < cfg.capacity)
        return go & jnp.isfinite(state.t)

    def segment(carry):
        state, buffers, num_records, ptr, late_step = carry
        on_schedule = state.k == schedule[ptr]
        on_clock = clock_due(state)

        def write(buffers):
            tr = transition(cfg, consts, state, _epoch_perm(cfg, consts, state.k))
            values = record(cfg, consts, state, tr)
            return {
                name: buffers[name].at[num_records].set(values[name])
                for name in buffers
            }

        take = on_schedule | on_clock
        buffers = jax.lax.cond(take, write, lambda b: b, buffers)
        num_records = num_records + take.astype(num_records.dtype)
        ptr = ptr + on_schedule.astype(ptr.dtype)
        next_t = jnp.where(
            on_clock, (jnp.floor(state.t / consts.dt) + 1.0) * consts.dt, state.next_t
        )
        state = state._replace(next_t=next_t)
        k_next = jnp.minimum(schedule[ptr], k_stop)
        inner = (state, _epoch_perm(cfg, consts, state.k), late_step, k_next)
        state, _, late_step, _ = jax.lax.while_loop(step_going, step, inner)
        return state, buffers, num_records, ptr, late_step

    buffers = _empty_buffers(cfg, state.log_a.dtype)
    carry = (state, buffers, zero, zero, minus_one)
    carry = jax.lax.while_loop(keep_going, segment, carry)
    start = state
    state, buffers, num_records, _, late_step = carry
    moved = jnp.any(
        jnp.stack([jnp.any(a != b) for a, b in zip(state.z, start.z, strict=True)])
    )
    bad_step = jnp.where(jnp.isfinite(state.t), minus_one, state.k - 1)

    # --- the loss and the smallest margin where the chunk ended ---
    q = _margins(cfg, state.z, consts.X, consts.y)
    q_theta = jnp.exp(cfg.model.degree * state.log_a) * q
    log_loss = logsumexp(cfg.loss.log_value(q_theta)) - math.log(cfg.n)
    return ChunkOut(
        state, buffers, num_records, bad_step, late_step, log_loss, jnp.min(q), moved
    )


class LocateOut(NamedTuple):
    late_step: jax.Array
    saved: State


def locate_chunk(cfg: Config, consts: Consts, state: State, k_stop, stride):
    """Searches $[state.k, k_{stop})$ for the first classified step.

    Classification is checked every `stride` steps (counted from `state.k`),
    or at every step when every step has a full pass anyway. The search stops
    at the first classified step found (`late_step`, or -1 for none) and
    returns in `saved` the state at the last unclassified check before it (the
    start of a finer search). Nothing is recorded; `stride` is a traced value,
    so every stride shares one compilation.
    """
    return _locate_chunk(
        cfg,
        consts,
        canonical_state(state),
        jnp.asarray(k_stop, jnp.int64),
        jnp.asarray(stride, jnp.int64),
    )


@functools.partial(jax.jit, static_argnums=0)
def _locate_chunk(cfg: Config, consts: Consts, state: State, k_stop, stride):
    k0 = state.k

    def going(carry):
        state, _, late_step, _ = carry
        return (state.k < k_stop) & jnp.isfinite(state.t) & (late_step < 0)

    def step(carry):
        state, perm, late_step, saved = carry
        perm = _current_perm(cfg, consts, state.k, perm)
        tr = transition(cfg, consts, state, perm)
        if cfg.full_pass:
            late = tr.min_q > 0
        else:
            check = (state.k - k0) % stride == 0

            def classified():
                return jnp.min(_margins(cfg, state.z, consts.X, consts.y)) > 0

            late = jax.lax.cond(check, classified, lambda: jnp.asarray(False))
            saved = jax.lax.cond(check & ~late, lambda: state, lambda: saved)
        late_step = jnp.where(late, state.k, late_step)
        # stop where the classified state is, without stepping past it
        new = jax.lax.cond(late, lambda: state, lambda: advance(cfg, state, tr))
        return new, perm, late_step, saved

    minus_one = jnp.asarray(_NO_STEP, jnp.int64)
    carry = (state, _epoch_perm(cfg, consts, state.k), minus_one, state)
    _, _, late_step, saved = jax.lax.while_loop(going, step, carry)
    return LocateOut(late_step, saved)


@jax.jit
def _renormalize(state: State) -> State:
    s_exact = _tree_dot(state.z, state.z)
    return state._replace(
        z=_tree_scale(1.0 / jnp.sqrt(s_exact), state.z),
        log_a=state.log_a + 0.5 * jnp.log(s_exact),
        s=jnp.ones_like(state.s),
    )


def renormalize(state: State) -> State:
    """$z \\leftarrow z/\\|z\\|$, $\\log a \\leftarrow \\log a + \\log\\|z\\|$."""
    return _renormalize(canonical_state(state))
