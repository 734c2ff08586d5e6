"""The API docs pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts, styles and icon served by the
app itself rather than from a CDN, so that they work where the service cannot reach the internet. The files
are the ones the fastapi-offline package ships (Swagger UI 5, which reads OpenAPI 3.1, and ReDoc 2). No OAuth2
redirect page: the only security scheme is a bearer key."""

from __future__ import annotations

import secrets
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
ASSETS_DIR = str(files("fastapi_offline") / "static")


def policy(nonce: str) -> str:
    """The docs pages' Content-Security-Policy: their own files, the one inline script FastAPI writes (by its
    nonce), the styles Swagger UI and ReDoc inject, ReDoc's search worker, and requests to this API only."""
    return (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def with_nonce(page: HTMLResponse) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
    return HTMLResponse(html, headers={"content-security-policy": policy(nonce)})


def install(app: FastAPI) -> None:
    """Adds the docs pages and their files to an app made with ``docs_url=None, redoc_url=None``."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return with_nonce(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return with_nonce(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
