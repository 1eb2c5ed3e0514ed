"""A compute party's executor: walks the plan and maps each instruction to a protocol call.

Protocols know nothing of the IR; this module supplies their shapes, material and shares.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.costmodel import LINEAR_OPS, protocol_calls
from mpcc.compiler.ir import Instr, Program
from mpcc.errors import InputError, MaterialError
from mpcc.runtime import localops
from mpcc.runtime.dealer import secret_linear_weights
from mpcc.runtime.material import Bundle, MaterialStore
from mpcc.runtime.protocols import linear, multiply, relu, truncation
from mpcc.runtime.session import Session
from mpcc.runtime.transport import Channel


class PartyExecutor:
    """Compute party P0 or P1 for one session of one plan."""

    def __init__(
        self,
        party: int,
        prog: Program,
        session: Session,
        seed: bytes,
        weight_shares: dict[str, np.ndarray],
        channel: Channel,
    ) -> None:
        self.party = party
        self.prog = prog
        self.session = session
        self.ch = channel
        self._seed = seed
        self._w = weight_shares
        self._masks: dict[str, np.ndarray] = {}
        self._opened: dict[str, np.ndarray] = {}
        # per session, per (weight, op): the online weight operand ([B]_0 + F for P0, [B]_1
        # for P1, or W when public) and F, in the layout the op's kernel reads
        self._operands: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        self.store = MaterialStore(session.id)

    # -- once per session ------------------------------------------------------------------
    def open_weights(self) -> None:
        """Open F = W - B for every secret linear weight, all in one round; then lay out
        every linear layer's weight operands for its kernel, once for the session."""
        names = secret_linear_weights(self.prog)
        if names:
            self._open(names)
        for ins in self.prog.instrs:
            if ins.op in LINEAR_OPS:
                self._weight_operands(ins)

    def _open(self, names: list[str]) -> None:
        self._masks = {
            n: linear.weight_mask(
                self.prog.weights[n].shape, self.session.weight_prg(self._seed, n)
            )
            for n in names
        }
        mine = [self._w[n] - self._masks[n] for n in names]
        theirs = self.ch.exchange(mine)
        self._opened = {n: m + t for n, m, t in zip(names, mine, theirs, strict=True)}

    def _weight_operands(self, ins: Instr) -> tuple[np.ndarray, np.ndarray | None]:
        """(online weight operand, F) of a linear instruction, prepared for its kernel
        (`localops.prepare_weight`) once per session; F is None for public weights."""
        n = ins.weights[0]
        key = (n, localops.weight_transposed(self.prog, ins))
        got = self._operands.get(key)
        if got is None:
            if self.prog.public_weights:
                got = (localops.prepare_weight(self.prog, ins, self._w[n]), None)
            else:
                term = linear.weight_term(self.party, self._masks[n], self._opened[n])
                got = (
                    localops.prepare_weight(self.prog, ins, term),
                    localops.prepare_weight(self.prog, ins, self._opened[n]),
                )
            self._operands[key] = got
        return got

    # -- offline, per query -----------------------------------------------------------------
    def prepare(self, query: int, bundle: Bundle | None) -> int:
        """Expand this party's material for a query (P1 also takes the dealer's bundle);
        returns the bytes of material now held for it."""
        prog, s = self.prog, self.session
        if self.party == 1:
            if bundle is None:
                raise MaterialError(f"P1 has no dealer material for query {query}")
            if bundle.session != s.id or bundle.query != query:
                raise MaterialError(
                    f"dealer material for session {bundle.session[:8]}…/query {bundle.query} "
                    f"offered to session {s.id[:8]}…/query {query}"
                )
            corrections = iter(bundle.corrections)
        items = []
        for i, ins in enumerate(prog.instrs):
            for j, (proto, p) in enumerate(protocol_calls(prog, ins)):
                prg = s.call_prg(self._seed, query, i, j)
                corr = next(corrections, None) if self.party == 1 else None
                if self.party == 1 and corr is None:
                    raise MaterialError(f"dealer bundle for query {query} is short")
                items.append(((s.id, query, i, j), self._expand(ins, proto, p, prg, corr)))
        if self.party == 1 and next(corrections, None) is not None:
            raise MaterialError(f"dealer bundle for query {query} is too long")
        return self.store.add_query(query, items)

    def _expand(self, ins: Instr, proto: str, p: dict, prg, corr):
        prog = self.prog
        if proto == "linear":
            x_shape = prog.value(ins.args[0]).shape
            z_shape = prog.value(ins.out).shape
            fn = localops.bilinear(prog, ins, prepared=True)
            _, f = self._weight_operands(ins)
            return linear.expand(self.party, fn, x_shape, z_shape, prg, corr, f)
        if proto == "multiply":
            x_shape = prog.value(ins.args[0]).shape
            y_shape = prog.value(ins.args[1]).shape
            return multiply.expand(self.party, x_shape, y_shape, prg, corr)
        if proto == "truncate":
            return truncation.expand(self.party, p["n"], p["shift"], prg, corr)
        if proto == "relu":
            return relu.expand(self.party, p["n"], p["shift"], prg, corr)
        raise AssertionError(proto)

    # -- online -----------------------------------------------------------------------------
    def run(self, query: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate one query on this party's input shares; returns its output shares."""
        prog = self.prog
        env: dict[int, np.ndarray] = {}
        for i, ins in enumerate(prog.instrs):
            args = [env[a] for a in ins.args]
            out = localops.local(ins, args, prog, self.party)
            if out is None:
                out = self._secure(query, i, ins, args, inputs)
            env[ins.out] = out
        self.store.finish(query)
        return {name: env[v] for name, v in prog.outputs}

    def _secure(self, query: int, i: int, ins: Instr, args, inputs) -> np.ndarray:
        prog, party, ch = self.prog, self.party, self.ch
        a = ins.attrs
        x = args[0] if args else None
        calls = iter(range(len(protocol_calls(prog, ins))))

        def material():
            return self.store.take((self.session.id, query, i, next(calls)))

        def secure_relu(v: np.ndarray, shift: int) -> np.ndarray:
            mat = material()
            if mat.shift != shift:
                raise MaterialError(
                    f"instruction {i} ({ins.op}) asks for a ReLU truncating {shift} bits, "
                    f"but its material truncates {mat.shift}"
                )
            return relu.run(ch, party, mat, v.reshape(-1)).reshape(v.shape)

        if ins.op == "input":
            share = inputs[a["name"]]
            expected = prog.value(ins.out).shape
            if share.shape != expected:
                raise InputError(
                    f"input {a['name']!r} has shape {list(share.shape)}, expected {list(expected)}"
                )
            return share
        if ins.op == "output":
            return x
        if ins.op in LINEAR_OPS:
            fn = localops.bilinear(prog, ins, prepared=True)
            term, f = self._weight_operands(ins)
            if prog.public_weights:
                z = linear.public_weights(x, term, fn)
            else:
                z = linear.run(ch, party, material(), x, term, fn)
            return localops.add_bias(ins, z, self._w)
        if ins.op == "add_w":
            return x + self._w[ins.weights[0]]
        if ins.op == "mul":
            return multiply.run(ch, party, material(), args[0], args[1])
        if ins.op == "trunc":
            return truncation.run(ch, party, material(), x.reshape(-1)).reshape(x.shape)
        out = localops.comparison(ins, x, prog, party, secure_relu)
        if out is not None:
            return out
        raise AssertionError(f"no secure semantics for {ins.op}")
