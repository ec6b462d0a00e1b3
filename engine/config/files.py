"""Reading config files: TOML parsing, env interpolation, schema validation and merging.

``parse_file`` reads one file into a ``ParsedFile`` (its valid entries, and the names of
broken ones); ``merge`` combines several, rejecting a second ``[worker]`` and names declared
in more than one file. Every problem goes into an ``Issues`` collector as
``file: field.path: reason``; nothing is imported or registered here.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel

from headrace.engine.config.schema import (
    SECTIONS,
    AccumulatorConfig,
    ConfigError,
    ConfigFile,
    ConfigIssue,
    GraphConfig,
    ModuleConfig,
    ReactorConfig,
    SinkConfig,
    WorkerConfig,
    field_path,
    interpolate,
)

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]

_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "accumulators": AccumulatorConfig,
    "reactors": ReactorConfig,
    "graphs": GraphConfig,
    "sinks": SinkConfig,
}


# -- issue collection ---------------------------------------------------------------------------


class Issues:
    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, file: str, path: Path_ | str, reason: str) -> None:
        where = path if isinstance(path, str) else field_path(*path)
        # one problem per field: the first is the cause (e.g. a missing variable), later
        # ones about the same field would only be its consequences
        if not any(i.file == file and i.field == where for i in self.items):
            self.items.append(ConfigIssue(file, where, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _unwrap(annotation: Any) -> Any:
    """The model class or container behind Annotated/Optional wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the field at ``loc`` (for 'unknown key' hints)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            current = info.annotation
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin is list and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            else:
                return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _pydantic_issues(
    issues: Issues,
    file: str,
    prefix: Path_,
    model: type[BaseModel],
    error: pydantic.ValidationError,
) -> None:
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if p != "[key]")
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else ""
            reason = "unknown key" + (f" (allowed: {allowed})" if allowed else "")
        elif kind == "missing":
            reason = "required field is missing"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            got = item.get("input")
            reason = f"expected a table, got {type(got).__name__} {_short(got)}"
        elif kind == "value_error":
            reason = message.removeprefix("Value error, ")
        else:
            reason = message
            if "input" in item and kind not in ("literal_error",):
                reason += f" (got {_short(item['input'])})"
            elif kind == "literal_error":
                reason += f", got {_short(item.get('input'))}"
        issues.add(file, (*prefix, *loc), reason)


def _validate(issues: Issues, file: str, prefix: Path_, model: type[M], data: Any) -> M | None:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        _pydantic_issues(issues, file, prefix, model, error)
        return None


# -- one file ------------------------------------------------------------------------------------


@dataclass
class ParsedFile:
    file: str
    directory: Path
    worker: WorkerConfig | None = None
    has_worker: bool = False
    modules: list[tuple[int, ModuleConfig]] = field(default_factory=list)
    entries: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    broken: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SECTIONS})
    from_env: set[str] = field(default_factory=set)


def parse_file(
    path: str | Path, issues: Issues, environ: Mapping[str, str] | None = None
) -> ParsedFile:
    """Read one file; every problem goes into ``issues``; valid entries are kept."""
    file = str(path)
    parsed = ParsedFile(file, Path(path).resolve().parent)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        issues.add(file, "<file>", f"cannot read: {error.strerror or error}")
        return parsed
    except UnicodeDecodeError as error:
        issues.add(file, "<file>", f"not UTF-8 text: {error}")
        return parsed
    except tomllib.TOMLDecodeError as error:
        issues.add(file, "<toml>", f"invalid TOML: {error}")
        return parsed

    return parse_data(file, parsed.directory, raw, issues, environ)


def parse_data(
    file: str,
    directory: Path,
    raw: dict[str, Any],
    issues: Issues,
    environ: Mapping[str, str] | None = None,
) -> ParsedFile:
    """Check already-read TOML data of ``file`` (e.g. a package manifest's config part)."""
    parsed = ParsedFile(file, directory)
    done = interpolate(raw, environ)
    for where, reason in done.problems:
        issues.add(file, where, reason)
    data, parsed.from_env = done.data, done.from_env

    allowed = list(ConfigFile.model_fields)
    for key in data:
        if key not in allowed:
            issues.add(file, (key,), f"unknown section (allowed: {', '.join(allowed)})")

    if "worker" in data:
        parsed.has_worker = True
        parsed.worker = _validate(issues, file, ("worker",), WorkerConfig, data["worker"])

    if "modules" in data:
        modules = _validate(issues, file, (), ConfigFile, {"modules": data["modules"]})
        if modules is not None:
            parsed.modules = list(enumerate(modules.modules))

    for section in SECTIONS:
        if section not in data:
            continue
        table = data[section]
        if not isinstance(table, dict):
            issues.add(file, (section,), f"expected a table of named entries, got {_short(table)}")
            continue
        model = _SECTION_MODELS[section]
        for name, value in table.items():
            entry = _validate(issues, file, (section, name), model, value)
            if entry is None:
                parsed.broken[section].add(name)
            else:
                parsed.entries[section][name] = entry
    return parsed


# -- merging files ------------------------------------------------------------------------


@dataclass
class Merged:
    files: list[ParsedFile]
    worker: WorkerConfig
    worker_file: str | None
    modules: list[tuple[ParsedFile, int, ModuleConfig]]
    entries: dict[str, dict[str, tuple[str, Any]]]
    broken: dict[str, set[str]]
    from_env: dict[str, set[str]]


def merge(files: list[ParsedFile], issues: Issues) -> Merged:
    worker: WorkerConfig | None = None
    worker_file: str | None = None
    entries: dict[str, dict[str, tuple[str, Any]]] = {s: {} for s in SECTIONS}
    broken: dict[str, set[str]] = {s: set() for s in SECTIONS}
    seen: dict[tuple[str, str], str] = {}
    modules: list[tuple[ParsedFile, int, ModuleConfig]] = []
    for parsed in files:
        if parsed.has_worker:
            if worker_file is not None:
                issues.add(
                    parsed.file,
                    "worker",
                    f"[worker] is also set in {worker_file}; keep worker settings in one file",
                )
            else:
                worker_file = parsed.file
                worker = parsed.worker
        modules.extend((parsed, index, module) for index, module in parsed.modules)
        for section in SECTIONS:
            names = list(parsed.entries[section]) + sorted(parsed.broken[section])
            for name in names:
                first = seen.get((section, name))
                if first is not None:
                    issues.add(
                        parsed.file,
                        (section, name),
                        f"{section[:-1]} {name!r} is also declared in {first}; "
                        "each name may be declared in one file only",
                    )
                    continue
                seen[(section, name)] = parsed.file
                if name in parsed.entries[section]:
                    entries[section][name] = (parsed.file, parsed.entries[section][name])
                else:
                    broken[section].add(name)
    return Merged(
        files=files,
        worker=worker or WorkerConfig(),
        worker_file=worker_file,
        modules=modules,
        entries=entries,
        broken=broken,
        from_env={p.file: p.from_env for p in files},
    )
