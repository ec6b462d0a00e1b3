"""The ``headrace`` command: run a worker, validate config files, show graphs.

Exit codes: 0 ok; 1 the worker failed at run time (could not start, a graph halted, a
component failed, the drain did not finish); 2 the config files or the command line are
wrong (nothing started).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from headrace.engine import early_signals

if TYPE_CHECKING:
    from headrace.engine.config.loader import LoadedConfig
    from headrace.reactors import ReactorSpec

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

DESCRIPTION = """\
Headrace: a streaming dataflow engine over Kafka. Accumulators turn topics, timers and
pushes into values; reactors fire computation graphs when their inputs change.

A worker is described by one or more TOML config files (accumulators, reactors, graphs,
sinks, worker settings); ${VAR} and ${VAR:-default} take values from the environment.
"""

EPILOG = """\
exit codes:
  0  success (run: drained and stopped cleanly after SIGTERM/SIGINT)
  1  run-time failure (could not start, a graph halted with on_error = "stop",
     a component failed: a task died or Kafka reported a fatal error, the drain
     did not finish in time)
  2  invalid config files or command line; every problem is printed as
     FILE: FIELD: REASON and nothing is started

examples:
  headrace validate examples/price_signal.toml
  headrace graphs examples/price_signal.toml --mermaid
  KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 headrace run examples/price_signal.toml
"""

RUN_HELP = """\
Run a long-lived worker: consume the configured Kafka topics in the worker's consumer
group, fire graphs, write results to their sinks, serve the HTTP operations API
(health, metrics, pause/resume, pushes) and keep history in the state store.

SIGTERM or SIGINT drains: stop fetching, finish running graphs, flush sinks, commit
offsets, leave the group, exit 0. A second signal exits at once (exit 128 + signal).
Start more workers with the same config to share the partitions.
"""

VALIDATE_HELP = """\
Check config files without starting anything: TOML syntax, unknown keys, types,
durations, environment variables, imports of the listed modules, reactors, graph
inputs, node functions and sink names. Prints every problem as FILE: FIELD: REASON
and exits 2 when there is any, else prints a summary and exits 0.
"""

GRAPHS_HELP = """\
List the accumulators, reactors and graphs the config files declare (with the modules
they import) and draw each graph's topology as text, or as a Mermaid flowchart with
--mermaid. Use --graph NAME to show one graph.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = _add_command(
        commands, "run", "run a worker from config files until SIGTERM/SIGINT", RUN_HELP
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error", "critical"),
        help="override worker.log.level (also: HEADRACE_LOG_LEVEL)",
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="override worker.log.format; auto = console on a terminal, JSON otherwise "
        "(also: HEADRACE_LOG_FORMAT)",
    )

    run.add_argument(
        "--packages",
        metavar="DIR",
        help="watch DIR for packages (directories with package.toml, or .tar.gz archives) "
        "and load, upgrade and unload them as DIR changes",
    )

    validate = _add_command(
        commands, "validate", "check config files and report every problem", VALIDATE_HELP
    )
    validate.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")

    graphs = _add_command(
        commands,
        "graphs",
        "list graphs, reactors and accumulators and draw topologies",
        GRAPHS_HELP,
    )
    graphs.add_argument("--mermaid", action="store_true", help="draw Mermaid flowcharts")
    graphs.add_argument("--graph", metavar="NAME", help="show only this graph")
    from headrace.engine.packages.cli import add_parser as add_package_parser

    add_package_parser(commands)
    return parser


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand that takes the TOML config files as its positional arguments."""
    command = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("files", nargs="+", metavar="FILE", help="TOML config files (merged)")
    return command


# -- helpers ------------------------------------------------------------------------------


def _quiet_logs() -> None:
    """validate/graphs: module imports may log; keep stdout for the command's own output."""
    from headrace.engine.ops.logging import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)


def _load(files: Sequence[str], err: TextIO) -> LoadedConfig | None:
    from headrace.engine.config.loader import load_config
    from headrace.engine.config.schema import ConfigError

    try:
        return load_config(files)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=err)
        count = len(error.issues)
        print(
            f"headrace: {count} problem{'s' if count != 1 else ''} in the config; "
            "nothing was started",
            file=err,
        )
        return None


def _keyed(spec: ReactorSpec) -> str:
    if not spec.keyed:
        return ""
    ttl = f", key_ttl {spec.key_ttl:g}s" if spec.key_ttl is not None else ""
    return f", keyed (max_concurrency {spec.max_concurrency}, max_keys {spec.max_keys}{ttl})"


def _origin(config: LoadedConfig, section: str, name: str, module: str | None) -> str:
    file = config.origins.get(f"{section}.{name}")
    if file and module:
        return f"{file}, module {module}"
    return file or (f"module {module}" if module else "declared by a module")


