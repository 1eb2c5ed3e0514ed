"""A compute party's executor: walks the plan and maps each instruction to a protocol call.

Protocols know nothing of the IR; this module supplies their shapes, material and shares.
"""

from __future__ import annotations

import hashlib

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
        self._w_terms: dict[str, np.ndarray] = {}  # per session: [B]_0 + F (P0), [B]_1 (P1)
        self.store = MaterialStore(session.id)

    # -- once per session ------------------------------------------------------------------
    def open_weights(self) -> None:
        """Open F = W - B for every secret linear weight, all in one round."""
        names = secret_linear_weights(self.prog)
        if not names:
            return
        self._masks = {
            n: linear.weight_mask(
                self.prog.weights[n].shape, self.session.weight_prg(self._seed, n)
            )
            for n in names
        }
        mine = [self._w[n] - self._masks[n] for n in names]
        theirs = self.ch.exchange(mine)
        self._opened = {n: m + t for n, m, t in zip(names, mine, theirs, strict=True)}
        self._w_terms = {
            n: linear.weight_term(self.party, self._masks[n], self._opened[n]) for n in names
        }

    def opened_digest(self) -> str:
        """SHA-256 of the opened masked weights F, which P0 and P1 compare at start-up."""
        h = hashlib.sha256(b"mpcc/opened-weights")
        for name in sorted(self._opened):
            h.update(name.encode() + b"\0" + np.ascontiguousarray(self._opened[name]).tobytes())
        return h.hexdigest()

    # -- offline, per query -----------------------------------------------------------------
    def prepare(self, query: int, bundle: Bundle | None) -> None:
        """Expand this party's material for a query (P1 also takes the dealer's bundle)."""
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
        self.store.add_query(query, items)

    def _expand(self, ins: Instr, proto: str, p: dict, prg, corr):
        prog = self.prog
        if proto == "linear":
            x_shape = prog.value(ins.args[0]).shape
            z_shape = prog.value(ins.out).shape
            fn = localops.bilinear(prog, ins)
            return linear.expand(
                self.party, fn, x_shape, z_shape, prg, corr, self._opened[ins.weights[0]]
            )
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
            return relu.run(ch, party, material(), v.reshape(-1)).reshape(v.shape)

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
            fn = localops.bilinear(prog, ins)
            w = ins.weights[0]
            if prog.public_weights:
                z = linear.public_weights(x, self._w[w], fn)
            else:
                z = linear.run(
                    ch, party, material(), x, self._masks[w], self._opened[w], fn, self._w_terms[w]
                )
            if len(ins.weights) > 1:
                z = z + localops.bias_shape(ins, self._w[ins.weights[1]], z.ndim)
            return z
        if ins.op == "add_w":
            return x + self._w[ins.weights[0]]
        if ins.op == "mul":
            return multiply.run(ch, party, material(), args[0], args[1])
        if ins.op == "trunc":
            return truncation.run(ch, party, material(), x.reshape(-1)).reshape(x.shape)
        if ins.op == "relu":
            return secure_relu(x, a["shift"])
        if ins.op == "leaky_relu":
            return localops.leaky_relu(x, a["alpha"], prog.frac_bits, secure_relu)
        if ins.op == "clip":
            scale = prog.value(ins.args[0]).scale
            return localops.clip(x, a["lo"], a["hi"], scale, a["shift"], party, secure_relu)
        if ins.op == "maxpool":
            return localops.maxpool(x, a, party, secure_relu)
        raise AssertionError(f"no secure semantics for {ins.op}")
