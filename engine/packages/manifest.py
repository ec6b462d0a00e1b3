"""Reading a package directory: ``package.toml`` (``[package]`` plus the config-file
sections) and its optional ``requirements.txt``.

The config part goes through the config-file pipeline (``engine.config.files``); this module
only adds the ``[package]`` table, refuses ``[worker]`` and ``path`` on modules, and rewrites
the package's own module names into the namespace the package is imported under.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from headrace.engine.config.files import Issues

MANIFEST = "package.toml"
REQUIREMENTS = "requirements.txt"
CONFIG_SECTIONS = ("modules", "accumulators", "reactors", "graphs", "sinks")
NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


@dataclass
class Manifest:
    """A package's identity and the raw config-file part of its ``package.toml``."""

    name: str
    version: str
    description: str
    directory: Path
    file: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"

    def declares(self) -> dict[str, list[str]]:
        """What the manifest declares, by section (module-declared names are added at load)."""
        parts = {s: sorted(self.config.get(s, {})) for s in CONFIG_SECTIONS if s != "modules"}
        parts["modules"] = [_module_name(m) for m in self.config.get("modules", [])]
        return parts


def _module_name(entry: Any) -> str:
    return (
        entry
        if isinstance(entry, str)
        else str(entry.get("name", ""))
        if isinstance(entry, dict)
        else ""
    )


def read_manifest(directory: Path, issues: Issues, *, file: str | None = None) -> Manifest | None:
    """The manifest of the package in ``directory``; problems go into ``issues``."""
    path = directory / MANIFEST
    file = file or str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        issues.add(file, "<file>", f"no {MANIFEST} in the package")
        return None
    except UnicodeDecodeError as error:
        issues.add(file, "<file>", f"not UTF-8 text: {error}")
        return None
    except tomllib.TOMLDecodeError as error:
        issues.add(file, "<toml>", f"invalid TOML: {error}")
        return None
    package = raw.pop("package", None)
    if not isinstance(package, dict):
        issues.add(file, "package", "required table [package] with name, version and description")
        return None
    allowed = {"name", "version", "description"}
    for key in package:
        if key in CONFIG_SECTIONS:
            issues.add(
                file,
                f"package.{key}",
                f"'{key}' is inside [package]: write it above the [package] header "
                "(in TOML, keys after a header belong to that table)",
            )
        elif key not in allowed:
            issues.add(file, f"package.{key}", "unknown key (allowed: name, version, description)")
    name, version = package.get("name"), package.get("version")
    description = package.get("description", "")
    if not isinstance(name, str) or not NAME.match(name):
        issues.add(
            file,
            "package.name",
            "required: lowercase letters, digits, '-' and '_', up to 64 characters"
            + (f" (got {name!r})" if name is not None else ""),
        )
    if not isinstance(version, str):
        issues.add(file, "package.version", 'required: a version string such as "0.1.0"')
    else:
        try:
            Version(version)
        except InvalidVersion:
            issues.add(file, "package.version", f"not a PEP 440 version: {version!r}")
    if not isinstance(description, str):
        issues.add(file, "package.description", "must be a string")
    if "worker" in raw:
        issues.add(
            file,
            "worker",
            "a package has no [worker] table: worker settings belong to the worker's own files",
        )
    for key in raw:
        if key not in CONFIG_SECTIONS and key != "worker":
            issues.add(
                file, key, f"unknown section (allowed: package, {', '.join(CONFIG_SECTIONS)})"
            )
    for index, entry in enumerate(
        raw.get("modules", []) if isinstance(raw.get("modules"), list) else []
    ):
        if isinstance(entry, dict) and "path" in entry:
            issues.add(
                file,
                f"modules[{index}].path",
                "not allowed in a package: its modules are imported from the package itself",
            )
    if issues:
        return None
    config = {k: v for k, v in raw.items() if k in CONFIG_SECTIONS}
    return Manifest(str(name), str(version), str(description), directory, file, config)


def check_requirements(directory: Path, issues: Issues, *, file: str | None = None) -> None:
    """Every line of ``requirements.txt`` is a valid requirement this worker already has
    installed at a matching version; nothing is ever installed."""
    path = directory / REQUIREMENTS
    if not path.exists():
        return
    file = file or str(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            issues.add(file, f"line {number}", f"invalid requirement {text!r}: {error}")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            issues.add(
                file,
                f"line {number}",
                f"{requirement.name!r} is not installed in this worker "
                "(packages are never installed at run time: install it into the worker's image)",
            )
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            issues.add(
                file,
                f"line {number}",
                f"{requirement.name} {installed} is installed, but the package needs "
                f"{requirement.specifier}",
            )


# -- namespaces ------------------------------------------------------------------------------


def own_modules(directory: Path) -> set[str]:
    """Top-level module names the package ships (``nodes.py``, ``lib/__init__.py``)."""
    names = {p.stem for p in directory.glob("*.py")}
    names |= {p.parent.name for p in directory.glob("*/__init__.py")}
    return {n for n in names if n.isidentifier()}


def _rename(name: str, namespace: str, own: set[str]) -> str:
    head = name.split(".", 1)[0]
    return f"{namespace}.{name}" if head in own else name


def _rename_ref(ref: str, namespace: str, own: set[str]) -> str:
    module, sep, attr = ref.partition(":")
    return _rename(module, namespace, own) + sep + attr if sep else ref


def namespaced(config: dict[str, Any], namespace: str, own: set[str]) -> dict[str, Any]:
    """A copy of the config part whose references to the package's own modules point into
    ``namespace`` (so two packages may both ship a ``nodes.py``)."""
    out: dict[str, Any] = {k: v for k, v in config.items()}
    modules = config.get("modules")
    if isinstance(modules, list):
        out["modules"] = [
            _rename(m, namespace, own)
            if isinstance(m, str)
            else {**m, "name": _rename(str(m.get("name", "")), namespace, own)}
            if isinstance(m, dict)
            else m
            for m in modules
        ]
    refs = {
        "accumulators": ("function", "model", "key"),
        "graphs": ("module",),
        "sinks": ("function",),
    }
    for section, keys in refs.items():
        table = config.get(section)
        if not isinstance(table, dict):
            continue
        copied: dict[str, Any] = {}
        for entry_name, entry in table.items():
            if isinstance(entry, dict):
                entry = dict(entry)
                for key in keys:
                    value = entry.get(key)
                    if isinstance(value, str):
                        if key == "module":
                            entry[key] = _rename(value, namespace, own)
                        elif ":" in value:
                            entry[key] = _rename_ref(value, namespace, own)
            copied[entry_name] = entry
        out[section] = copied
    return out
