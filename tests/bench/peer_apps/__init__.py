"""The one pipeline of ``make bench-peers``, written once per system.

Each module here runs in its own process; all but ``headrace_app`` also run in a peer's own
venv, so they import only the standard library, orjson, the peer and ``pipeline``.
"""
