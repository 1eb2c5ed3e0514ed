"""Local data movement on secrets: Gather at constant indices, Split, Tile and Expand, on any
axis, each compiled and run securely against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.onnx_builders import model, node, rand, run
from tests.test_ops import check_cleartext_and_secure

X = [2, 3, 4, 5]
I64 = np.int64

CASES = {
    "gather_scalar_axis1": ([node("Gather", ["x", "i"], ["y"], axis=1)], {"i": np.array(2, I64)}),
    "gather_2d_indices_negative_axis3": (
        [node("Gather", ["x", "i"], ["y"], axis=-1)],
        {"i": np.array([[4, 0], [-1, 2], [1, 1]], I64)},
    ),
    "gather_batch_axis0": (
        [node("Gather", ["x", "i"], ["y"], axis=0)],
        {"i": np.array([1, 0, 1], I64)},
    ),
    "split_axis2_sizes": (
        [
            node("Split", ["x", "s"], ["a", "b", "c"], axis=2),
            node("Mul", ["a", "c"], ["m"]),  # a and c are [2, 3, 1, 5] and [2, 3, 2, 5]
            node("Concat", ["m", "b", "c"], ["y"], axis=2),
        ],
        {"s": np.array([1, 1, 2], I64)},
    ),
    "split_equal_negative_axis": (
        [node("Split", ["x"], ["a", "b"], axis=-2), node("Add", ["a", "b"], ["y"])],
        {},
    ),
    "tile": ([node("Tile", ["x", "r"], ["y"])], {"r": np.array([1, 2, 1, 3], I64)}),
    "expand_rank_and_size": (
        [
            node("Slice", ["x", "st", "en", "ax"], ["s"]),  # [2, 3, 1, 5]
            node("Expand", ["s", "shape"], ["y"]),  # [2, 2, 3, 4, 5]
        ],
        {
            "st": np.array([0], I64),
            "en": np.array([1], I64),
            "ax": np.array([2], I64),
            "shape": np.array([2, 1, 1, 4, 1], I64),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_movement_on_secrets_matches_onnxruntime(name: str) -> None:
    nodes, inits = CASES[name]
    m = model(nodes, {"x": X}, ["y"], inits, name=name)
    x = rand(*X, seed=5)
    ref = run(m, {"x": x})[0].astype(np.float64)
    prog = check_cleartext_and_secure(m, x, ref, 1e-3 * max(1.0, float(np.abs(ref).max())), name)
    assert {"gather", "tile", "slice"} & {ins.op.name for ins in prog.instrs}, prog.text()


def test_multi_head_split_of_a_packed_projection() -> None:
    """q, k, v out of one packed projection, as torch's MultiheadAttention exports it:
    Reshape to [n, 3, d], Gather 0/1/2 on axis 1, then QK^T of two of them."""
    n, d = 6, 8
    nodes = [
        node("MatMul", ["x", "W"], ["p"]),
        node("Reshape", ["p", "s"], ["r"]),
        node("Gather", ["r", "i0"], ["q"], axis=1),
        node("Gather", ["r", "i1"], ["k"], axis=1),
        node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        node("MatMul", ["q", "kt"], ["y"]),
    ]
    inits = {
        "W": rand(d, 3 * d, seed=2) * 0.3,
        "s": np.array([n, 3, d], I64),
        "i0": np.array(0, I64),
        "i1": np.array(1, I64),
    }
    m = model(nodes, {"x": [n, d]}, ["y"], inits, name="packed_qk")
    x = rand(n, d, seed=3)
    ref = run(m, {"x": x})[0].astype(np.float64)
    check_cleartext_and_secure(m, x, ref, 2e-3 * max(1.0, float(np.abs(ref).max())))
