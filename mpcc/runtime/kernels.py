"""Ring kernels over Z_2^64: matmul, convolution and pooling on uint64 with wraparound.

numpy's integer matmul does not use BLAS (it is a naive loop), so these are numba kernels.
Every kernel is single-threaded and releases the GIL (`nogil`): in the runtime the two compute
parties are two threads of one process, each on its own core, calling kernels concurrently.
numba's parallel backends abort on concurrent `prange` calls, so there is no `parallel=True`.

The public functions accept uint64 (or int64, the same ring elements) arrays of any layout,
check shapes, and pass C-contiguous uint64 arrays and plain ints to the compiled kernels, so
each kernel compiles for one signature only (and is cached on disk).

Matrix products use C[i, j] = sum_k A[i, k] * Bt[j, k] with both operands contiguous along k:
a 4x4 tile of C stays in 16 scalar accumulators, LLVM vectorises the k loop into 16 vector
reductions, and each step loads 8 vectors for 16 vector multiply-adds. matmul transposes B
into that layout (or, for an A of a few rows, streams rows of B instead). Convolutions use
im2col into that layout (the flattened weights already are A), or, when each output channel
reads one input channel (depthwise, or C == 1), a direct kernel that adds one shifted copy of
the zero-padded image per kernel tap. Both read windows from the same padded "polyphase"
planes, which make every stride, dilation and padding a constant offset.

Other spatial ranks reuse the 2-D kernels: a 1-D signal is a plane of height 1 (a view), and a
3-D volume is handled one depth tap at a time, its output depths' input planes gathered into
the batch axis of one 2-D call (`conv`, `pool_windows`, `sum_pool`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from mpcc.compiler.poolshapes import pool_counts, pool_output_shape, window, windows

_ZERO = np.uint64(0)
# Rows of Bt per column block of the product: their K words should stay in L2.
_L2_WORDS = 32768
# Below this many rows of A, matmul streams B row by row: transposing B would cost more.
FEW_ROWS = 16

_jit = numba.njit(cache=True, nogil=True)


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------


@_jit
def _tile4x4(a, bt, c, i, j):
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    b0, b1, b2, b3 = bt[j], bt[j + 1], bt[j + 2], bt[j + 3]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = _ZERO
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = _ZERO
    for k in range(a.shape[1]):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s00, s01, s02, s03
    c[i + 1, j], c[i + 1, j + 1], c[i + 1, j + 2], c[i + 1, j + 3] = s10, s11, s12, s13
    c[i + 2, j], c[i + 2, j + 1], c[i + 2, j + 2], c[i + 2, j + 3] = s20, s21, s22, s23
    c[i + 3, j], c[i + 3, j + 1], c[i + 3, j + 2], c[i + 3, j + 3] = s30, s31, s32, s33


@_jit
def _tile4x1(a, bt, c, i, j):
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    b0 = bt[j]
    s0 = s1 = s2 = s3 = _ZERO
    for k in range(a.shape[1]):
        y = b0[k]
        s0 += a0[k] * y
        s1 += a1[k] * y
        s2 += a2[k] * y
        s3 += a3[k] * y
    c[i, j], c[i + 1, j], c[i + 2, j], c[i + 3, j] = s0, s1, s2, s3


@_jit
def _tile1x4(a, bt, c, i, j):
    a0 = a[i]
    b0, b1, b2, b3 = bt[j], bt[j + 1], bt[j + 2], bt[j + 3]
    s0 = s1 = s2 = s3 = _ZERO
    for k in range(a.shape[1]):
        x = a0[k]
        s0 += x * b0[k]
        s1 += x * b1[k]
        s2 += x * b2[k]
        s3 += x * b3[k]
    c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s0, s1, s2, s3


@_jit
def _tile1x1(a, bt, c, i, j):
    a0, b0 = a[i], bt[j]
    s = _ZERO
    for k in range(a.shape[1]):
        s += a0[k] * b0[k]
    c[i, j] = s


@_jit
def _gemm_nt(a, bt, c):
    """c[:] = a @ bt.T for C-contiguous a (M, K), bt (N, K), c (M, N)."""
    m, k = a.shape
    n = bt.shape[0]
    m4 = m - m % 4
    block = max(4, (_L2_WORDS // max(k, 1)) // 4 * 4)
    for j0 in range(0, n, block):
        j1 = min(j0 + block, n)
        j4 = j1 - (j1 - j0) % 4
        for i in range(0, m4, 4):
            for j in range(j0, j4, 4):
                _tile4x4(a, bt, c, i, j)
            for j in range(j4, j1):
                _tile4x1(a, bt, c, i, j)
        for i in range(m4, m):
            for j in range(j0, j4, 4):
                _tile1x4(a, bt, c, i, j)
            for j in range(j4, j1):
                _tile1x1(a, bt, c, i, j)


@_jit
def _gemm_nn_rows(a, b, c):
    """c[:] = a @ b streaming rows of b (no transpose); for an `a` with few rows."""
    m, k = a.shape
    n = b.shape[1]
    k4 = k - k % 4
    for i in range(m):
        for j in range(n):
            c[i, j] = 0
        for p in range(0, k4, 4):
            x0, x1, x2, x3 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
            for j in range(n):
                c[i, j] += x0 * b[p, j] + x1 * b[p + 1, j] + x2 * b[p + 2, j] + x3 * b[p + 3, j]
        for p in range(k4, k):
            x = a[i, p]
            for j in range(n):
                c[i, j] += x * b[p, j]


@_jit
def _transpose(b):
    k, n = b.shape
    out = np.empty((n, k), np.uint64)
    for p0 in range(0, k, 32):
        for j0 in range(0, n, 32):
            for p in range(p0, min(p0 + 32, k)):
                for j in range(j0, min(j0 + 32, n)):
                    out[j, p] = b[p, j]
    return out


@_jit
def _matmul(a, b):
    c = np.empty((a.shape[0], b.shape[1]), np.uint64)
    if a.shape[0] < FEW_ROWS:
        _gemm_nn_rows(a, b, c)
    else:
        _gemm_nt(a, _transpose(b), c)
    return c


@_jit
def _batched_matmul(a, b, c):
    """c[i] = a[i] @ b[i] for C-contiguous a (L, M, K), b (L, K, N), c (L, M, N)."""
    for i in range(a.shape[0]):
        if a.shape[1] < FEW_ROWS:
            _gemm_nn_rows(a[i], b[i], c[i])
        else:
            _gemm_nt(a[i], _transpose(b[i]), c[i])


@_jit
def _matmul_nt(a, bt):
    c = np.empty((a.shape[0], bt.shape[0]), np.uint64)
    _gemm_nt(a, bt, c)
    return c


# ---------------------------------------------------------------------------------------------
# Sliding windows (convolution and pooling)
#
# An (H, W) image plane is scattered once into sh*sw zero-padded "polyphase" planes of shape
# (hq, wq): phase (r % sh, s % sw) holds padded position (r, s) at (r // sh, s // sw). Window
# tap (i, j) of output (oh, ow) is then at flat offset oh*wq + ow + offs[i*kw + j] of the
# phase buffer, for every stride and dilation, with no bounds tests. The planes cover exactly
# the padded region the outputs read (anything past the image, including a ceil_mode overhang,
# stays padding), and one spare row lets a tap sweep all OH*wq positions in one contiguous
# loop: the "wide" columns ow >= OW are computed and dropped.
# ---------------------------------------------------------------------------------------------


@_jit
def _plane_shape(oh_n, ow_n, kh, kw, sh, sw, dh, dw):
    return oh_n + (kh - 1) * dh // sh + 1, ow_n + (kw - 1) * dw // sw


@_jit
def _tap_offsets(kh, kw, sh, sw, dh, dw, hq, wq):
    offs = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            phase = (i * dh % sh) * sw + j * dw % sw
            offs[i * kw + j] = phase * hq * wq + (i * dh // sh) * wq + j * dw // sw
    return offs


@_jit
def _fill_planes(plane, dst, pt, pl, sh, sw, hq, wq):
    """Scatter an image plane (H, W) into its polyphase planes (flat `dst`, padding preset)."""
    h, w = plane.shape
    size = hq * wq
    rows = min(h, hq * sh - pt)
    cols = min(w, wq * sw - pl)
    for r in range(rows):
        pr = pt + r
        base = (pr % sh) * sw * size + (pr // sh) * wq
        src = plane[r]
        if sw == 1:
            line = dst[base + pl : base + pl + cols]
            for s in range(cols):
                line[s] = src[s]
        else:
            for s in range(cols):
                ps = pl + s
                dst[base + (ps % sw) * size + ps // sw] = src[s]


@_jit
def _conv_im2col(x, w3, out4, oh_n, ow_n, kh, kw, sh, sw, pt, pl, dh, dw):
    """out4[n, g] (Og, OH*OW) = w3[g] (Og, Cg*kh*kw) @ im2col(x[n], group g).T."""
    c_n = x.shape[1]
    groups, kk = w3.shape[0], w3.shape[2]
    cg, taps = c_n // groups, kh * kw
    hq, wq = _plane_shape(oh_n, ow_n, kh, kw, sh, sw, dh, dw)
    offs = _tap_offsets(kh, kw, sh, sw, dh, dw, hq, wq)
    planes = np.zeros((c_n, sh * sw * hq * wq), np.uint64)
    cols = np.empty((oh_n * ow_n, kk), np.uint64)
    for n in range(x.shape[0]):
        for c in range(c_n):
            _fill_planes(x[n, c], planes[c], pt, pl, sh, sw, hq, wq)
        for g in range(groups):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    row, base = cols[oh * ow_n + ow], oh * wq + ow
                    for c in range(cg):
                        src = planes[g * cg + c]
                        for t in range(taps):
                            row[c * taps + t] = src[base + offs[t]]
            _gemm_nt(w3[g], cols, out4[n, g])


@_jit
def _conv_depthwise(x, w2, out, kh, kw, sh, sw, pt, pl, dh, dw):
    """Convolution where output channel o reads only input channel o // (O // C) (Cg == 1).

    w2 is (O, kh*kw). Each tap adds tap * (shifted phase plane) over all OH*wq positions at
    once: one long contiguous multiply-add loop per tap.
    """
    c_n = x.shape[1]
    o_n, taps = w2.shape
    oh_n, ow_n = out.shape[2], out.shape[3]
    mult = o_n // c_n
    hq, wq = _plane_shape(oh_n, ow_n, kh, kw, sh, sw, dh, dw)
    offs = _tap_offsets(kh, kw, sh, sw, dh, dw, hq, wq)
    planes = np.zeros(sh * sw * hq * wq, np.uint64)
    span = oh_n * wq
    acc = np.empty(span, np.uint64)
    for n in range(x.shape[0]):
        for c in range(c_n):
            _fill_planes(x[n, c], planes, pt, pl, sh, sw, hq, wq)
            for o in range(c * mult, (c + 1) * mult):
                for p in range(span):
                    acc[p] = 0
                for t in range(taps):
                    tap, src = w2[o, t], planes[offs[t] : offs[t] + span]
                    for p in range(span):
                        acc[p] += tap * src[p]
                for oh in range(oh_n):
                    row, wide = out[n, o, oh], acc[oh * wq : oh * wq + ow_n]
                    for ow in range(ow_n):
                        row[ow] = wide[ow]


@_jit
def _pool_windows(x, out, kh, kw, sh, sw, pt, pl, dh, dw, pad):
    oh_n, ow_n, taps = out.shape[2], out.shape[3], out.shape[4]
    hq, wq = _plane_shape(oh_n, ow_n, kh, kw, sh, sw, dh, dw)
    offs = _tap_offsets(kh, kw, sh, sw, dh, dw, hq, wq)
    planes = np.full(sh * sw * hq * wq, pad, np.uint64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            _fill_planes(x[n, c], planes, pt, pl, sh, sw, hq, wq)
            for oh in range(oh_n):
                for ow in range(ow_n):
                    win, base = out[n, c, oh, ow], oh * wq + ow
                    for t in range(taps):
                        win[t] = planes[base + offs[t]]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


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
    return _matmul(a, b)


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
    _batched_matmul(a3, b3, c)
    return c.reshape(*lead, m, n)


def dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ring product over the last axis: x (..., K) @ w (K, N) -> (..., N), mod 2^64."""
    x, w = _ring(x, None, "x"), _ring(w, 2, "w")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"dense: shapes {x.shape} and {w.shape} do not chain")
    return matmul(x.reshape(-1, w.shape[0]), w).reshape(*x.shape[:-1], w.shape[1])


