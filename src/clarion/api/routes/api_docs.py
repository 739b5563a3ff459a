"""``/docs``: Swagger UI over ``/openapi.json``, every file served from this process (the
``swagger-ui-bundle-v2`` package ships them), so the page works without internet access
and the browser asks nothing of any other host."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from clarion.api.responses import html_headers
from clarion.errors import NotFound

router = APIRouter(prefix="/docs", tags=["docs"], include_in_schema=False)

_BUNDLE = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_OWN = {"docs.js": "text/javascript; charset=utf-8"}
# Swagger UI sets inline styles and shows data: images; the rest stays on this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = html_headers(CSP, {"Referrer-Policy": "no-referrer"})

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Clarion API</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/docs.js"></script>
</body>
</html>
"""


@cache
def _read(name: str) -> bytes:
    if name in _OWN:
        return files("clarion.web").joinpath("docs", name).read_bytes()
    vendor = files("swagger_ui_bundle").joinpath("vendor")
    [bundle] = [entry for entry in vendor.iterdir() if entry.name.startswith("swagger-ui-")]
    return bundle.joinpath(name).read_bytes()


@router.get("")
async def page() -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/assets/{name}")
async def asset(name: str) -> Response:
    media = _BUNDLE.get(name) or _OWN.get(name)
    if media is None:
        raise NotFound(f"no documentation file {name!r}")
    return Response(
        _read(name), media_type=media, headers={"Cache-Control": "public, max-age=3600"}
    )
