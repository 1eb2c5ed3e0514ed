"""Helpers to build tiny ONNX models in tests and to compare them with onnxruntime."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpcc.compiler.graph import Graph
from mpcc.frontends.onnx import load

Dim = int | str | None


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", **attrs: Any):
    """One ONNX node (named after its first output unless `name` is given)."""
    return helper.make_node(op, list(inputs), list(outputs), name or outputs[0], **attrs)


def model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, Sequence[Dim]],
    outputs: Sequence[str],
    inits: dict[str, Any] | None = None,
    opset: int = 17,
    name: str = "tiny",
) -> onnx.ModelProto:
    """A float32 model; `inits` values become initializers (float arrays as float32).

    The outputs' types and shapes are filled by (lenient) shape inference."""
    tensors = []
    for t, v in (inits or {}).items():
        a = np.asarray(v)
        a = a.astype(np.float32) if a.dtype.kind == "f" else a
        tensors.append(numpy_helper.from_array(a, t))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, list(s)) for t, s in inputs.items()],
        [helper.make_tensor_value_info(t, TensorProto.UNDEFINED, None) for t in outputs],
        tensors,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)  # the checker wants the outputs' shapes


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    """Standard normal float32 values."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs with onnxruntime (graph optimizations off)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def graph_of(m: onnx.ModelProto, input_shapes: Any = None) -> Graph:
    """load + Graph.from_onnx."""
    return Graph.from_onnx(load(m, input_shapes))


def feeds_for(g: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the graph's input shapes."""
    return {t: rand(*g.shapes[t], seed=seed + i) for i, t in enumerate(g.inputs)}


def check_graph(g: Graph, feeds: dict[str, np.ndarray], expected: list[np.ndarray]) -> None:
    """The graph is consistent, converts to a valid model and computes `expected`."""
    g.validate()
    m = g.to_onnx()
    onnx.checker.check_model(m, full_check=True)  # also strict shape inference
    got = run(m, feeds)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def check_passes(
    m: onnx.ModelProto,
    *passes: Callable[[Graph], None],
    input_shapes: Any = None,
    expected: list[np.ndarray] | None = None,
) -> Graph:
    """Run `passes` in turn on the loaded model, checking after each that the outputs match
    onnxruntime on the original (or `expected`, e.g. logits for a dropped softmax)."""
    g = graph_of(m, input_shapes)
    feeds = feeds_for(g)
    ref = run(m, feeds)
    check_graph(g, feeds, ref)
    for i, p in enumerate(passes):
        p(g)
        last = i == len(passes) - 1
        check_graph(g, feeds, expected if (last and expected is not None) else ref)
    return g


def ops(g: Graph) -> list[str]:
    """The graph's ops in topological order."""
    return [g.op(n) for n in g.topo_nodes()]


# ---- small torch models, exported once per session -----------------------------------------


def _torch_module(kind: str):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class ConvNet(nn.Module):
        """conv + bn + relu + maxpool + flatten + linear + softmax."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(4 * 5 * 5, 5)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn(self.conv(x))))
            return torch.softmax(self.fc(torch.flatten(x, 1)), dim=-1)

    class Mixed(nn.Module):
        """input normalization, same-padded conv + bn, 3x3 average pool, depthwise conv,
        dropout, view(batch, -1), two linear layers and a log-softmax."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.pool, self.dw = nn.AvgPool2d(3), nn.Conv2d(6, 6, 3, groups=6)
            self.drop = nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(24, 10), nn.Linear(10, 5)

        def forward(self, x):
            x = (x - 0.5) / 0.25
            x = self.pool(torch.relu(self.bn(self.conv(x))))
            x = self.drop(torch.relu(self.dw(x)))
            x = x.view(x.size(0), -1)
            x = nn.functional.leaky_relu(self.fc1(x), 0.1)
            return torch.log_softmax(self.fc2(x), dim=1)

    class Kitchen(nn.Module):
        """Many ops at once: strided conv + bn + relu6, same-padded conv + prelu, concat, pad,
        slicing, ceil-mode maxpool, a linear layer on a 3-D tensor, adaptive average pooling,
        linear + bn1d, squeeze/unsqueeze and arithmetic on the outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.bn1 = (
                nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(8),
            )
            self.c2, self.prelu = nn.Conv2d(8, 8, 3, padding="same"), nn.PReLU(8)
            self.c3, self.gap = nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1)
            self.fc, self.bn2, self.seq = nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Linear(4, 5)

        def forward(self, x):
            y = nn.functional.relu6(self.bn1(self.c1(x)))
            y = torch.cat([y, self.prelu(self.c2(y))], dim=1)
            y = self.c3(nn.functional.pad(y, (1, 1, 0, 0)))[:, :, 1:, ::2]
            y = nn.functional.max_pool2d(torch.relu(y), 2, ceil_mode=True)
            t = self.seq(y.flatten(2).transpose(1, 2)[..., :4])
            g = self.bn2(self.fc(self.gap(y).flatten(1)))
            return torch.squeeze(torch.cat([g, t.flatten(1)], 1).unsqueeze(1) * 2 - 1, 1)

    module = {"convnet": ConvNet, "mixed": Mixed, "kitchen": Kitchen}[kind]()
    for m in module.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return module.eval()


@functools.cache
def export(kind: str, dynamo: bool, opset: int | None = None) -> tuple[onnx.ModelProto, Any]:
    """A small torch model ("convnet", "mixed": input [N, 1, 12, 12]; "kitchen": [N, 3, 16, 16];
    a dynamic batch axis) exported with the dynamo or the TorchScript exporter (by default
    opset 13 and constant folding off for TorchScript); returns (model, module)."""
    import torch

    from tests.export_cache import cached_onnx, torch_key

    module = _torch_module(kind)
    x = torch.randn(2, 3, 16, 16) if kind == "kitchen" else torch.randn(2, 1, 12, 12)
    # the dynamo exporter takes seconds: the graph is kept on disk under a content key
    key = torch_key(Path(__file__).read_bytes(), kind, str(dynamo), str(opset), module=module)
    return cached_onnx(key, lambda: _export(module, x, kind, dynamo, opset)), module


def _export(module, x, kind: str, dynamo: bool, opset: int | None) -> onnx.ModelProto:
    import tempfile
    import warnings

    import torch

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = f"{tmp}/{kind}.onnx"
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                module,
                (x,),
                path,
                input_names=["x"],
                dynamo=True,
                verbose=False,
                opset_version=opset,
                dynamic_shapes={"x": {0: batch}},
            )
        else:
            torch.onnx.export(
                module,
                (x,),
                path,
                input_names=["x"],
                dynamo=False,
                opset_version=opset or 13,
                dynamic_axes={"x": {0: "batch"}},
                do_constant_folding=False,
            )
        return onnx.load(path)
