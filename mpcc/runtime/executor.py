"""A compute party's executor: walks the plan, evaluating each instruction by its op's rule.

The executor is the secure backend of the op rules (`mpcc.runtime.rules`): their non-local
steps (a linear layer, a product, a truncation, a ReLU) become protocol runs on this party's
shares, each consuming the dealer's material for the call its op declared
(`mpcc.compiler.calls`), in the plan's order. Protocols know nothing of the IR; this module
supplies their shapes, material and shares. Values are freed after their last use.

Observers (`ExecutionObserver`) see each query and instruction start and end: the benchmark
and the tests measure through them, the executor is never patched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mpcc.compiler.calls import (
    Call,
    Linear,
    MatMulSS,
    MaxPairs,
    Multiply,
    Powers,
    Relu,
    ReluFss,
    Sign,
    SignFss,
    Square,
    Truncate,
)
from mpcc.compiler.costmodel import calls, masked_weights
from mpcc.compiler.ir import Instr, Program
from mpcc.errors import InputError, MaterialError
from mpcc.runtime.material import Bundle, MaterialStore
from mpcc.runtime.protocols import (
    linear,
    matmul_ss,
    max_pairs,
    multiply,
    powers,
    protocol_for,
    relu,
    relu_fss,
    sign,
    sign_fss,
    square,
    truncation,
)
from mpcc.runtime.rules import RULES, Backend, check_shape
from mpcc.runtime.rules.linear import layout, prepare_weight, prepared_maps
from mpcc.runtime.session import Session
from mpcc.runtime.transport import Channel


class ExecutionObserver:
    """Sees a party's online phase: queries and instructions as they start and end."""

    def query_start(self, party: int, query: int) -> None:
        """A query's online phase begins."""

    def instr_start(self, party: int, index: int, ins: Instr) -> None:
        """Instruction `index` is about to run."""

    def instr_end(self, party: int, index: int, ins: Instr) -> None:
        """Instruction `index` has run."""

    def query_end(self, party: int, query: int) -> None:
        """The query's online phase is over (its material closed)."""


def last_uses(prog: Program) -> list[list[int]]:
    """For each instruction, the values that nothing later reads (outputs excepted): what the
    executor frees once it has run."""
    last: dict[int, int] = {}
    for i, ins in enumerate(prog.instrs):
        last[ins.out] = i
        for a in ins.args:
            last[a] = i
    keep = {v for _, v in prog.outputs}
    free: list[list[int]] = [[] for _ in prog.instrs]
    for v, i in last.items():
        if v not in keep:
            free[i].append(v)
    return free


