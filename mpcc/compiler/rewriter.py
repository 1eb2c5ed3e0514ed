"""A small graph rewriter: declared rules, each a pattern, a check and a rewrite.

    Rule(
        Op("MaxPool", Op("Relu|LeakyRelu", name="act"), name="pool"),
        check=lambda g, act, pool: None if act.attrs.get("alpha", 0) >= 0 else "kept ...: why",
        rewrite=pool_first,  # (g, act, pool) -> a note or None
    )

`Op(ops, *inputs)` matches a node whose op is one of `ops` ("A|B") and whose first inputs
match `inputs`: `ANY` tensor, a `CONST`ant, or another `Op` producing it. A tensor linking
two matched nodes must be read by its consumer alone (and be no graph output) unless its
producer's pattern says `shared=True`. `Through(where, inner)` matches `inner` reached through
zero or more single-reader nodes accepted by `where`. Named patterns bind the matched `Node`s
(a path from `Through`: a tuple of them, first to last), which the check and the rewrite take
as keyword arguments.

The check runs once the structure matched: it returns None to accept, or the reason it
rejects, which becomes a note in `g.notes` (once): the compile report prints these
near-misses. The rewrite edits the graph through `Graph`'s methods and may return a note.
`apply(g, *rules)` applies the rules until none applies; each rewrite must make progress.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mpcc.compiler.graph import Graph


@dataclass(frozen=True)
class Node:
    """A read-only view of one node of a `Graph` (stale once the graph changes)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(hash=False)

    @classmethod
    def of(cls, g: Graph, name: str) -> Node:
        """The node `name` of `g`."""
        d = g.node(name)
        attrs = MappingProxyType(dict(d["attrs"]))
        return cls(name, d["op"], tuple(d["inputs"]), tuple(d["outputs"]), attrs)

    @property
    def x(self) -> str:
        """The first input."""
        return self.inputs[0]

    @property
    def y(self) -> str:
        """The first output."""
        return self.outputs[0]


@dataclass(frozen=True)
class Leaf:
    """A pattern for an input whose producer is not matched: any tensor, or a constant."""

    const: bool


ANY, CONST = Leaf(const=False), Leaf(const=True)


@dataclass(frozen=True, init=False)
class Op:
    """A pattern for a node: its op, patterns for its first inputs, and optionally a name to
    bind it to, a condition on it, and whether its output may have readers outside the match."""

    ops: frozenset[str]
    inputs: tuple[Pattern, ...]
    name: str | None
    where: Callable[[Graph, Node], bool] | None
    shared: bool

    def __init__(
        self,
        ops: str,
        *inputs: Pattern,
        name: str | None = None,
        where: Callable[[Graph, Node], bool] | None = None,
        shared: bool = False,
    ) -> None:
        object.__setattr__(self, "ops", frozenset(ops.split("|")))
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "shared", shared)


@dataclass(frozen=True)
class Through:
    """A pattern for `inner` reached through zero or more nodes accepted by `where`, each
    read by the next alone; `name` binds that path (a tuple of nodes, first to last)."""

    where: Callable[[Graph, Node], bool]
    inner: Op
    name: str | None = None


Pattern = Leaf | Op | Through


@dataclass(frozen=True)
class Rule:
    """A declared rewrite: where `pattern` matches and `check` accepts, call `rewrite`.

    `check(g, **bound)` returns None to accept or the reason it rejects (noted);
    `rewrite(g, **bound)` edits the graph and returns a note or None."""

    pattern: Op
    rewrite: Callable[..., str | None]
    check: Callable[..., str | None] | None = None


def match(g: Graph, pattern: Op, name: str) -> dict[str, Any] | None:
    """The nodes `pattern` binds when it matches at node `name`, else None."""
    bound: dict[str, Any] = {}
    return bound if _node(g, pattern, name, bound) else None


def apply(g: Graph, *rules: Rule) -> None:
    """Apply `rules` at every node, in topological order, until none applies any more.

    At a node the first rule that matches and is accepted wins; a rejection is noted."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.ops:
            by_op.setdefault(op, []).append(r)
    changed = True
    while changed:
        changed = False
        for name in g.topo_nodes():
            while name in g.nx and _apply_first(g, name, by_op.get(g.op(name), [])):
                changed = True


def _apply_first(g: Graph, name: str, rules: list[Rule]) -> bool:
    for r in rules:
        bound = match(g, r.pattern, name)
        if bound is None:
            continue
        reason = None if r.check is None else r.check(g, **bound)
        if reason is not None:
            if reason not in g.notes:
                g.notes.append(reason)
            continue
        note = r.rewrite(g, **bound)
        if note:
            g.notes.append(note)
        return True
    return False


def _node(g: Graph, pattern: Op, name: str, bound: dict[str, Any]) -> bool:
    if g.op(name) not in pattern.ops:
        return False
    n = Node.of(g, name)
    if len(n.inputs) < len(pattern.inputs):
        return False
    if pattern.where is not None and not pattern.where(g, n):
        return False
    if not all(_input(g, p, t, n, bound) for p, t in zip(pattern.inputs, n.inputs, strict=False)):
        return False
    if pattern.name:
        bound[pattern.name] = n
    return True


def _input(g: Graph, pattern: Pattern, t: str, reader: Node, bound: dict[str, Any]) -> bool:
    """Whether tensor `t`, read by `reader`, matches `pattern`."""
    if isinstance(pattern, Leaf):
        return bool(t) and (not pattern.const or g.is_const(t))
    p = g.producer(t)
    if p is None:
        return False
    if isinstance(pattern, Op):
        if not pattern.shared and g.only_consumer(t) != reader.name:
            return False
        return _node(g, pattern, p, bound)
    path = _path(g, pattern, t, reader, bound)
    if path is None:
        return False
    if pattern.name:
        bound[pattern.name] = path
    return True


def _path(
    g: Graph, pattern: Through, t: str, reader: Node, bound: dict[str, Any]
) -> tuple[Node, ...] | None:
    """The nodes from `pattern.inner`'s match to `reader` (exclusive), if there is a match."""
    trial: dict[str, Any] = {}
    if _input(g, pattern.inner, t, reader, trial):
        bound.update(trial)
        return ()
    p = g.producer(t)
    if p is None or g.only_consumer(t) != reader.name:
        return None
    n = Node.of(g, p)
    if not pattern.where(g, n):
        return None
    for u in n.inputs:
        if u and g.producer(u) is not None and n.inputs.count(u) == 1:
            path = _path(g, pattern, u, n, bound)
            if path is not None:
                return (*path, n)
    return None
