"""Sliding-window geometry (ONNX semantics) over any number of spatial axes, shared by the
compiler and the runtime kernels.

Pads are in ONNX order: every axis's begin, then every axis's end ([top, left, bottom, right]
in 2-D). A scalar stands for the same value on every axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _per_axis(
    v: int | Sequence[int] | None, n: int, name: str, default: int = 1
) -> tuple[int, ...]:
    if v is None:
        return (default,) * n
    t = (int(v),) * n if np.isscalar(v) else tuple(int(e) for e in v)
    if len(t) != n:
        raise ValueError(f"{name}: expected {n} values, got {v!r}")
    return t


def _pads(pads: int | Sequence[int], n: int) -> tuple[int, ...]:
    t = (int(pads),) * 2 * n if np.isscalar(pads) else tuple(int(e) for e in pads)
    if len(t) != 2 * n:
        raise ValueError(f"pads: expected {2 * n} values (begins, then ends), got {pads!r}")
    if min(t, default=0) < 0:
        raise ValueError(f"pads must be non-negative, got {pads!r}")
    return t


def window(
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    dilations: int | Sequence[int],
) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """(kh, kw, sh, sw, pt, pl, pb, pr, dh, dw) from 2-D ONNX-style window attributes."""
    return (
        *_per_axis(kernel, 2, "kernel"),
        *_per_axis(strides, 2, "strides"),
        *_pads(pads, 2),
        *_per_axis(dilations, 2, "dilations"),
    )  # type: ignore[return-value]


def windows(
    rank: int,
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    dilations: int | Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(kernel, strides, pads, dilations) as tuples for `rank` spatial axes."""
    return (
        _per_axis(kernel, rank, "kernel"),
        _per_axis(strides, rank, "strides"),
        _pads(pads, rank),
        _per_axis(dilations, rank, "dilations"),
    )


def _out_size(size: int, k: int, s: int, head: int, tail: int, d: int, ceil_mode: bool) -> int:
    span = size + head + tail - d * (k - 1) - 1
    if k < 1 or s < 1 or d < 1:
        raise ValueError(f"kernel, stride and dilation must be positive (k={k}, s={s}, d={d})")
    if span < 0:
        raise ValueError(f"window of size {k} (dilation {d}) does not fit input {size} + pads")
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    # A last window that would start in the tail padding is dropped (ONNX Runtime, PyTorch).
    if (out - 1) * s >= size + head:
        out -= 1
    return out


def pool_output_shape(
    input_hw: Sequence[int],
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    dilations: int | Sequence[int] | None = None,
    ceil_mode: bool = False,
) -> tuple[int, ...]:
    """Output spatial shape of ONNX Conv/MaxPool/AveragePool over the axes of `input_hw`.

    With `ceil_mode` the last partial window is kept unless it would start in the end
    padding. Convolution uses `ceil_mode=False`.
    """
    size = tuple(int(e) for e in input_hw)
    n = len(size)
    k, s, p, d = windows(n, kernel, strides, pads, dilations)
    return tuple(_out_size(size[i], k[i], s[i], p[i], p[i + n], d[i], ceil_mode) for i in range(n))


def pool_counts(
    input_hw: Sequence[int],
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    ceil_mode: bool = False,
    dilations: int | Sequence[int] | None = None,
    count_include_pad: bool = False,
) -> np.ndarray:
    """Elements each pooling window averages over, int64 of the output's spatial shape:
    AveragePool's divisors.

    By default the positions inside the input (count_include_pad=0). With
    `count_include_pad` the positions inside the padded input, as ONNX Runtime and PyTorch
    count them: a ceil_mode window's overhang past the end padding is not counted. The count
    is a product of one count per axis.
    """
    size = tuple(int(e) for e in input_hw)
    n = len(size)
    k, s, p, d = windows(n, kernel, strides, pads, dilations)
    out = pool_output_shape(size, k, s, p, d, ceil_mode)
    counts = np.ones((), np.int64)
    for i in range(n):
        lo, hi = (0, size[i]) if not count_include_pad else (-p[i], size[i] + p[i + n])
        pos = np.arange(out[i])[:, None] * s[i] - p[i] + np.arange(k[i])[None, :] * d[i]
        axis = ((pos >= lo) & (pos < hi)).sum(axis=1).astype(np.int64)
        counts = np.multiply.outer(counts, axis)
    return counts


def avgpool_counts(input_hw: Sequence[int], attrs: dict) -> np.ndarray:
    """`pool_counts` for an `avgpool` instruction's attributes."""
    return pool_counts(
        input_hw,
        attrs["kernel"],
        attrs["strides"],
        attrs["pads"],
        bool(attrs["ceil_mode"]),
        attrs.get("dilations"),
        count_include_pad=bool(attrs["count_include_pad"]),
    )
