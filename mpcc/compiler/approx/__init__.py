"""Secure smooth functions, composed at compile time from the priced IR primitives.

One module per family: `core` (stacking, comparison bits, Chebyshev-fitted polynomials,
piecewise selection), `exp`, `recip` (reciprocal, 1/sqrt, sqrt, log, division), `activations`
(sigmoid, tanh, erf, GELU, SiLU, hard sigmoid/swish), `reduce` (sum, mean, max over any
axes) and `norm` (softmax, log-softmax, layer and L2 normalisation). Each module states its
input range, error bound and cost; `tests/test_approx.py` checks the bounds over 10^6 points,
and docs/ops.md ("Smooth functions") tabulates them.
"""

from mpcc.compiler.approx.activations import (
    erf,
    gelu,
    gelu_tanh,
    hard_sigmoid,
    hard_swish,
    sigmoid,
    silu,
    tanh,
)
from mpcc.compiler.approx.core import Emitter, ProgramEmitter, inner
from mpcc.compiler.approx.exp import exp, exp_signed
from mpcc.compiler.approx.norm import l2_normalise, logsoftmax, normalise, softmax
from mpcc.compiler.approx.recip import divide, log, reciprocal, rsqrt, sqrt
from mpcc.compiler.approx.reduce import reduce_max, reduce_mean, reduce_sum

__all__ = [
    "Emitter",
    "ProgramEmitter",
    "divide",
    "erf",
    "exp",
    "exp_signed",
    "gelu",
    "gelu_tanh",
    "hard_sigmoid",
    "hard_swish",
    "inner",
    "l2_normalise",
    "log",
    "logsoftmax",
    "normalise",
    "reciprocal",
    "reduce_max",
    "reduce_mean",
    "reduce_sum",
    "rsqrt",
    "sigmoid",
    "silu",
    "softmax",
    "sqrt",
    "tanh",
]