def transpose(w: np.ndarray) -> np.ndarray:
    """A (K, N) ring matrix as its C-contiguous transpose (N, K): the operand `dense_t` takes."""
    return _transpose(_ring(w, 2, "w"))


def dense_t(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """`dense(x, wt.T)` with the weight already transposed: x (..., K) @ wt.T, wt (N, K).

    For a weight used many times (every query of a session), transposing it once with
    `transpose` saves a weight-sized transpose per call."""
    x, wt = _ring(x, None, "x"), _ring(wt, 2, "wt")
    if x.ndim < 1 or x.shape[-1] != wt.shape[1]:
        raise ValueError(f"dense_t: shapes {x.shape} and {wt.shape}.T do not chain")
    return _matmul_nt(x.reshape(-1, wt.shape[1]), wt).reshape(*x.shape[:-1], wt.shape[0])


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
        _conv_depthwise(x, w.reshape(o, kh * kw), out, kh, kw, sh, sw, pt, pl, dh, dw)
        return out
    out = np.empty((n, groups, o // groups, oh * ow), np.uint64)
    w3 = w.reshape(groups, o // groups, cg * kh * kw)
    _conv_im2col(x, w3, out, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw)
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
    _pool_windows(x, out, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], pad)
    return out


def _sum_pool_2d(x, k, s, p, d, ceil_mode: bool) -> np.ndarray:
    oh, ow = pool_output_shape(x.shape[2:], k, s, p, d, ceil_mode)
    out = np.empty((*x.shape[:2], oh, ow), np.uint64)
    ones = np.ones((x.shape[1], k[0] * k[1]), np.uint64)
    _conv_depthwise(x, ones, out, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])
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
