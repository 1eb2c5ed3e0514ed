"""PyTorch models through ``mpcc.api`` (both torch exporters), and op coverage beyond
tests/test_ops.py: each op as torch layers emit it, and ONNX attribute variants torch never
emits (auto_pad, transA, ...). Every case runs in cleartext and securely against onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mpcc.errors import ModelError
from mpcc.runtime.cleartext import encode_weights, run_encoded
from mpcc.runtime.cluster import LocalCluster
from mpcc.runtime.fixedpoint import decode, encode
from mpcc.zoo.reference import run_logits, run_onnxruntime
from tests.export_cache import cache_exports
from tests.onnx_builders import model, node, rand, run
from tests.test_ops import pos, w

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from mpcc import api  # noqa: E402
from mpcc.compiler.pipeline import compile_onnx  # noqa: E402

EXPORTERS = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])


def run_both(prog, weights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One whole batch in cleartext and securely (any output layout), decoded."""
    (name, _), (out_name, out_vid) = prog.inputs[0], prog.outputs[0]
    scale = prog.value(out_vid).scale
    enc = {name: encode(x, prog.frac_bits)}
    clear = decode(run_encoded(prog, encode_weights(prog, weights), enc)[out_name], scale)
    with LocalCluster(prog, weights) as cluster:
        secure = cluster.run_batch(x)
    return clear, secure


def assert_matches(prog, weights, x: np.ndarray, ref: np.ndarray) -> None:
    clear, secure = run_both(prog, weights, x)
    tol = 2e-3 * max(1.0, float(np.abs(ref).max()))
    assert clear.shape == secure.shape == ref.shape
    assert np.abs(clear - ref).max() <= tol, prog.text()
    assert np.abs(secure - ref).max() <= tol, prog.text()


# ---- mpcc.api with PyTorch modules ------------------------------------------------------


@EXPORTERS
def test_compile_a_module_in_eval_mode(dynamo, zoo_module, digits_test) -> None:
    module = zoo_module("lenet")
    module.train()
    prog, weights = api.compile(module, torch.zeros(8, 1, 28, 28), dynamo=dynamo)
    assert not module.training
    assert prog.name == "LeNet" and prog.batch == 8
    x = digits_test[0][:16]
    proto = api.export_onnx(module, torch.zeros(8, 1, 28, 28), dynamo=dynamo)
    ref = run_logits(proto, x)
    with torch.no_grad():
        np.testing.assert_allclose(ref, module(torch.tensor(x)).numpy(), atol=1e-4)
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() <= 0.02


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "mobilenet"])
def test_both_exporters_give_the_same_plan(name, zoo_module, monkeypatch, request) -> None:
    cache_exports(monkeypatch, request)  # tests/export_cache.py: the exports are content-keyed
    module = zoo_module(name)
    x = torch.zeros(2, 1, 28, 28)
    plans = [api.compile(module, x, dynamo=d)[0] for d in (False, True)]
    shapes = [[(i.op.name, p.value(i.out).shape) for i in p.instrs] for p in plans]
    assert shapes[0] == shapes[1]


def test_shapes_from_example_input_or_input_shape(zoo_module) -> None:
    module = zoo_module("mlp")
    assert api.compile(module, input_shape=(3, 1, 28, 28))[0].batch == 3
    assert api.compile(module, input_shape="5x1x28x28", dynamo=False)[0].batch == 5
    assert api.compile(module, np.zeros((4, 1, 28, 28)), dynamo=False)[0].batch == 4
    with pytest.raises(ModelError, match="needs example_input or input_shape"):
        api.compile(module)
    with pytest.raises(ModelError, match="example_input has shape"):
        api.compile(module, torch.zeros(2, 1, 28, 28), input_shape=(3, 1, 28, 28))


def test_state_dict_weights(tmp_path, zoo_module, digits_test) -> None:
    trained = zoo_module("mlp")
    path = tmp_path / "mlp.pt"
    torch.save(trained.state_dict(), path)
    from mpcc.zoo.architectures import MLP

    x = digits_test[0][:4]
    prog, weights = api.compile(MLP(), torch.zeros(4, 1, 28, 28), weights=path, dynamo=False)
    with torch.no_grad():
        want = trained(torch.tensor(x)).numpy()
    clear, _ = run_both(prog, weights, x)
    assert np.abs(clear - want).max() <= 2e-3
    with pytest.raises(ModelError, match="cannot load it as a state_dict"):
        api.compile(nn.Linear(3, 2), torch.zeros(1, 3), weights=path)


