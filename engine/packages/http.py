"""``/v1/packages``: upload (the archive as the body, or multipart), list, show, delete.

Mounted only when the worker has an API token and ``[worker.packages] enabled``: uploading
a package runs its code. Upload bodies have their own limit (``max_archive_bytes``).
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from headrace.engine.ops.http_guard import read_capped_body
from headrace.engine.packages.reconciler import PackageInUse, UnknownPackage
from headrace.engine.packages.service import PackageExists, PackageRejected, PackageService

MAX_ARCHIVE_SETTING = "[worker.packages] max_archive_bytes"
"""What an oversized upload's 413 names (not the push-body limit)."""


class Created(BaseModel):
    name: str
    version: str
    status: str


class Refused(BaseModel):
    """400: why the archive or its manifest was refused (``detail`` repeats ``error``)."""

    detail: str
    error: str | None = None
    reasons: list[str] = []


class InUse(BaseModel):
    """409: a version that exists, or the guard naming the graphs still bound."""

    detail: str
    error: str
    bound_graphs: list[str] = []


class Problem(BaseModel):
    detail: str


def archive_from(body: bytes, content_type: str) -> bytes:
    """The archive: the body itself, or the first file part of a multipart form."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        return body
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise PackageRejected(["multipart body without parts"])
    for part in message.iter_parts():  # type: ignore[attr-defined]
        if part.get_filename() or part.get_param("name", header="content-disposition") in (
            "file",
            "archive",
            "package",
        ):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise PackageRejected(["multipart body has no file part (name it 'file')"])


def packages_router(
    service: PackageService, dependencies: Sequence[Any], max_bytes: int
) -> APIRouter:
    router = APIRouter(
        dependencies=list(dependencies),
        tags=["packages"],
        responses={401: {"model": Problem}, 400: {"model": Refused}},
    )

    @router.post(
        "/v1/packages",
        status_code=201,
        response_model=Created,
        responses={409: {"model": InUse}, 413: {"model": Problem}},
    )
    async def upload(request: Request) -> Any:
        """Upload a package archive (NAME-VERSION.tar.gz); it loads in the background."""
        body = await read_capped_body(request, max_bytes, MAX_ARCHIVE_SETTING)
        try:
            data = archive_from(body, request.headers.get("content-type", ""))
            created = await service.upload(data)
        except PackageRejected as error:
            body = {"detail": "package refused", "error": "package refused"}
            return JSONResponse({**body, "reasons": error.reasons}, status_code=400)
        except PackageExists as error:
            return JSONResponse({"detail": str(error), "error": str(error)}, status_code=409)
        return JSONResponse(created, status_code=201)

    @router.get("/v1/packages")
    async def list_packages() -> dict[str, Any]:
        """This worker's packages; with a shared state store, what every worker runs."""
        health = await service.health()
        return {**health, "packages": service.list()}

    @router.get("/v1/packages/{name}", responses={404: {"model": Problem}})
    async def show(name: str) -> dict[str, Any]:
        try:
            return service.get(name)
        except UnknownPackage as error:
            raise HTTPException(404, str(error.args[0])) from None

    @router.delete(
        "/v1/packages/{name}", responses={404: {"model": Problem}, 409: {"model": InUse}}
    )
    async def delete(name: str) -> Any:
        try:
            return await service.delete(name)
        except UnknownPackage as error:
            raise HTTPException(404, str(error.args[0])) from None
        except PackageInUse as error:
            body = {"detail": str(error), "error": str(error)}
            return JSONResponse({**body, "bound_graphs": error.bound_graphs}, status_code=409)

    return router
