"""Row rules: does an instruction keep the samples of its batch axis (dim 0) apart?

Each op's `rows` rule returns why it mixes rows, or None. `mpcc.compiler.batching` runs them
over a whole plan to decide whether requests of several clients may share one query.
"""

from __future__ import annotations

from collections.abc import Iterable

from mpcc.compiler.ops.base import Site


def same_rows(site: Site) -> str | None:
    """Every input has the output's rank and batch size: row i in, row i out."""
    out = site.out.shape
    for a in site.ins.args:
        shape = site.prog.value(a).shape
        if len(shape) != len(out) or not out or shape[0] != out[0]:
            return f"input %{a} {list(shape)} and output {list(out)} differ on the batch axis"
    return None


def batch_axis_kept(site: Site) -> str | None:
    """The batch axis is unchanged (the rank may change: a row-major reshape keeps rows)."""
    out = site.out.shape
    for a in site.ins.args:
        shape = site.prog.value(a).shape
        if not out or not shape or shape[0] != out[0]:
            return f"input %{a} {list(shape)} and output {list(out)} differ on the batch axis"
    return None


def weights_vary_by_row(site: Site, names: Iterable[str]) -> str | None:
    """A weight broadcast over the output with a full leading axis differs per row."""
    out = site.out.shape
    for w in names:
        shape = site.prog.weights[w].shape
        if len(shape) == len(out) and shape[0] != 1:
            return f"weight {w} {list(shape)} differs per row"
    return None