def test_onnx_sources(zoo_model, tmp_path) -> None:
    path = zoo_model("cnn")
    prog, _ = api.compile(path, input_shape=(2, 1, 28, 28))
    assert prog.name == path.stem and prog.batch == 2
    assert api.compile(str(path), np.zeros((3, 1, 28, 28)))[0].batch == 3
    proto = onnx.load(path)
    assert api.compile(proto, input_shape={"input": (4, 1, 28, 28)})[0].batch == 4
    assert api.kind_of(proto) == "onnx" and api.kind_of(path) == "onnx"
    with pytest.raises(ModelError, match="weights= is for PyTorch and Keras"):
        api.compile(path, weights=tmp_path / "w.pt")


def test_unknown_sources() -> None:
    with pytest.raises(ModelError, match="unknown model file type '.pt'"):
        api.compile("model.pt")
    with pytest.raises(ModelError, match="cannot compile a dict"):
        api.compile({})


def test_dynamo_graph_failing_falls_back_to_torchscript(monkeypatch) -> None:
    """If the torch.export-based graph fails to export or compile, the default retries with
    the TorchScript exporter and says so in the plan's notes."""
    from mpcc.frontends import torch as torch_frontend

    real = torch_frontend.export

    def dynamo_breaks(module, x, *args, dynamo=False, **kwargs):
        proto = real(module, x, *args, dynamo=dynamo, **kwargs)
        if dynamo:  # stands in for an op only one exporter emits
            proto.graph.node[0].op_type = "NotAnOnnxOp"
        return proto

    monkeypatch.setattr(torch_frontend, "export", dynamo_breaks)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ModelError):
        api.compile(module, x, dynamo=True)
    prog, weights = api.compile(module, x)
    assert any("TorchScript exporter" in n for n in prog.notes)
    with torch.no_grad():
        assert_matches(prog, weights, x.numpy(), module(x).numpy().astype(np.float64))


