"""``headrace package pack|upload|list|delete``: build archives and talk to a worker's
``/v1/packages`` (the token comes from ``HEADRACE_TOKEN``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the parser is built on every start: keep this module's imports light
    from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEFAULT_URL = "http://127.0.0.1:8080"

PACKAGE_HELP = """\
Packages deploy graphs into running workers. A package is a directory with package.toml
([package] name, version, description, then the sections of a config file: modules,
accumulators, reactors, graphs, sinks; no [worker]) and its Python modules.

  headrace package pack DIR                 validate, then write NAME-VERSION.tar.gz
  headrace package upload FILE --url URL    POST it to a worker's /v1/packages
  headrace package list --url URL           packages and their status
  headrace package delete NAME --url URL    unload (refused while other packages bind)

upload, list and delete send Authorization: Bearer $HEADRACE_TOKEN.
"""


def add_parser(commands: Any) -> None:
    package = commands.add_parser(
        "package",
        help="pack, upload, list and delete packages",
        description=PACKAGE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = package.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    pack = actions.add_parser("pack", help="validate a package directory and write its archive")
    pack.add_argument("directory", metavar="DIR")
    pack.add_argument("-o", "--output", metavar="DIR", default=".", help="where to write it")
    for name, summary in (
        ("upload", "upload an archive to a worker"),
        ("list", "list a worker's packages"),
        ("delete", "unload a package from a worker"),
    ):
        action = actions.add_parser(name, help=summary)
        if name == "upload":
            action.add_argument("file", metavar="FILE")
        if name == "delete":
            action.add_argument("name", metavar="NAME")
        action.add_argument("--url", default=os.environ.get("HEADRACE_URL", DEFAULT_URL))


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json
    from pathlib import Path

    if args.action == "pack":
        return pack(Path(args.directory), Path(args.output), out, err)
    token = os.environ.get("HEADRACE_TOKEN", "")
    if not token:
        print("headrace: set HEADRACE_TOKEN (the worker's API token)", file=err)
        return EXIT_CONFIG
    base = args.url.rstrip("/")
    if args.action == "upload":
        data = Path(args.file).read_bytes()
        status, body = _request("POST", f"{base}/v1/packages", token, data)
    elif args.action == "list":
        status, body = _request("GET", f"{base}/v1/packages", token)
    else:
        status, body = _request("DELETE", f"{base}/v1/packages/{args.name}", token)
    print(json.dumps(body, indent=2), file=out if status < 400 else err)
    return EXIT_OK if status < 400 else EXIT_FAILURE


def pack(directory: Path, output: Path, out: TextIO, err: TextIO) -> int:
    from headrace.engine.ops.logging import configure_logging
    from headrace.engine.packages.archive import pack as write_archive
    from headrace.engine.packages.resolve import validate_package
    from headrace.engine.packages.service import PackageRejected, read_package

    configure_logging("warning", "console", stream=sys.stderr)
    try:
        manifest = read_package(directory)
    except PackageRejected as error:
        return _problems(error.reasons, err)
    problems = validate_package(manifest)
    if problems:
        return _problems(problems, err)
    output.mkdir(parents=True, exist_ok=True)
    target = write_archive(directory, manifest.name, manifest.version, output)
    print(f"wrote {target} ({target.stat().st_size} bytes)", file=out)
    return EXIT_OK


def _problems(reasons: list[str], err: TextIO) -> int:
    for reason in reasons:
        print(reason, file=err)
    print(f"headrace: {len(reasons)} problem(s) in the package; nothing was written", file=err)
    return EXIT_CONFIG


def _request(method: str, url: str, token: str, data: bytes | None = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}", "Host": "localhost"}
    if data is not None:
        headers["Content-Type"] = "application/gzip"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"error": text.decode(errors="replace")}
    except urllib.error.URLError as error:
        return 599, {"error": f"cannot reach {url}: {error.reason}"}
