r"""Conservative fields of minima and maxima of smooth pieces, and their selections.

Every field here follows one convention, the one the flow solver consumes: it is
the *ascent of a minimum of smooth pieces*, $F(t, x) = \min_j \psi_j(t, x)$. The
descent of a maximum $\max_j \phi_j$ is the ascent of $\min_j (-\phi_j)$, and the
field object does that sign flip itself.

The value of the field at $x$ is the convex hull of the gradients of the pieces in
the enlarged active set $I_\varepsilon(x) = \{j : \psi_j \le F + \varepsilon\}$,
projected onto the tangent space $P_x = I - x x^\top$ when the field lives on the
unit sphere. The hull is represented by a [`HullValue`][flowtools.fields.HullValue]
(generators and a mask), on which the minimum-norm element, the support function
and the distance to a vector are small quadratic programs on the simplex, solved by
[`flowtools.simplex`][flowtools.simplex].

Two fields are provided:

- [`PiecewiseField`][flowtools.fields.PiecewiseField]: user pieces on $\mathbb{R}^d$
  or on the sphere, for teaching and for users' own problems;
- [`MarginField`][flowtools.fields.MarginField]: the normalized margin
  $\bar g(u) = \min_i q_i(u)$ of a homogeneous model on the unit sphere.

Named selections (`"min-norm"`, `"softmin"`, `"autodiff"`, `"random"`, and any
registered with [`register_selection`][flowtools.fields.register_selection]) pick
one vector from the set, to drive an ODE solver; they live in
[`flowtools.fields.selections`][flowtools.fields.selections] and are reached through
`field.select`.

**References:** Bolte & Pauwels (2021), *Conservative set valued fields, automatic
differentiation, stochastic gradient methods and deep learning*, Math. Program.;
Lyu & Li (2020), *Gradient descent maximizes the margin of homogeneous neural
networks*, ICLR; Schechtman & Schreuder (2025), COLT.
"""

from flowtools.fields import selections
from flowtools.fields.hull import HullValue, Pieces
from flowtools.fields.margin import MarginField
from flowtools.fields.piecewise import PiecewiseField
from flowtools.fields.selections import (
    register_selection,
    select,
    selection_label,
    selection_names,
)

__all__ = [
    "Pieces",
    "HullValue",
    "PiecewiseField",
    "MarginField",
    "register_selection",
    "select",
    "selection_label",
    "selection_names",
    "selections",
]
