"""Integer client inputs and embedding lookups: the client one-hot encodes its token ids.

**Problem.** A language model starts with `Gather(table, ids)`: rows of a constant table
[V, d] (the owner's secret weights) selected by the client's integer ids (token ids, n of
them). Neither side may learn the other's part, and fixed-point sharing of an id does not
help: selecting a row by a secret index is not a ring operation.

**Choice: the client one-hot encodes.** The client knows its ids, so it can share the
one-hot matrix X [n, V] (rows e_id, 0/1 at scale 0) instead of the ids. The lookup is then
the bilinear map X @ table, which the compiler already runs securely: the masked-weight
matrix Beaver triple of `mpcc.runtime.protocols.linear` (protocols.md section 1): the table
is masked once per session (F = W - B), and per query the parties open E = X - A (one
round) and each evaluates one GEMM. At scale 0 the product carries the table's f bits:
no truncation follows. The plan's input records `encoding=onehot` and `depth=V` so every
client (`LocalCluster`, the serving client, `mpcc.inputs.one_hot`) encodes the same way; a
non-integer array or an id outside [0, V) is an InputError naming the input.

**Cost** (per query, n ids into a [V, d] table; priced by `costs.linear` and the cost
model's client bytes):
- client upload: n V words to each party (all-MiniLM-L6-v2, V = 30522: 7.8 MB at n = 32,
  31 MB at n = 128);
- online: 1 round, n V words sent by each party (the opening of E);
- dealer: n d words; multiply-adds: n V d per party (375 M at n = 32, d = 384).

**Alternatives considered.**
- *Ids shared as numbers, one-hot computed securely* by V equality tests per id: n V secure
  comparisons (4 rounds each, ~100 bits sent per sign bit) instead of n V words uploaded.
- *Dealer-assisted rotation*: the dealer shares a random unit vector e_r, the parties open
  u = id - r (mod V) and rotate their shares of e_r by u into shares of e_id. The client
  then uploads n words, but the dealer's material is n V words a query, and the product
  with the masked table still needs its own triple (or opening): the online cost stays
  n V words.
- *Function secret sharing* (distributed point functions; Boyle, Gilboa, Ishai, EUROCRYPT
  2015) gives keys of O(log V) words per id, but needs a DPF evaluation of V points per id
  and a new protocol family; a good later step for large vocabularies.
- *A public table*: if the owner publishes the embedding table (many public models do), the
  client can look its rows up itself and send n d reals; `--public-weights` is all or
  nothing today, so this is left to a later per-weight option.

**Other integer inputs.** Position ids that are constants fold away (`frontends.onnx`);
inputs the plan does not need from the client, such as `token_type_ids` of zeros or an
`attention_mask` of ones when the client sends no padding, are fixed with `--fix-input
NAME=VALUE` (`fix_inputs=`), and what they feed (Cast, Where, IsNaN, And, Expand and
constant arithmetic in Hugging Face exports) folds away; the compile report notes it. An
integer input used any other way is refused with that advice.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.ops.io import ONEHOT
from mpcc.errors import ModelError


def _where(g: Graph, n: str) -> str:
    return f"node {n!r} (op {g.op(n)})"


def one_hot_inputs(g: Graph) -> None:
    """Before legalization: give each integer input its one-hot encoding, over the rows of the
    constant tables it indexes (one size for all), or refuse it naming the node that reads it
    otherwise. Besides table lookups (Gather along axis 0), an id may be compared with a
    constant (Equal, e.g. `ids != pad` for a mask): that is a column of the one-hot."""
    for t in sorted(g.int_inputs - set(g.input_encodings)):
        depths = set()
        for c in g.consumers(t):
            d = g.node(c)
            a, b = (d["inputs"] + ["", ""])[:2]
            if g.op(c) == "Gather" and b == t and g.is_const(a):
                if int(d["attrs"].get("axis", 0)) % g.const(a).ndim != 0:
                    raise ModelError(f"{_where(g, c)}: a lookup by client ids must use axis 0")
                depths.add(int(g.const(a).shape[0]))
            elif g.op(c) == "Equal" and _compared_constant(g, c, t) is not None:
                continue
            else:
                raise ModelError(
                    f"integer input {t!r} is read by {_where(g, c)}: an integer client input "
                    "can only index constant tables (one-hot encoded by the client) or be "
                    f"compared with a constant; fix it with --fix-input {t}=VALUE if the plan "
                    "need not take it"
                )
        if t in g.outputs or len(depths) != 1:
            why = f"tables of sizes {sorted(depths)}" if depths else "no constant table"
            raise ModelError(
                f"integer input {t!r} indexes {why}: it must index constant tables of one "
                f"size (one-hot encoded by the client), or be fixed with --fix-input {t}=VALUE"
            )
        depth = depths.pop()
        g.input_encodings[t] = {"encoding": ONEHOT, "depth": depth}
        g.shapes[t] = (*g.shapes[t], depth)
        g.notes.append(
            f"input {t!r}: integer ids, one-hot encoded by the client over {depth} classes "
            f"({depth} words uploaded per id; table lookups are products with the table)"
        )


def _compared_constant(g: Graph, n: str, ids: str) -> int | None:
    """The constant an Equal node compares `ids` with, if it is one integer."""
    a, b = g.node(n)["inputs"]
    other = b if a == ids else a
    if not g.is_const(other) or g.const(other).size != 1:
        return None
    v = g.const(other).reshape(-1)[0]
    return int(v) if float(v) == int(v) else None


def legalize_id_compare(g: Graph, n: str) -> None:
    """Equal(ids, c) [-> Not] [-> Cast to float] on a one-hot input: column c of the one-hot
    (a local gather, 0/1 at scale 0), [1 - it]. The boolean may feed nothing else."""
    d = g.node(n)
    ids = next(t for t in d["inputs"] if t in g.input_encodings)
    c = _compared_constant(g, n, ids)
    depth = g.input_encodings[ids]["depth"]
    chain = [n]
    while True:
        nxt = g.only_consumer(g.node(chain[-1])["outputs"][0])
        if nxt is None or g.op(nxt) not in ("Not", "Cast"):
            break
        if g.op(nxt) == "Cast" and g.node(nxt)["attrs"].get("to") not in _FLOATS:
            raise ModelError(f"{_where(g, nxt)}: an id comparison can only be cast to a float")
        chain.append(nxt)
        if g.op(nxt) == "Cast":
            break
    if g.op(chain[-1]) != "Cast":
        raise ModelError(
            f"{_where(g, n)}: a comparison of client ids must be cast to a float (e.g. a mask "
            "ids != pad), then used as a number"
        )
    if not 0 <= c < depth:
        raise ModelError(f"{_where(g, n)}: compares ids with {c}, outside [0, {depth})")
    negate = sum(g.op(x) == "Not" for x in chain) % 2 == 1
    out = g.node(chain[-1])["outputs"][0]
    for x in chain[1:]:
        g.remove_node(x)
    shape = g.shapes[out]
    d["op"] = "Gather"
    d["attrs"] = {"axis": len(shape), "indices": (c,), "ishape": ()}
    g.set_inputs(n, [ids])
    if negate:
        mid = g.new_tensor(f"{out}_eq", shape)
        g.set_outputs(n, [mid])
        one = g.add_const(np.ones(shape, np.float32), f"{n}_one")
        g.add_node("Sub", [one, mid], [out], name=f"{n}_not")
    else:
        g.set_outputs(n, [out])


_FLOATS = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def legalize_embedding(g: Graph, n: str) -> None:
    """Gather from a constant table [V, ...] by an integer client input of ids (one-hot
    encoded by `one_hot_inputs`): onehot [..., V] @ table [V, d], a MatMul with a (masked)
    weight."""
    d = g.node(n)
    table_t, ids = d["inputs"]
    table = g.const(table_t)
    out = d["outputs"][0]
    if ids not in g.input_encodings:
        p = g.producer(ids)
        what = f"computed by {_where(g, p)}" if p else "not an integer input"
        raise ModelError(
            f"{_where(g, n)}: a lookup in the constant table {table_t!r} needs its indices to "
            f"be an integer input of the model (one-hot encoded by the client); {ids!r} is {what}"
        )
    depth = int(table.shape[0])
    w = table.reshape(depth, -1)
    d["op"], d["attrs"] = "MatMul", {}
    g.set_inputs(n, [ids, g.add_const(w, f"{n}_table")])
    if table.ndim != 2:
        mid = g.new_tensor(f"{out}_rows", (*g.shape(ids)[:-1], w.shape[1]))
        g.set_outputs(n, [mid])
        g.add_node("Reshape", [mid], [out], {"shape": g.shape(out)}, name=f"{n}_reshape")
