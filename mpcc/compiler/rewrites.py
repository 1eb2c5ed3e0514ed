"""The algebraic rewrites: exact simplifications of a legalized graph, as declared rules.

Each pass below applies a few `mpcc.compiler.rewriter` rules until none applies. They keep
the contract of `mpcc.compiler.legalize` and remove the ops it leaves for them (Identity,
Dropout, a final Softmax; BatchNormalization folds away in `mpcc.compiler.rewrites_affine`,
with the other rewrites into a Conv or MatMul). Where a check turns down a match, the reason
is noted in `g.notes`.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize import is_final
from mpcc.compiler.rewriter import Node, Op, Rule, Through, apply


def _bypass(g: Graph, n: Node) -> None:
    g.bypass(n.name)


# ---- Identity, Dropout, Reshape ------------------------------------------------------------

REMOVE_IDENTITY = Rule(Op("Identity|Dropout", name="n"), rewrite=_bypass)


def remove_identity(g: Graph) -> None:
    """Remove Identity and (inference-mode) Dropout nodes."""
    apply(g, REMOVE_IDENTITY)


def _merge_reshapes(g: Graph, first: Node, second: Node) -> None:
    g.set_inputs(second.name, [first.x])
    g.remove_node(first.name)
    g.shapes.pop(first.y)


MERGE_RESHAPES = Rule(
    Op("Reshape", Op("Reshape", name="first"), name="second"), rewrite=_merge_reshapes
)
DROP_NOOP_RESHAPE = Rule(
    Op("Reshape", name="n", where=lambda g, n: g.shape(n.x) == g.shape(n.y)), rewrite=_bypass
)


def merge_reshapes(g: Graph) -> None:
    """Merge chains of Reshapes into one and drop Reshapes that keep the shape."""
    apply(g, MERGE_RESHAPES, DROP_NOOP_RESHAPE)


# ---- final Softmax -------------------------------------------------------------------------


def _drop_softmax(g: Graph, n: Node) -> str:
    g.bypass(n.name)
    return f"dropped final {n.op} {n.name!r}: the plan returns logits (argmax is unchanged)"


DROP_FINAL_SOFTMAX = Rule(
    Op("Softmax|LogSoftmax", name="n", where=lambda g, n: is_final(g, n.name)),
    rewrite=_drop_softmax,
)


def drop_final_softmax(g: Graph) -> None:
    """Drop a final Softmax/LogSoftmax, so the plan returns logits (others are computed)."""
    apply(g, DROP_FINAL_SOFTMAX)


# ---- Transposes ----------------------------------------------------------------------------

# Ops that act on each element alone (Pad: given its pads per axis), so that they commute
# with any Transpose.
_LAYOUT_FREE = ("Relu", "LeakyRelu", "Clip", "Neg", "Pad")


def _merge_transposes(g: Graph, first: Node, path: tuple[Node, ...], second: Node) -> None:
    """Run `path` on first's input instead, then one Transpose doing both permutations."""
    perm = first.attrs["perm"]
    back = tuple(int(i) for i in np.argsort(perm))  # axis j of the input is axis back[j] after
    t = first.x
    for n in path:
        g.set_inputs(n.name, [t])
        g.shapes[n.y] = tuple(g.shape(n.y)[i] for i in back)
        if n.op == "Pad":
            pads, rank = n.attrs["pads"], len(perm)
            g.node(n.name)["attrs"] = {
                **n.attrs,
                "pads": tuple(pads[i] for i in back) + tuple(pads[rank + i] for i in back),
            }
        t = n.y
    g.set_inputs(second.name, [t])
    g.node(second.name)["attrs"] = {"perm": tuple(perm[i] for i in second.attrs["perm"])}
    if not g.consumers(first.y) and first.y not in g.outputs:
        g.remove_node(first.name)
        g.shapes.pop(first.y, None)


def _no_op_transpose(g: Graph, n: Node) -> bool:
    """A Transpose keeping the axes in order, which can go without renaming a graph output."""
    if n.attrs["perm"] != tuple(range(len(n.attrs["perm"]))):
        return False
    takes_output_name = g.producer(n.x) is not None and g.only_consumer(n.x) == n.name
    return n.y not in g.outputs or takes_output_name


MERGE_TRANSPOSES = Rule(
    Op(
        "Transpose",
        Through(
            lambda g, n: n.op in _LAYOUT_FREE,
            Op("Transpose", name="first", shared=True),
            name="path",
        ),
        name="second",
    ),
    rewrite=_merge_transposes,
)
DROP_NOOP_TRANSPOSE = Rule(Op("Transpose", name="n", where=_no_op_transpose), rewrite=_bypass)


def merge_transposes(g: Graph) -> None:
    """Merge each Transpose into the one before it, across elementwise ops and Pad, and drop
    the Transposes that are then no-ops: inverse pairs cancel (channels-last models)."""
    apply(g, MERGE_TRANSPOSES, DROP_NOOP_TRANSPOSE)


# ---- ReLU after MaxPool --------------------------------------------------------------------


def _commutes_with_max(g: Graph, act: Node, pool: Node) -> str | None:
    if act.op == "LeakyRelu" and act.attrs["alpha"] < 0:
        return (
            f"kept LeakyRelu {act.name!r} before MaxPool {pool.name!r}: alpha < 0 does not "
            "commute with max"
        )
    return None


def _pool_first(g: Graph, act: Node, pool: Node) -> str:
    mid = g.new_tensor(f"{pool.y}_pooled", g.shape(pool.y))
    g.set_inputs(pool.name, [act.x])
    g.set_outputs(pool.name, [mid])
    g.set_inputs(act.name, [mid])
    g.set_outputs(act.name, [pool.y])
    g.shapes.pop(act.y)
    ratio = np.prod(g.shape(act.x)) / np.prod(g.shape(pool.y))
    return (
        f"moved {act.op} {act.name!r} after MaxPool {pool.name!r} (they commute; "
        f"it now runs on {ratio:.3g}x fewer elements)"
    )


SWAP_RELU_MAXPOOL = Rule(
    Op("MaxPool", Op("Relu|LeakyRelu|Clip", name="act"), name="pool"),
    check=_commutes_with_max,
    rewrite=_pool_first,
)


def swap_relu_maxpool(g: Graph) -> None:
    """Rewrite Relu -> MaxPool as MaxPool -> Relu (they commute; ReLU then sees fewer values).

    Also applies to LeakyRelu (alpha >= 0) and Clip: any non-decreasing function commutes
    with max.
    """
    apply(g, SWAP_RELU_MAXPOOL)