class PartyExecutor(Backend):
    """Compute party P0 or P1 for one session of one plan."""

    def __init__(
        self,
        party: int,
        prog: Program,
        session: Session,
        seed: bytes,
        weight_shares: dict[str, np.ndarray],
        channel: Channel,
        *,
        consume_shares: bool = False,
    ) -> None:
        """`weight_shares`: this party's share of every weight. With `consume_shares` the
        masked weights' shares are overwritten by F at session setup (the caller made them
        for this session alone); otherwise they are left as they are."""
        self.party = party
        self.prog = prog
        self.session = session
        self.ch = channel
        self.observers: list[ExecutionObserver] = []
        self._seed = seed
        self._masked = masked_weights(prog)
        self._to_open = {n: weight_shares[n] for n in self._masked}
        self._consume = consume_shares
        masked = set(self._masked)
        # The weights used as they are (biases, non-linear weights, public weights).
        self._w = {n: w for n, w in weight_shares.items() if n not in masked}
        self._calls: list[list[Call]] = [calls(prog, ins) for ins in prog.instrs]
        self._free = last_uses(prog)
        self._maps = prepared_maps(prog)
        # per (weight, layout): the online weight operand ([B]_0 + F for P0, [B]_1 for P1,
        # or W when public) and F, as the instruction's prepared map reads them
        self._operands: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray | None]] = {}
        self.store = MaterialStore(session.id)
        self._query = -1
        self._at = 0  # the instruction running
        self._call = 0  # its next protocol call

    # -- once per session ------------------------------------------------------------------
    def open_weights(self) -> None:
        """Open F = W - B for every masked weight (in rounds of `linear.OPEN_WORDS` words),
        then lay out each linear instruction's weight operands for its kernel, once."""
        prog = self.prog
        opened: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        if self._to_open:
            masks = {n: self.session.weight_prg(self._seed, n) for n in self._to_open}
            opened = linear.open_weights(
                self.ch, self.party, self._to_open, masks, in_place=self._consume
            )
        self._to_open = {}
        for n, w in self._w.items():
            if prog.public_weights:
                opened.setdefault(n, (w, None))
        for ins in prog.instrs:
            rule = RULES[ins.op]
            if rule.bilinear is None or layout(prog, ins) in self._operands:
                continue
            term, f = opened[ins.weights[0]]
            self._operands[layout(prog, ins)] = (
                prepare_weight(prog, ins, term),
                None if f is None else prepare_weight(prog, ins, f),
            )

    def _aux(self, i: int, ins: Instr) -> tuple[Any, ...]:
        """What call i needs beyond its sizes: a linear instruction's map and F."""
        fn = self._maps.get(i)
        return () if fn is None else (fn, self._operands[layout(self.prog, ins)][1])

    def on_channel(self, channel: Channel) -> PartyExecutor:
        """An executor for another lane of this session: it runs queries over `channel`
        (another link to the same peer), sharing this one's opened weights and material
        store, so lanes run different queries at once, each query's material taken once.
        Call after `open_weights`."""
        if self._to_open:
            raise MaterialError("open the weights before making lanes")
        lane = copy.copy(self)
        lane.ch = channel
        lane.observers = []
        lane._query, lane._at, lane._call, lane._inputs = -1, 0, 0, {}
        return lane

    # -- offline, per query -----------------------------------------------------------------
    @property
    def needs_dealer(self) -> bool:
        """Whether this party takes a bundle from the dealer: P1 always, P0 for a plan with
        FSS keys (their common words go to both)."""
        return self.party == 1 or any(
            protocol_for(c).shared_words(c) for cs in self._calls for c in cs
        )

    def prepare(
        self, query: int, bundle: Bundle | None, pause: Callable[[], None] | None = None
    ) -> int:
        """Expand this party's material for a query (P1, and P0 for FSS keys, also take the
        dealer's bundle);
        returns the bytes of material now held for it. `pause`, if given, is called before
        each call's material: a server blocks there while a query's online phase runs, so
        making material ahead does not take the cores and the GIL from that phase."""
        s = self.session
        if self.needs_dealer:
            if bundle is None:
                raise MaterialError(f"P{self.party} has no dealer material for query {query}")
            if bundle.session != s.id or bundle.query != query:
                raise MaterialError(
                    f"dealer material for session {bundle.session[:8]}…/query {bundle.query} "
                    f"offered to session {s.id[:8]}…/query {query}"
                )
            corrections = bundle.take()
        items = []
        for i, ins in enumerate(self.prog.instrs):
            for j, call in enumerate(self._calls[i]):
                prg = s.call_prg(self._seed, query, i, j)
                if pause is not None:
                    pause()
                proto = protocol_for(call)
                corr = None
                if self.party == 1 or proto.shared_words(call):
                    corr = next(corrections, None)
                    if corr is None:
                        raise MaterialError(f"dealer bundle for query {query} is short")
                mat = proto.expand(self.party, call, prg, corr, *self._aux(i, ins))
                items.append(((s.id, query, i, j), mat))
        if self.needs_dealer and next(corrections, None) is not None:
            raise MaterialError(f"dealer bundle for query {query} is too long")
        return self.store.add_query(query, items)

    # -- online -----------------------------------------------------------------------------
    def run(self, query: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate one query on this party's input shares; returns its output shares."""
        prog, obs = self.prog, self.observers
        self._query, self._inputs = query, inputs
        for o in obs:
            o.query_start(self.party, query)
        env: dict[int, np.ndarray] = {}
        outputs = {}
        try:
            for i, ins in enumerate(prog.instrs):
                for o in obs:
                    o.instr_start(self.party, i, ins)
                self._at, self._call = i, 0
                env[ins.out] = out = RULES[ins.op].eval(self, ins, [env[a] for a in ins.args])
                check_shape(prog, i, out)
                if self._call != len(self._calls[i]):
                    raise MaterialError(
                        f"instruction {i} ({ins.op.name}) made {self._call} protocol calls, "
                        f"its op declares {len(self._calls[i])}"
                    )
                for v in self._free[i]:
                    del env[v]
                for o in obs:
                    o.instr_end(self.party, i, ins)
            outputs = {name: env[v] for name, v in prog.outputs}
        finally:
            self._inputs = {}
        self.store.finish(query)
        for o in obs:
            o.query_end(self.party, query)
        return outputs

    def _material(self, kind: type[Call], **expect: Any) -> Any:
        """The next piece of this instruction's material, which must be for a call of `kind`
        with the `expect`ed parameters (as the op's declaration said)."""
        i, j = self._at, self._call
        declared = self._calls[i]
        ins = self.prog.instrs[i]
        if j >= len(declared) or type(declared[j]) is not kind:
            raise MaterialError(
                f"instruction {i} ({ins.op.name}) asks for a {kind.__name__} call that its "
                f"op does not declare (declared: {declared})"
            )
        call = declared[j]
        for k, v in expect.items():
            if getattr(call, k) != v:
                raise MaterialError(
                    f"instruction {i} ({ins.op.name}) asks for a {kind.__name__} with "
                    f"{k}={v}, but its material is for {k}={getattr(call, k)}"
                )
        self._call += 1
        return self.store.take((self.session.id, self._query, i, j))

    # -- the backend of the op rules --------------------------------------------------------
    def input(self, ins: Instr) -> np.ndarray:
        name = ins.attrs["name"]
        share = self._inputs[name]
        expected = self.prog.value(ins.out).shape
        if share.shape != expected:
            raise InputError(
                f"input {name!r} has shape {list(share.shape)}, expected {list(expected)}"
            )
        return share

    def weight(self, name: str) -> np.ndarray:
        return self._w[name]

    def linear(self, ins: Instr, x: np.ndarray) -> np.ndarray:
        fn = self._maps[self._at]
        term, _ = self._operands[layout(self.prog, ins)]
        if self.prog.public_weights:
            return linear.public_weights(x, term, fn)
        mat = self._material(Linear, x_shape=x.shape)
        return linear.run(self.ch, self.party, mat, x, term, fn)

    def multiply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        mat = self._material(Multiply, x_shape=x.shape, y_shape=y.shape)
        return multiply.run(self.ch, self.party, mat, x, y)

    def matmul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        mat = self._material(MatMulSS, x_shape=x.shape, y_shape=y.shape)
        return matmul_ss.run(self.ch, self.party, mat, x, y)

    def square(self, x: np.ndarray) -> np.ndarray:
        mat = self._material(Square, n=x.size)
        return square.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)

    def truncate(self, x: np.ndarray, shift: int) -> np.ndarray:
        mat = self._material(Truncate, n=x.size, shift=shift)
        return truncation.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)

    def _next_call(self) -> type[Call] | None:
        """The kind of this instruction's next declared call (the op's protocol choice)."""
        declared = self._calls[self._at]
        return type(declared[self._call]) if self._call < len(declared) else None

    def relu(self, x: np.ndarray, shift: int) -> np.ndarray:
        if self._next_call() is ReluFss:
            mat = self._material(ReluFss, n=x.size, shift=shift)
            return relu_fss.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)
        mat = self._material(Relu, n=x.size, shift=shift)
        return relu.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)

    def ge_zero(self, x: np.ndarray) -> np.ndarray:
        if self._next_call() is SignFss:
            mat = self._material(SignFss, n=x.size)
            return sign_fss.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)
        mat = self._material(Sign, n=x.size)
        return sign.run(self.ch, self.party, mat, x.reshape(-1)).reshape(x.shape)

    def max_pairs(self, x: np.ndarray, relu: int | None) -> np.ndarray:
        k, out = x.shape[0], x.shape[1:]
        mat = self._material(MaxPairs, n=math.prod(out), k=k, relu=relu)
        return max_pairs.run(self.ch, self.party, mat, x.reshape(k, -1)).reshape(out)

    def powers(self, x: np.ndarray, shift: int, scale: int, exponents: list[int]) -> np.ndarray:
        mat = self._material(Powers, n=x.size, shift=shift, scale=scale)
        out = powers.run(self.ch, self.party, mat, x.reshape(-1))
        return out.reshape(*x.shape, len(exponents))
