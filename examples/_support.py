"""Helpers shared by the examples' ``main()`` functions (never used at import time)."""

from __future__ import annotations

import logging

import structlog


def quiet_logs() -> None:
    """Show only warnings and errors, so the examples' own output stays readable."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