def _fn_module(fn: object) -> str | None:
    return getattr(fn, "__module__", None)


def describe(config: LoadedConfig) -> str:
    """The listing printed by ``headrace graphs``."""
    lines = ["accumulators:"]
    for name, spec in sorted(config.accumulators.items()):
        details = [spec.kind.value]
        if spec.topic:
            details.append(f"topic={spec.topic}")
            details.append(f"group={spec.group or config.worker.group_id}")
        if spec.interval:
            details.append(f"interval={spec.interval:g}s")
        if spec.flush_interval:
            details.append(f"flush_interval={spec.flush_interval:g}s")
        if spec.max_buffer_size:
            details.append(f"max_buffer_size={spec.max_buffer_size}")
        if spec.model is not None:
            details.append(f"model={spec.model.__name__}")
        if spec.key is not None:
            key = spec.key if isinstance(spec.key, str) else getattr(spec.key, "__name__", "fn")
            details.append(f"key={key}")
        origin = _origin(config, "accumulators", name, _fn_module(spec.fn))
        lines.append(f"  {name}: {' '.join(details)}  [{origin}]")
    lines.append("reactors:")
    for name, spec in sorted(config.reactors.items()):
        bound = sorted(g for g, graph in config.graphs.items() if graph.reactor_name == name)
        lines.append(
            f"  {name}: {spec.mode.value}, {spec.strategy.value}{_keyed(spec)}; "
            f"watches {', '.join(spec.accumulators)}; graphs {', '.join(bound) or 'none'}"
            f"  [{_origin(config, 'reactors', name, None)}]"
        )
    lines.append("graphs:")
    for name, graph in sorted(config.graphs.items()):
        sinks = ", ".join(config.graph_sinks.get(name, [])) or "none"
        module = next(iter({_fn_module(f.fn) for f in graph.executor.functions.values()}), None)
        retry = graph.retry
        lines.append(
            f"  {name}: reactor {graph.reactor_name}; sinks {sinks}; "
            f"retry {retry.attempts}x (backoff {retry.backoff:g}s); "
            f"on_error {graph.on_error.value}  [{_origin(config, 'graphs', name, module)}]"
        )
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _quiet_logs()
    config = _load(args.files, err)
    if config is None:
        return EXIT_CONFIG
    if not args.quiet:
        print(
            f"ok: {len(config.files)} file{'s' if len(config.files) != 1 else ''}; "
            f"graphs: {', '.join(sorted(config.graphs)) or 'none'}; "
            f"reactors: {', '.join(sorted(config.reactors)) or 'none'}; "
            f"accumulators: {', '.join(sorted(config.accumulators)) or 'none'}",
            file=out,
        )
    return EXIT_OK


def cmd_graphs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _quiet_logs()
    config = _load(args.files, err)
    if config is None:
        return EXIT_CONFIG
    names = sorted(config.graphs)
    if args.graph is not None:
        if args.graph not in config.graphs:
            print(
                f"headrace: unknown graph {args.graph!r} (graphs: {', '.join(names) or 'none'})",
                file=err,
            )
            return EXIT_CONFIG
        names = [args.graph]
    if args.graph is None:
        print(describe(config), file=out)
    for name in names:
        topology = config.graphs[name].topology
        print(file=out)
        if args.mermaid:
            print(f"%% graph {name} (reactor {config.graphs[name].reactor_name})", file=out)
            from headrace.engine.graph.topology import render_mermaid

            print(render_mermaid(topology), file=out)
        else:
            from headrace.engine.graph.topology import render_text

            print(render_text(topology), file=out)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.files, err)
    if config is None:
        return EXIT_CONFIG
    from headrace.engine.ops.logging import configure_logging
    from headrace.engine.worker import run_worker

    log_config = config.worker.log
    try:
        configure_logging(
            args.log_level or os.environ.get("HEADRACE_LOG_LEVEL") or log_config.level,
            args.log_format or os.environ.get("HEADRACE_LOG_FORMAT") or log_config.format,
        )
    except ValueError as error:
        print(f"headrace: {error}", file=err)
        return EXIT_CONFIG
    return run_worker(config, packages_dir=args.packages)


def cmd_package(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from headrace.engine.packages.cli import run

    return run(args, out, err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        # Before the config loads and the worker is built (seconds on a slow machine): a
        # SIGTERM then is kept and drains the worker as soon as it runs, and exits 0.
        early_signals.install()
    command = {
        "run": cmd_run,
        "validate": cmd_validate,
        "graphs": cmd_graphs,
        "package": cmd_package,
    }[args.command]
    try:
        return command(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
