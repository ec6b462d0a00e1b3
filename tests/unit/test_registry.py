"""``Registry``: one object for accumulators, reactors, graphs and bindings; snapshot/restore."""

from __future__ import annotations

import pytest

from headrace import ReactorInUseError, Registry, default_registry
from headrace.accumulators import get_accumulator, registered_accumulators, unregister_accumulator
from headrace.engine import get_graph, registered_graphs, unload_graph
from headrace.reactors import (
    bind_graph,
    bound_graphs,
    clear_reactors,
    get_reactor,
    registered_reactors,
    unload_reactor,
)
from tests.unit.support import pipeline


def test_decorators_and_builders_register_into_the_default_registry() -> None:
    builder = pipeline(["a"], graph="g", reactor_name="rx")
    assert default_registry.get_graph("g") is builder.graph is get_graph("g")
    assert default_registry.get_reactor("rx") is get_reactor("rx")
    assert default_registry.get_accumulator("a") is get_accumulator("a")
    assert default_registry.bound_graphs("rx") == ["g"] == bound_graphs("rx")


def test_every_kind_has_the_same_verbs() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    source = default_registry
    target = Registry()
    for kind in ("accumulator", "reactor", "graph"):
        entry = getattr(source, f"get_{kind}")({"accumulator": "a", "reactor": "rx"}.get(kind, "g"))
        getattr(target, f"register_{kind}")(entry)
        assert getattr(target, f"get_{kind}")(entry.name) is entry
        assert getattr(target, f"find_{kind}")(entry.name) is entry
        assert getattr(target, f"find_{kind}")("nope") is None
        assert getattr(target, f"{kind}s")() == {entry.name: entry}
        with pytest.raises(KeyError, match=rf"unknown {kind} 'nope' \(registered: {entry.name}\)"):
            getattr(target, f"get_{kind}")("nope")
    assert target.bound_graphs("rx") == ["g"]
    assert target.unregister_graph("g").name == "g"
    assert target.bound_graphs("rx") == []
    assert target.unregister_reactor("rx").name == "rx"
    assert target.unregister_accumulator("a").name == "a"
    for kind in ("accumulator", "reactor", "graph"):
        with pytest.raises(KeyError, match=rf"unknown {kind} 'gone' \(registered: none\)"):
            getattr(target, f"unregister_{kind}")("gone")


def test_registries_are_independent_objects() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    other = Registry()
    assert other.graphs() == {} and other.reactors() == {} and other.accumulators() == {}
    other.register_graph(default_registry.get_graph("g"))
    other.unregister_graph("g")
    assert "g" in default_registry.graphs()
    assert default_registry.bound_graphs("rx") == ["g"]


def test_restore_brings_back_exactly_the_snapshot() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    before = default_registry.snapshot()

    pipeline(["b"], graph="h", reactor_name="ry")
    unload_graph("g")
    unload_reactor("rx")
    unregister_accumulator("a")
    bind_graph("later", "h")
    assert "g" in before.graphs and "h" not in before.graphs  # the snapshot did not follow

    default_registry.restore(before)
    assert registered_graphs() == dict(before.graphs)
    assert registered_reactors() == dict(before.reactors)
    assert registered_accumulators() == dict(before.accumulators)
    assert bound_graphs("rx") == ["g"]
    assert bound_graphs("later") == [] and bound_graphs("ry") == []
    assert default_registry.snapshot() == before


def test_a_snapshot_does_not_change_when_the_registry_does() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    snap = default_registry.snapshot()
    unload_graph("g")
    assert "g" in snap.graphs
    assert "g" in snap.bindings["rx"]
    with pytest.raises(TypeError):
        snap.graphs["x"] = snap.graphs["g"]  # type: ignore[index]


def test_isolated_undoes_declarations_even_when_the_block_raises() -> None:
    before = default_registry.snapshot()
    with pytest.raises(RuntimeError, match="boom"), default_registry.isolated() as registry:
        pipeline(["a"], graph="inside", reactor_name="rx_inside")
        assert "inside" in registry.graphs()
        raise RuntimeError("boom")
    assert "inside" not in registered_graphs()
    assert "rx_inside" not in registered_reactors()
    assert default_registry.snapshot() == before


def test_a_bound_reactor_is_refused_until_its_graphs_are_unregistered() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    with pytest.raises(ReactorInUseError, match=r"reactor 'rx' cannot be unloaded: graphs \['g'\]"):
        unload_reactor("rx")
    unload_graph("g")
    unload_reactor("rx")
    assert "rx" not in registered_reactors()


def test_clear_reactors_forgets_bindings_but_keeps_graphs() -> None:
    pipeline(["a"], graph="g", reactor_name="rx")
    bind_graph("declared_later", "other")
    clear_reactors()
    assert registered_reactors() == {}
    assert bound_graphs("rx") == [] and bound_graphs("declared_later") == []
    assert "g" in registered_graphs()


def test_clear_empties_everything() -> None:
    registry = Registry()
    registry.register_graph(pipeline(["a"]).graph)  # type: ignore[arg-type]
    registry.register_accumulator(get_accumulator("a"))
    registry.clear()
    assert registry.snapshot() == Registry().snapshot()
    assert repr(registry) == "Registry(accumulators=0, reactors=0, graphs=0)"


def test_module_level_unregister_accumulator_ignores_unknown_names() -> None:
    unregister_accumulator("never_declared")  # the old function's contract: no error
    with pytest.raises(KeyError, match="unknown accumulator 'never_declared'"):
        default_registry.unregister_accumulator("never_declared")
