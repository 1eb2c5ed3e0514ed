"""The graph passes in the order `run_all` runs them: legalization, then the rewrites.

After `run_all` the graph holds the ops of the contract in `mpcc.compiler.legalize`, and no
Identity, Dropout, BatchNormalization, Softmax or LogSoftmax: what lowering takes.
"""

from __future__ import annotations

from collections.abc import Callable

from mpcc.compiler.blockers import Blocker, raise_if_any
from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize import legalize
from mpcc.compiler.rewrites import (
    drop_final_softmax,
    fold_affine_constants,
    fold_avgpool,
    fold_batchnorm,
    merge_reshapes,
    merge_transposes,
    remove_identity,
    swap_relu_maxpool,
)

PASSES: tuple[Callable[[Graph], None], ...] = (
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


def run_all(g: Graph, blockers: list[Blocker] | None = None) -> Graph:
    """Run every pass in order; return the same (now legalized and simplified) graph.

    With `blockers` (what earlier checks found), legalization adds what it finds and one
    ModelError reports them all before the rewrites run."""
    legalize(g, blockers)
    if blockers is not None:
        raise_if_any(blockers)
    for p in PASSES[1:]:
        p(g)
    g.prune()
    return g
