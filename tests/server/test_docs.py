"""/docs works without internet access: the page and its assets come from the server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tidemill.server.runner import ServerRunner


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    runner = ServerRunner(tmp_path_factory.mktemp("state"), port=0)
    try:
        yield runner.start()
    finally:
        runner.stop()


def test_the_docs_page_loads_nothing_from_elsewhere(url: str) -> None:
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert re.findall(r"https?://", page.text) == []
    assert "/openapi.json" in page.text


def test_the_docs_assets_are_served_by_the_server(url: str) -> None:
    page = httpx.get(f"{url}/docs").text
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page)
    kinds = {}
    for path in assets:
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 200, path
        kinds[Path(path).suffix] = response.headers["content-type"]
    assert kinds[".js"].startswith("text/javascript")
    assert kinds[".css"].startswith("text/css")
    bundle = httpx.get(f"{url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle


def test_the_openapi_document_is_3_1_and_lists_the_api(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert "/api/v1/jobs" in schema["paths"]


def test_an_unknown_asset_is_a_404_naming_the_assets(url: str) -> None:
    response = httpx.get(f"{url}/docs/assets/nope.js")
    assert response.status_code == 404
    assert "swagger-ui-bundle.js" in response.json()["error"]["message"]


def test_the_api_documents_the_one_error_shape_it_answers(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    submit = spec["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert "QuotaExceeded" in submit["403"]["description"]
    assert submit["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorDetail"]["properties"]
    assert set(error) == {"code", "message", "errors"}
    refused = httpx.get(f"{url}/api/v1/jobs", params={"limit": 0}).json()
    assert set(refused) == {"error"} and set(refused["error"]) == set(error)
