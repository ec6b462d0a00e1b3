"""Runnable Headrace examples, ported from the Cloacina tutorials.

Each module declares its accumulators, reactor and graph at import time (nothing else
happens on import, so a worker config can load it) and has a ``main()`` that drives it
in process with a ``Runtime`` and prints the results: ``python -m examples.<name>``.
``python -m examples.demo`` runs them all.
"""
