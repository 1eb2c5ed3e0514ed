"""Pooling-window geometry (ONNX semantics), shared by the compiler and the runtime kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    t = (int(v), int(v)) if np.isscalar(v) else tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"{name}: expected 2 values, got {v!r}")
    return t  # type: ignore[return-value]


def _pads4(pads: int | Sequence[int]) -> tuple[int, int, int, int]:
    t = (int(pads),) * 4 if np.isscalar(pads) else tuple(int(e) for e in pads)
    if len(t) != 4:
        raise ValueError(f"pads: expected [top, left, bottom, right], got {pads!r}")
    if min(t) < 0:
        raise ValueError(f"pads must be non-negative, got {pads!r}")
    return t  # type: ignore[return-value]


def window(
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    dilations: int | Sequence[int],
) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """(kh, kw, sh, sw, pt, pl, pb, pr, dh, dw) from ONNX-style window attributes."""
    return (
        *_pair(kernel, "kernel"),
        *_pair(strides, "strides"),
        *_pads4(pads),
        *_pair(dilations, "dilations"),
    )  # type: ignore[return-value]


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
    dilations: int | Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> tuple[int, int]:
    """Output (OH, OW) of ONNX Conv/MaxPool/AveragePool; pads = [top, left, bottom, right].

    With `ceil_mode` the last partial window is kept unless it would start in the bottom/right
    padding. Convolution uses `ceil_mode=False`.
    """
    h, w = (int(e) for e in input_hw)
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = window(kernel, strides, pads, dilations)
    return (
        _out_size(h, kh, sh, pt, pb, dh, ceil_mode),
        _out_size(w, kw, sw, pl, pr, dw, ceil_mode),
    )


def pool_counts(
    input_hw: Sequence[int],
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    ceil_mode: bool = False,
    dilations: int | Sequence[int] = (1, 1),
    count_include_pad: bool = False,
) -> np.ndarray:
    """Elements each pooling window averages over, int64 (OH, OW): AveragePool's divisors.

    By default the positions inside the image (count_include_pad=0). With
    `count_include_pad` the positions inside the padded image, as ONNX Runtime and PyTorch
    count them: a ceil_mode window's overhang past the bottom/right padding is not counted.
    """
    h, w = (int(e) for e in input_hw)
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = window(kernel, strides, pads, dilations)
    oh, ow = pool_output_shape((h, w), kernel, strides, pads, dilations, ceil_mode)
    lo_h, hi_h = (0, h) if not count_include_pad else (-pt, h + pb)
    lo_w, hi_w = (0, w) if not count_include_pad else (-pl, w + pr)
    rows = np.arange(oh)[:, None] * sh - pt + np.arange(kh)[None, :] * dh
    cols = np.arange(ow)[:, None] * sw - pl + np.arange(kw)[None, :] * dw
    n_rows = ((rows >= lo_h) & (rows < hi_h)).sum(axis=1)
    n_cols = ((cols >= lo_w) & (cols < hi_w)).sum(axis=1)
    return (n_rows[:, None] * n_cols[None, :]).astype(np.int64)


def avgpool_counts(input_hw: Sequence[int], attrs: dict) -> np.ndarray:
    """`pool_counts` for an `avgpool` instruction's attributes."""
    return pool_counts(
        input_hw,
        attrs["kernel"],
        attrs["strides"],
        attrs["pads"],
        bool(attrs["ceil_mode"]),
        count_include_pad=bool(attrs["count_include_pad"]),
    )
