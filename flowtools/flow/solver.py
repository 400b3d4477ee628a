"""The linearized proximal Euler step as a diffrax solver, and its term.

The inclusion $\\dot u \\in D_S(u)$ (ascent of $F = \\min_j \\psi_j$) is stepped by
the linearized proximal (implicit) Euler step of THEORY section 3b:

$$d^* = \\arg\\max_d \\min_i \\big(\\psi_i + h \\langle g_i, d\\rangle\\big)
- \\tfrac{h}{2}\\lVert d\\rVert^2 = \\textstyle\\sum_i \\lambda_i g_i,$$

with $\\lambda$ the minimizer over the simplex of
$\\sum_i \\lambda_i \\psi_i + \\tfrac{h}{2}\\lVert\\sum_i \\lambda_i g_i\\rVert^2$, then
$u_1 = u_0 + h d^*$, renormalized on the sphere.

diffrax wraps every term before the solver sees it, so the solver reads the
pieces only through the public `vf` / `contr` / `prod` interface of
`PiecesTerm`.
"""

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float

from flowtools import simplex

__all__ = [
    "Track",
    "PiecesTerm",
    "ProximalEuler",
    "SphereProjected",
    "initial_track",
]


class Track(NamedTuple):
    """Running diagnostics carried beside the point $u$ in the solver state.

    They travel inside the state (not the solver's hidden state) so that stop
    events and saving can see them. All entries are float64 scalars.

    **Fields:**

    - `objective_prev`: $F$ at the start of the previous step.
    - `max_decrease`: largest decrease of $F$ between consecutive steps.
    - `num_decreases`: steps at which $F$ fell by more than `decrease_tol`.
    - `sign_flips`: steps at which some pre-activation changed sign.
    - `overflow_steps`: steps at which more pieces were within `eps` than the
      field keeps as candidates.
    - `qp_gap`: the largest certified gap of the step QPs.
    - `anchor_t`, `anchor_objective`: start of the current stagnation window.
    - `gain`: increase of $F$ over the last completed window ($+\\infty$ before).
    """

    objective_prev: Float[Array, ""]
    max_decrease: Float[Array, ""]
    num_decreases: Float[Array, ""]
    sign_flips: Float[Array, ""]
    overflow_steps: Float[Array, ""]
    qp_gap: Float[Array, ""]
    anchor_t: Float[Array, ""]
    anchor_objective: Float[Array, ""]
    gain: Float[Array, ""]


def initial_track(t0: Any, objective0: Any) -> Track:
    """The `Track` at the start of a solve, from $t_0$ and $F(t_0, u_0)$."""
    f = jnp.asarray(objective0, jnp.float64)
    zero = jnp.zeros((), jnp.float64)
    return Track(
        objective_prev=f,
        max_decrease=jnp.asarray(-jnp.inf, jnp.float64),
        num_decreases=zero,
        sign_flips=zero,
        overflow_steps=zero,
        qp_gap=zero,
        anchor_t=jnp.asarray(t0, jnp.float64),
        anchor_objective=f,
        gain=jnp.asarray(jnp.inf, jnp.float64),
    )


def _normalize(u: Float[Array, " p"]) -> Float[Array, " p"]:
    norm = jnp.sqrt(jnp.sum(u * u))
    return u / jnp.where(norm > 0, norm, 1.0)


def _candidates(values: Float[Array, " k"]) -> Bool[Array, " k"]:
    return jnp.isfinite(values)


def _proximal(vf: dict, h: Any) -> simplex.QPResult:
    return simplex.proximal_weights(
        vf["values"], vf["grads"], h, _candidates(vf["values"])
    )


class PiecesTerm(diffrax.AbstractTerm):
    """A diffrax term whose vector field is the list of smooth pieces.

    `vf(t, y, args)` returns a dictionary `values (k,)`, `grads (k, p)`, `mask
    (k,)`, `overflow ()` and `pattern (m,)` (the signs of the pre-activations
    when `pattern_fn` is given, else an empty array) at the point `y[0]`;
    `contr(t0, t1)` returns the step $h = t_1 - t_0$; `prod(vf, h)` returns the
    proximal increment $h d^*$ (zero on the `Track` part of the state).

    **Arguments:**

    - `field`: any field with `pieces(t, x) -> Pieces`.
    - `pattern_fn`: optional module or function `u -> Bool[Array, "m"]`.
    """

    field: Any
    pattern_fn: Any = None

    def vf(self, t, y, args) -> dict:
        u = y[0]
        pieces = self.field.pieces(t, u)
        if self.pattern_fn is None:
            pattern = jnp.zeros((0,), bool)
        else:
            pattern = jnp.ravel(self.pattern_fn(u))
        return dict(
            values=pieces.values,
            grads=pieces.grads,
            mask=pieces.mask,
            overflow=jnp.asarray(pieces.overflow),
            pattern=pattern,
        )

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        d = _proximal(vf, control).point
        zeros = jtu.tree_map(jnp.zeros_like, initial_track(0.0, 0.0))
        return (control * d, zeros)


class _LinearInterpolation(diffrax.AbstractLocalInterpolation):
    t0: Any
    t1: Any
    y0: Any
    y1: Any

    sphere: ClassVar[bool] = False

    def _point(self, t):
        span = self.t1 - self.t0
        s = jnp.where(span > 0, (t - self.t0) / jnp.where(span > 0, span, 1.0), 0.0)
        y = jtu.tree_map(lambda a, b: a + s * (b - a), self.y0, self.y1)
        if self.sphere:
            y = (_normalize(y[0]),) + tuple(y[1:])
        return y

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is None:
            return self._point(t0)
        return jtu.tree_map(lambda a, b: b - a, self._point(t0), self._point(t1))


