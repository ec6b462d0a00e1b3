"""ComputationGraphBuilder: the surface and every definition error (naming graph and node)."""

from __future__ import annotations

import pytest

from headrace.engine import ComputationGraphBuilder, GraphDefinitionError, get_graph, node
from headrace.engine.graph.topology import render_mermaid, render_text
from headrace.reactors import bound_graphs
from tests.unit.support import declare_reactor


@pytest.fixture
def rx():
    return declare_reactor("rx", ["a", "b"])


def test_builder_registers_and_binds_the_graph(rx):
    with ComputationGraphBuilder(
        "g",
        reactor=rx,
        graph={"entry": {"inputs": ["a"], "next": "out"}, "out": {}},
    ) as builder:

        @node
        def entry(a):
            return a

        @node
        def out(value):
            return value

    assert builder.graph is get_graph("g")
    assert builder.graph.reactor_name == "rx"
    assert bound_graphs("rx") == ["g"]
    assert builder.graph.topology.entries == ("entry",)
    assert builder.graph.topology.terminals == ("out",)
    assert repr(builder) == "ComputationGraphBuilder(name='g', nodes=2)"
    assert "entry -> out" in render_text(builder.graph.topology)
    assert "entry --> out" in render_mermaid(builder.graph.topology)


def test_node_decorator_returns_the_function_and_accepts_a_name(rx):
    with ComputationGraphBuilder("g", reactor=rx, graph={"custom": {"inputs": ["a"]}}) as b:

        @node(name="custom")
        def whatever(a):
            return a + 1

    assert whatever(1) == 2
    assert b.execute({"a": 1}) == {"custom": 2}


def _build(graph, nodes, reactor="rx", name="g"):
    with ComputationGraphBuilder(name, reactor=reactor, graph=graph) as builder:
        for node_name, fn in nodes.items():
            builder.add_node(node_name, fn)
    return builder


def _ident(x):
    return x


def _ident_a(a):
    return a


def test_topology_node_without_a_function(rx):
    with pytest.raises(GraphDefinitionError, match=r"graph 'g', node 'out'.*no @node") as info:
        _build({"entry": {"inputs": ["a"], "next": "out"}, "out": {}}, {"entry": _ident})
    assert (info.value.graph, info.value.node) == ("g", "out")


def test_node_function_not_in_the_topology(rx):
    with (
        pytest.raises(GraphDefinitionError, match=r"graph 'g', node 'stray'.*not appear") as info,
        ComputationGraphBuilder("g", reactor=rx, graph={"entry": {"inputs": ["a"]}}),
    ):

        @node
        def entry(a):
            return a

        @node
        def stray(x):
            return x

    assert info.value.node == "stray"


@pytest.mark.parametrize("key", ["next", "routes"])
def test_unknown_next_or_routes_target(rx, key):
    target = "ghost" if key == "next" else {"Go": "ghost"}
    with pytest.raises(
        GraphDefinitionError, match=r"graph 'g', node 'entry'.*unknown node 'ghost'"
    ):
        _build({"entry": {"inputs": ["a"], key: target}}, {"entry": _ident})


def test_cycle(rx):
    graph = {
        "entry": {"inputs": ["a"], "next": "left"},
        "left": {"next": "right"},
        "right": {"next": "left"},
    }
    with pytest.raises(GraphDefinitionError, match=r"graph 'g'.*cycle: .*left.*right"):
        _build(graph, {"entry": _ident, "left": _ident, "right": _ident})


def test_self_loop_is_a_cycle(rx):
    graph = {"entry": {"inputs": ["a"], "next": "loop"}, "loop": {"next": "loop"}}
    with pytest.raises(GraphDefinitionError, match=r"cycle"):
        _build(graph, {"entry": _ident, "loop": _ident})


def test_entry_inputs_must_be_accumulators_of_the_bound_reactor(rx):
    with pytest.raises(
        GraphDefinitionError, match=r"graph 'g', node 'entry'.*\['zzz'\].*reactor 'rx'"
    ) as info:
        _build({"entry": {"inputs": ["a", "zzz"]}}, {"entry": lambda a, zzz: a})
    assert info.value.node == "entry"


def test_node_outside_a_builder():
    with pytest.raises(RuntimeError, match=r"@node 'loose' used outside"):

        @node
        def loose(x):
            return x


def test_node_defined_twice(rx):
    with (
        pytest.raises(ValueError, match=r"graph 'g': node 'entry' defined twice"),
        ComputationGraphBuilder("g", reactor=rx, graph={"entry": {"inputs": ["a"]}}),
    ):

        @node
        def entry(a):
            return a

        @node(name="entry")
        def other(a):
            return a


