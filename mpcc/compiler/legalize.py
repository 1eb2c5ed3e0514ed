"""Legalization: normalize an ONNX graph into the form the rewrites and lowering expect.

After `legalize` every node is one of the ops below, with all attributes present (defaults
filled, auto_pad resolved, negative axes normalized); int lists are tuples of ints.

- Conv [x, W, (B)] over 1-3 spatial axes: kernel_shape, strides, pads (begins, then ends:
  top, left, bottom, right in 2-D), dilations, group.
- ConvTranspose [x, W, (B)] over 1-3 spatial axes: kernel_shape, strides, pads (explicit),
  dilations, output_padding, group.
- MatMul [x, W, (B)]: W constant [K, N], or a stack [..., K, N] (x of rank >= 2, batch axes
  broadcast as numpy does); B constant [N].
- MatMulSS [a, b]: the product of two computed tensors (MatMul, or Gemm whose B is
  computed), both of rank >= 2, leading axes broadcast as numpy's matmul does.
- Add / Sub / Mul [a, b]: both computed, or a constant second operand (Add, Mul) broadcasting
  to the first one's shape; Sub keeps a constant only as its first operand.
- Neg; Relu; LeakyRelu (alpha); Clip (min, max floats, +-inf when absent); PRelu [x, slope].
- MaxPool (kernel_shape, strides, pads, dilations, ceil_mode); AveragePool and SumPool
  (kernel_shape, strides, pads, count_include_pad, ceil_mode; dilations only when dilated, an
  opset-19 attribute), all over 1-3 spatial axes; GlobalAveragePool; GlobalMaxPool
  (also from ReduceMean / ReduceMax over the spatial axes of a 4-D image; ReduceSum there
  becomes a SumPool).
- The smooth-function ops in the form `mpcc.compiler.legalize_smooth` gives them (Reduce* over
  any axes, Softmax/LogSoftmax over any axes, LayerNormalization, Exp, Sigmoid, ...); Div by a
  computed tensor.
- Reshape (shape: static, no -1 or 0), Transpose (perm), Concat (axis >= 0; inputs may be
  constants), Pad (pads in ONNX order over all axes, value; mode only when not constant:
  reflect, edge or wrap).
- Gather [x] (axis, indices: flat non-negative ints, ishape: their shape): a computed tensor
  at constant indices. Tile [x] (reps). Expand becomes Reshape + Tile; Split becomes Slices.
- Slice (starts, ends, axes, steps): axes >= 0 in increasing order; starts and ends are
  non-negative and clamped like Python's slice with those bounds, except that with a negative
  step `end == -1` means "through index 0".
- Resize (index: the source index along each axis, nearest mode; also from Upsample).
- Left for the rewrites (`mpcc.compiler.rewrites`) to remove: Identity; Dropout (inference
  mode, one output); BatchNormalization (epsilon; one output); a Softmax or LogSoftmax that
  produces the model's output (through Reshapes at most) is dropped unless kept.

LSTM and GRU are unrolled first (`mpcc.compiler.recurrent`) into the ops above and Sigmoid,
Tanh (and Relu).

No Gemm, Flatten, Squeeze, Unsqueeze or Div by a constant remains; a Concat's inputs are all
computed. What cannot be brought into this form raises ModelError.

The rules live by op family: `legalize_linear`, `legalize_pool`, `legalize_elementwise`,
`legalize_movement`, `legalize_smooth` (helpers they share: `legalize_common`).
"""

from __future__ import annotations

from collections.abc import Callable

from mpcc.compiler import (
    legalize_elementwise,
    legalize_linear,
    legalize_movement,
    legalize_pool,
    legalize_smooth,
)
from mpcc.compiler.blockers import ATTRIBUTE, Blocker, raise_if_any
from mpcc.compiler.embedding import legalize_id_compare, one_hot_inputs
from mpcc.compiler.graph import Graph
from mpcc.compiler.recurrent import expand_recurrent
from mpcc.errors import ModelError


def legalize(g: Graph, blockers: list[Blocker] | None = None) -> None:
    """Fill attribute defaults, resolve auto_pad, move constant inputs to attributes, rewrite
    Gemm, Flatten/Squeeze/Unsqueeze, Div by a constant and Sub of a constant, and refuse what
    the compiler does not support (training-mode Dropout, Pow 3, ...).

    Every node is tried; what fails raises one ModelError listing all of them, or with a
    `blockers` list is appended to it. Nodes already in `blockers` are left alone."""
    found: list[Blocker] = []
    skip = {b.node for b in blockers or []}
    expand_recurrent(g)
    one_hot_inputs(g)
    for n in g.topo_nodes():
        if n not in g.nx:  # removed by an earlier rule (an id comparison's Not and Cast)
            continue
        rule = _LEGALIZE.get(g.op(n))
        if rule is None or n in skip:
            continue
        op = g.op(n)
        try:
            rule(g, n)
        except ModelError as e:
            found.append(Blocker(ATTRIBUTE, op, n, str(e)))
    if blockers is None:
        raise_if_any(found)
    else:
        blockers.extend(found)


_TRAILING = ("Reshape", "Identity", "Dropout", "Flatten", "Squeeze", "Unsqueeze")


def is_final(g: Graph, n: str) -> bool:
    """Whether node n's output is the model's output (through Reshape-like nodes at most)."""
    t = g.node(n)["outputs"][0]
    while t not in g.outputs or g.consumers(t):
        c = g.only_consumer(t)
        if c is None or g.op(c) not in _TRAILING:
            return False
        t = g.node(c)["outputs"][0]
    return True


_LEGALIZE: dict[str, Callable[[Graph, str], None]] = {
    **legalize_linear.RULES,
    **legalize_pool.RULES,
    **legalize_elementwise.RULES,
    **legalize_movement.RULES,
    "Equal": legalize_id_compare,
    **legalize_smooth.RULES,
}
