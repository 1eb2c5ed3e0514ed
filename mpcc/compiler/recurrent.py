"""ONNX LSTM and GRU, unrolled over their fixed sequence length into primitive ONNX ops.

A recurrent node becomes, per direction, one MatMul of the whole input sequence by the input
weights (with every bias that does not sit behind the reset gate folded in), then per time
step a Slice of that step's projections, a MatMul of the previous hidden state by the
recurrence weights, Adds, the gate activations (Sigmoid, Tanh, or Relu) and the elementwise
Muls of the cell update. The outputs Y, Y_h and Y_c are Concats and Reshapes of the step
states (and a Transpose for `layout=1`). Every op emitted is a plain ONNX op in the form
`mpcc.compiler.legalize` takes, so legalization, the rewrites and lowering apply as usual,
and the expansion can be run by onnxruntime (tests compare it with the original node).

The unrolling works batch-first ([batch, seq, ...]) whatever the layout, and transposes only
the finished outputs to ONNX's time-major layout: the exporter's Transposes around the node
then cancel with these (`merge_transposes`), constants keep a single row where their rows are
equal, and the plan keeps the samples of a batch apart (`mpcc.compiler.batching`).

Constants are folded while unrolling: a zero initial state (the default) removes the first
step's recurrence MatMul and its products, and a constant initial state is propagated
exactly. Two rewrites save secure products: the GRU update is computed as
h' = h~ + z (h - h~) (one product instead of two), and without peepholes the three
sigmoid gates of an LSTM (or the two of a GRU) are one activation over contiguous columns;
and a bidirectional layer with the same activations both ways is one unrolling of twice the
width (`_both_directions`), so both directions share every step's rounds.

Supported: directions forward, reverse and bidirectional; both layouts; initial states
constant or computed; peepholes (LSTM input P); GRU's `linear_before_reset` either way;
`sequence_lens` absent or equal to the full length. Refused with a ModelError naming the
node: `clip`, `input_forget`, activations other than Sigmoid, Tanh and Relu, and sequence
lengths that vary or are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import where
from mpcc.compiler.recurrent_builder import ACTIVATIONS, Builder, Value
from mpcc.errors import ModelError

# Per op: gate count, default activations (per direction), input names by index.
_SPEC = {
    "LSTM": (4, ("Sigmoid", "Tanh", "Tanh")),
    "GRU": (3, ("Sigmoid", "Tanh")),
}
_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def expand_recurrent(g: Graph) -> None:
    """Replace every LSTM and GRU node of `g` by its unrolled computation."""
    for n in g.nodes_by_op(*_SPEC):
        _expand(g, n)


def _attrs(g: Graph, n: str, op: str, dirs: int) -> tuple[list[str], int]:
    """Check the attributes mpcc does not support; return (activations, layout)."""
    a = g.node(n)["attrs"]
    if "clip" in a:
        raise ModelError(f"{where(g, n)}: the cell clip attribute is not supported")
    if int(a.get("input_forget", 0)):
        raise ModelError(f"{where(g, n)}: input_forget (coupled gates) is not supported")
    acts = list(a.get("activations", _SPEC[op][1] * dirs))
    if len(acts) != len(_SPEC[op][1]) * dirs:
        raise ModelError(f"{where(g, n)}: expected {len(_SPEC[op][1]) * dirs} activations")
    canon = {k.lower(): k for k in ACTIVATIONS}
    bad = [x for x in acts if x.lower() not in canon]
    if bad:
        raise ModelError(
            f"{where(g, n)}: activation {bad[0]!r} is not supported; supported: "
            f"{', '.join(ACTIVATIONS)}"
        )
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise ModelError(f"{where(g, n)}: layout {layout} is not 0 or 1")
    return [canon[x.lower()] for x in acts], layout


@dataclass(frozen=True)
class _Direction:
    """What one direction's unrolling needs."""

    x: str  # the input sequence
    axis: int  # its sequence axis
    batch: int
    wt: np.ndarray  # input weights, transposed: [input, gates * hidden]
    rt: np.ndarray  # recurrence weights, transposed: [hidden, gates * hidden]
    wb: np.ndarray  # input bias [gates * hidden]
    rb: np.ndarray  # recurrence bias [gates * hidden]
    p: np.ndarray | None  # LSTM peepholes [3 * hidden] (i, o, f)
    acts: tuple[str, ...]
    steps: tuple[int, ...]  # time steps in processing order
    linear_before_reset: bool  # GRU
    tag: str  # name suffix, for bidirectional nodes

    @property
    def hidden(self) -> int:
        return self.rt.shape[0]


