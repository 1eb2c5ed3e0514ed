"""Integer client inputs: token ids one-hot encoded by the client, so an embedding Gather is
a masked-weight MatMul; inputs fixed with --fix-input fold away (Hugging Face masks)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpcc.cli import main
from mpcc.compiler import planfile
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.report import format_report
from mpcc.errors import InputError, ModelError
from mpcc.inputs import one_hot
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from tests.onnx_builders import run

V, D, N = 40, 8, 6


def bert_like_embeddings(with_mask: bool = True):
    """Word + position + token-type embeddings, a mask applied the way HF exports cast and
    broadcast it; ids, token types and mask are int64 inputs."""
    rng = np.random.default_rng(0)
    inits = {
        "word": rng.normal(size=(V, D)).astype(np.float32),
        "pos": rng.normal(size=(32, D)).astype(np.float32),
        "types": rng.normal(size=(2, D)).astype(np.float32),
        "pid": np.arange(N, dtype=np.int64)[None],
        "ax": np.array([2], np.int64),
        "one": np.float32(1.0),
        "big": np.float32(-1e4),
    }
    nodes = [
        helper.make_node("Gather", ["word", "ids"], ["e"], "word_emb"),
        helper.make_node("Gather", ["pos", "pid"], ["p"], "pos_emb"),  # constant: folds
        helper.make_node("Gather", ["types", "tt"], ["t"], "type_emb"),
        helper.make_node("Add", ["e", "p"], ["s0"], "add0"),
        helper.make_node("Add", ["s0", "t"], ["y0"], "add1"),
    ]
    inputs = [("ids", [1, N]), ("tt", [1, N])]
    if with_mask:
        nodes += [
            helper.make_node("Cast", ["mask"], ["mf"], "cast", to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"], "unsqueeze"),
            helper.make_node("Sub", ["one", "mu"], ["inv"], "invert"),
            helper.make_node("Mul", ["inv", "big"], ["bias"], "scale"),
            helper.make_node("Add", ["y0", "bias"], ["y"], "apply_mask"),
        ]
        inputs.append(("mask", [1, N]))
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"], "out"))
    g = helper.make_graph(
        nodes,
        "embeddings",
        [helper.make_tensor_value_info(t, TensorProto.INT64, s) for t, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N, D])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


FIXED = {"mask": 1, "tt": 0}


def test_embedding_lookup_matches_onnxruntime_and_is_priced():
    m = bert_like_embeddings()
    ids = np.random.default_rng(3).integers(0, V, (1, N))
    ref = run(m, {"ids": ids, "tt": np.zeros((1, N), np.int64), "mask": np.ones((1, N), np.int64)})
    plan = compile_onnx(m, fix_inputs=FIXED)
    prog = plan.program
    first = prog.instrs[0]
    assert first.attrs["encoding"] == "onehot" and first.attrs["depth"] == V
    # the mask's arithmetic folded away; positions and token types are added constants
    assert {i.op.name for i in prog.instrs} == {"input", "matmul", "add_w", "output"}
    report = format_report(prog)
    assert "input 'mask' fixed to 1" in report and "input 'tt' fixed to 0" in report
    assert f"input 'ids': integer ids, one-hot encoded by the client over {V} classes" in report
    assert np.abs(predict(*plan, ids) - ref[0]).max() < 1e-4
    with LocalCluster(plan) as cluster:
        got = cluster.predict(ids)
        stats = cluster.stats
    assert np.abs(got - ref[0]).max() < 1e-4
    cost = estimate(prog)
    assert cost.client_sent == stats.client_bytes == 8 * N * V  # the one-hot upload
    assert (stats.rounds, stats.sent[0], stats.dealer_bytes) == (1, 8 * N * V, 8 * N * D)
    assert (cost.total.rounds, cost.total.sent, cost.total.dealer) == (1, 8 * N * V, 8 * N * D)
    assert cost.total.macs == N * V * D


def test_two_tables_by_the_same_ids_and_token_types_as_a_secret_input():
    """Token types left as an input: a second one-hot input of depth 2."""
    m = bert_like_embeddings(with_mask=False)
    rng = np.random.default_rng(4)
    ids, tt = rng.integers(0, V, (1, N)), rng.integers(0, 2, (1, N))
    ref = run(m, {"ids": ids, "tt": tt})[0]
    plan = compile_onnx(m)
    encs = {i.attrs["name"]: i.attrs.get("depth") for i in plan.program.instrs[:2]}
    assert encs == {"ids": V, "tt": 2}
    from mpcc.runtime.cleartext import encode_weights, run_encoded
    from mpcc.runtime.fixedpoint import decode

    raw = run_encoded(
        plan.program,
        encode_weights(plan.program, plan.weights),
        {"ids": one_hot(ids, V), "tt": one_hot(tt, 2)},
    )["y"]
    scale = plan.program.value(plan.program.outputs[0][1]).scale
    assert np.abs(decode(raw, scale) - ref).max() < 1e-4


def test_plan_file_keeps_the_encoding(tmp_path):
    plan = compile_onnx(bert_like_embeddings(), fix_inputs=FIXED)
    path = tmp_path / "emb.mpcc"
    planfile.save(path, *plan)
    again = planfile.load(path)
    prog = again[0] if isinstance(again, tuple) else again.program
    assert prog.instrs[0].attrs == plan.program.instrs[0].attrs


@pytest.mark.parametrize(
    "ids, match",
    [
        (np.zeros((1, N)), "integer array"),  # float ids
        (np.full((1, N), V), f"outside \\[0, {V}\\)"),
        (np.full((1, N), -1), "outside"),
    ],
)
def test_bad_ids_are_clear_errors(ids, match):
    plan = compile_onnx(bert_like_embeddings(), fix_inputs=FIXED)
    with pytest.raises(InputError, match=match):
        predict(*plan, ids)
    with LocalCluster(plan) as cluster, pytest.raises(InputError, match=match):
        cluster.predict(ids)


def test_an_unfixed_mask_and_unknown_fixed_inputs_are_clear_errors():
    with pytest.raises(ModelError, match="--fix-input for unknown input 'nope'"):
        compile_onnx(bert_like_embeddings(), fix_inputs={"nope": 1})
    with pytest.raises(ModelError, match="Cast"):
        compile_onnx(bert_like_embeddings(), fix_inputs={"tt": 0})


def test_cli_fix_input(tmp_path, capsys):
    path = tmp_path / "emb.onnx"
    onnx.save(bert_like_embeddings(), str(path))
    out = tmp_path / "emb.mpcc"
    code = main(
        ["compile", str(path), "-o", str(out), "--fix-input", "mask=1", "--fix-input", "tt=0"]
    )
    assert code == 0 and out.exists()
    text = capsys.readouterr().out
    assert "encoding=onehot depth=40" in text and "fixed to 1" in text


def test_a_mask_computed_from_the_ids_is_a_column_of_the_one_hot():
    """mask = float(ids != PAD) (how a single-input export pads): a local gather of the
    one-hot's PAD column, then 1 - it; applied to the embeddings with a Beaver product."""
    rng = np.random.default_rng(5)
    word = rng.normal(size=(V, D)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["word", "ids"], ["e"], "word_emb"),
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"], "eq"),
        helper.make_node("Not", ["is_pad"], ["real"], "not"),
        helper.make_node("Cast", ["real"], ["m"], "cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "ax"], ["m3"], "unsqueeze"),
        helper.make_node("Mul", ["e", "m3"], ["y"], "mask"),
    ]
    g = helper.make_graph(
        nodes,
        "masked",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N, D])],
        [
            numpy_helper.from_array(word, "word"),
            numpy_helper.from_array(np.array(0, np.int64), "pad"),
            numpy_helper.from_array(np.array([2], np.int64), "ax"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ids = rng.integers(1, V, (1, N))
    ids[0, -2:] = 0  # padding
    ref = run(m, {"ids": ids})[0]
    assert (ref[0, -2:] == 0).all()
    plan = compile_onnx(m)
    names = [i.op.name for i in plan.program.instrs]
    assert "gather" in names and "mul" in names, plan.program.text()
    with LocalCluster(plan) as cluster:
        assert np.abs(cluster.predict(ids) - ref).max() < 1e-4


def test_ids_read_any_other_way_are_refused():
    m = bert_like_embeddings(with_mask=False)
    m.graph.node.append(helper.make_node("Cast", ["ids"], ["idf"], "ids_as_float", to=1))
    m.graph.output.append(helper.make_tensor_value_info("idf", TensorProto.FLOAT, [1, N]))
    with pytest.raises(ModelError, match="integer input 'ids' is read by node 'ids_as_float'"):
        compile_onnx(m)