class _ArcInterpolation(_LinearInterpolation):
    sphere: ClassVar[bool] = True


class ProximalEuler(diffrax.AbstractSolver):
    """Linearized proximal Euler step for $\\dot u \\in \\partial^c F(u)$, $F$ a
    minimum of smooth pieces (THEORY section 3b; Moreau-Jean time stepping).

    The state is the pair `(u, Track)`. The step reads the pieces at $(t_0,
    u_0)$ from a `PiecesTerm`, solves the simplex QP of
    `flowtools.simplex.proximal_weights` over every finite candidate row, and
    returns $u_1 = u_0 + h d^*$ (renormalized when `on_sphere`). Far from a kink
    it is explicit Euler on the lowest piece; on piecewise-linear pieces it
    lands exactly on a kink that it would overshoot and slides along it. Order 1,
    no error estimate: use it with `diffrax.StepTo` or `diffrax.ConstantStepSize`.
    Dense output is linear between steps, renormalized on the sphere (a point of
    the great-circle arc between the two steps).

    **Arguments:**

    - `on_sphere`: renormalize after every step.
    - `decrease_tol`: a decrease of $F$ between steps larger than this counts in
      `Track.num_decreases`.

    !!! warning

        Each piece is treated as smooth. On ReLU networks a piece (one sample's
        margin) has kinks of its own where a pre-activation changes sign; the
        step crosses those explicitly and may lower the margin by $O(h)$. The
        `Track` counts those steps; monotonicity holds only for pieces that are
        smooth (linear models, diagonal networks, the circle).
    """

    on_sphere: bool = eqx.field(static=True, default=True)
    decrease_tol: float = eqx.field(static=True, default=1e-12)

    term_structure: ClassVar = PiecesTerm

    @property
    def interpolation_cls(self):  # pyright: ignore
        return _ArcInterpolation if self.on_sphere else _LinearInterpolation

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)["pattern"]

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        u0, track = y0
        h = terms.contr(t0, t1)
        vf = terms.vf(t0, y0, args)

        # The proximal direction and the new point.
        qp = _proximal(vf, h)
        u1 = u0 + h * qp.point
        if self.on_sphere:
            u1 = _normalize(u1)

        # Diagnostics at the step's start (one step behind the new point).
        objective0 = jnp.min(
            jnp.where(_candidates(vf["values"]), vf["values"], jnp.inf)
        )
        decrease = track.objective_prev - objective0
        flipped = jnp.any(vf["pattern"] != solver_state)
        window_done = t0 - track.anchor_t >= args["window"]
        track1 = Track(
            objective_prev=objective0,
            max_decrease=jnp.maximum(track.max_decrease, decrease),
            num_decreases=track.num_decreases + (decrease > self.decrease_tol),
            sign_flips=track.sign_flips + flipped,
            overflow_steps=track.overflow_steps + vf["overflow"],
            qp_gap=jnp.maximum(track.qp_gap, qp.gap),
            anchor_t=jnp.where(window_done, t0, track.anchor_t),
            anchor_objective=jnp.where(window_done, objective0, track.anchor_objective),
            gain=jnp.where(
                window_done, objective0 - track.anchor_objective, track.gain
            ),
        )

        y1 = (u1, track1)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, vf["pattern"], diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class SphereProjected(diffrax.AbstractWrappedSolver):
    """Wraps an explicit diffrax solver and renormalizes the point after each step.

    The state may be a point `u` or a tuple whose first entry is `u` (as in the
    mean-field flow `(u, log_rho)`); only `u` is renormalized. The wrapped
    solver's error estimate and dense output are passed through unchanged, so
    points saved between steps must be renormalized afterwards.

    **Arguments:**

    - `solver`: the wrapped solver (`diffrax.Euler()`, `diffrax.Tsit5()`, ...).
    """

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, error, dense_info, state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        if isinstance(y1, tuple):
            y1 = (_normalize(y1[0]),) + tuple(y1[1:])
        else:
            y1 = _normalize(y1)
        return y1, error, dense_info, state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def make_pattern_fn(field: Any) -> Callable | None:
    """Pre-activation sign pattern $u \\mapsto (z_{ij}(u) > 0)$ for margin fields
    whose model exposes `preactivations` (every hidden layer), else `None`."""
    model = getattr(field, "model", None)
    if model is None or getattr(model, "preact_fn", None) is None:
        return None
    X = _field_inputs(field)
    if X is None:
        return None
    return _Pattern(model, X)


class _Pattern(eqx.Module):
    model: Any = eqx.field(static=True)
    X: Array

    def __call__(self, u):
        preacts = self.model.preactivations(u, self.X)
        return jnp.concatenate([jnp.ravel(z > 0) for z in preacts])


def _field_inputs(field: Any):
    for name in ("X", "inputs"):
        X = getattr(field, name, None)
        if X is not None:
            return jnp.asarray(X)
    ds = getattr(field, "ds", None) or getattr(field, "data", None)
    if ds is not None and getattr(ds, "X", None) is not None:
        return jnp.asarray(ds.X)
    return None
