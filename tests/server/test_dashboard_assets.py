"""The dashboard's files: everything its page loads (stylesheets, scripts and every ES
module they import) is served without a token, and the package ships all of them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx

from tidemill.server.app import STATIC
from tidemill.server.runner import ServerRunner

ROOT = Path(__file__).resolve().parents[2]
LOADED = re.compile(r'(?:src|href)="(/static/[^"]+)"')
IMPORTED = re.compile(r'from "\./([^"]+)"')


def loaded_by_the_page(base: str) -> set[str]:
    page = httpx.get(f"{base}/")
    assert page.status_code == 200
    found = set(LOADED.findall(page.text))
    queue = [p for p in found if p.endswith(".js")]
    while queue:
        module = httpx.get(f"{base}{queue.pop()}").text
        for name in IMPORTED.findall(module):
            path = f"/static/{name}"
            if path not in found:
                found.add(path)
                queue.append(path)
    return found


def test_every_file_the_page_loads_is_served_without_a_token(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path / "state", None, port=0, auth=True)
    base = runner.start()
    try:
        paths = loaded_by_the_page(base)
        assert {"/static/app.js", "/static/job.js", "/static/vendor/uPlot.iife.min.js"} <= paths
        for path in sorted(paths):
            response = httpx.get(f"{base}{path}")
            assert response.status_code == 200, path
            if path.endswith(".js"):
                assert "javascript" in response.headers["content-type"], path
        assert httpx.get(f"{base}/static/nothing.js").status_code == 404
    finally:
        runner.stop()


def test_the_package_data_holds_every_dashboard_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["tidemill"]
    package = STATIC.parents[1]
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    files = {path for path in STATIC.rglob("*") if path.is_file()}
    assert len(files) > 10
    assert sorted(map(str, files - shipped)) == []
