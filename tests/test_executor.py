"""The executor's checks on the material it is handed, its per-session weight layout, and
the PRG's keystream."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mpcc.compiler import costmodel
from mpcc.compiler.calls import Relu
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import MaterialError
from mpcc.runtime import dealer, executor, kernels
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from tests.onnx_builders import model, node, rand


def _mlp():
    m = model(
        [
            node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
            node("Relu", ["h"], ["r"]),
            node("MatMul", ["r", "W2"], ["y"]),
        ],
        {"x": ["N", 12]},
        ["y"],
        {"W1": rand(20, 12) * 0.3, "B1": rand(20, seed=1) * 0.1, "W2": rand(20, 5, seed=2)},
    )
    return compile_onnx(m, (17, 12))


def test_relu_material_with_another_shift_is_refused(monkeypatch) -> None:
    prog, weights = _mlp()
    assert any(i.op.name == "relu" and i.attrs["shift"] == 16 for i in prog.instrs)

    def wrong_shift(prog, ins):
        return [
            dataclasses.replace(c, shift=c.shift - 1) if isinstance(c, Relu) else c
            for c in costmodel.calls(prog, ins)
        ]

    # The dealer and both parties agree on material truncating 15 bits; the plan asks for 16.
    monkeypatch.setattr(executor, "calls", wrong_shift)
    monkeypatch.setattr(dealer, "calls", wrong_shift)
    with LocalCluster(prog, weights) as cluster, pytest.raises(MaterialError, match="shift=16"):
        cluster.predict(rand(17, 12, seed=3))


@pytest.mark.parametrize("public", [False, True])
def test_matmul_weights_are_transposed_once_per_session(monkeypatch, public) -> None:
    prog, weights = _mlp()
    if public:
        prog.public_weights = True
    calls = []
    transpose = kernels.transpose

    def counting(w):
        calls.append(w.shape)
        return transpose(w)

    monkeypatch.setattr(kernels, "transpose", counting)
    x = rand(40, 12, seed=4)  # three queries of 17
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
    # P0 and P1 lay out each of the two matmul weights (operand and F, or W), the dealer B
    per_session = 2 * (1 if public else 2) * 2 + (0 if public else 2)
    assert len(calls) == per_session
    assert np.abs(got - predict(prog, weights, x)).max() < 1e-3


@pytest.mark.parametrize("n", [0, 5, 1 << 18, (1 << 18) + 1, 3 * (1 << 18) + 17])
def test_prg_bytes_are_the_aes_ctr_keystream_across_chunks(n) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from mpcc.runtime.prg import Prg

    key = bytes(range(16))
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n + 7))
    p = Prg(key)
    first, rest = p.bytes(7), p.bytes(n)
    assert first.tobytes() + rest.tobytes() == stream
    assert rest.flags.writeable and rest.shape == (n,)


def test_values_are_freed_after_their_last_use() -> None:
    from mpcc.runtime.executor import last_uses

    prog, _ = _mlp()
    free = last_uses(prog)
    freed = [v for vs in free for v in vs]
    outputs = {v for _, v in prog.outputs}
    assert sorted(freed) == sorted(set(range(len(prog.values))) - outputs)  # each once
    defined = {ins.out: j for j, ins in enumerate(prog.instrs)}
    for i, vs in enumerate(free):
        for v in vs:
            readers = [j for j, ins in enumerate(prog.instrs) if v in ins.args]
            assert i == max(readers, default=defined[v]), (i, v)  # after its last reader


def test_prepare_pauses_before_each_call(monkeypatch) -> None:
    """`prepare`'s pause hook (a serving party blocks there during an online phase) runs
    once before each call's material, at both parties."""
    prog, weights = _mlp()
    seen: list[int] = []
    original = executor.PartyExecutor.prepare

    def paused(self, query, bundle, pause=None):
        return original(self, query, bundle, lambda: seen.append(self.party))

    monkeypatch.setattr(executor.PartyExecutor, "prepare", paused)
    with LocalCluster(prog, weights) as cluster:
        cluster.predict(rand(17, 12, seed=3))
    per_query = sum(len(costmodel.calls(prog, ins)) for ins in prog.instrs)
    assert per_query > 0
    assert seen.count(0) == seen.count(1) > 0
    assert seen.count(0) % per_query == 0
