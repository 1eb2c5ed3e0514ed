"""ONNX model in, secure plan out: load, fix shapes, build the graph, run passes, lower,
verify."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from mpcc.compiler import passes
from mpcc.compiler.blockers import NEEDS_CONSTANT, UNFIXED, Blocker, raise_if_any
from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import MAX_FRAC_BITS, MIN_FRAC_BITS
from mpcc.compiler.lowering import lower
from mpcc.compiler.network import Network, choose, describe, fuse_pool_relu
from mpcc.compiler.plan import Plan
from mpcc.compiler.supported import node_blockers
from mpcc.compiler.verify import verify
from mpcc.errors import ModelError
from mpcc.frontends import onnx as onnx_frontend
from mpcc.frontends.onnx_shapes import static_problems

if TYPE_CHECKING:
    from mpcc.compiler.calibrate import Calibration

DEFAULT_FRAC_BITS = 16


def compile_onnx(
    model: str | Path | onnx.ModelProto,
    input_shapes: dict | tuple | None = None,
    frac_bits: int | None = None,
    public_weights: bool = False,
    name: str | None = None,
    keep_softmax: bool = False,
    calibrate: Calibration | None = None,
    fix_inputs: dict[str, float] | None = None,
    network: Network | str | None = None,
    material_budget_mb: float | None = None,
) -> Plan:
    """Compile an ONNX model to a Plan: the Program and its (plaintext, owner-side) weights.

    A final Softmax/LogSoftmax is dropped (the plan returns logits, argmax unchanged) unless
    `keep_softmax`, which computes it securely. `frac_bits` defaults to DEFAULT_FRAC_BITS, or
    with `calibrate` (representative inputs: an array [N, ...] or a dict of them by input
    name) to the f chosen from their ranges (`mpcc.compiler.calibrate`); the report is then
    `plan.calibration`. `fix_inputs` fixes inputs to a constant
    (`mpcc.frontends.onnx.load`): a Hugging Face attention mask of all ones folds away.
    `network` ("RTT_ms,Gbps" or a `Network`) chooses each comparison's protocol for that
    link, within `material_budget_mb` of dealer material per query (`mpcc.compiler.network`);
    without it every comparison uses the LAN's bit tree."""
    if material_budget_mb is not None and network is None:
        raise ModelError("a material budget chooses protocols for a network: give --network")
    if frac_bits is not None and not MIN_FRAC_BITS <= frac_bits <= MAX_FRAC_BITS:
        raise ModelError(
            f"frac_bits must be between {MIN_FRAC_BITS} and {MAX_FRAC_BITS}, got {frac_bits}"
        )
    proto = onnx_frontend.load(model, input_shapes, fix_inputs, check_static=False)
    # Every blocker at once: unfixed shapes, unsupported ops, computed inputs where constants
    # are needed, then (once shapes are known) unsupported attributes.
    blockers = [
        Blocker(NEEDS_CONSTANT, n.op_type, n.name, why)
        if n is not None and " must be " in why
        else Blocker(UNFIXED, n.op_type if n else "input", n.name if n else why.split("'")[1], why)
        for n, why in static_problems(proto.graph)
    ]
    if blockers:
        consts = {t.name: None for t in proto.graph.initializer}
        consts |= {n.output[0]: None for n in proto.graph.node if n.op_type == "Constant"}
        nodes = [n for n in proto.graph.node if n.op_type != "Constant"]
        blockers += [
            b
            for b in node_blockers(nodes, consts, set())
            if b.node not in {x.node for x in blockers}
        ]
        raise_if_any(blockers)
    g = Graph.from_onnx(proto, blockers)
    if name:
        g.name = name
    elif isinstance(model, str | Path):
        g.name = Path(model).stem
    g = passes.run_all(g, blockers, keep_softmax=keep_softmax)
    report = None
    if calibrate is not None:
        from mpcc.compiler.calibrate import calibrate as run_calibration

        report = run_calibration(proto, g, calibrate, frac_bits, public_weights)
        frac_bits = report.frac_bits
    elif frac_bits is None:
        frac_bits = DEFAULT_FRAC_BITS
    prog, weights = lower(g, frac_bits=frac_bits, public_weights=public_weights)
    if report is not None:
        prog.notes.append(report.note())
    if network is not None:
        net = Network.parse(network) if isinstance(network, str) else network
        budget = None if material_budget_mb is None else int(material_budget_mb * 1e6)
        ids = fuse_pool_relu(prog)
        if ids and report is not None:
            report.renumber(ids)
        prog.notes.append(describe(choose(prog, net, budget), net, budget))
    verify(prog, weights)
    return Plan(prog, weights, calibration=report)
