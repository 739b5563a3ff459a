"""``/inbox/clarion-inbox.js`` (the drop-in web component) and ``/inbox/demo`` (a page that
uses it). Both are files of the package (``clarion/web/inbox/``), read once."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from clarion.api.responses import html_headers

router = APIRouter(prefix="/inbox", tags=["inbox"], include_in_schema=False)


@cache
def _asset(name: str) -> bytes:
    return files("clarion.web").joinpath("inbox", name).read_bytes()


def _script(name: str) -> Response:
    return Response(
        _asset(name),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


@router.get("/clarion-inbox.js")
async def component() -> Response:
    return _script("clarion-inbox.js")


@router.get("/demo.js")
async def demo_script() -> Response:
    return _script("demo.js")


@router.get("/demo")
async def demo() -> Response:
    # The token travels in the URL fragment or a form field, never in a request.
    return Response(
        _asset("demo.html"),
        media_type="text/html; charset=utf-8",
        headers=html_headers(
            "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'",
            {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        ),
    )
