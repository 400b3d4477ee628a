r"""Normalized SGD in polar form, with the flow clock.

SGD on a positively homogeneous network of degree $L$, written in polar form
$\theta = \rho u$, is an Euler-like scheme for the margin-ascent inclusion on the
sphere (THEORY.md, section 4):

$$u_{k+1} = \frac{u_k + \eta_k g_k}{\|u_k + \eta_k g_k\|}, \qquad
\eta_k = \alpha \rho_k^{L-2} W_k / n, \qquad W_k = \sum_i w_i(\theta_k).$$

`run` computes exactly these iterates, with the weights in log space, and
records them on the flow clock $t_k = \sum_{j<k} \eta_j$.

Reference: Schechtman & Schreuder (2025), *Late-stage dynamics of SGD on
homogeneous networks*; Lyu & Li (2020), *Gradient descent maximizes the margin
of homogeneous neural networks*.
"""

from flowtools.sgd._run import run
from flowtools.sgd._trace import Record, SGDDivergenceError, SGDTrace, Warmup

__all__ = ["Record", "SGDDivergenceError", "SGDTrace", "Warmup", "run"]
