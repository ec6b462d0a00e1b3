"""Packages: graphs deployed into a running worker (pack, upload, reconcile, unload)."""
