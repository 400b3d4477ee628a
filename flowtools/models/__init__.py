"""Positively homogeneous predictors on parameter pytrees.

A model maps parameters $\\theta$ (a tuple of float64 arrays, one per layer) and a
batch of inputs $X$ (rows are flat samples) to scores $f(\\theta; x_i)$, with
$f(c\\theta; x) = c^L f(\\theta; x)$ for every $c > 0$. The degree $L$ is stored on
the model. Every ReLU here has a fixed autodiff value $s$ of $\\mathrm{ReLU}'(0)$
(`Model.relu0`), so that backpropagation is one conservative field for the
network (Bolte & Pauwels 2021) and keeps Euler's identity.
"""

from flowtools.models._activations import leaky_relu, relu
from flowtools.models._checks import (
    HomogeneityReport,
    NotHomogeneousError,
    check_homogeneous,
    check_start,
)
from flowtools.models._custom import custom
from flowtools.models._linear import deep_linear, diagonal, linear
from flowtools.models._model import Model
from flowtools.models._model import Params as Params
from flowtools.models._networks import cnn, mlp

__all__ = [
    "HomogeneityReport",
    "Model",
    "NotHomogeneousError",
    "check_homogeneous",
    "check_start",
    "cnn",
    "custom",
    "deep_linear",
    "diagonal",
    "leaky_relu",
    "linear",
    "mlp",
    "relu",
]
