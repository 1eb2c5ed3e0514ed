"""The interactive protocol invocations an instruction makes: typed, sized and priced.

An op's `calls` rule lists these in execution order. The dealer prepares material for exactly
these calls, each party expands and consumes it in this order, and the cost model prices
them (`mpcc.compiler.costs`). Each runtime protocol module implements one call type (deal,
expand, run, correction size: `mpcc.runtime.protocols`), and a test checks that each call
type has one and that its correction size is the dealer bytes priced here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpcc.compiler import costs
from mpcc.compiler.costs import Cost

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Call:
    """One invocation of an interactive protocol."""

    def cost(self) -> Cost:
        raise NotImplementedError

    def dealer_p0(self) -> int:
        """Bytes the dealer sends P0 for one query on top of `cost().dealer` (to P1): 0 for
        protocols whose P0 material all comes from its seed; FSS keys' common words."""
        return 0


@dataclass(frozen=True)
class Linear(Call):
    """Z = L(X, W) for a secret X and the instruction's secret weight W (masked once per
    session): a matrix/conv Beaver triple; `macs` ring multiply-adds per party online."""

    x_shape: Shape
    z_shape: Shape
    macs: int

    def cost(self) -> Cost:
        return costs.linear(math.prod(self.x_shape), math.prod(self.z_shape), self.macs)


@dataclass(frozen=True)
class Multiply(Call):
    """Z = X * Y of two secrets, elementwise with numpy broadcasting: a Beaver triple."""

    x_shape: Shape
    y_shape: Shape

    @property
    def z_shape(self) -> Shape:
        return tuple(int(d) for d in np.broadcast_shapes(self.x_shape, self.y_shape))

    def cost(self) -> Cost:
        x, y = math.prod(self.x_shape), math.prod(self.y_shape)
        return costs.multiply(x, y, math.prod(self.z_shape))


@dataclass(frozen=True)
class MatMulSS(Call):
    """Z = X @ Y of two secrets with numpy's matmul broadcasting over the leading axes:
    X (..., M, K), Y (..., K, N). A matrix Beaver triple from the dealer, one round."""

    x_shape: Shape
    y_shape: Shape

    @property
    def z_shape(self) -> Shape:
        lead = np.broadcast_shapes(self.x_shape[:-2], self.y_shape[:-2])
        return (*(int(d) for d in lead), self.x_shape[-2], self.y_shape[-1])

    @property
    def macs(self) -> int:
        """Ring multiply-adds of one product X @ Y."""
        return math.prod(self.z_shape) * self.x_shape[-1]

    def cost(self) -> Cost:
        x, y = math.prod(self.x_shape), math.prod(self.y_shape)
        return costs.matmul_ss(x, y, math.prod(self.z_shape), self.macs)


@dataclass(frozen=True)
class Square(Call):
    """Z = X * X of one secret of n elements: a Beaver pair (A, A^2), one opening."""

    n: int

    def cost(self) -> Cost:
        return costs.square(self.n)


@dataclass(frozen=True)
class Truncate(Call):
    """Drop `shift` fractional bits of n elements (known-MSB truncation, one round)."""

    n: int
    shift: int

    def cost(self) -> Cost:
        return costs.truncate(self.n)


@dataclass(frozen=True)
class Relu(Call):
    """ReLU of n elements, `shift` bits truncated in the same protocol (4 rounds)."""

    n: int
    shift: int

    def cost(self) -> Cost:
        return costs.relu(self.n, self.shift)


@dataclass(frozen=True)
class Sign(Call):
    """[x >= 0] of n elements as arithmetic 0/1 shares (the ReLU's comparison, 4 rounds)."""

    n: int

    def cost(self) -> Cost:
        return costs.sign(self.n)


@dataclass(frozen=True)
class MaxPairs(Call):
    """The max of k candidates ([k, n] in, n out) with all k(k-1)/2 pairs compared at once
    and the winner selected by an AND of its comparison bits, in 5 rounds
    (`costs.max_pairs`); with `relu` (a shift, 0..62) also against 0, giving the ReLU of
    the max with `relu` bits truncated."""

    n: int
    k: int
    relu: int | None = None

    def cost(self) -> Cost:
        return costs.max_pairs(self.n, self.k, self.relu)


def power_levels(exponents: tuple[int, ...]) -> list[list[tuple[int, int, int]]]:
    """The products that raise t to every exponent in `exponents`, level by level: each
    level's products (e, hi, lo), e = hi + lo, use only exponents of earlier levels, so a
    level is one round. hi is the largest power of two below e (e.g. 7 = 4 + 3, 16 = 8 + 8),
    so t^e is ready at level ceil(log2 e): the doubling addition chain."""
    need: set[int] = set()

    def add(e: int) -> None:
        if e > 1 and e not in need:
            need.add(e)
            hi = 1 << ((e - 1).bit_length() - 1)
            add(hi)
            add(e - hi)

    for e in exponents:
        add(int(e))
    levels: list[list[tuple[int, int, int]]] = []
    for e in sorted(need):
        lv = (e - 1).bit_length()
        while len(levels) < lv:
            levels.append([])
        hi = 1 << ((e - 1).bit_length() - 1)
        levels[lv - 1].append((e, hi, e - hi))
    return [lv for lv in levels if lv]


@dataclass(frozen=True)
class Powers(Call):
    """t^e for each e in `exponents` of n elements, t = x truncated by `shift` bits, every
    power truncated back to t's scale: each wire opened once, masked (`power_levels`)."""

    n: int
    shift: int
    scale: int
    exponents: tuple[int, ...]

    def levels(self) -> list[list[tuple[int, int, int]]]:
        return power_levels(self.exponents)

    def cost(self) -> Cost:
        prods = [p for lv in self.levels() for p in lv]
        squares = sum(1 for _, hi, lo in prods if hi == lo)
        return costs.powers(self.n, len(self.levels()), len(prods), squares)


@dataclass(frozen=True)
class SignFss(Call):
    """[x >= 0] of n elements as arithmetic 0/1 shares in one round: a masked opening and a
    dealer-made distributed comparison function (FSS keys, to both parties)."""

    n: int

    def cost(self) -> Cost:
        return costs.sign_fss(self.n)

    def dealer_p0(self) -> int:
        return costs.dcf_key(self.n, ring=True)


@dataclass(frozen=True)
class ReluFss(Call):
    """ReLU of n elements (`shift` bits truncated in the same protocol) in two rounds: a
    one-bit DCF for the sign, then a daBit select (FSS keys, to both parties)."""

    n: int
    shift: int

    def cost(self) -> Cost:
        return costs.relu_fss(self.n, self.shift)

    def dealer_p0(self) -> int:
        return costs.dcf_key(self.n, ring=False, bits=costs.relu_fss_bits(self.shift))


CALL_TYPES: tuple[type[Call], ...] = (
    Linear,
    Multiply,
    MatMulSS,
    Truncate,
    Relu,
    Square,
    Sign,
    Powers,
    SignFss,
    ReluFss,
    MaxPairs,
)
