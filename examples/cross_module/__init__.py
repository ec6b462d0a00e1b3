"""Cross-module binding: a reactor in one module, a graph bound to it by name in another.

``publisher`` declares the ``PriceReactor`` reactor and its accumulators; ``subscriber``
declares the ``price_consumer`` graph with ``reactor="PriceReactor"`` and never imports
the publisher. Run ``python -m examples.cross_module.subscriber``.
"""