def _expand(g: Graph, n: str) -> None:
    d, op = g.node(n), g.op(n)
    gates, acts_per_dir = _SPEC[op][0], len(_SPEC[op][1])
    ins: dict[str, str] = {k: t for k, t in zip(_INPUTS, d["inputs"], strict=False) if t}
    direction = d["attrs"].get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelError(f"{where(g, n)}: unknown direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    acts, layout = _attrs(g, n, op, dirs)
    lbr = bool(int(d["attrs"].get("linear_before_reset", 0)))
    for k in ("W", "R", "B", "P"):
        if k in ins and not g.is_const(ins[k]):
            raise ModelError(f"{where(g, n)}: input {k} ({ins[k]!r}) must be a constant")
    x = ins["X"]
    if g.is_const(x):
        raise ModelError(f"{where(g, n)}: the input sequence X is a constant")
    seq, batch = g.shape(x)[layout], g.shape(x)[1 - layout]
    w, r = g.const(ins["W"]), g.const(ins["R"])
    hidden = r.shape[-1]
    dtype = g.float_dtype
    if "sequence_lens" in ins:
        lens = ins["sequence_lens"]
        if not g.is_const(lens) or not (g.const(lens) == seq).all():
            raise ModelError(
                f"{where(g, n)}: sequence_lens must be absent or a constant equal to the "
                f"sequence length {seq} for every sample (variable lengths are not supported)"
            )
    b = g.const(ins["B"]) if "B" in ins else np.zeros((dirs, 2 * gates * hidden), dtype)
    p = g.const(ins["P"]) if "P" in ins else None
    outputs = [*d["outputs"], "", "", ""][:3]
    used = [bool(t) and (t in g.outputs or bool(g.consumers(t))) for t in outputs]
    states = {k: ins[k] for k in ("initial_h", "initial_c") if k in ins}
    g.remove_node(n)
    for t, u in zip(outputs, used, strict=True):
        if t and not u:
            g.shapes.pop(t, None)

    bld = Builder(g, n, dtype)
    gh = gates * hidden
    per_dir = [tuple(acts[k * acts_per_dir : (k + 1) * acts_per_dir]) for k in range(dirs)]
    inits: list[dict[str, Value]] = []
    for k in range(dirs):
        init: dict[str, Value] = {}
        for key, t in states.items():
            s = bld.slice(g.const(t) if g.is_const(t) else t, layout, k, k + 1, f"{key}_d{k}")
            init[key] = bld.reshape(s, (batch, hidden), f"{key}_d{k}_2d")
        inits.append(init)

    x_bf = bld.transpose(x, (1, 0, 2), "x_bf") if layout == 0 else x  # [batch, seq, input]

    def direction_of(k: int, tag: str, steps: range) -> _Direction:
        return _Direction(
            x=x_bf,
            axis=1,
            batch=batch,
            wt=w[k].T,
            rt=r[k].T,
            wb=b[k][:gh],
            rb=b[k][gh:],
            p=None if p is None else p[k],
            acts=per_dir[k],
            steps=tuple(steps),
            linear_before_reset=lbr,
            tag=tag,
        )

    cell = _lstm_direction if op == "LSTM" else _gru_direction
    # Per direction: (h by time step, last h, last c or None), each [batch, hidden].
    runs: list[tuple[dict[int, Value], Value, Value | None]] = []
    if dirs == 2 and per_dir[0] == per_dir[1]:
        runs = _both_directions(
            bld, cell, direction_of(0, "", range(seq)), direction_of(1, "", range(seq)), inits, seq
        )
    else:
        for k in range(dirs):
            forward = direction == "forward" or (direction == "bidirectional" and k == 0)
            steps = range(seq) if forward else range(seq - 1, -1, -1)
            runs.append(cell(bld, direction_of(k, f"_d{k}" if dirs > 1 else "", steps), inits[k]))

    # The outputs are assembled batch-first ([batch, seq, dirs, hidden], [batch, dirs, hidden])
    # and transposed to layout 0 last: the exporter's own Transposes back to batch-first then
    # cancel these, and a plan whose rows stay apart may share queries and pad batches.
    def y() -> Value:
        steps = []
        for t in range(seq):
            per_dir = [
                bld.reshape(hs[t], (batch, 1, 1, hidden), f"y{t}_d{k}")
                for k, (hs, _, _) in enumerate(runs)
            ]
            steps.append(bld.concat(per_dir, 2, f"y{t}"))
        return bld.concat(steps, 1, "Y_bf")

    def last(i: int, hint: str) -> Value:
        parts = [bld.reshape(r[i], (batch, 1, hidden), f"{hint}_d{k}") for k, r in enumerate(runs)]
        return bld.concat(parts, 1, f"{hint}_bf")

    results = (
        (y, (1, 2, 0, 3)),
        (lambda: last(1, "Y_h"), (1, 0, 2)),
        (lambda: last(2, "Y_c"), (1, 0, 2)),
    )
    for (make, perm), t, u in zip(results, outputs, used, strict=True):
        if u:
            v = make()
            bld.bind(v if layout else bld.transpose(v, perm, f"{t}_layout"), t)


def _interleave(a: np.ndarray, b: np.ndarray, gates: int) -> np.ndarray:
    """Columns [..., gates * h] of two directions as [..., gates * 2h]: gate-major, the
    forward direction's h columns then the backward one's in each gate."""
    lead = a.shape[:-1]
    h = a.shape[-1] // gates
    both = np.stack([a.reshape(*lead, gates, h), b.reshape(*lead, gates, h)], axis=-2)
    return both.reshape(*lead, gates * 2 * h)


def _both_directions(bld, cell, fwd: _Direction, bwd: _Direction, inits, seq: int):
    """A bidirectional layer as one unrolling of width 2 * hidden: step j runs the forward
    direction at time j and the backward one at time seq - 1 - j together, so each step's
    activations and products serve both (half the rounds of two unrollings). The input is
    [x, x reversed in time] along the features, the weights block-diagonal with gate-major,
    direction-minor columns, so that every elementwise op of the cell applies unchanged."""
    hid, gates = fwd.hidden, fwd.wt.shape[1] // fwd.hidden
    zw, zr = np.zeros_like(fwd.wt), np.zeros_like(fwd.rt)
    x_both = bld.concat([fwd.x, bld.reverse(fwd.x, fwd.axis, "x_rev")], 2, "x_both")
    p = None if fwd.p is None else _interleave(fwd.p, bwd.p, 3)
    dr = _Direction(
        x=x_both,
        axis=fwd.axis,
        batch=fwd.batch,
        wt=np.concatenate([_interleave(fwd.wt, zw, gates), _interleave(zw, bwd.wt, gates)]),
        rt=np.concatenate([_interleave(fwd.rt, zr, gates), _interleave(zr, bwd.rt, gates)]),
        wb=_interleave(fwd.wb, bwd.wb, gates),
        rb=_interleave(fwd.rb, bwd.rb, gates),
        p=p,
        acts=fwd.acts,
        steps=tuple(range(seq)),
        linear_before_reset=fwd.linear_before_reset,
        tag="",
    )
    init = {k: bld.concat([inits[0][k], inits[1][k]], 1, f"{k}_both") for k in inits[0]}
    hs, h, c = cell(bld, dr, init)

    def half(v: Value, d: int, hint: str) -> Value:
        return bld.slice(v, 1, d * hid, (d + 1) * hid, hint)

    runs = []
    for d in range(2):
        by_time = {t: half(hs[t if d == 0 else seq - 1 - t], d, f"h{t}_d{d}") for t in range(seq)}
        last_c = None if c is None else half(c, d, f"c_d{d}")
        runs.append((by_time, half(h, d, f"hlast_d{d}"), last_c))
    return runs


def _step_input(bld: Builder, dr: _Direction, xw: Value, t: int) -> Value:
    """Step t's input projections, [batch, gates * hidden]."""
    width = bld.shape(xw)[-1]
    s = bld.slice(xw, dr.axis, t, t + 1, f"x{t}{dr.tag}")
    return bld.reshape(s, (dr.batch, width), f"x{t}{dr.tag}_2d")


def _cols(bld: Builder, v: Value, j: int, k: int, hid: int, hint: str) -> Value:
    """Columns [j * hid, k * hid) of a [batch, gates * hid] value."""
    return bld.slice(v, 1, j * hid, k * hid, hint)


def _lstm_direction(
    bld: Builder, dr: _Direction, init: dict[str, Value]
) -> tuple[dict[int, Value], Value, Value]:
    """One direction of an LSTM (ONNX gate order i, o, f, c); returns (h by step, last h,
    last c)."""
    hid, p = dr.hidden, dr.p
    f_act, g_act, h_act = dr.acts
    xw = bld.add(bld.matmul(dr.x, dr.wt, f"xw{dr.tag}"), dr.wb + dr.rb, f"xwb{dr.tag}")
    h = init.get("initial_h", np.zeros((dr.batch, hid), bld.dtype))
    c = init.get("initial_c", np.zeros((dr.batch, hid), bld.dtype))
    hs: dict[int, Value] = {}
    for t in dr.steps:
        s = f"{t}{dr.tag}"
        hr = bld.matmul(h, dr.rt, f"hr{s}")
        pre = bld.add(_step_input(bld, dr, xw, t), hr, f"pre{s}")
        if p is None:  # i, o and f: one activation over contiguous columns
            iof = bld.act(f_act, _cols(bld, pre, 0, 3, hid, f"iof_pre{s}"), f"iof{s}")
            i, o, f = (_cols(bld, iof, j, j + 1, hid, f"{g}{s}") for j, g in enumerate("iof"))
        else:
            i_pre = bld.add(
                _cols(bld, pre, 0, 1, hid, f"i_pre{s}"), bld.mul(c, p[:hid], f"pi{s}"), f"ip{s}"
            )
            f_pre = bld.add(
                _cols(bld, pre, 2, 3, hid, f"f_pre{s}"),
                bld.mul(c, p[2 * hid :], f"pf{s}"),
                f"fp{s}",
            )
            i, f = bld.act(f_act, i_pre, f"i{s}"), bld.act(f_act, f_pre, f"f{s}")
        cand = bld.act(g_act, _cols(bld, pre, 3, 4, hid, f"c_pre{s}"), f"cand{s}")
        c = bld.add(bld.mul(f, c, f"fc{s}"), bld.mul(i, cand, f"ic{s}"), f"c{s}")
        if p is not None:
            o_pre = bld.add(
                _cols(bld, pre, 1, 2, hid, f"o_pre{s}"),
                bld.mul(c, p[hid : 2 * hid], f"po{s}"),
                f"op{s}",
            )
            o = bld.act(f_act, o_pre, f"o{s}")
        h = bld.mul(o, bld.act(h_act, c, f"hc{s}"), f"h{s}")
        hs[t] = h
    return hs, h, c


def _gru_direction(
    bld: Builder, dr: _Direction, init: dict[str, Value]
) -> tuple[dict[int, Value], Value, None]:
    """One direction of a GRU (ONNX gate order z, r, h); returns (h by step, last h, None)."""
    hid = dr.hidden
    f_act, g_act = dr.acts
    rb = dr.rb.copy()
    inner = np.zeros_like(rb)  # the recurrence bias kept behind the reset gate
    if dr.linear_before_reset:
        inner[2 * hid :], rb[2 * hid :] = rb[2 * hid :], 0.0
    xw = bld.add(bld.matmul(dr.x, dr.wt, f"xw{dr.tag}"), dr.wb + rb, f"xwb{dr.tag}")
    h = init.get("initial_h", np.zeros((dr.batch, hid), bld.dtype))
    hs: dict[int, Value] = {}
    for t in dr.steps:
        s = f"{t}{dr.tag}"
        x_t = _step_input(bld, dr, xw, t)
        if dr.linear_before_reset:  # h~ = g(x Wh + r * (h Rh + Rbh) + Wbh)
            hr = bld.add(bld.matmul(h, dr.rt, f"hr{s}"), inner, f"hrb{s}")
            zr_pre = bld.add(
                _cols(bld, x_t, 0, 2, hid, f"zr_x{s}"),
                _cols(bld, hr, 0, 2, hid, f"zr_h{s}"),
                f"zr_pre{s}",
            )
            zr = bld.act(f_act, zr_pre, f"zr{s}")
            z, r = _cols(bld, zr, 0, 1, hid, f"z{s}"), _cols(bld, zr, 1, 2, hid, f"r{s}")
            reset = bld.mul(r, _cols(bld, hr, 2, 3, hid, f"hh_h{s}"), f"rh{s}")
        else:  # h~ = g(x Wh + (r * h) Rh + Rbh + Wbh)
            hr = bld.matmul(h, dr.rt[:, : 2 * hid], f"hr{s}")
            zr = bld.act(
                f_act, bld.add(_cols(bld, x_t, 0, 2, hid, f"zr_x{s}"), hr, f"zr_pre{s}"), f"zr{s}"
            )
            z, r = _cols(bld, zr, 0, 1, hid, f"z{s}"), _cols(bld, zr, 1, 2, hid, f"r{s}")
            reset = bld.matmul(bld.mul(r, h, f"rh{s}"), dr.rt[:, 2 * hid :], f"rhr{s}")
        cand = bld.act(
            g_act, bld.add(_cols(bld, x_t, 2, 3, hid, f"hh_x{s}"), reset, f"hh_pre{s}"), f"hh{s}"
        )
        # (1 - z) h~ + z h = h~ + z (h - h~): one product instead of two
        h = bld.add(cand, bld.mul(z, bld.sub(h, cand, f"dh{s}"), f"zdh{s}"), f"h{s}")
        hs[t] = h
    return hs, h, None
