"""flowtools: late-stage dynamics of (stochastic) subgradient descent on
homogeneous networks.

Importing flowtools switches JAX to float64 (``jax_enable_x64``): every margin,
weight and direction in this package is computed in double precision unless a
function is explicitly asked for float32.
"""

import jax

jax.config.update("jax_enable_x64", True)

from flowtools import (  # noqa: E402
    data,
    fields,
    flow,
    losses,
    margins,
    models,
    reference,
    results,
    sgd,
    shadowing,
    simplex,
    teaching,
)
from flowtools.fields import MarginField  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MarginField",
    "__version__",
    "data",
    "fields",
    "flow",
    "losses",
    "margins",
    "models",
    "reference",
    "results",
    "sgd",
    "shadowing",
    "simplex",
    "teaching",
]
