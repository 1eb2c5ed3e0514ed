"""Preprocessing material bookkeeping: tagged, consumed exactly once, in the plan's order.

Every piece of material carries (session, query, instruction, call). A party's store hands
out the material of a query strictly in the order the plan consumes it and forgets it
when taken, so nothing is used twice, out of order, or across sessions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from mpcc.errors import MaterialError

Tag = tuple[str, int, int, int]  # (session id, query, instruction index, call index)


@dataclass(frozen=True)
class Bundle:
    """The dealer's corrections for P1 for one query, in the plan's call order."""

    session: str
    query: int
    corrections: list[np.ndarray]
    nbytes: int = field(init=False)  # payload bytes: the cost model's dealer bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", sum(c.nbytes for c in self.corrections))

    def take(self) -> Iterator[np.ndarray]:
        """The corrections in order, handed over one by one: the bundle lets go of each as
        it is taken, so a correction no material keeps is freed once expanded. This consumes
        the bundle: it holds no corrections afterwards (`nbytes` keeps its size)."""
        items = self.corrections
        items.reverse()
        while items:
            yield items.pop()

    def to_arrays(self) -> list[np.ndarray]:
        """As a transport message: a 24-byte tag (session id, query), then the corrections."""
        head = np.frombuffer(bytes.fromhex(self.session), dtype=np.uint64)
        return [np.concatenate([head, np.array([self.query], dtype=np.uint64)]), *self.corrections]

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> Bundle:
        head = arrays[0]
        if head.dtype != np.uint64 or head.shape != (3,):
            raise MaterialError("malformed dealer bundle")
        return cls(head[:2].tobytes().hex(), int(head[2]), list(arrays[1:]))


def held_bytes(material: Any) -> int:
    """Bytes of the arrays inside one piece of material (a protocol's dataclass, a tuple...)."""
    if isinstance(material, np.ndarray):
        return material.nbytes
    if is_dataclass(material) and not isinstance(material, type):
        return sum(held_bytes(getattr(material, f.name)) for f in fields(material))
    if isinstance(material, (tuple, list)):
        return sum(held_bytes(m) for m in material)
    if isinstance(material, dict):
        return sum(held_bytes(m) for m in material.values())
    return 0


class MaterialStore:
    """One party's prepared material, queue by query, each item taken exactly once."""

    def __init__(self, session: str) -> None:
        self.session = session
        self._queries: OrderedDict[int, deque[tuple[Tag, Any]]] = OrderedDict()
        self._consumed_up_to = -1  # queries at or below this have been used
        self._lock = threading.Lock()

    def add_query(self, query: int, items: list[tuple[Tag, Any]]) -> int:
        """Store a query's material (already expanded), in consumption order; returns the
        bytes it holds."""
        with self._lock:
            if query <= self._consumed_up_to or query in self._queries:
                raise MaterialError(f"material for query {query} was already prepared or used")
            for tag, _ in items:
                if tag[0] != self.session or tag[1] != query:
                    raise MaterialError(
                        f"material tagged {tag[:2]} offered for session {self.session}, "
                        f"query {query}"
                    )
            self._queries[query] = deque(items)
        return sum(held_bytes(m) for _, m in items)

    def take(self, tag: Tag) -> Any:
        """The material for `tag`, which must be the next one of its query; then forgotten."""
        session, query = tag[0], tag[1]
        with self._lock:
            if session != self.session:
                raise MaterialError(
                    f"material requested for session {session}, store is {self.session}"
                )
            items = self._queries.get(query)
            if items is None:
                state = "already consumed" if query <= self._consumed_up_to else "not prepared"
                raise MaterialError(f"material for query {query} is {state}")
            if not items:
                raise MaterialError(f"query {query} has no material left for {tag}")
            head_tag, mat = items[0]
            if head_tag != tag:
                raise MaterialError(f"material out of order: next is {head_tag}, asked for {tag}")
            items.popleft()
            return mat

    def finish(self, query: int) -> None:
        """Close a query: all its material must have been used; it can never be used again."""
        with self._lock:
            items = self._queries.pop(query, None)
            self._consumed_up_to = max(self._consumed_up_to, query)
            if items:
                raise MaterialError(f"query {query} ended with {len(items)} unused items")
