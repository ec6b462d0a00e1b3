"""Importing the Python modules config files name, with reasons a person can act on."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def ensure_on_path(directory: Path | str) -> None:
    text = str(directory)
    if text not in sys.path:
        sys.path.insert(0, text)


def _import_reason(name: str, error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name and name.startswith(error.name):
        return (
            f"cannot import module {name!r}: no module named {error.name!r} "
            "(run from the project directory, or set 'path' on the module entry)"
        )
    return f"cannot import module {name!r}: {type(error).__name__}: {error}"


def import_module(name: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(name), None
    except BaseException as error:  # a module may even call sys.exit at import
        if isinstance(error, KeyboardInterrupt):
            raise
        return None, _import_reason(name, error)


def resolve_ref(ref: str) -> tuple[Any | None, str | None]:
    """``"module:attr.sub"`` -> the object, or the reason it cannot be found."""
    module_name, _, attr = ref.partition(":")
    module, reason = import_module(module_name)
    if module is None:
        return None, reason
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            return None, f"module {module_name!r} has no attribute {attr!r}"
        target = getattr(target, part)
    return target, None
