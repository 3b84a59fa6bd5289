"""The web view at ``/ui``: static HTML, CSS and vanilla JavaScript (``service/ui/static``,
shipped as package data; no build step) that call the JSON API from the browser.

The page asks for an API key once, keeps it in ``sessionStorage`` and sends it as
``Authorization: Bearer`` on every ``fetch``; images (histograms, plots) are fetched the same way
and shown from object URLs. There is no cookie and no server-side session, so nothing here needs
CSRF protection, and the key never goes in a URL. Every ``/ui`` response carries a restrictive
Content-Security-Policy: scripts, styles and connections from this origin only, images from this
origin or ``blob:``, no inline script or style, no framing. The page renders every value from
the API (record text, dataset names, notes, errors) as text through DOM APIs, never as HTML.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
UI_PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""No inline script, style or event handler runs; only this origin's files, and images from
object URLs (the PNGs the page fetches with the API key)."""

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # The files are small; a deployment's upgrade is then seen on the next load.
    "cache-control": "no-cache",
}


class SecurityHeaders:
    """ASGI wrapper that adds :data:`SECURITY_HEADERS` to every response of the app it wraps,
    and names its mount as the request's route (metrics count ``/ui/{path}``, not
    ``unmatched``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route: BaseRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.route is not None:
            scope["route"] = self.route

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_ui(app: FastAPI) -> None:
    """Serve the web view: ``/ui/`` is its page, ``/ui`` redirects there. Outside ``/v1``, so
    no API key is needed to load the (public, data-free) files; every call they make needs one."""

    @app.get(UI_PREFIX, include_in_schema=False)
    async def ui_redirect() -> RedirectResponse:
        # relative, so it stays under a proxy's path prefix
        response = RedirectResponse("ui/", status_code=307)
        response.headers.update(SECURITY_HEADERS)
        return response

    files = SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True))
    app.mount(UI_PREFIX, files, name="ui")
    files.route = app.router.routes[-1]
