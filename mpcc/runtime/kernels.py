"""Ring kernels over Z_2^64: matmul, convolution and pooling on uint64 with wraparound.

The public functions accept uint64 (or int64, the same ring elements) arrays of any layout,
check shapes, and pass C-contiguous uint64 arrays and plain ints to the compiled kernels
(`kernels_numba`, which says how they compute), so each kernel compiles for one signature only
(and is cached on disk).

Other spatial ranks reuse the 2-D kernels: a 1-D signal is a plane of height 1 (a view), and a
3-D volume is handled one depth tap at a time, its output depths' input planes gathered into
the batch axis of one 2-D call (`conv`, `pool_windows`, `sum_pool`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpcc.compiler.poolshapes import pool_counts, pool_output_shape, window, windows
from mpcc.runtime import kernels_numba as nb
from mpcc.runtime.kernels_numba import FEW_ROWS

_ZERO = np.uint64(0)


def _ring(x: np.ndarray, ndim: int | None, name: str) -> np.ndarray:
    """`x` as a C-contiguous uint64 array (int64 is reinterpreted); other dtypes are an error."""
    x = np.asarray(x)
    if x.dtype == np.int64:
        x = x.view(np.uint64)
    elif x.dtype != np.uint64:
        raise TypeError(f"{name}: expected a uint64 ring array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring product a @ b of uint64 matrices (M, K) x (K, N) -> (M, N), mod 2^64."""
    a, b = _ring(a, 2, "a"), _ring(b, 2, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
    return nb.matmul(a, b)


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring product with numpy's matmul broadcasting: a (..., M, K) @ b (..., K, N) ->
    (broadcast(...), M, N), mod 2^64. Both operands have at least two axes; an operand
    broadcast over the leading axes is copied out to the full batch."""
    a, b = _ring(a, None, "a"), _ring(b, None, "b")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"batched_matmul: shapes {a.shape} and {b.shape} do not chain")
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    (m, k), n = a.shape[-2:], b.shape[-1]
    a3 = np.ascontiguousarray(np.broadcast_to(a, (*lead, m, k))).reshape(-1, m, k)
    b3 = np.ascontiguousarray(np.broadcast_to(b, (*lead, k, n))).reshape(-1, k, n)
    c = np.empty((a3.shape[0], m, n), np.uint64)
    nb.batched_matmul(a3, b3, c)
    return c.reshape(*lead, m, n)


def dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ring product over the last axis: x (..., K) @ w (K, N) -> (..., N), mod 2^64."""
    x, w = _ring(x, None, "x"), _ring(w, 2, "w")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"dense: shapes {x.shape} and {w.shape} do not chain")
    return matmul(x.reshape(-1, w.shape[0]), w).reshape(*x.shape[:-1], w.shape[1])


def transpose(w: np.ndarray) -> np.ndarray:
    """A (K, N) ring matrix as its C-contiguous transpose (N, K): the operand `dense_t` takes."""
    return nb.transpose(_ring(w, 2, "w"))


