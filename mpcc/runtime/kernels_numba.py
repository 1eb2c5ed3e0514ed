"""The compiled ring loops behind `mpcc.runtime.kernels`: numba kernels over Z_2^64 (uint64
with wraparound) for matrix products, convolution and pooling windows.

They take C-contiguous uint64 arrays of checked shapes and plain ints (`kernels` prepares
them), so each compiles for one signature only (and is cached on disk). They call one another,
so they stay in this one file: numba's disk cache is invalidated only by changes to the file
that defines a cached function, not by changes to the kernels it calls from other files.

numpy's integer matmul does not use BLAS (it is a naive loop), so these are numba kernels.
Every kernel is single-threaded and releases the GIL (`nogil`): in the runtime the two compute
parties are two threads of one process, each on its own core, calling kernels concurrently.
numba's parallel backends abort on concurrent `prange` calls, so there is no `parallel=True`.

Matrix products use C[i, j] = sum_k A[i, k] * Bt[j, k] with both operands contiguous along k:
a 4x4 tile of C stays in 16 scalar accumulators, LLVM vectorises the k loop into 16 vector
reductions, and each step loads 8 vectors for 16 vector multiply-adds. matmul transposes B
into that layout (or, for an A of a few rows, streams rows of B instead). Convolutions use
im2col into that layout (the flattened weights already are A), or, when each output channel
reads one input channel (depthwise, or C == 1), a direct kernel that adds one shifted copy of
the zero-padded image per kernel tap. Both read windows from the same padded "polyphase"
planes, which make every stride, dilation and padding a constant offset.
"""

from __future__ import annotations

import numba
import numpy as np

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
def transpose(b):
    k, n = b.shape
    out = np.empty((n, k), np.uint64)
    for p0 in range(0, k, 32):
        for j0 in range(0, n, 32):
            for p in range(p0, min(p0 + 32, k)):
                for j in range(j0, min(j0 + 32, n)):
                    out[j, p] = b[p, j]
    return out


@_jit
def matmul(a, b):
    c = np.empty((a.shape[0], b.shape[1]), np.uint64)
    if a.shape[0] < FEW_ROWS:
        _gemm_nn_rows(a, b, c)
    else:
        _gemm_nt(a, transpose(b), c)
    return c


@_jit
def batched_matmul(a, b, c):
    """c[i] = a[i] @ b[i] for C-contiguous a (L, M, K), b (L, K, N), c (L, M, N)."""
    for i in range(a.shape[0]):
        if a.shape[1] < FEW_ROWS:
            _gemm_nn_rows(a[i], b[i], c[i])
        else:
            _gemm_nt(a[i], transpose(b[i]), c[i])


@_jit
def matmul_nt(a, bt):
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
def conv_im2col(x, w3, out4, oh_n, ow_n, kh, kw, sh, sw, pt, pl, dh, dw):
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
def conv_depthwise(x, w2, out, kh, kw, sh, sw, pt, pl, dh, dw):
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
def pool_windows(x, out, kh, kw, sh, sw, pt, pl, dh, dw, pad):
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
