"""Rules for pooling (1-3 spatial axes): max by a tournament over the backend's ReLU, sums and
means local."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Instr
from mpcc.compiler.ops import maxpool_levels
from mpcc.compiler.ops.pool import pairs_levels
from mpcc.compiler.poolshapes import avgpool_counts
from mpcc.runtime import kernels
from mpcc.runtime.rules.base import Backend, register
from mpcc.runtime.rules.compare import ReluFn

MaxFn = Callable[[np.ndarray, int | None], np.ndarray]  # ([k, ...], ReLU shift) -> the max

# MaxPool's padding. The tournament compares differences a - b, and the comparison needs
# |a - b| < 2^62, so a MaxPool input must satisfy |x| < 2^61 at its scale (at 2f = 32 bits:
# |v| < 2^29 in real terms). The pad is the bottom of that range: below every legal value,
# and pad - x stays in (-2^62, 0] for every legal x.
MAXPOOL_PAD = -(2**61)


def maxpool(x: np.ndarray, attrs: dict, party: int, relu: ReluFn, max_pairs: MaxFn) -> np.ndarray:
    """Max over windows by a tournament, max(a, b) = b + relu(a - b) a level at a time, or
    (`cmp` "pairs") by the backend's max over all of a window's candidates at once; with
    `relu_shift`, the ReLU of the max with that many bits truncated.

    Exact for inputs with |x| < 2^61 (as signed ring elements); padded positions hold
    `MAXPOOL_PAD`, which loses every comparison with such an input."""
    win = kernels.pool_windows(
        x,
        tuple(attrs["kernel"]),
        tuple(attrs["strides"]),
        tuple(attrs["pads"]),
        tuple(attrs["dilations"]),
        bool(attrs["ceil_mode"]),
        _pad(party),
    )
    shift = attrs.get("relu_shift")
    if attrs.get("cmp") == "pairs":
        return _max_by_pairs(np.moveaxis(win, -1, 0), party, shift, max_pairs)
    cand = [win[..., j] for j in range(win.shape[-1])]
    for pairs in maxpool_levels(len(cand)):
        a = np.stack(cand[0 : 2 * pairs : 2])
        b = np.stack(cand[1 : 2 * pairs : 2])
        m = b + relu(a - b, 0)
        cand = list(m) + cand[2 * pairs :]
    return cand[0] if shift is None else relu(cand[0], shift)


def _max_by_pairs(cand: np.ndarray, party: int, shift: int | None, max_pairs: MaxFn) -> np.ndarray:
    """The max over axis 0 of cand [K, ...], in the levels of `pairs_levels(K)`: each level
    fills its last group with pads and takes every group's max by all pairs at once (the
    last level with the ReLU, if any)."""
    levels = pairs_levels(len(cand))
    for i, (k, groups) in enumerate(levels):
        if groups * k > len(cand):
            pad = np.full((groups * k - len(cand), *cand.shape[1:]), _pad(party), np.uint64)
            cand = np.concatenate([cand, pad])
        grouped = cand.reshape(groups, k, *cand.shape[1:]).swapaxes(0, 1)
        cand = max_pairs(np.ascontiguousarray(grouped), shift if i == len(levels) - 1 else None)
    return cand[0]


def _pad(party: int) -> int:
    """Party p's share of `MAXPOOL_PAD` (public: party 0 holds it)."""
    return MAXPOOL_PAD % 2**64 if party == 0 else 0


def sumpool(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Window sums over the spatial axes (a pool instruction's window attributes)."""
    return kernels.sum_pool(
        x,
        tuple(attrs["kernel"]),
        tuple(attrs["strides"]),
        tuple(attrs["pads"]),
        bool(attrs["ceil_mode"]),
        attrs.get("dilations"),
    )


def avgpool(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Window sums; in mode 'mul' times round(2^recip_bits / count) per position."""
    s = sumpool(x, attrs)
    if attrs["mode"] == "shift":
        return s
    div = avgpool_counts(x.shape[2:], attrs)
    recip = np.rint(2.0 ** attrs["recip_bits"] / div).astype(np.int64).view(np.uint64)
    return s * recip


def _maxpool(b: Backend, ins: Instr, args: list[np.ndarray]) -> np.ndarray:
    return maxpool(args[0], ins.attrs, b.party, b.relu, b.max_pairs)


register(ops.maxpool, _maxpool)
register(ops.avgpool, lambda b, ins, args: avgpool(args[0], ins.attrs))
register(ops.sumpool, lambda b, ins, args: sumpool(args[0], ins.attrs))
