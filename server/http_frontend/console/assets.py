"""Serving the console's files: `GET /console[/...]`, and `GET /` redirected there.

The files under `static/` are read once, when the HTTP app is made, into memory and served
only by their exact names, so no request path can reach another file. They hold no data and
no secret, so they are served without a token; everything the page shows comes from the API,
with the token the user gave it (docs/adr/0014-web-console.md).

Every answer carries a strict Content-Security-Policy (only this origin's scripts, styles and
connections; no inline script or style, no framing, no form posts), `nosniff` and
`no-referrer`. Files are revalidated on each load (`no-cache` with an ETag), so an upgraded
server never runs against a browser's stale copy.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from server.http_frontend.exchange import Exchange

CONSOLE_ROOT = "/console/"
INDEX = "index.html"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
]
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""The kinds of file the console has; a file of another kind in `static/` is not served."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def console_assets() -> dict[str, Asset]:
    """Every servable file of `static/` by its path below it (`views/lake.js`)."""
    found: dict[str, Asset] = {}
    _collect(resources.files(__package__).joinpath("static"), "", found)
    assert INDEX in found, "the console's index.html is missing from the package"
    return found


def _collect(folder: Traversable, prefix: str, found: dict[str, Asset]) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            _collect(entry, f"{prefix}{entry.name}/", found)
            continue
        content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if content_type is None:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[prefix + entry.name] = Asset(body, content_type, etag)


async def serve_console_file(exchange: Exchange, rest: list[str]) -> None:
    """`/console`, `/console/` and `/console/index.html`: the page; `/console/<file>`: that
    file; anything else under `/console`: 404."""
    name = "/".join(rest) or INDEX
    asset = console_assets().get(name)
    if asset is None:
        await exchange.respond(404, b"Not Found", "text/plain", SECURITY_HEADERS)
        return
    headers = [*SECURITY_HEADERS, ("cache-control", "no-cache"), ("etag", asset.etag)]
    if exchange.header("if-none-match") == asset.etag:
        # No content-length: a 304's would have to be the 200's (RFC 9110 §8.6).
        await exchange.start(304, headers)
        await exchange.write(b"", more_body=False)
        return
    await exchange.respond(200, asset.body, asset.content_type, headers)


async def redirect_to_console(exchange: Exchange) -> None:
    """`GET /`: the console."""
    await exchange.respond(302, b"", None, [("location", CONSOLE_ROOT), *SECURITY_HEADERS])
