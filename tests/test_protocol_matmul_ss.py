"""Matrix product of two secrets (`matmul_ss`): the matrix Beaver triple protocol alone, and
attention-style ONNX graphs (MatMul of two computed tensors, Gemm with a computed B) compiled
and run securely against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler import calls, costs
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import MaterialError, ModelError
from mpcc.runtime import kernels
from mpcc.runtime.cleartext import Cleartext
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import matmul_ss
from tests.onnx_builders import model, node, rand, run
from tests.test_ops import check_cleartext_and_secure
from tests.test_protocol_multiply import CHI2_BOUND, max_chi2, record, ring
from tests.test_views import _chi2_bytes, _views
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


def secure_matmul(x, y, q: int = 0, log: list | None = None, seeds=(SEED0, SEED1)):
    """Deal, expand and run one product; returns (z, correction, traffic of both parties)."""
    call = calls.MatMulSS(x.shape, y.shape)
    prgs = lambda: [Prg.derive(s, "sess", q, 5) for s in seeds]  # noqa: E731
    corr = matmul_ss.deal(call, *prgs())
    p0, p1 = prgs()
    mats = [matmul_ss.expand(0, call, p0, None), matmul_ss.expand(1, call, p1, corr)]
    xs = share(x, Prg.derive(b"client seed 0000", "x", q))
    ys = share(y, Prg.derive(b"client seed 0000", "y", q))

    def party(ch, p):
        if log is not None:
            record(ch, log)
        return matmul_ss.run(ch, p, mats[p], xs[p], ys[p])

    z0, z1, chans = run_parties(party)
    return z0 + z1, corr, [c.traffic for c in chans]


SHAPES = [
    ((7, 5), (5, 3)),  # plain matrices
    ((2, 4, 16, 8), (2, 4, 8, 16)),  # attention scores: batch, heads, Q @ K^T
    ((3, 1, 17, 6), (4, 6, 2)),  # leading axes broadcast both ways
    ((1, 20, 33), (33, 19)),  # many rows (the transposing kernel path)
]


@pytest.mark.parametrize("xs,ys", SHAPES)
def test_ring_exact_against_the_cleartext_backend_and_priced(xs, ys):
    rng = np.random.default_rng(sum(xs) + 7 * sum(ys))
    for q in range(2):
        x, y = ring(rng, *xs), ring(rng, *ys)
        z, corr, traffic = secure_matmul(x, y, q)
        assert np.array_equal(z, Cleartext.matmul(None, x, y))
        # and the kernel is the ring product numpy computes on Python ints
        exact = np.matmul(x.astype(object), y.astype(object)) % 2**64
        assert np.array_equal(z, exact.astype(np.uint64))
        call = calls.MatMulSS(xs, ys)
        cost = call.cost()
        assert cost == costs.matmul_ss(x.size, y.size, z.size, call.macs)
        assert corr.dtype == np.uint64 and corr.nbytes == cost.dealer
        assert matmul_ss.PROTOCOL.correction_words(call) * 8 == cost.dealer
        for t in traffic:
            assert (t.rounds, t.bytes_sent) == (cost.rounds, cost.sent)


def test_material_is_a_matrix_triple():
    call = calls.MatMulSS((2, 3, 4), (4, 5))
    prgs = lambda: [Prg.derive(s, "m") for s in (SEED0, SEED1)]  # noqa: E731
    corr = matmul_ss.deal(call, *prgs())
    p0, p1 = prgs()
    m0, m1 = matmul_ss.expand(0, call, p0, None), matmul_ss.expand(1, call, p1, corr)
    assert np.array_equal(m0.c + m1.c, kernels.batched_matmul(m0.a + m1.a, m0.b + m1.b))


def test_material_is_used_once_and_checked():
    call = calls.MatMulSS((3, 4), (4, 2))
    prg = Prg.derive(SEED1, "x")
    with pytest.raises(MaterialError):
        matmul_ss.expand(1, call, prg, None)  # P1 without its correction
    with pytest.raises(MaterialError):
        matmul_ss.expand(1, call, prg, np.zeros(5, np.uint64))  # the wrong size
    with pytest.raises(MaterialError):
        matmul_ss.expand(0, call, prg, np.zeros(6, np.uint64))  # P0 takes none
    m = matmul_ss.expand(0, call, prg, None)
    m.used = True
    with pytest.raises(MaterialError, match="already used"):
        matmul_ss.run(None, 0, m, np.zeros((3, 4), np.uint64), np.zeros((4, 2), np.uint64))


def test_a_second_run_on_the_same_triple_is_refused():
    x, y = ring(np.random.default_rng(1), 4, 3), ring(np.random.default_rng(2), 3, 2)
    call = calls.MatMulSS(x.shape, y.shape)
    prgs = lambda: [Prg.derive(s, "again") for s in (SEED0, SEED1)]  # noqa: E731
    corr = matmul_ss.deal(call, *prgs())
    p0, p1 = prgs()
    mats = [matmul_ss.expand(0, call, p0, None), matmul_ss.expand(1, call, p1, corr)]
    xs, ys = share(x), share(y)
    run_parties(lambda ch, p: matmul_ss.run(ch, p, mats[p], xs[p], ys[p]))
    with pytest.raises(MaterialError, match="already used"):
        run_parties(lambda ch, p: matmul_ss.run(ch, p, mats[p], xs[p], ys[p]))


@pytest.mark.parametrize("kind", ["zero", "extreme"])
def test_openings_are_uniform(kind):
    """E and F, opened and as received, are uniform whatever X and Y are."""
    if kind == "zero":
        x, y = np.zeros((4, 8, 16), np.uint64), np.zeros((4, 16, 8), np.uint64)
    else:
        x = np.full((4, 8, 16), 2**63 - 1, np.uint64)
        y = (np.arange(4 * 16 * 8, dtype=np.uint64) << np.uint64(40)).reshape(4, 16, 8)
    opened_x, opened_y, received = [], [], []
    for q in range(24):
        log: list = []
        secure_matmul(x, y, q, log, seeds=(SEED0 + kind.encode(), SEED1 + kind.encode()))
        (sent, got), (_, got1) = log
        opened_x.append(sent[0] + got[0])
        opened_y.append(sent[1] + got[1])
        received += [got[0], got[1], got1[0], got1[1]]
    ox, oy = np.stack(opened_x), np.stack(opened_y)
    assert not np.any(ox == x.reshape(-1)) and not np.any(oy == y.reshape(-1))
    assert np.unique(np.concatenate([ox.ravel(), oy.ravel()])).size == ox.size + oy.size
    for words in (ox, oy, np.concatenate([r.ravel() for r in received])):
        assert max_chi2(words) < CHI2_BOUND


# ---- ONNX graphs ------------------------------------------------------------------------


def attention(n: int = 8, d: int = 6, heads: int = 2):
    """Self-attention scores and mixing without the softmax: (x Wq)(x Wk)^T (x Wv) / d, per
    head, as exporters write it (MatMul, Reshape, Transpose, MatMul of two secrets)."""
    hd = d // heads
    w = {f"W{c}": rand(d, d, seed=i) * 0.4 for i, c in enumerate("qkv")}
    shape4 = np.array([1, n, heads, hd], np.int64)
    nodes = []
    for c in "qkv":
        nodes += [
            node("MatMul", ["x", f"W{c}"], [f"{c}0"]),
            node("Reshape", [f"{c}0", "s4"], [f"{c}1"]),
            node("Transpose", [f"{c}1"], [c], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        node("MatMul", ["q", "kt"], ["s"]),
        node("Div", ["s", "scale"], ["p"]),
        node("MatMul", ["p", "v"], ["o"]),
        node("Transpose", ["o"], ["o1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["o1", "s3"], ["y"]),
    ]
    inits = {**w, "s4": shape4, "s3": np.array([1, n, d], np.int64), "scale": np.float32(d)}
    return model(nodes, {"x": [1, n, d]}, ["y"], inits, name="attention")


CASES = {
    "attention": (attention(), [1, 8, 6]),
    "matmul_broadcast": (
        model(
            [
                node("MatMul", ["x", "W"], ["a"]),  # [2, 3, 4, 5]
                node("Slice", ["x", "st", "en", "ax"], ["b0"]),  # [1, 3, 4, 4]
                node("Reshape", ["b0", "s"], ["b"]),  # [3, 4, 4] broadcast over the 2
                node("MatMul", ["b", "a"], ["y"]),
            ],
            {"x": [2, 3, 4, 4]},
            ["y"],
            {
                "W": rand(4, 5, seed=2) * 0.5,
                "st": np.array([0], np.int64),
                "en": np.array([1], np.int64),
                "ax": np.array([0], np.int64),
                "s": np.array([3, 4, 4], np.int64),
            },
        ),
        [2, 3, 4, 4],
    ),
    "gemm_computed_b": (
        model(
            [
                node("MatMul", ["x", "W"], ["b"]),
                node("Gemm", ["x", "b", "C"], ["y"], transA=1, alpha=0.5, beta=2.0),
            ],
            {"x": [6, 4]},
            ["y"],
            {"W": rand(4, 3, seed=3), "C": rand(3, seed=4)},
        ),
        [6, 4],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_products_of_two_secrets_match_onnxruntime(name):
    m, shape = CASES[name]
    x = rand(*shape, seed=11)
    ref = run(m, {"x": x})[0].astype(np.float64)
    prog = check_cleartext_and_secure(m, x, ref, 2e-3 * max(1.0, float(np.abs(ref).max())), name)
    assert any(ins.op.name == "matmul_ss" for ins in prog.instrs)


def test_a_vector_operand_is_refused_with_the_node_named():
    m = model(
        [
            node("Slice", ["x", "st", "en"], ["r"]),
            node("Reshape", ["r", "s"], ["v"]),
            node("MatMul", ["x", "v"], ["y"]),
        ],
        {"x": [4, 4]},
        ["y"],
        {"st": np.array([0]), "en": np.array([1]), "s": np.array([4])},
    )
    with pytest.raises(ModelError, match="rank"):
        compile_onnx(m, (4, 4))


def test_views_of_attention_are_masked():
    """What each party receives during an attention query looks uniform, whatever the
    input, and carries none of the input's encoded words."""
    shape = [1, 16, 8]
    prog, weights = compile_onnx(attention(16, 8), tuple(shape))
    for label, x in {
        "zeros": np.zeros(shape),
        "random": rand(*shape, seed=3),
        "large": np.full(shape, 7.0),
    }.items():
        views = _views(prog, weights, x)
        secret = np.unique(encode(x, prog.frac_bits).reshape(-1))
        for party, words in views.items():
            assert words.size > 3000, (label, party)
            assert _chi2_bytes(words) < 255 + 6 * 22.6, (label, party)
            assert np.intersect1d(words, secret[secret != 0]).size == 0, (label, party)
