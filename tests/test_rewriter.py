"""Tests for mpcc.compiler.rewriter: patterns, checks and notes, and `apply` to a fixed point."""

from __future__ import annotations

import pytest

from mpcc.compiler.graph import Graph
from mpcc.compiler.rewriter import ANY, CONST, Node, Op, Rule, Through, apply, match
from tests.onnx_builders import check_graph, feeds_for, graph_of, model, node, ops, rand, run


def chain() -> Graph:
    """x -> Relu r -> Neg n -> Mul(m, c) -> Relu y, and r also read by Add s (both outputs)."""
    nodes = [
        node("Relu", ["x"], ["r"]),
        node("Neg", ["r"], ["n"]),
        node("Mul", ["n", "c"], ["m"]),
        node("Relu", ["m"], ["y"]),
        node("Add", ["r", "x"], ["s"]),
    ]
    return graph_of(model(nodes, {"x": (2, 3)}, ["y", "s"], {"c": rand(2, 3)}))


def test_node_view():
    n = Node.of(chain(), "m")
    assert (n.name, n.op, n.inputs, n.outputs, n.attrs) == ("m", "Mul", ("n", "c"), ("m",), {})
    assert (n.x, n.y) == ("n", "m")
    with pytest.raises(TypeError):
        n.attrs["k"] = 1  # type: ignore[index]


def test_match_binds_named_nodes():
    g = chain()
    bound = match(g, Op("Relu", Op("Mul|Add", Op("Neg", name="neg"), CONST, name="mul")), "y")
    assert bound is not None and set(bound) == {"neg", "mul"}
    assert bound["neg"] == Node.of(g, "n") and bound["mul"].op == "Mul"
    assert match(g, Op("Relu", Op("Add")), "y") is None  # wrong op
    assert match(g, Op("Mul", ANY, ANY), "m") is not None
    assert match(g, Op("Mul", CONST), "m") is None  # the first input is computed
    assert match(g, Op("Mul", ANY, ANY, ANY), "m") is None  # too few inputs
    assert match(g, Op("Relu", name="r", where=lambda g, n: n.x == "x"), "r") == {
        "r": Node.of(g, "r")
    }
    assert match(g, Op("Relu", where=lambda g, n: n.x == "x"), "y") is None


def test_links_need_a_single_reader_unless_shared():
    g = chain()
    assert match(g, Op("Neg", Op("Relu")), "n") is None  # r is also read by s
    assert match(g, Op("Neg", Op("Relu", name="r", shared=True)), "n") is not None
    g2 = graph_of(model([node("Relu", ["x"], ["r"]), node("Neg", ["r"], ["y"])],
                        {"x": (2,)}, ["y", "r"]))  # fmt: skip
    assert match(g2, Op("Neg", Op("Relu")), "y") is None  # r is a graph output


def test_through_binds_the_path_first_to_last():
    g = chain()
    pattern = Op(
        "Relu",
        Through(lambda g, n: n.op in ("Neg", "Mul"), Op("Relu", name="r", shared=True), "path"),
    )
    bound = match(g, pattern, "y")
    assert bound is not None
    assert [n.name for n in bound["path"]] == ["n", "m"] and bound["r"].name == "r"
    assert match(g, Op("Mul", Through(lambda g, n: False, Op("Neg"), "p")), "m") == {"p": ()}
    assert match(g, Op("Relu", Through(lambda g, n: n.op == "Mul", Op("Relu"))), "y") is None


def test_apply_notes_a_rejected_check_once():
    nodes = [node("Neg", [x], [y]) for x, y in zip("xabcd", "abcde", strict=True)]
    nodes.append(node("Relu", ["e"], ["y"]))
    m = model(nodes, {"x": (2, 3)}, ["y"])
    g = graph_of(m)

    def cancel(g: Graph, first: Node, second: Node) -> str:
        g.remove_node(second.name)
        g.remove_node(first.name)
        g.replace_uses(second.y, first.x)
        return f"cancelled {first.name!r} and {second.name!r}"

    def not_a(g: Graph, first: Node, second: Node) -> str | None:
        return f"kept {first.name!r}: its input is x" if first.x == "x" else None

    twice = Op("Neg", Op("Neg", name="first"), name="second")
    apply(g, Rule(twice, check=not_a, rewrite=cancel))
    assert ops(g) == ["Neg", "Relu"] and g.node("y")["inputs"] == ["a"]
    # (a, b) is turned down, then (b, c) cancels, (a, d) is turned down again (one note)
    # and (d, e) cancels
    assert g.notes == ["kept 'a': its input is x", "cancelled 'b' and 'c'", "cancelled 'd' and 'e'"]
    check_graph(g, feeds_for(g), run(m, feeds_for(g)))
