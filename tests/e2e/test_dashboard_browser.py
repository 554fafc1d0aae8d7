"""A real browser (Debian's chromium, driven by Playwright) loads the proxy's dashboard.

Skipped, with the reason, when chromium or playwright is missing; CI installs both
(``apt-get install chromium``, ``pip install playwright``). The screenshot is kept as
``tests/artifacts/dashboard.png`` (git-ignored).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from portside.net.routes import HealthCheckSpec, parse_route_spec
from tests.integration.test_proxy_kit import Backend, ProxyThread, request, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
        reason="chromium is not installed (flock /tmp/apt.lock apt-get install -y -q chromium)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (.venv/bin/pip install playwright)",
    ),
]


@pytest.mark.timeout(120)
def test_a_browser_shows_routes_backends_health_and_live_counters():
    from playwright.sync_api import sync_playwright

    spec = HealthCheckSpec(path="/health", interval_s=0.1, rise=1, fall=1)
    with (
        Backend("web") as web,
        Backend("api") as api,
        ProxyThread(
            [
                parse_route_spec(f"app.localhost={web.address}"),
                parse_route_spec(f"app.localhost/api={api.address}", health=spec),
            ]
        ) as proxy,
    ):
        for _ in range(3):
            assert request(proxy.port, "/info").status == 200
        api.server.health_status = 503
        wait_for(
            lambda: any(b["health"] == "down" for b in proxy.status()["backends"]),
            what="the api backend marked down",
        )
        ARTIFACTS.mkdir(exist_ok=True)
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=BROWSER_ARGS
            )
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 700})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"http://portside.localhost:{proxy.port}/", timeout=30_000)
                page.wait_for_selector('body[data-loaded="yes"]', timeout=30_000)
                assert page.title() == "portside proxy"
                routes = page.inner_text("#routes tbody")
                assert "app.localhost/api" in routes
                assert "app.localhost" in routes
                backends = page.inner_text("#backends tbody")
                assert web.address in backends
                assert api.address in backends
                assert page.locator("#backends td.down").count() == 1
                assert page.locator("#backends td.up").count() == 1
                # Live: more traffic shows up on the page without a reload.
                for _ in range(5):
                    request(proxy.port, "/info")
                # (A locator wait: the page's CSP forbids eval, which wait_for_function uses.)
                page.locator("#meta", has_text=" 8 requests").wait_for(timeout=30_000)
                # The same page under /_portside/ on a route host.
                page.goto(f"http://127.0.0.1:{proxy.port}/_portside/", timeout=30_000)
                page.wait_for_selector('body[data-loaded="yes"]', timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                assert errors == []
            finally:
                browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 1000
