"""How the runtime evaluates an IR op: one rule per op, written once for two backends.

A rule is `eval(backend, ins, args) -> out`: numpy over whole arrays for the local part, and
the backend for everything that is not local. The cleartext interpreter is one backend
(plaintext ring arithmetic, exact truncation and ReLU); each compute party is the other
(its shares, the secure protocols, the dealer's material). Composing the same way in both is
what lets the interpreter predict the secure result before anything runs. Public constants
are added by party 0 only (the interpreter is party 0), so the same rule is right on shares
and on plaintext.

Rules are registered in `RULES`, keyed by the compiler's declared op (`mpcc.compiler.ops`);
a test checks that every op has one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mpcc.compiler.ir import Instr, Program
from mpcc.compiler.ops import Op
from mpcc.errors import PlanError

Bilinear = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Backend:
    """What an op's rule evaluates with: the cleartext interpreter or one compute party."""

    party: int  # 0 in the cleartext interpreter
    prog: Program

    def input(self, ins: Instr) -> np.ndarray:
        """The client's input (encoded), or this party's share of it."""
        raise NotImplementedError

    def weight(self, name: str) -> np.ndarray:
        """A weight (encoded), or this party's share of it."""
        raise NotImplementedError

    def linear(self, ins: Instr, x: np.ndarray) -> np.ndarray:
        """L(x, W) for the instruction's bilinear map and first weight (no bias)."""
        raise NotImplementedError

    def multiply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """x * y of two secrets, with numpy broadcasting."""
        raise NotImplementedError

    def matmul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """x @ y of two secrets, with numpy's matmul broadcasting over leading axes."""
        raise NotImplementedError

    def square(self, x: np.ndarray) -> np.ndarray:
        """x * x of one secret."""
        raise NotImplementedError

    def truncate(self, x: np.ndarray, shift: int) -> np.ndarray:
        """floor(x / 2^shift) (the secure protocol may add 1 LSB)."""
        raise NotImplementedError

    def relu(self, x: np.ndarray, shift: int) -> np.ndarray:
        """max(floor(x / 2^shift), 0), same shape as x."""
        raise NotImplementedError

    def ge_zero(self, x: np.ndarray) -> np.ndarray:
        """[x >= 0] as ring elements 0/1, same shape as x."""
        raise NotImplementedError

    def max_pairs(self, x: np.ndarray, relu: int | None) -> np.ndarray:
        """The max over axis 0 of x [k, ...] (k = 3 or 4), signed |x| < 2^61; with `relu`
        the ReLU of it, that many bits truncated (the secure protocol may add 1 LSB)."""
        raise NotImplementedError

    def powers(self, x: np.ndarray, shift: int, scale: int, exponents: list[int]) -> np.ndarray:
        """[t^e for e in exponents] on a new last axis, t = floor(x / 2^shift), each product
        floor-divided by 2^scale (the secure protocol may add 1 LSB per wire)."""
        raise NotImplementedError


Eval = Callable[[Backend, Instr, list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Rule:
    """The runtime's rules for one op: its evaluation, and for a linear op its bilinear map
    `bilinear(prog, ins, prepared)` (prepared: the weight operand laid out once per session)."""

    eval: Eval
    bilinear: Callable[[Program, Instr, bool], Bilinear] | None = None


RULES: dict[Op, Rule] = {}


def register(op: Op, eval: Eval, bilinear: Callable | None = None) -> None:  # noqa: A002
    """Register the runtime's rule for `op` (once)."""
    if op in RULES:
        raise ValueError(f"a rule for {op.name} is registered twice")
    RULES[op] = Rule(eval, bilinear)


def check_shape(prog: Program, i: int, out: np.ndarray) -> None:
    """An instruction's result has the shape its plan declares (else its op's rule and its
    runtime rule disagree: a bug, stopped here rather than passed on)."""
    ins = prog.instrs[i]
    want = prog.value(ins.out).shape
    if out.shape != want:
        raise PlanError(
            f"instruction {i} ({ins.op.name}) gave shape {list(out.shape)}, the plan declares "
            f"{list(want)}"
        )


def u64(v: int) -> np.uint64:
    """A Python int as a ring element."""
    return np.uint64(v % 2**64)


def add_public(x: np.ndarray, c: np.ndarray | int, party: int) -> np.ndarray:
    """x + c for a public c: only party 0 adds it."""
    if party != 0:
        return x
    c = u64(c) if isinstance(c, int) else c
    return x + c
