"""Whole trained networks, compiled and run securely, against onnxruntime on real digits.

* MobileNet-style (depthwise + pointwise convs, BatchNorm, ReLU6) and a ResNet with three
  residual stages, from ``mpcc.zoo.models``, exported by both torch exporters;
* a Keras CNN (channels-last: NHWC input, BatchNorm, depthwise conv, residual Add,
  ``padding="same"`` max pooling, global average pooling, Dropout, softmax), via the Keras
  frontend. Its trained weights are cached next to the zoo's (``zoo_cache_dir``).

Each must agree with onnxruntime's argmax on every one of ``N`` test digits (two queries of
``BATCH``, the second padded), with every logit within ``MAX_LOGIT_ERROR``; the same on the whole
test split is the ``all`` case, behind ``slow``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.runtime.cluster import LocalCluster
from mpcc.zoo.reference import run_logits
from tests.export_cache import cache_exports

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

N = 48  # test digits per model in the default suite (the digits test split has 450)
BATCH = 32
DIGITS = pytest.mark.parametrize(
    "n", [N, pytest.param(None, marks=pytest.mark.slow)], ids=[str(N), "all"]
)
MAX_LOGIT_ERROR = 0.02


def _secure_matches_onnxruntime(prog, weights, onnx_model, x: np.ndarray) -> None:
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    ref = run_logits(onnx_model, x, batch=BATCH)
    assert got.shape == ref.shape == (len(x), 10)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    err = float(np.abs(got - ref).max())
    assert agree == 1.0, f"argmax agreement {agree:.2%}"
    assert err <= MAX_LOGIT_ERROR, f"max |logit error| {err:.4f}"
    want = estimate(prog).total
    assert (stats.rounds, stats.sent[0]) == (want.rounds, want.sent)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["mobilenet", "resnet_deep"])
@DIGITS
def test_torch_zoo_network(n, name, dynamo, zoo_model, digits_test) -> None:
    path = zoo_model(name, dynamo=dynamo)
    prog, weights = compile_onnx(path, (BATCH, 1, 28, 28), name=name)
    ops = [i.op.name for i in prog.instrs]
    if name == "mobilenet":
        assert "clip" in ops and any(
            i.op.name == "conv" and i.attrs["groups"] > 1 for i in prog.instrs
        ), "depthwise convs and ReLU6 expected"
    else:
        assert ops.count("add") >= 3, "three residual additions expected"
    assert not any("BatchNormalization" in n and "Mul" in n for n in prog.notes), prog.notes
    _secure_matches_onnxruntime(prog, weights, path, digits_test[0][:n])


# ---- Keras (NHWC) -----------------------------------------------------------------------

KERAS_RECIPE = "v1: adam 3e-3, 12 epochs, batch 32, seed 0, bn momentum 0.9"


def keras_cnn(batch_size: int | None = None):
    """A channels-last Keras CNN touching the Keras idioms the frontend rewrites."""
    import keras
    from keras import layers as L

    def bn():
        return L.BatchNormalization(momentum=0.9)

    inp = keras.Input(batch_shape=(batch_size, 28, 28, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = L.ReLU()(bn()(x))
    x = L.MaxPooling2D(2)(x)  # 14
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.ReLU(max_value=6.0)(bn()(x))
    x = L.Conv2D(32, 1, use_bias=False)(x)
    x = L.ReLU(max_value=6.0)(bn()(x))
    x = L.MaxPooling2D(2)(x)  # 7
    y = bn()(L.Conv2D(32, 3, padding="same", use_bias=False)(x))
    x = L.ReLU()(L.Add()([x, y]))
    x = L.MaxPooling2D(2, padding="same")(x)  # 7 -> 4: Keras pads one edge row/column
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.2)(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out, name="keras_cnn")


@pytest.fixture(scope="module")
def keras_weights(zoo_cache_dir: Path, digits_train) -> Path:
    """The Keras CNN's trained weights (``.weights.h5``), trained once and cached."""
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
    keras = pytest.importorskip("keras")
    key = f"{KERAS_RECIPE}|{keras.__version__}|{keras.backend.backend()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    path = zoo_cache_dir / f"keras_cnn-{digest}.weights.h5"
    if path.exists():
        return path
    keras.utils.set_random_seed(0)  # reproducible training only
    model = keras_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x, y = digits_train
    model.fit(x.transpose(0, 2, 3, 1), y, epochs=12, batch_size=32, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)  # readers never see half a file
    return path


@DIGITS
def test_keras_nhwc_network(n, keras_weights, digits_test, monkeypatch, request) -> None:
    from mpcc import api

    cache_exports(monkeypatch, request)  # tests/export_cache.py: the export is content-keyed
    model = keras_cnn(batch_size=BATCH)
    proto = api.export_onnx(model, weights=keras_weights)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [
        BATCH,
        28,
        28,
        1,
    ]
    prog, weights = compile_onnx(proto, name="keras_cnn")
    assert prog.value(prog.inputs[0][1]).shape == (BATCH, 28, 28, 1)
    ops = [i.op.name for i in prog.instrs]
    assert {"transpose", "maxpool", "clip", "avgpool", "concat"} <= set(ops), ops
    x = np.ascontiguousarray(digits_test[0][:n].transpose(0, 2, 3, 1))
    accuracy = float((run_logits(proto, x).argmax(1) == digits_test[1][:n]).mean())
    assert accuracy >= 0.85, f"the Keras CNN is undertrained: test accuracy {accuracy:.1%}"
    _secure_matches_onnxruntime(prog, weights, proto, x)
