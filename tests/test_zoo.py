"""Tests for the reference zoo: the digits loader, the models, both torch exporters, onnxruntime.

Cold (nothing cached) this trains all six models once (about 30-40 s on two cores); warm it
only loads them from ``.cache/mpcc``.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from mpcc.errors import ModelError
from mpcc.zoo.digits import load_digits_28
from mpcc.zoo.reference import run_logits, run_onnxruntime, without_final_softmax

torch = pytest.importorskip("torch")

from mpcc.frontends.torch import export  # noqa: E402
from mpcc.zoo.models import MODELS, SPECS, accuracy, build  # noqa: E402

NAMES = list(MODELS)
WITH_BN = ["resnet", "mobilenet", "resnet_deep"]


def op_types(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def opset_of(m: onnx.ModelProto) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def torch_out(module: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.tensor(np.asarray(X))).double().numpy()


# ---- digits ------------------------------------------------------------------------------


def test_digits_shape_range_labels(digits_test, digits_train):
    for X, y in (digits_test, digits_train):
        assert X.dtype == np.float32 and X.ndim == 4 and X.shape[1:] == (1, 28, 28)
        assert y.dtype == np.int64 and y.shape == (len(X),)
        assert X.min() == 0.0 and 0.9 < X.max() <= 1.0
        assert set(np.unique(y)) == set(range(10))
        # MNIST-like framing: a 2-pixel empty border around a 24x24 digit.
        border = np.ones((28, 28), bool)
        border[2:26, 2:26] = False
        assert not X[:, 0, border].any()
        # Ink somewhere in every image, and smooth (no 8x8 blockiness: neighbours differ).
        assert (X.reshape(len(X), -1).max(1) > 0.3).all()
    n_test, n_train = len(digits_test[1]), len(digits_train[1])
    assert n_test + n_train == 1797
    assert 0.24 < n_test / 1797 < 0.26
    # Stratified: every class is about 25% test.
    counts_test = np.bincount(digits_test[1], minlength=10)
    counts_all = counts_test + np.bincount(digits_train[1], minlength=10)
    assert np.all(np.abs(counts_test - 0.25 * counts_all) <= 1)


def test_digits_deterministic_and_partitioned(digits_test):
    X1, y1 = load_digits_28("test")
    assert np.array_equal(X1, digits_test[0]) and np.array_equal(y1, digits_test[1])
    X2 = load_digits_28("test")[0]
    X2[0] = 7.0  # callers get their own copy
    assert np.array_equal(load_digits_28("test")[0], X1)
    Xa, ya = load_digits_28("all")
    Xtr, ytr = load_digits_28("train")
    key = lambda X, y: sorted(x.tobytes() + bytes([c]) for x, c in zip(X, y, strict=True))  # noqa: E731
    assert key(Xa, ya) == sorted(key(X1, y1) + key(Xtr, ytr))
    with pytest.raises(ValueError, match="split"):
        load_digits_28("validation")


# ---- trained models and their ONNX -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_model_accuracy(name, zoo_module, digits_test):
    acc = accuracy(zoo_module(name), *digits_test)
    assert acc >= SPECS[name].min_accuracy, f"{name}: test accuracy {acc:.3f}"


@pytest.mark.parametrize("name", WITH_BN)
def test_batchnorm_statistics_are_trained(name, zoo_module):
    bns = [m for m in zoo_module(name).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


@pytest.mark.parametrize(
    "name, dynamo",
    [(n, False) for n in NAMES] + [("lenet", True), ("resnet", True)],
    ids=lambda v: {False: "torchscript", True: "dynamo"}.get(v, v) if isinstance(v, bool) else v,
)
def test_onnx_matches_torch(name, dynamo, zoo_model, zoo_module, digits_test, record_property):
    path = zoo_model(name, dynamo=dynamo)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    record_property("opset", opset_of(m))
    record_property("ops", " ".join(op_types(m)))
    assert opset_of(m) == 17 if not dynamo else opset_of(m) >= 18
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"

    X, y = digits_test
    ref = torch_out(zoo_module(name), X)
    got = run_onnxruntime(path, X, batch=128)
    assert got.dtype == np.float64 and got.shape == (len(X), 10)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert (got.argmax(1) == y).mean() >= SPECS[name].min_accuracy


@pytest.mark.parametrize(
    "name, dynamo",
    [(n, False) for n in WITH_BN] + [("resnet", True)],
    ids=lambda v: {False: "torchscript", True: "dynamo"}.get(v, v) if isinstance(v, bool) else v,
)
def test_onnx_keeps_batchnorm(name, dynamo, zoo_model, zoo_module):
    ops = op_types(onnx.load(zoo_model(name, dynamo=dynamo)))
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in zoo_module(name).modules())
    assert ops.count("BatchNormalization") == n_bn
    if name == "resnet":
        assert ops[-1] == "Softmax"
        assert ops.count("Add") == 2


def test_build_is_cached(zoo_model):
    path = zoo_model("mlp")
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert zoo_model("mlp") == path
    assert time.perf_counter() - t0 < 0.5
    assert path.stat().st_mtime_ns == mtime


def test_build_rejects_unknown_name(tmp_path):
    with pytest.raises(KeyError, match="unknown zoo model"):
        build("vgg", cache_dir=tmp_path)


# ---- exporter and reference on tiny modules ----------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _tiny() -> _Tiny:
    torch.manual_seed(0)  # not secret
    m = _Tiny()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_is_quiet_and_correct(dynamo, tmp_path, capfd, recwarn):
    m = _tiny()
    x = torch.rand(3, 1, 4, 4)
    proto = export(m, x, tmp_path / "t.onnx", dynamo=dynamo, dynamic_batch=True)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not [w for w in recwarn if "onnx" in str(w.filename) or "torch" in str(w.filename)]
    assert onnx.load(tmp_path / "t.onnx") == proto
    assert "BatchNormalization" in op_types(proto)
    xs = torch.rand(7, 1, 4, 4)
    np.testing.assert_allclose(run_onnxruntime(proto, xs.numpy()), torch_out(m, xs), atol=1e-5)


def test_export_can_let_torchscript_fuse_batchnorm():
    proto = export(_tiny(), torch.rand(1, 1, 4, 4), keep_batchnorm=False)
    assert "BatchNormalization" not in op_types(proto)
    assert opset_of(proto) == 17
    assert opset_of(export(_tiny(), torch.rand(1, 1, 4, 4), opset=13)) == 13


def test_export_errors():
    with pytest.raises(ModelError, match="torch.nn.Module"):
        export("not a module", torch.rand(1))  # type: ignore[arg-type]

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ModelError, match="TorchScript ONNX export of Broken failed.*boom"):
        export(Broken(), torch.rand(1, 2))


def test_run_onnxruntime_fixed_batch_and_chunks():
    m = _tiny()
    proto = export(m, torch.rand(4, 1, 4, 4))  # batch fixed at 4
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    xs = torch.rand(10, 1, 4, 4)
    want = torch_out(m, xs)
    for batch in (None, 3, 100):  # ignored for a fixed batch: always chunks of 4
        np.testing.assert_allclose(run_onnxruntime(proto, xs.numpy(), batch), want, atol=1e-5)
    dyn = export(m, torch.rand(2, 1, 4, 4), dynamic_batch=True)
    np.testing.assert_allclose(run_onnxruntime(dyn, xs.numpy(), batch=3), want, atol=1e-5)


def test_run_logits_drops_the_final_softmax(zoo_model, digits_test):
    path = zoo_model("resnet")
    X = digits_test[0][:64]
    logits = run_logits(path, X)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), run_onnxruntime(path, X), atol=1e-5)
    assert op_types(without_final_softmax(onnx.load(path)))[-1] == "Gemm"
    mlp = zoo_model("mlp")
    np.testing.assert_array_equal(run_logits(mlp, X), run_onnxruntime(mlp, X))
