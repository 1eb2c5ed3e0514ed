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
  comparisons (8 rounds each, ~360 bits a comparison) instead of n V words uploaded.
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

from mpcc.compiler.graph import Graph
from mpcc.errors import ModelError


def _where(g: Graph, n: str) -> str:
    return f"node {n!r} (op {g.op(n)})"


def legalize_embedding(g: Graph, n: str) -> None:
    """Gather from a constant table [V, ...] by an integer client input of ids: the client
    one-hot encodes its ids over V classes, so the lookup is onehot [..., V] @ table [V, d],
    a MatMul with a (masked) weight. The input's shape gains the depth axis and it is
    recorded in `g.input_encodings`; an integer input read by anything else is refused."""
    d = g.node(n)
    table_t, ids = d["inputs"]
    table = g.const(table_t)
    out = d["outputs"][0]
    if ids not in g.int_inputs:
        p = g.producer(ids)
        what = f"computed by node {p!r} (op {g.op(p)})" if p else "not an integer input"
        raise ModelError(
            f"{_where(g, n)}: a lookup in the constant table {table_t!r} needs its indices to "
            f"be an integer input of the model (one-hot encoded by the client); {ids!r} is {what}"
        )
    if int(d["attrs"].get("axis", 0)) % table.ndim != 0:
        raise ModelError(f"{_where(g, n)}: a table lookup by client ids must gather along axis 0")
    depth = int(table.shape[0])
    enc = {"encoding": "onehot", "depth": depth}
    for c in g.consumers(ids):
        a, b = (g.node(c)["inputs"] + ["", ""])[:2]
        lookup = g.op(c) == "Gather" and b == ids and g.is_const(a)
        done = g.op(c) == "MatMul" and a == ids and g.input_encodings.get(ids) == enc
        if ids in g.outputs or not (done or (lookup and g.const(a).shape[0] == depth)):
            raise ModelError(
                f"integer input {ids!r} is read by node {c!r} (op {g.op(c)}): an integer client "
                f"input can only index constant tables of one size (one-hot encoded by the "
                f"client); fix it with --fix-input {ids}=VALUE if the plan need not take it"
            )
    if g.input_encodings.get(ids) != enc:
        g.input_encodings[ids] = enc
        g.shapes[ids] = (*g.shapes[ids], depth)
    w = table.reshape(depth, -1)
    d["op"], d["attrs"] = "MatMul", {}
    g.set_inputs(n, [ids, g.add_const(w, f"{n}_table")])
    if table.ndim != 2:
        mid = g.new_tensor(f"{out}_rows", (*g.shape(ids)[:-1], w.shape[1]))
        g.set_outputs(n, [mid])
        g.add_node("Reshape", [mid], [out], {"shape": g.shape(out)}, name=f"{n}_reshape")
