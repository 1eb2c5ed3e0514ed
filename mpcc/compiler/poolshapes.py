"""Pooling-window geometry (ONNX semantics), shared by the compiler and the runtime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pool_output_size(
    size: int,
    kernel: int,
    stride: int,
    pad_begin: int,
    pad_end: int,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of one spatial axis; with ceil_mode, a window that would start inside
    the end padding is dropped (as ONNX Runtime and PyTorch do)."""
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def pool_output_shape(
    hw: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> tuple[int, int]:
    """(OH, OW) for pads given as (top, left, bottom, right)."""
    return tuple(
        pool_output_size(
            hw[i], kernel[i], strides[i], pads[i], pads[i + 2], dilations[i], bool(ceil_mode)
        )
        for i in range(2)
    )


def pool_divisors(
    hw: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    ceil_mode: bool = False,
    count_include_pad: bool = False,
) -> np.ndarray:
    """int64[OH, OW]: how many elements AveragePool divides each window's sum by."""
    counts = []
    for i in range(2):
        n = pool_output_size(hw[i], kernel[i], strides[i], pads[i], pads[i + 2], 1, bool(ceil_mode))
        start = np.arange(n) * strides[i] - pads[i]
        end = start + kernel[i]
        lo, hi = (-pads[i], hw[i] + pads[i + 2]) if count_include_pad else (0, hw[i])
        counts.append(np.minimum(end, hi) - np.maximum(start, lo))
    return np.outer(counts[0], counts[1]).astype(np.int64)
