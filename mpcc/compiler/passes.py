"""The graph passes in the order `run_all` runs them: legalization, then the rewrites.

After `run_all` the graph holds the ops of the contract in `mpcc.compiler.legalize`, and no
Identity, Dropout or BatchNormalization, and a final Softmax/LogSoftmax only with
`keep_softmax`: what lowering takes.
"""

from __future__ import annotations

from collections.abc import Callable

from mpcc.compiler.blockers import Blocker, raise_if_any
from mpcc.compiler.fusions import fuse_all
from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize import legalize
from mpcc.compiler.rewrites import (
    drop_final_softmax,
    merge_reshapes,
    merge_transposes,
    remove_identity,
    swap_relu_maxpool,
)
from mpcc.compiler.rewrites_affine import fold_affine_constants, fold_avgpool, fold_batchnorm

PASSES: tuple[Callable[[Graph], None], ...] = (
    fuse_all,
    legalize,
    remove_identity,
    merge_reshapes,
    drop_final_softmax,
    fold_batchnorm,
    fold_affine_constants,
    merge_transposes,
    swap_relu_maxpool,
    fold_avgpool,
)


def run_all(g: Graph, blockers: list[Blocker] | None = None, keep_softmax: bool = False) -> Graph:
    """Run every pass in order; return the same (now legalized and simplified) graph.

    With `blockers` (what earlier checks found), legalization adds what it finds and one
    ModelError reports them all before the rewrites run. With `keep_softmax` a final
    Softmax/LogSoftmax is computed securely, not dropped."""
    for p in PASSES:
        if keep_softmax and p is drop_final_softmax:
            continue
        if p is legalize:
            legalize(g, blockers)
            if blockers is not None:
                raise_if_any(blockers)
        else:
            p(g)
    g.prune()
    return g
