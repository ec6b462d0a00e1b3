"""/v1/packages over the ASGI app: off without a token, 201/400/409/413, the guard's 409."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.connectors.sinks import LogSink
from headrace.engine.ops.http import create_app
from headrace.engine.packages.archive import pack
from headrace.engine.packages.reconciler import Reconciler
from headrace.engine.packages.service import PackageService
from headrace.engine.runtime import Runtime
from tests.unit.engine.packages.helpers import EXAMPLES, MANIFEST, file_member, tar_bytes

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def service() -> AsyncIterator[PackageService]:
    runtime = Runtime(graphs=[])
    await runtime.start()
    try:
        yield PackageService(Reconciler(runtime, build_sink=lambda name, cfg: LogSink()))
    finally:
        await runtime.stop()
        for name in [n for n in sys.modules if n.startswith("headrace_packages.")]:
            del sys.modules[name]


def client(service: PackageService, token: str | None = TOKEN, **options: Any) -> httpx.AsyncClient:
    app = create_app(service.reconciler.runtime, token=token, packages=service, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


def archive(tmp_path: Path, example: str) -> bytes:
    directory = EXAMPLES / example
    name, version = example, "0.1.0"
    return pack(directory, name, version, tmp_path).read_bytes()


async def test_endpoints_are_off_without_a_token_even_on_loopback(service: PackageService) -> None:
    async with client(service, token=None, allow_unauthenticated=True) as http:
        response = await http.post("/v1/packages", content=b"x")
        assert response.status_code == 404
        assert (await http.get("/v1/packages")).status_code == 404


async def test_upload_list_show_guard_delete(service: PackageService, tmp_path: Path) -> None:
    async with client(service) as http:
        assert (await http.post("/v1/packages", content=b"x")).status_code == 401  # no token
        response = await http.post(
            "/v1/packages", content=archive(tmp_path, "pricing-publisher"), headers=AUTH
        )
        assert response.status_code == 201, response.text
        assert response.json() == {
            "name": "pricing-publisher",
            "version": "0.1.0",
            "status": "pending",
        }
        multipart = {
            "file": ("s.tar.gz", archive(tmp_path, "pricing-subscriber"), "application/gzip")
        }
        response = await http.post("/v1/packages", files=multipart, headers=AUTH)
        assert response.status_code == 201, response.text
        await service.reconciler.settle()
        listing = (await http.get("/v1/packages", headers=AUTH)).json()
        assert [(p["name"], p["status"]) for p in listing["packages"]] == [
            ("pricing-publisher", "loaded"),
            ("pricing-subscriber", "loaded"),
        ]
        assert listing["running"] == {"pricing-publisher": "0.1.0", "pricing-subscriber": "0.1.0"}
        shown = (await http.get("/v1/packages/pricing-subscriber", headers=AUTH)).json()
        assert shown["declares"]["graphs"] == ["price_consumer"]
        again = await http.post(
            "/v1/packages", content=archive(tmp_path, "pricing-publisher"), headers=AUTH
        )
        assert again.status_code == 409
        assert again.json()["error"] == "package pricing-publisher-0.1.0 already exists"
        refused = await http.delete("/v1/packages/pricing-publisher", headers=AUTH)
        assert refused.status_code == 409
        assert refused.json()["bound_graphs"] == ["price_consumer"]
        assert "pricing-subscriber" in refused.json()["error"]
        assert (await http.delete("/v1/packages/pricing-subscriber", headers=AUTH)).json()[
            "status"
        ] == "unloaded"
        assert (
            await http.delete("/v1/packages/pricing-publisher", headers=AUTH)
        ).status_code == 200
        missing = await http.get("/v1/packages/pricing-publisher", headers=AUTH)
        assert missing.status_code == 404
        assert "unknown package 'pricing-publisher'" in missing.json()["detail"]


BAD = {
    "traversal": (
        [file_member("p-1.0/package.toml", MANIFEST), file_member("p-1.0/../x.py", b"")],
        "p-1.0/../x.py: path leaves the package ('..')",
    ),
    "manifest": (
        [file_member("p-1.0/package.toml", b'[package]\nname = "P!"\nversion = "1.0"\n[worker]\n')],
        "p-1.0/package.toml: worker: a package has no [worker] table",
    ),
    "top folder": (
        [file_member("q-2.0/package.toml", MANIFEST)],
        "q-2.0/: the top folder must be p-1.0/",
    ),
    "requirements": (
        [
            file_member("p-1.0/package.toml", MANIFEST),
            file_member("p-1.0/requirements.txt", b"surely-not-installed-pkg==1.0\n"),
        ],
        "p-1.0/requirements.txt: line 1: 'surely-not-installed-pkg' is not installed",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_archives_get_400_with_reasons(service: PackageService, case: str) -> None:
    members, reason = BAD[case]
    async with client(service) as http:
        response = await http.post("/v1/packages", content=tar_bytes(members), headers=AUTH)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "package refused"
    assert any(r.startswith(reason) for r in body["reasons"]), body["reasons"]
    assert service.reconciler.packages == {}


async def test_upload_over_the_package_limit_is_413_naming_that_limit(
    service: PackageService,
) -> None:
    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield bytes(1000)

    async with client(service, packages_max_bytes=1000) as http:
        declared = await http.post("/v1/packages", content=bytes(5000), headers=AUTH)
        counted = await http.post("/v1/packages", content=streamed(), headers=AUTH)
    assert declared.status_code == counted.status_code == 413
    assert declared.json()["detail"] == (
        "body is 5000 bytes; the limit is 1000 bytes ([worker.packages] max_archive_bytes)"
    )
    assert counted.json()["detail"] == (
        "body is over 1000 bytes; the limit is 1000 bytes ([worker.packages] max_archive_bytes)"
    )
    assert service.reconciler.packages == {}


async def test_health_answers_when_the_fleet_view_cannot_be_read(service: PackageService) -> None:
    class AwayTable:
        def workers(self) -> dict[str, Any]:
            raise ConnectionError("state store unreachable")

    service.table = AwayTable()
    async with client(service) as http:
        response = await http.get("/v1/health", headers=AUTH)
    assert response.status_code == 200, response.text
    packages = response.json()["packages"]
    assert (packages["waiting_for_uploads"], packages["packages"]) == (True, [])
    assert packages["workers"] is None
    assert packages["workers_error"] == "ConnectionError: state store unreachable"
