"""``/admin``: the admin console, a single page of plain ES modules and CSS read from the
package (``clarion/web/admin/``). It talks to the JSON API with the tenant key the
operator types in; nothing here is rendered on the server, and no file comes from
elsewhere."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Path
from starlette.responses import RedirectResponse, Response

from clarion.api.responses import html_headers
from clarion.errors import NotFound

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False)

_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
_ASSET = r"^[a-z][a-z0-9-]{0,40}\.(?:js|css)$"

# Scripts and styles from this origin only; inline styles are allowed so a captured
# email's own style attributes render in its sandboxed preview (which runs no script).
# Images from data: URLs and this origin only: an email's remote images are not fetched.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY = html_headers(
    CSP, {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
)


@cache
def _assets() -> frozenset[str]:
    folder = files("clarion.web").joinpath("admin")
    return frozenset(entry.name for entry in folder.iterdir() if re.match(_ASSET, entry.name))


@cache
def _read(name: str) -> bytes:
    return files("clarion.web").joinpath("admin", name).read_bytes()


@router.get("")
async def root() -> RedirectResponse:
    return RedirectResponse("/admin/", status_code=308)


@router.get("/")
async def page() -> Response:
    return Response(
        _read("index.html"),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store", **_SECURITY},
    )


@router.get("/{name}")
async def asset(name: str = Path(max_length=60)) -> Response:
    if name not in _assets():
        raise NotFound(f"no console file {name!r}")
    return Response(
        _read(name),
        media_type=_TYPES[name.rsplit(".", 1)[1]],
        headers={"Cache-Control": "no-cache", **_SECURITY},
    )