@pytest.mark.parametrize(
    ("graph", "nodes", "message"),
    [
        # entry nodes take their inputs by parameter name
        ({"entry": {"inputs": ["a"]}}, {"entry": lambda x: x}, "node 'entry'.*signature"),
        ({"entry": {"inputs": ["a", "b"]}}, {"entry": lambda a: a}, "node 'entry'.*'a', 'b'"),
        # a node with one parent takes one argument
        (
            {"entry": {"inputs": ["a"], "next": "out"}, "out": {}},
            {"entry": _ident_a, "out": lambda: 1},
            "node 'out'.*one argument",
        ),
        (
            {"entry": {"inputs": ["a"], "next": "out"}, "out": {}},
            {"entry": _ident_a, "out": lambda x, y: x},
            "node 'out'.*one argument",
        ),
        # a node with several parents takes them by name
        (
            {
                "p": {"inputs": ["a"], "next": "join"},
                "q": {"inputs": ["b"], "next": "join"},
                "join": {},
            },
            {"p": _ident_a, "q": lambda b: b, "join": lambda x: x},
            r"node 'join'.*\['p', 'q'\]",
        ),
    ],
)
def test_bad_signatures(rx, graph, nodes, message):
    with pytest.raises(GraphDefinitionError, match=rf"graph 'g', {message}"):
        _build(graph, nodes)


def test_flexible_signatures_are_accepted(rx):
    builder = _build(
        {"entry": {"inputs": ["a", "b"], "next": "out"}, "out": {}},
        {"entry": lambda **inputs: inputs, "out": lambda *args: args},
    )
    assert builder.execute({"a": 1}) == {"out": ({"a": 1, "b": None},)}


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({}, "non-empty dict"),
        ([], "non-empty dict"),
        ({"entry": {"inputs": ["a"], "bogus": 1}}, "node 'entry': unknown keys"),
        ({"entry": "nope"}, "node 'entry': node spec must be a dict"),
        ({"not valid": {"inputs": ["a"]}}, "node name must be an identifier"),
        ({"entry": {"inputs": []}}, "node 'entry': 'inputs' must be"),
        ({"entry": {"inputs": ["a"], "next": 3}}, "node 'entry': 'next' must be"),
        ({"entry": {"inputs": ["a"], "routes": {}}}, "node 'entry': 'routes' must be"),
        ({"entry": {"inputs": ["a"], "routes": {"V": []}}}, "node 'entry': 'routes.V'"),
        ({"entry": {"inputs": ["a"], "next": "x", "routes": {"V": "x"}}, "x": {}}, "not both"),
        ({"x": {}}, "no entry node"),
        ({"entry": {"inputs": ["a"]}, "orphan": {}}, "node 'orphan': unreachable"),
        (
            {"entry": {"inputs": ["a"], "next": "other"}, "other": {"inputs": ["b"]}},
            "node 'entry'.*'other' is an entry node",
        ),
    ],
)
def test_malformed_topologies(rx, graph, message):
    with pytest.raises(GraphDefinitionError, match=rf"graph 'g'.*{message}"):
        ComputationGraphBuilder("g", reactor=rx, graph=graph)


def test_graph_name_must_be_a_string(rx):
    with pytest.raises(GraphDefinitionError, match=r"graph name"):
        ComputationGraphBuilder("", reactor=rx, graph={"e": {"inputs": ["a"]}})


def test_on_error_must_be_known(rx):
    with pytest.raises(GraphDefinitionError, match=r"graph 'g': on_error"):
        ComputationGraphBuilder("g", reactor=rx, graph={"e": {"inputs": ["a"]}}, on_error="panic")


def test_retry_backoff_is_a_duration(rx):
    with pytest.raises(ValueError, match=r"graph 'g' retry_backoff"):
        ComputationGraphBuilder(
            "g", reactor=rx, graph={"e": {"inputs": ["a"]}}, retry_backoff="soon"
        )


def test_a_failed_definition_registers_nothing(rx):
    with pytest.raises(GraphDefinitionError):
        _build({"entry": {"inputs": ["a"], "next": "out"}, "out": {}}, {"entry": _ident})
    assert bound_graphs("rx") == []
    with pytest.raises(KeyError, match=r"unknown graph 'g'"):
        get_graph("g")


def test_an_exception_inside_the_block_builds_nothing(rx):
    with (
        pytest.raises(ZeroDivisionError),
        ComputationGraphBuilder("g", reactor=rx, graph={"entry": {"inputs": ["a"]}}) as builder,
    ):
        1 / 0  # noqa: B018
    assert builder.graph is None
    with pytest.raises(RuntimeError, match=r"not built yet"):
        builder.execute({})
    # the builder stack is clean again
    with pytest.raises(RuntimeError, match=r"outside"):

        @node
        def entry(a):
            return a


def test_an_unknown_reactor_is_not_an_error_at_definition_time():
    builder = _build({"entry": {"inputs": ["a"]}}, {"entry": _ident_a}, reactor="declared_later")
    assert bound_graphs("declared_later") == ["g"]
    assert builder.execute({"a": 1}) == {"entry": 1}


def test_zero_retry_attempts_is_rejected() -> None:
    from headrace.engine import ComputationGraphBuilder

    with pytest.raises(ValueError, match="retry attempts must be >= 1"):
        ComputationGraphBuilder("g", reactor="r", graph={"a": {"inputs": ["x"]}}, retry_attempts=0)