def dense_t(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """`dense(x, wt.T)` with the weight already transposed: x (..., K) @ wt.T, wt (N, K).

    For a weight used many times (every query of a session), transposing it once with
    `transpose` saves a weight-sized transpose per call."""
    x, wt = _ring(x, None, "x"), _ring(wt, 2, "wt")
    if x.ndim < 1 or x.shape[-1] != wt.shape[1]:
        raise ValueError(f"dense_t: shapes {x.shape} and {wt.shape}.T do not chain")
    return nb.matmul_nt(x.reshape(-1, wt.shape[1]), wt).reshape(*x.shape[:-1], wt.shape[0])


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    strides: int | Sequence[int] = (1, 1),
    pads: int | Sequence[int] = (0, 0, 0, 0),
    dilations: int | Sequence[int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """ONNX Conv (no bias, zero padding) over the ring: x (N, C, H, W), w (O, C/groups, kh, kw).

    pads = [top, left, bottom, right]. Returns (N, O, OH, OW) uint64, exact mod 2^64; both
    operands may be arbitrary ring elements (the map is bilinear).
    """
    x, w = _ring(x, 4, "x"), _ring(w, 4, "w")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    groups = int(groups)
    if groups < 1 or c % groups or o % groups or cg * groups != c:
        raise ValueError(f"conv2d: x {x.shape}, w {w.shape} and groups={groups} do not agree")
    _, _, sh, sw, pt, pl, _, _, dh, dw = window((kh, kw), strides, pads, dilations)
    oh, ow = pool_output_shape((h, wd), (kh, kw), strides, pads, dilations)
    if cg == 1:  # depthwise, or a single input channel: no im2col
        out = np.empty((n, o, oh, ow), np.uint64)
        nb.conv_depthwise(x, w.reshape(o, kh * kw), out, kh, kw, sh, sw, pt, pl, dh, dw)
        return out
    out = np.empty((n, groups, o // groups, oh * ow), np.uint64)
    w3 = w.reshape(groups, o // groups, cg * kh * kw)
    nb.conv_im2col(x, w3, out, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw)
    return out.reshape(n, o, oh, ow)


def _as_planes(x: np.ndarray, rank: int) -> np.ndarray:
    """x (N, C, *spatial) of `rank` spatial axes, with a unit height for a 1-D signal."""
    return x[:, :, None, :] if rank == 1 else x


def _depth_taps(
    x: np.ndarray, k: int, s: int, d: int, head: int, out: int, pad: np.uint64
) -> list[np.ndarray]:
    """For each depth tap t of a volume x (N, C, D, H, W): the planes it reads for the `out`
    output depths, as a batch (N * out, C, H, W). Depths outside the volume hold `pad`."""
    n, c, depth = x.shape[:3]
    need = (out - 1) * s + (k - 1) * d + 1
    tail = max(0, need - head - depth)
    xp = x
    if head or tail:
        xp = np.full((n, c, head + depth + tail, *x.shape[3:]), pad, np.uint64)
        xp[:, :, head : head + depth] = x
    taps = []
    for t in range(k):
        planes = xp[:, :, t * d : t * d + (out - 1) * s + 1 : s]
        taps.append(
            np.ascontiguousarray(planes.transpose(0, 2, 1, 3, 4)).reshape(n * out, c, *x.shape[3:])
        )
    return taps


def conv(
    x: np.ndarray,
    w: np.ndarray,
    strides: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilations: int | Sequence[int] | None = None,
    groups: int = 1,
) -> np.ndarray:
    """ONNX Conv (no bias, zero padding) over the ring with 1, 2 or 3 spatial axes:
    x (N, C, *S), w (O, C/groups, *K) -> (N, O, *OS) uint64, exact mod 2^64.

    pads are ONNX's (begins, then ends). A 3-D convolution sums, over the kernel's depth
    taps, one 2-D convolution of the planes each tap reads (all output depths at once)."""
    x, w = _ring(x, None, "x"), _ring(w, None, "w")
    rank = x.ndim - 2
    if rank not in (1, 2, 3) or w.ndim != x.ndim:
        raise ValueError(f"conv: x {x.shape} and w {w.shape} need 1-3 spatial axes each")
    k, s, p, d = windows(rank, w.shape[2:], strides, pads, dilations)
    if rank == 2:
        return conv2d(x, w, s, p, d, groups)
    if rank == 1:
        out = conv2d(
            x[:, :, None, :], w[:, :, None, :], (1, *s), (0, p[0], 0, p[1]), (1, *d), groups
        )
        return out[:, :, 0, :]
    shape = pool_output_shape(x.shape[2:], k, s, p, d)
    n, o = x.shape[0], w.shape[0]
    acc = np.zeros((n * shape[0], o, *shape[1:]), np.uint64)
    taps = _depth_taps(x, k[0], s[0], d[0], p[0], shape[0], _ZERO)
    for t, planes in enumerate(taps):
        acc += conv2d(planes, w[:, :, t], s[1:], (p[1], p[2], p[4], p[5]), d[1:], groups)
    return np.ascontiguousarray(acc.reshape(n, shape[0], o, *shape[1:]).transpose(0, 2, 1, 3, 4))


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    strides: int | Sequence[int] = 1,
    pads: int | Sequence[int] = 0,
    dilations: int | Sequence[int] | None = None,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
) -> np.ndarray:
    """ONNX ConvTranspose (no bias) over the ring with 1-3 spatial axes: x (N, C, *S),
    w (C, O/groups, *K) -> (N, O, *OS), OS = s (S - 1) + output_padding + d (K - 1) + 1 -
    pads, exact mod 2^64.

    It is the convolution of x spread out by the strides (zeros between its elements) with
    the flipped kernel, each group's in and out channels swapped, padded fully: linear in x
    and in w, so a bilinear map like `conv`. The pads then crop the full result."""
    x, w = _ring(x, None, "x"), _ring(w, None, "w")
    rank = x.ndim - 2
    if rank not in (1, 2, 3) or w.ndim != x.ndim:
        raise ValueError(f"conv_transpose: x {x.shape} and w {w.shape} need 1-3 spatial axes")
    c, og = w.shape[:2]
    if groups < 1 or c != x.shape[1] or c % groups:
        raise ValueError(f"conv_transpose: x {x.shape}, w {w.shape}, groups={groups} disagree")
    k, s, p, d = windows(rank, w.shape[2:], strides, pads, dilations)
    extra = (output_padding,) * rank if np.isscalar(output_padding) else tuple(output_padding)
    spread = np.zeros(
        (*x.shape[:2], *((n - 1) * st + 1 for n, st in zip(x.shape[2:], s, strict=True))), np.uint64
    )
    spread[(slice(None), slice(None), *(slice(None, None, st) for st in s))] = x
    # (C, O/g, *K) -> (O, C/g, *K), flipped: group j's in/out channels swapped
    wg = w.reshape(groups, c // groups, og, *k).swapaxes(1, 2).reshape(groups * og, c // groups, *k)
    wf = np.ascontiguousarray(wg[(slice(None), slice(None), *(slice(None, None, -1),) * rank)])
    full_pad = [dd * (kk - 1) for kk, dd in zip(k, d, strict=True)]
    full = conv(spread, wf, 1, full_pad + full_pad, d, groups)
    out = []
    for i in range(rank):
        size = s[i] * (x.shape[2 + i] - 1) + extra[i] + d[i] * (k[i] - 1) + 1 - p[i] - p[i + rank]
        if size < 1:
            raise ValueError(f"conv_transpose: pads {p} leave no output on axis {i}")
        out.append(size)
    tail = [max(0, p[i] + out[i] - full.shape[2 + i]) for i in range(rank)]
    if any(tail):  # output_padding past the full result: positions no input reaches
        full = np.pad(full, [(0, 0), (0, 0), *((0, t) for t in tail)])
    crop = tuple(slice(p[i], p[i] + out[i]) for i in range(rank))
    return np.ascontiguousarray(full[(slice(None), slice(None), *crop)])


def _pool_windows_2d(x, k, s, p, d, ceil_mode: bool, pad: np.uint64) -> np.ndarray:
    oh, ow = pool_output_shape(x.shape[2:], k, s, p, d, ceil_mode)
    out = np.empty((*x.shape[:2], oh, ow, k[0] * k[1]), np.uint64)
    nb.pool_windows(x, out, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], pad)
    return out


def _sum_pool_2d(x, k, s, p, d, ceil_mode: bool) -> np.ndarray:
    oh, ow = pool_output_shape(x.shape[2:], k, s, p, d, ceil_mode)
    out = np.empty((*x.shape[:2], oh, ow), np.uint64)
    ones = np.ones((x.shape[1], k[0] * k[1]), np.uint64)
    nb.conv_depthwise(x, ones, out, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])
    return out


def _pool(x, kernel, strides, pads, dilations, ceil_mode: bool, pad: np.uint64, plane_fn):
    """Apply a 2-D pooling kernel `plane_fn(x4, k, s, p, d, ceil_mode)` to x with 1-3 spatial
    axes; its result's axes after the spatial ones (a window's taps) are concatenated over
    the depth taps of a volume."""
    x = _ring(x, None, "x")
    rank = x.ndim - 2
    if rank not in (1, 2, 3):
        raise ValueError(f"pool: x {x.shape} needs 1-3 spatial axes")
    k, s, p, d = windows(rank, kernel, strides, pads, dilations)
    if rank == 2:
        return plane_fn(x, k, s, p, d, ceil_mode)
    if rank == 1:
        out = plane_fn(x[:, :, None, :], (1, *k), (1, *s), (0, p[0], 0, p[1]), (1, *d), ceil_mode)
        return out[:, :, 0]
    shape = pool_output_shape(x.shape[2:], k, s, p, d, ceil_mode)
    n, c = x.shape[:2]
    planes = (p[1], p[2], p[4], p[5])
    parts = [
        plane_fn(t, k[1:], s[1:], planes, d[1:], ceil_mode)
        for t in _depth_taps(x, k[0], s[0], d[0], p[0], shape[0], pad)
    ]
    tail = parts[0].shape[4:]
    out = np.concatenate(parts, axis=-1) if tail else np.sum(parts, axis=0, dtype=np.uint64)
    out = out.reshape(n, shape[0], c, *out.shape[2:])
    return np.ascontiguousarray(np.moveaxis(out, 1, 2))


def pool_windows(
    x: np.ndarray,
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    dilations: int | Sequence[int] | None = None,
    ceil_mode: bool = False,
    pad_value: int = 0,
) -> np.ndarray:
    """Every pooling window of x (N, C, *S) (1-3 spatial axes) as (N, C, *OS, prod(kernel)),
    row-major in the window.

    Positions outside the input (padding, or the overhang of a ceil_mode window) hold
    `pad_value` reduced mod 2^64 (so -2**63 gives the most negative ring element).
    """
    pad = np.uint64(int(pad_value) % 2**64)
    return _pool(
        x,
        kernel,
        strides,
        pads,
        dilations,
        ceil_mode,
        pad,
        lambda *a: _pool_windows_2d(*a, pad),
    )


def sum_pool(
    x: np.ndarray,
    kernel: int | Sequence[int],
    strides: int | Sequence[int],
    pads: int | Sequence[int],
    ceil_mode: bool = False,
    dilations: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Sum over each pooling window of x (N, C, *S) -> (N, C, *OS); padding counts as 0."""
    return _pool(x, kernel, strides, pads, dilations, ceil_mode, _ZERO, _sum_pool_2d)


__all__ = [
    "FEW_ROWS",
    "conv",
    "conv_transpose",
    "batched_matmul",
    "conv2d",
    "dense",
    "dense_t",
    "matmul",
    "pool_counts",
    "pool_output_shape",
    "pool_windows",
    "sum_pool",
    "transpose",
]
