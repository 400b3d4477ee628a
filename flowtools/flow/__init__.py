"""Margin flows on the sphere: the inclusion solver and smooth-selection flows.

`integrate` steps the margin-ascent inclusion $\\dot u \\in D_S(u)$ with the
linearized proximal Euler step of THEORY section 3b, written as a diffrax solver
(`ProximalEuler`) over a term exposing the pieces (`PiecesTerm`); named
selections give explicit or smooth ODEs instead; `integrate_mean_field` gives the
mean-field flow of normalized gradient descent in $(u, \\log\\rho)$.
"""

from flowtools.flow.driver import (
    SELECTIONS,
    STOP_REASONS,
    FlowError,
    FlowSolution,
    FlowStats,
    Stop,
    integrate,
    integrate_batch,
    integrate_mean_field,
    step_grid,
)
from flowtools.flow.solver import PiecesTerm, ProximalEuler, SphereProjected, Track

__all__ = [
    "FlowError",
    "FlowSolution",
    "FlowStats",
    "PiecesTerm",
    "ProximalEuler",
    "SELECTIONS",
    "STOP_REASONS",
    "SphereProjected",
    "Stop",
    "Track",
    "integrate",
    "integrate_batch",
    "integrate_mean_field",
    "step_grid",
]
