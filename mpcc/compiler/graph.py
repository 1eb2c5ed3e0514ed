"""A fixed-shape model as a networkx DiGraph of ops, with tensor facts on the side.

Nodes are keyed by unique node name and carry `op`, `inputs`, `outputs` and `attrs` (plain
Python values). An edge producer -> consumer exists for every non-constant tensor one node
feeds the other; its data `tensors` lists those tensors. Constants (initializers and folded
values) are not nodes: they live in `Graph.constants`. Mutate the graph through the methods
below so that the edges stay consistent with the nodes' inputs and outputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from mpcc.compiler.blockers import Blocker, raise_if_any
from mpcc.compiler.supported import integer_tensors, node_blockers
from mpcc.errors import ModelError
from mpcc.frontends import onnx as onnx_frontend
from mpcc.frontends.onnx_fold import read_initializer

# Node attributes that ONNX (opset >= 13) takes as constant inputs, in input order.
_ATTR_INPUTS = {
    "Reshape": ("shape",),
    "Clip": ("min", "max"),
    "Slice": ("starts", "ends", "axes", "steps"),
    "Pad": ("pads", "value"),
    "Tile": ("reps",),
}


class Graph:
    """A fixed-shape model as a networkx DiGraph of ops, with tensor facts on the side."""

    def __init__(self, name: str = "model", opset: int = 17) -> None:
        self.name = name
        self.opset = opset  # default-domain opset of the source model (used by to_onnx)
        self.nx: nx.DiGraph = nx.DiGraph()
        self.constants: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.notes: list[str] = []
        self.int_inputs: set[str] = set()  # inputs of an integer type (e.g. token ids)
        # Inputs the client encodes other than as fixed-point reals: name -> {"encoding":
        # "onehot", "depth": V} (ids one-hot encoded over V classes; set by legalization)
        self.input_encodings: dict[str, dict[str, Any]] = {}
        # The precision of the model's float constants: the plan keeps its weights in it.
        self.float_dtype = np.dtype(np.float32)
        self._producer: dict[str, str] = {}
        self._ranks: dict[str, int] = {}  # insertion order, to break topological ties
        self._order = itertools.count()

    # ---- building -------------------------------------------------------------------------

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, blockers: list[Blocker] | None = None) -> Graph:
        """Build a Graph from a model loaded by `mpcc.frontends.onnx.load`.

        Unsupported ops and computed inputs where constants are needed raise one ModelError
        listing them all; with a `blockers` list they are appended to it instead (and the
        graph is built with those nodes as they are)."""
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        mg = model.graph
        g = cls(mg.name or "model", opset)
        g.notes = onnx_frontend.notes(model)
        for t in mg.initializer:
            g.constants[t.name] = _as_const(read_initializer(t))
            if t.data_type == onnx.TensorProto.DOUBLE:
                g.float_dtype = np.dtype(np.float64)
        nodes = []
        for n in mg.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                g.constants[n.output[0]] = _as_const(_constant_value(n))
            else:
                nodes.append(n)
        found = node_blockers(nodes, g.constants, integer_tensors(mg))
        if blockers is None:
            raise_if_any(found)
        else:
            blockers.extend(found)
        for vi in [*mg.input, *mg.value_info, *mg.output]:
            dims = vi.type.tensor_type.shape.dim
            if vi.name not in g.constants and all(d.HasField("dim_value") for d in dims):
                g.shapes[vi.name] = tuple(d.dim_value for d in dims)
        g.inputs = [i.name for i in mg.input if i.name not in g.constants]
        g.int_inputs = {
            i.name
            for i in mg.input
            if i.name in g.inputs
            and helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).kind in "iub"
        }
        g.outputs = [o.name for o in mg.output]
        for n in nodes:
            attrs = {a.name: _plain(helper.get_attribute_value(a)) for a in n.attribute}
            outputs = list(n.output)
            while outputs and not outputs[-1]:
                outputs.pop()
            g.add_node(n.op_type, list(n.input), outputs, attrs, name=n.name or None)
        used = {t for n in g.nx.nodes for t in g.node(n)["inputs"]} | set(g.outputs)
        for t in [*g.inputs, *(t for n in g.nx.nodes for t in g.node(n)["outputs"])]:
            if t and t in used and t not in g.shapes:
                p = g.producer(t)
                where = f" (output of node {p!r}, op {g.op(p)})" if p else ""
                raise ModelError(
                    f"tensor {t!r}{where} has no static shape: load the model with "
                    "mpcc.frontends.onnx.load first"
                )
        return g

    def to_onnx(self) -> onnx.ModelProto:
        """A runnable ONNX model computing the same as this graph (float32 tensors)."""
        nodes: list[onnx.NodeProto] = []
        inits: dict[str, np.ndarray] = {}

        def const(value: np.ndarray, hint: str) -> str:
            name = self._fresh(f"{hint}_c", set(inits) | self._tensor_names())
            inits[name] = np.asarray(value)
            return name

        for name in self.topo_nodes():
            d = self.node(name)
            op, inputs, outputs, attrs = d["op"], list(d["inputs"]), d["outputs"], dict(d["attrs"])
            if op == "SumPool":
                tmp = f"{outputs[0]}__avg"
                k = float(np.prod(attrs["kernel_shape"]))
                attrs["count_include_pad"] = 1
                nodes.append(helper.make_node("AveragePool", inputs, [tmp], name, **attrs))
                nodes.append(helper.make_node("Mul", [tmp, const(np.float32(k), name)], outputs))
                continue
            if op == "MatMulSS":
                op = "MatMul"
            if op == "Gather" and "indices" in attrs:
                idx = np.asarray(attrs.pop("indices"), np.int64).reshape(attrs.pop("ishape"))
                inputs.append(const(idx, name))
            if op == "MatMul" and len(inputs) == 3:
                tmp = f"{outputs[0]}__mm"
                nodes.append(helper.make_node("MatMul", inputs[:2], [tmp], name))
                nodes.append(helper.make_node("Add", [tmp, inputs[2]], outputs, f"{name}__bias"))
                continue
            if op in _ATTR_INPUTS and any(a in attrs for a in _ATTR_INPUTS[op]):
                for a in _ATTR_INPUTS[op]:
                    inputs.append(_attr_input(op, a, attrs.pop(a, None), attrs, const, name))
                while inputs and not inputs[-1]:
                    inputs.pop()
            nodes.append(helper.make_node(op, inputs, outputs, name, **attrs))
        used = {t for n in nodes for t in n.input} | set(self.outputs)
        for t, v in self.constants.items():
            if t in used:
                inits[t] = v.astype(np.float32) if v.dtype.kind == "f" else v
        f32 = onnx.TensorProto.FLOAT

        def info(t: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(t, f32, self.shapes[t])

        graph = helper.make_graph(
            nodes,
            self.name,
            [info(t) for t in self.inputs],
            [info(t) for t in self.outputs],
            [numpy_helper.from_array(np.asarray(v), t) for t, v in inits.items()],
            value_info=[
                info(t)
                for t in self.shapes
                if t not in self.inputs and t not in self.outputs and t in used
            ],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        ir = helper.find_min_ir_version_for(opsets)
        return helper.make_model(graph, opset_imports=opsets, ir_version=max(ir, 8))

    # ---- queries --------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any]:
        """The data of node `name`: op, inputs, outputs, attrs."""
        return self.nx.nodes[name]

    def op(self, name: str) -> str:
        """The op of node `name`."""
        return self.nx.nodes[name]["op"]

    def producer(self, t: str) -> str | None:
        """The node producing tensor `t` (None for graph inputs and constants)."""
        return self._producer.get(t)

    def consumers(self, t: str) -> list[str]:
        """The nodes reading tensor `t`, each once, in insertion order."""
        p = self._producer.get(t)
        if p is None:
            found = [n for n, d in self.nx.nodes(data=True) if t in d["inputs"]]
        else:
            found = [s for s in self.nx.successors(p) if t in self.nx.edges[p, s]["tensors"]]
        return sorted(found, key=self._rank)

    def only_consumer(self, t: str) -> str | None:
        """The single node reading `t`, if `t` has exactly one reader and is no graph output."""
        cs = self.consumers(t)
        return cs[0] if len(cs) == 1 and t not in self.outputs else None

    def topo_nodes(self) -> list[str]:
        """Node names in a topological order (stable: ties keep insertion order)."""
        return list(nx.lexicographical_topological_sort(self.nx, key=self._rank))

    def is_const(self, t: str) -> bool:
        """Whether tensor `t` is a constant."""
        return t in self.constants

    def const(self, t: str) -> np.ndarray:
        """The value of constant `t`."""
        try:
            return self.constants[t]
        except KeyError:
            raise KeyError(f"tensor {t!r} is not a constant") from None

    def shape(self, t: str) -> tuple[int, ...]:
        """The static shape of any tensor, constant or not."""
        return tuple(self.constants[t].shape) if t in self.constants else self.shapes[t]

    def nodes_by_op(self, *ops: str) -> Iterator[str]:
        """Names of the nodes with one of `ops`, in topological order (a snapshot)."""
        return iter([n for n in self.topo_nodes() if self.op(n) in ops])

    # ---- mutation -------------------------------------------------------------------------

    def add_node(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> str:
        """Add a node (a fresh name derived from `name` or `op` if taken); return its name."""
        name = self._fresh(name or op, self.nx)
        self.nx.add_node(name, op=op, inputs=list(inputs), outputs=[], attrs=dict(attrs or {}))
        self._ranks[name] = next(self._order)
        self._link_inputs(name)
        self.set_outputs(name, outputs)
        return name

    def remove_node(self, name: str) -> None:
        """Remove a node; its outputs are no longer produced."""
        for t in self.node(name)["outputs"]:
            if self._producer.get(t) == name:
                del self._producer[t]
        self.nx.remove_node(name)
        del self._ranks[name]

    def set_inputs(self, name: str, inputs: list[str]) -> None:
        """Replace the inputs of node `name`."""
        self.node(name)["inputs"] = list(inputs)
        self._link_inputs(name)

    def set_outputs(self, name: str, outputs: list[str]) -> None:
        """Replace the outputs of node `name` (each tensor has at most one producer)."""
        d = self.node(name)
        for t in d["outputs"]:
            if self._producer.get(t) == name:
                del self._producer[t]
        for t in outputs:
            if t and self._producer.get(t, name) != name:
                raise ValueError(f"tensor {t!r} is already produced by {self._producer[t]!r}")
        d["outputs"] = list(outputs)
        for s in list(self.nx.successors(name)):
            self.nx.remove_edge(name, s)
        for t in outputs:
            if t:
                self._producer[t] = name
        new = set(outputs)
        for c, cd in self.nx.nodes(data=True):
            if c != name and new.intersection(cd["inputs"]):
                self._link_inputs(c)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of tensor `old` (and the graph outputs) read `new` instead."""
        for c in self.consumers(old):
            self.set_inputs(c, [new if t == old else t for t in self.node(c)["inputs"]])
        self.outputs = [new if t == old else t for t in self.outputs]

    def rename(self, old: str, new: str) -> None:
        """Rename tensor `old` to the unused name `new` everywhere."""
        p = self.producer(old)
        readers = self.consumers(old)
        if old in self.shapes:
            self.shapes[new] = self.shapes.pop(old)
        if old in self.constants:
            self.constants[new] = self.constants.pop(old)
        self.inputs = [new if t == old else t for t in self.inputs]
        if p is not None:
            self.set_outputs(p, [new if t == old else t for t in self.node(p)["outputs"]])
        for c in readers:
            self.set_inputs(c, [new if t == old else t for t in self.node(c)["inputs"]])
        self.outputs = [new if t == old else t for t in self.outputs]

    def bypass(self, name: str) -> None:
        """Remove a node whose output equals its first input, keeping graph output names."""
        d = self.node(name)
        src, dst = d["inputs"][0], d["outputs"][0]
        self.remove_node(name)
        keep_dst = (
            dst in self.outputs
            and self.producer(src) is not None
            and src not in self.outputs
            and not self.consumers(src)
        )
        if keep_dst:  # the producer of src now writes dst directly
            self.shapes.pop(src, None)
            p = self.producer(src)
            self.set_outputs(p, [dst if t == src else t for t in self.node(p)["outputs"]])
        else:
            self.replace_uses(dst, src)
            self.shapes.pop(dst, None)

    def add_const(self, value: np.ndarray, hint: str = "c") -> str:
        """Add a constant under a fresh name derived from `hint`; return the name."""
        name = self._fresh(hint, self._tensor_names())
        self.constants[name] = _as_const(np.asarray(value))
        return name

    def new_tensor(self, hint: str, shape: Iterable[int]) -> str:
        """A fresh non-constant tensor name with the given shape."""
        name = self._fresh(hint, self._tensor_names())
        self.shapes[name] = tuple(int(s) for s in shape)
        return name

    def prune(self) -> None:
        """Drop constants and shapes of tensors that nothing uses any more."""
        used = {t for _, d in self.nx.nodes(data=True) for t in d["inputs"] + d["outputs"]}
        used |= set(self.inputs) | set(self.outputs)
        self.constants = {t: v for t, v in self.constants.items() if t in used}
        self.shapes = {t: s for t, s in self.shapes.items() if t in used}

    def validate(self) -> None:
        """Check the edges and indexes against the nodes' inputs and outputs (for tests)."""
        producer = {t: n for n, d in self.nx.nodes(data=True) for t in d["outputs"] if t}
        assert producer == self._producer, "producer index is stale"
        edges: dict[tuple[str, str], set[str]] = {}
        for n, d in self.nx.nodes(data=True):
            for t in d["inputs"]:
                if t in producer:
                    edges.setdefault((producer[t], n), set()).add(t)
                elif t:
                    assert t in self.constants or t in self.inputs, f"{n}: dangling input {t!r}"
        got = {(u, v): set(e["tensors"]) for u, v, e in self.nx.edges(data=True)}
        assert got == edges, "edges do not match the nodes' inputs"
        for t in self.outputs:
            assert t in producer or t in self.inputs, f"output {t!r} is not produced"
        assert nx.is_directed_acyclic_graph(self.nx)

    def __repr__(self) -> str:
        lines = [f"Graph {self.name!r} inputs={self.inputs} outputs={self.outputs}"]
        for n in self.topo_nodes():
            d = self.node(n)
            lines.append(f"  {n}: {d['op']}({', '.join(d['inputs'])}) -> {d['outputs']}")
        return "\n".join(lines)

    # ---- internals ------------------------------------------------------------------------

    def _rank(self, name: str) -> int:
        return self._ranks[name]

    def _link_inputs(self, name: str) -> None:
        for p in list(self.nx.predecessors(name)):
            self.nx.remove_edge(p, name)
        for t in self.node(name)["inputs"]:
            p = self._producer.get(t)
            if p is None:
                continue
            if self.nx.has_edge(p, name):
                tensors = self.nx.edges[p, name]["tensors"]
                if t not in tensors:
                    tensors.append(t)
            else:
                self.nx.add_edge(p, name, tensors=[t])

    def _tensor_names(self) -> set[str]:
        names = set(self.constants) | set(self.shapes) | set(self.inputs) | set(self.outputs)
        return names | set(self._producer)

    @staticmethod
    def _fresh(base: str, taken: Any) -> str:
        if base not in taken:
            return base
        for i in itertools.count(1):
            if f"{base}_{i}" not in taken:
                return f"{base}_{i}"
        raise AssertionError


def _as_const(v: np.ndarray) -> np.ndarray:
    """Float tensors in their own precision (float32 or float64; narrower floats as float32:
    no copy of a model's weights for nothing), integer and boolean tensors as int64."""
    v = np.asarray(v)
    if v.dtype == np.float32 or v.dtype == np.float64:
        return v
    if v.dtype.kind == "f":
        return v.astype(np.float32)
    return v.astype(np.float64) if v.dtype.kind == "c" else v.astype(np.int64)


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _constant_value(n: onnx.NodeProto) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return np.asarray(ReferenceEvaluator(n, opsets={"": 17}).run(None, {})[0])


def _attr_input(
    op: str, attr: str, value: Any, attrs: dict[str, Any], const: Any, node: str
) -> str:
    """The constant input `to_onnx` passes for a normalized attribute (or '' if absent)."""
    if value is None:
        return ""
    if op == "Clip":
        return "" if np.isinf(value) else const(np.float32(value), node)
    if op == "Pad" and attr == "value":
        return const(np.float32(value), node)
    v = np.asarray(value, dtype=np.int64)
    if op == "Slice" and attr == "ends":  # normalized ends of -1 mean "before index 0"
        v = np.where(v < 0, np.iinfo(np.int64).min, v)
    return const(v, node)
