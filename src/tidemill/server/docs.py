"""``/docs``: the OpenAPI explorer (Swagger UI), served offline from this server.

FastAPI's default page loads Swagger UI from a CDN, so on a cluster without internet
access it is blank. The assets come from the ``swagger-ui-py`` package instead (it
ships Swagger UI 5, which reads the OpenAPI 3.1 that FastAPI writes); only the few
files the page needs are routed, under ``/docs/assets/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_PREFIX = "/docs/assets"
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
"""The files of Swagger UI's ``dist`` folder the page loads, with their media types."""


def swagger_ui_dir() -> Path:
    """Where ``swagger-ui-py`` keeps Swagger UI's files (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the swagger-ui-py package is missing; reinstall tidemill (pip install -e .)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def add_docs(app: FastAPI) -> None:
    """Route ``/docs`` and its assets; ``app`` must be created with ``docs_url=None``."""
    static = swagger_ui_dir()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PREFIX}/favicon-32x32.png",
            # No badge fetched from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(ASSETS_PREFIX + "/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, f"no asset {name!r}; the docs use {', '.join(ASSETS)}")
        return FileResponse(static / name, media_type=media_type)


__all__ = ["ASSETS", "ASSETS_PREFIX", "add_docs", "swagger_ui_dir"]