def test_adaptive_max_pool_compiles_by_default() -> None:
    """torch.export spells AdaptiveMaxPool2d(1) as ReduceMax, TorchScript as MaxPool."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    x = torch.randn(2, 1, 8, 8)
    prog, weights = api.compile(module, x)
    with torch.no_grad():
        assert_matches(prog, weights, x.numpy(), module(x).numpy().astype(np.float64))


def test_both_exporters_failing_reports_both() -> None:
    with pytest.raises(ModelError, match=r"Sin(.|\n)*with the TorchScript exporter"):
        api.compile(Fn(torch.sin), torch.zeros(1, 3))


# ---- ops as torch layers emit them ------------------------------------------------------


class Fn(nn.Module):
    """A module computing fn(x, *submodules)."""

    def __init__(self, fn, *mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods)


def _bn(c: int, dims: int = 2) -> nn.Module:
    b = nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)
    with torch.no_grad():
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 1.5)
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.5, 0.5)
    return b


C = torch.linspace(-1, 1, 256).reshape(1, 4, 8, 8)

TORCH_OPS = {
    "conv_groups2": lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1),
    "conv_depthwise_stride2": lambda: nn.Conv2d(4, 4, 3, stride=2, groups=4, padding=1),
    "conv_padding_same_even_kernel": lambda: nn.Conv2d(4, 5, 4, padding="same"),
    "conv_dilation_stride": lambda: nn.Conv2d(4, 5, 3, stride=2, dilation=2, padding=2),
    "conv_bn_relu": lambda: nn.Sequential(nn.Conv2d(4, 5, 3, bias=False), _bn(5), nn.ReLU()),
    "batchnorm_standalone": lambda: _bn(4),
    "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(256, 10)),
    "linear_batchnorm1d": lambda: nn.Sequential(nn.Flatten(), nn.Linear(256, 10), _bn(10, 1)),
    "linear_on_last_axis": lambda: nn.Linear(8, 3),
    "matmul_parameter": lambda: Fn(lambda x, m: x @ m.weight.T, nn.Linear(8, 5, bias=False)),
    "add_sub_mul_div_constants": lambda: Fn(lambda x: ((x + C) * 0.5 - C) / 3.0),
    "constant_minus_x": lambda: Fn(lambda x: 1.0 - x),
    "residual_add_sub": lambda: Fn(
        lambda x, c: c(x) + x - c(x) * 0.5, nn.Conv2d(4, 4, 3, padding=1)
    ),
    "mul_two_secrets": lambda: Fn(lambda x, c: c(x) * x, nn.Conv2d(4, 4, 1)),
    "leaky_relu_relu6": lambda: nn.Sequential(nn.LeakyReLU(0.1), nn.ReLU6()),
    "hardtanh": lambda: nn.Hardtanh(-0.5, 0.5),
    "clamp_min": lambda: Fn(lambda x: torch.clamp(x, min=-0.25)),
    "prelu_per_channel": lambda: nn.PReLU(4, 0.2),
    "prelu_shared": lambda: nn.PReLU(1, 0.3),
    "maxpool_pad_ceil": lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
    "maxpool_dilation": lambda: nn.MaxPool2d(2, 1, dilation=2),
    "avgpool_include_pad": lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=True),
    "avgpool_exclude_pad": lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
    "avgpool_ceil": lambda: nn.AvgPool2d(3, 2, ceil_mode=True),
    "adaptive_avgpool": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "mean_hw_keepdim": lambda: Fn(lambda x: x.mean((-1, -2), keepdim=True)),
    "view_permute_reshape": lambda: Fn(lambda x: x.view(1, 4, 64).permute(0, 2, 1).reshape(1, -1)),
    "cat_slices": lambda: Fn(lambda x: torch.cat([x[:, :2, 1:5], x[:, 2:, :4]], 1)),
    "pad_value": lambda: Fn(lambda x: F.pad(x, (1, 2, 0, 1), value=0.5)),
    "squeeze_unsqueeze": lambda: Fn(lambda x: x.mean((2, 3), keepdim=True).squeeze(3).unsqueeze(1)),
    "identity_dropout": lambda: nn.Sequential(
        nn.Identity(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(256, 3)
    ),
    "final_softmax": lambda: nn.Sequential(nn.Flatten(), nn.Linear(256, 10), nn.Softmax(1)),
    "final_log_softmax": lambda: nn.Sequential(nn.Flatten(), nn.Linear(256, 10), nn.LogSoftmax(-1)),
}


@EXPORTERS
@pytest.mark.parametrize("name", sorted(TORCH_OPS))
def test_torch_op(name: str, dynamo: bool, monkeypatch, request) -> None:
    cache_exports(monkeypatch, request)  # tests/export_cache.py: the exports are content-keyed
    torch.manual_seed(0)
    module = TORCH_OPS[name]().eval()
    x = torch.randn(1, 4, 8, 8)
    proto = api.export_onnx(module, x, dynamo=dynamo)
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(run_onnxruntime(proto, x.numpy()), want, atol=1e-5, rtol=1e-4)
    prog, weights = compile_onnx(proto)
    assert_matches(prog, weights, x.numpy(), run_logits(proto, x.numpy()))


# ---- ONNX attribute variants torch does not emit ----------------------------------------

X = (2, 3, 8, 8)


def _conv(k: int = 3, **attrs):
    return [node("Conv", ["x", "W", "B"], ["y"], **attrs)], {"W": w(4, 3, k, k), "B": w(4, seed=3)}


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _flat_gemm(**attrs):
    return [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "W", "C"], ["y"], **attrs)]


ONNX_CASES = {
    "conv_same_lower_stride2": _conv(auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_same_upper_even_kernel": _conv(4, auto_pad="SAME_UPPER"),
    "conv_same_lower_even_kernel": _conv(4, auto_pad="SAME_LOWER"),
    "conv_valid_stride2": _conv(auto_pad="VALID", strides=[2, 2]),
    "conv_dilation_stride_asym_pads": _conv(dilations=[2, 2], strides=[2, 2], pads=[2, 1, 0, 2]),
    "conv_rectangular_kernel": (
        [node("Conv", ["x", "W"], ["y"], pads=[0, 1, 0, 1])],
        {"W": w(4, 3, 1, 3)},
    ),
    "gemm_transa": (
        [
            node("Flatten", ["x"], ["f"]),
            node("Transpose", ["f"], ["t"], perm=[1, 0]),
            node("Gemm", ["t", "W", "C"], ["y"], transA=1),
        ],
        {"W": w(192, 5), "C": w(5, seed=3)},
    ),
    "gemm_full_c_beta": (_flat_gemm(beta=0.5), {"W": w(192, 5), "C": w(2, 5, seed=3)}),
    "gemm_alpha_no_bias": (
        [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "W"], ["y"], alpha=2.0, transB=1)],
        {"W": w(5, 192)},
    ),
    "matmul_constant_left": (
        [node("Reshape", ["x", "s"], ["r"]), node("MatMul", ["W", "r"], ["y"])],
        {"s": _i64(2, 24, 8), "W": w(5, 24)},
    ),
    "div_by_scalar": ([node("Div", ["x", "c"], ["y"])], {"c": np.float32(4.0)}),
    "secrets_broadcast": (
        [
            node("GlobalAveragePool", ["x"], ["g"]),
            node("Add", ["x", "g"], ["a"]),
            node("Sub", ["a", "g"], ["s"]),
            node("Mul", ["s", "g"], ["y"]),
        ],
        {},
    ),
    "clip_min_only": ([node("Clip", ["x", "lo"], ["y"])], {"lo": np.float32(-0.5)}),
    "clip_negative_range": (
        [node("Clip", ["x", "lo", "hi"], ["y"])],
        {"lo": np.float32(-1.0), "hi": np.float32(-0.25)},
    ),
    "leaky_relu_negative_alpha": ([node("LeakyRelu", ["x"], ["y"], alpha=-0.5)], {}),
    "maxpool_dilation": (
        [node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])],
        {},
    ),
    "maxpool_ceil_no_pads": (
        [node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
        {},
    ),
    "maxpool_same_upper": (
        [node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
        {},
    ),
    "maxpool_rectangular": (
        [node("MaxPool", ["x"], ["y"], kernel_shape=[1, 2], strides=[1, 2])],
        {},
    ),
    "avgpool_ceil_exclude_pad": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
        {},
    ),
    "avgpool_ceil_include_pad": (
        [
            node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
                count_include_pad=1,
            )
        ],
        {},
    ),
    "avgpool_same_lower": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_LOWER")],
        {},
    ),
    "reduce_mean_no_keepdims": ([node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], {}),
    "reshape_zero_minus_one": ([node("Reshape", ["x", "s"], ["y"])], {"s": _i64(0, -1)}),
    "flatten_axis2": ([node("Flatten", ["x"], ["y"], axis=2)], {}),
    "transpose_default_perm": ([node("Transpose", ["x"], ["y"])], {}),
    "concat_negative_axis": ([node("Concat", ["x", "x"], ["y"], axis=-1)], {}),
    "slice_negative_step": (
        [node("Slice", ["x", "a", "b", "ax", "st"], ["y"])],
        {"a": _i64(-1), "b": _i64(-9), "ax": _i64(3), "st": _i64(-2)},
    ),
    "slice_negative_bounds": (
        [node("Slice", ["x", "a", "b"], ["y"])],
        {"a": _i64(0, 1, -6), "b": _i64(1, 3, -1)},
    ),
    "squeeze_without_axes": (
        [
            node("Slice", ["x", "a", "b", "ax"], ["s"]),
            node("Squeeze", ["s"], ["q"]),
            node("Unsqueeze", ["q", "u"], ["y"]),
        ],
        {"a": _i64(0), "b": _i64(1), "ax": _i64(1), "u": _i64(1)},
    ),
    "dropout_with_ratio": ([node("Dropout", ["x", "r"], ["y"])], {"r": np.float32(0.3)}),
    "batchnorm_after_gemm": (
        [
            node("Flatten", ["x"], ["f"]),
            node("Gemm", ["f", "W"], ["l"], transB=1),
            node("BatchNormalization", ["l", "g", "b", "m", "v"], ["y"]),
        ],
        {"W": w(10, 192), "g": w(10), "b": w(10, seed=4), "m": w(10, seed=5), "v": pos(10)},
    ),
    "final_log_softmax": (
        [
            node("Flatten", ["x"], ["f"]),
            node("Gemm", ["f", "W"], ["l"], transB=1),
            node("LogSoftmax", ["l"], ["y"], axis=-1),
        ],
        {"W": w(10, 192)},
    ),
}


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_variant(name: str) -> None:
    nodes, inits = ONNX_CASES[name]
    m = model(nodes, {"x": X}, ["y"], inits, name=name)
    x = rand(*X, seed=7) * 1.5
    ref = run_logits(m, x) if name.startswith("final_") else run(m, {"x": x})[0]
    prog, weights = compile_onnx(m, X, name=name)
    assert_matches(prog, weights, x, ref.astype(np.float64))


def test_pad_with_axes_opset18() -> None:
    nodes = [node("Pad", ["x", "p", "v", "ax"], ["y"])]
    inits = {"p": _i64(1, 2, 0, 1), "v": np.float32(-0.5), "ax": _i64(2, 3)}
    m = model(nodes, {"x": X}, ["y"], inits, opset=18)
    x = rand(*X, seed=8)
    prog, weights = compile_onnx(m, X)
    assert_matches(prog, weights, x, run(m, {"x": x})[0].astype(np.float64))


def test_compile_a_module_and_run_the_plan_in_one_line() -> None:
    # the one-liner: mpcc.compile returns a Plan that LocalCluster takes as it is
    import mpcc

    torch.manual_seed(3)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 5)
    ).eval()
    x = np.random.default_rng(3).normal(size=(2, 1, 6, 6)).astype(np.float32)
    with mpcc.LocalCluster(mpcc.compile(module, example_input=x)) as c:
        y = c.predict(x)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() < 1e-3
