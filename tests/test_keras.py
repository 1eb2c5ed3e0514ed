"""The Keras frontend: model sources (.keras, .h5, weights files), shapes, NHWC layers.

Every compiled model is checked three ways: onnxruntime on the exported graph against Keras
itself (the export and its rewrites are faithful), and the cleartext interpreter and the
secure runtime against onnxruntime.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mpcc.errors import ModelError

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

from keras import layers as L  # noqa: E402

from mpcc import api  # noqa: E402
from mpcc.compiler.pipeline import compile_onnx  # noqa: E402
from mpcc.frontends import keras as kf  # noqa: E402
from mpcc.runtime.cleartext import predict  # noqa: E402
from mpcc.runtime.cluster import LocalCluster  # noqa: E402
from mpcc.zoo.reference import run_logits, run_onnxruntime  # noqa: E402
from tests.export_cache import cache_exports  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

S = (2, 12, 12, 3)


@pytest.fixture(autouse=True)
def _cached_exports(monkeypatch, request) -> None:
    """torch's dynamo exporter takes ~1.5 s a graph: keep each test's exported graphs on disk,
    keyed by everything that decides them (tests/export_cache.py)."""
    cache_exports(monkeypatch, request)


def rand(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def seq(*layers, batch_shape=S, name: str = "seq") -> keras.Model:
    keras.utils.set_random_seed(1)  # the weights' values only
    return keras.Sequential([keras.Input(batch_shape=batch_shape), *layers], name=name)


def keras_out(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x)).astype(np.float64)


def check(model: keras.Model, x: np.ndarray, dynamo: bool | None = None, softmax=False):
    """Export, compile, run in cleartext and securely; compare with onnxruntime and Keras."""
    proto = kf.export(model, input_shape=x.shape, dynamo=dynamo)
    ref = run_logits(proto, x)
    full = run_onnxruntime(proto, x)
    np.testing.assert_allclose(full, keras_out(model, x), atol=1e-4, rtol=1e-4)
    prog, weights = compile_onnx(proto)
    tol = 2e-3 * max(1.0, float(np.abs(ref).max()))
    clear = predict(prog, weights, x)
    assert np.abs(clear - ref).max() <= tol, prog.text()
    with LocalCluster(prog, weights) as cluster:
        secure = cluster.predict(x)
    assert np.abs(secure - ref).max() <= tol, prog.text()
    if softmax:
        assert not np.allclose(ref, full)  # the plan returns the logits before the softmax
    return proto, prog


# ---- model sources ----------------------------------------------------------------------


def small(batch: int | None = 1) -> keras.Model:
    return seq(L.Conv2D(4, 3), L.ReLU(), L.Flatten(), L.Dense(3), batch_shape=(batch, 8, 8, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[keras.Model, Path]:
    """A small model with non-default weights and the directory its files are saved in."""
    d = tmp_path_factory.mktemp("keras")
    model = small()
    for v in model.weights:
        v.assign(rand(v.shape, seed=len(v.path)) * 0.5)
    model.save(d / "full.keras")
    model.save(d / "full.h5")  # legacy HDF5 full-model format
    model.save_weights(d / "w.weights.h5")
    shutil.copyfile(d / "w.weights.h5", d / "renamed.h5")  # Keras 3 format, plain .h5 name
    return model, d


def _same(a: keras.Model, b: keras.Model) -> None:
    x = rand((1, 8, 8, 1), seed=3)
    np.testing.assert_allclose(keras_out(a, x), keras_out(b, x), atol=1e-6)


def test_import_keras_uses_the_torch_backend() -> None:
    assert kf.import_keras().backend.backend() == "torch"
    assert kf.is_keras_model(small()) and not kf.is_keras_model(object())


@pytest.mark.parametrize("name", ["full.keras", "full.h5"])
def test_whole_model_files(trained, name) -> None:
    model, d = trained
    _same(kf.load(d / name), model)
    proto = kf.export(d / name)
    x = rand((1, 8, 8, 1), seed=4)
    np.testing.assert_allclose(run_onnxruntime(proto, x), keras_out(model, x), atol=1e-5)
    prog, _ = api.compile(d / name)
    assert prog.name == "full" and prog.value(prog.inputs[0][1]).shape == (1, 8, 8, 1)


@pytest.mark.parametrize("name", ["w.weights.h5", "renamed.h5", "full.h5"])
def test_weights_files_into_an_architecture_given_in_code(trained, name) -> None:
    model, d = trained
    _same(kf.load_weights(small(), d / name), model)
    proto = kf.export(small(), weights=d / name)
    x = rand((1, 8, 8, 1), seed=5)
    np.testing.assert_allclose(run_onnxruntime(proto, x), keras_out(model, x), atol=1e-5)
    prog, w = api.compile(small(), weights=d / name)
    np.testing.assert_allclose(predict(prog, w, x), keras_out(model, x), atol=2e-3)


def test_legacy_keras2_weights_file(trained, tmp_path) -> None:
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    import h5py

    model, _ = trained
    path = tmp_path / "keras2.h5"
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, model)
    _same(kf.load_weights(small(), path), model)


def test_weights_only_file_needs_the_architecture(trained) -> None:
    _, d = trained
    for name in ("w.weights.h5", "renamed.h5"):
        with pytest.raises(ModelError, match="weights only, no architecture"):
            kf.export(d / name)
        with pytest.raises(ModelError, match="weights only"):
            api.compile(d / name)


def test_weights_that_do_not_fit(trained) -> None:
    _, d = trained
    other = seq(L.Flatten(), L.Dense(2), batch_shape=(1, 8, 8, 1))
    with pytest.raises(ModelError, match="cannot load these weights"):
        kf.load_weights(other, d / "w.weights.h5")


# ---- shapes -----------------------------------------------------------------------------


def test_batch_from_the_model_or_input_shape() -> None:
    assert kf.input_shape_of(small(batch=1)) == (1, 8, 8, 1)
    assert kf.input_shape_of(small(batch=None)) == (1, 8, 8, 1)  # unknown batch: 1
    assert kf.input_shape_of(small(batch=None), (5, 8, 8, 1)) == (5, 8, 8, 1)
    with pytest.raises(ModelError, match="does not fit"):
        kf.input_shape_of(small(batch=2), (3, 8, 8, 1))
    with pytest.raises(ModelError, match="does not fit"):
        kf.input_shape_of(small(batch=None), (1, 8, 8))
    prog, _ = api.compile(small(batch=None), input_shape="4x8x8x1")
    assert prog.batch == 4
    prog, _ = api.compile(small(batch=None), np.zeros((3, 8, 8, 1)))
    assert prog.batch == 3


def test_free_spatial_dims_need_input_shape() -> None:
    model = seq(L.Conv2D(2, 3), L.GlobalAveragePooling2D(), batch_shape=(None, None, None, 1))
    with pytest.raises(ModelError, match="give input_shape"):
        kf.export(model)
    proto = kf.export(model, input_shape=(1, 10, 10, 1))
    x = rand((1, 10, 10, 1))
    np.testing.assert_allclose(run_onnxruntime(proto, x), keras_out(model, x), atol=1e-5)


def test_nhwc_input_is_kept_and_layout_changes_are_local() -> None:
    model = seq(L.Conv2D(4, 3, padding="same"), L.ReLU(), L.Flatten(), L.Dense(5))
    proto, prog = check(model, rand(S))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(S)
    from mpcc.compiler.costmodel import instr_cost

    transposes = [i for i in prog.instrs if i.op.name == "transpose"]
    assert transposes and all(instr_cost(prog, i).rounds == 0 for i in transposes)


def test_layout_transposes_that_meet_cancel() -> None:
    """Keras wraps each layer in NHWC <-> NCHW Transposes; those that meet across ReLU6, padding
    and the folded bias and batch norm cancel, so the plan keeps only the input's. ReLU then
    meets the MaxPool and moves after it."""
    model = seq(
        L.Conv2D(4, 3, padding="same"),
        L.ReLU(6.0),
        L.ZeroPadding2D(1),
        L.DepthwiseConv2D(3),
        L.BatchNormalization(),
        L.ReLU(),
        L.MaxPooling2D(2),
        L.Conv2D(5, 1),
        L.GlobalAveragePooling2D(),
        L.Dense(3),
    )
    proto, prog = check(model, rand(S))
    assert sum(n.op_type == "Transpose" for n in proto.graph.node) == 7
    assert [i.op.name for i in prog.instrs if i.op.name in ("transpose", "relu", "maxpool")] == [
        "transpose",
        "maxpool",
        "relu",
    ]


# ---- layers -----------------------------------------------------------------------------

LAYERS = {
    "conv_same_stride2": lambda: seq(L.Conv2D(4, 3, strides=2, padding="same")),
    "conv_valid_dilated": lambda: seq(L.Conv2D(4, 3, dilation_rate=2)),
    "conv_no_bias_relu": lambda: seq(L.Conv2D(4, 3, use_bias=False, activation="relu")),
    "depthwise_multiplier": lambda: seq(L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)),
    "separable": lambda: seq(L.SeparableConv2D(5, 3, padding="same")),
    "batchnorm_relu6": lambda: seq(L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(max_value=6.0)),
    "leaky_relu": lambda: seq(L.LeakyReLU(negative_slope=0.2)),
    "prelu": lambda: seq(
        L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.1, 0.4), shared_axes=[1, 2])
    ),
    "maxpool_valid": lambda: seq(L.MaxPooling2D(2)),
    "maxpool_same_edge": lambda: seq(L.MaxPooling2D(3, strides=2, padding="same")),
    "avgpool_same_edge": lambda: seq(
        L.AveragePooling2D(2, padding="same"), batch_shape=(1, 7, 7, 2)
    ),
    "global_avg_dense": lambda: seq(L.GlobalAveragePooling2D(), L.Dense(5)),
    "global_avg_keepdims": lambda: seq(L.GlobalAveragePooling2D(keepdims=True), L.Flatten()),
    "global_max_dense": lambda: seq(L.GlobalMaxPooling2D(), L.Dense(5)),
    "zero_padding_cropping": lambda: seq(
        L.ZeroPadding2D(((1, 2), (0, 1))), L.Cropping2D(((0, 1), (2, 0)))
    ),
    "reshape_permute_dense": lambda: seq(L.Reshape((36, 12)), L.Permute((2, 1)), L.Dense(3)),
    "rescaling_conv": lambda: seq(L.Rescaling(1 / 255.0, offset=-0.5), L.Conv2D(2, 3)),
    "dense_dropout_softmax": lambda: seq(
        L.Flatten(), L.Dense(8, activation="relu"), L.Dropout(0.5), L.Dense(4, "softmax")
    ),
}


def _functional() -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input(batch_shape=S)
    a = L.Conv2D(4, 3, padding="same")(inp)
    b = L.Conv2D(4, 1)(inp)
    s = L.Add()([a, b])
    c = L.Concatenate()([s, L.Subtract()([a, b])])
    return keras.Model(inp, L.Multiply()([c, c]), name="functional")


LAYERS["functional_add_sub_concat_mul"] = _functional


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name: str) -> None:
    model = LAYERS[name]()
    shape = tuple(model.inputs[0].shape)
    check(model, rand(shape, seed=2) * 2, softmax=name.endswith("softmax"))


@pytest.mark.parametrize("name", ["maxpool_same_edge", "global_avg_dense", "batchnorm_relu6"])
def test_layer_torchscript_exporter(name: str) -> None:
    """The TorchScript exporter leaves no-op Casts and computed pads: they are folded away."""
    model = LAYERS[name]()
    proto, _ = check(model, rand(tuple(model.inputs[0].shape), seed=2), dynamo=False)
    assert "Cast" not in {n.op_type for n in proto.graph.node}


def test_rewrites_leave_nothing_the_compiler_rejects() -> None:
    model = seq(
        L.PReLU(),
        L.MaxPooling2D(2, padding="same"),
        L.GlobalMaxPooling2D(),
        batch_shape=(1, 7, 7, 3),
    )
    ops = {n.op_type for n in kf.export(model).graph.node}
    assert not ops & {"Neg", "ReduceMax", "ReduceMean", "Cast"}
    assert "Pad" not in ops  # edge padding became Slice + Concat


def test_unsupported_layer_is_a_clear_error() -> None:
    # sigmoid is supported now; a sine is not (Keras emits ONNX Sin)
    model = seq(L.Flatten(), L.Dense(3), L.Lambda(keras.ops.sin))
    with pytest.raises(ModelError, match="Sin"):
        api.compile(model)
