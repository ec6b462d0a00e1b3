"""Reactors: watch accumulators and decide when computation graphs fire."""

from headrace.reactors.declaration import (
    InputStrategy,
    ReactionMode,
    ReactorInUseError,
    ReactorSpec,
    bind_graph,
    bound_graphs,
    clear_reactors,
    find_reactor,
    get_reactor,
    reactor,
    reactor_name_of,
    register_reactor,
    registered_reactors,
    unbind_graph,
    unload_reactor,
)
from headrace.reactors.keyed import current_fire_key
from headrace.reactors.keyed_loop import KeyedReactorLoop
from headrace.reactors.keyed_policy import KeyedPolicy
from headrace.reactors.loop import ReactorLoop, ReactorState
from headrace.reactors.policy import Fire, FiringPolicy

__all__ = [
    "Fire",
    "FiringPolicy",
    "InputStrategy",
    "KeyedPolicy",
    "KeyedReactorLoop",
    "ReactionMode",
    "ReactorInUseError",
    "ReactorLoop",
    "ReactorSpec",
    "ReactorState",
    "bind_graph",
    "bound_graphs",
    "clear_reactors",
    "current_fire_key",
    "find_reactor",
    "get_reactor",
    "reactor",
    "reactor_name_of",
    "register_reactor",
    "registered_reactors",
    "unbind_graph",
    "unload_reactor",
]
