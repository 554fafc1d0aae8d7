"""A real browser trusts the local CA: headless Chromium (Debian's, driven by Playwright)
loads https://app.localhost:PORT/ through ``portside proxy``'s HTTPS listener with no
certificate error, once ``portside ca --nss-db $HOME/.pki/nssdb`` has added the CA to the
NSS database that Chromium on Linux reads; without that it refuses the certificate.

HOME is a temporary directory for the browser (and PORTSIDE_HOME one for the CA): the
real profile, state directory and trust stores are never touched. Chromium resolves
``*.localhost`` to loopback itself. The screenshot is kept as ``tests/artifacts/https.png``.
Skipped, with the reason, when chromium, playwright or certutil is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portside.ca import CertificateAuthority
from portside.models import Endpoint
from portside.net.proxy import ProxyOptions
from portside.net.routes import parse_route_spec
from tests.e2e.test_dashboard_browser import ARTIFACTS, BROWSER_ARGS, CHROMIUM
from tests.integration.test_proxy_kit import LOOPBACK, ROOT, Backend, ProxyThread

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
        reason="chromium is not installed (apt-get install -y -q chromium)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (.venv/bin/pip install playwright)",
    ),
    pytest.mark.skipif(
        shutil.which("certutil") is None,
        reason="certutil is not installed (apt-get install -y -q libnss3-tools)",
    ),
]


def _load(home: Path, url: str, screenshot: Path | None = None) -> tuple[str, dict[str, object]]:
    """Open *url* in a fresh headless Chromium whose HOME is *home*; the page's text and
    the TLS details the browser saw. Certificate errors raise (nothing is ignored)."""
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=BROWSER_ARGS,
            env={**os.environ, "HOME": str(home)},
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 500})
            response = page.goto(url, timeout=30_000)
            assert response is not None
            assert response.status == 200
            details = dict(response.security_details() or {})
            text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return text, details
        finally:
            browser.close()


@pytest.mark.timeout(180)
def test_chromium_with_the_ca_in_its_nss_db_loads_the_page(tmp_path):
    state = tmp_path / "portside-home"
    home = tmp_path / "browser-home"
    home.mkdir()
    env = {"PORTSIDE_HOME": str(state)}
    authority = CertificateAuthority.load_or_create(state / "ca")
    options = ProxyOptions(
        access_log="off",
        tls_listen=Endpoint(ip=LOOPBACK, port=0),
        tls_context=authority.server_context(),
    )
    with (
        Backend("web") as web,
        ProxyThread([parse_route_spec(f"app.localhost={web.address}")], options) as proxy,
    ):
        assert proxy.proxy.tls_server is not None
        url = f"https://app.localhost:{proxy.proxy.tls_server.address.port}/hello"

        # Not trusted yet: the browser refuses the certificate.
        from playwright.sync_api import Error as PlaywrightError

        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            _load(home, url)

        # Trust it the way docs/https.md says, with the CLI.
        done = subprocess.run(
            [sys.executable, "-m", "portside", "ca", "--nss-db", str(home / ".pki" / "nssdb")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert authority.fingerprint in done.stdout

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "https.png"
        text, details = _load(home, url, shot)
    assert '"backend": "web"' in text
    assert '"target": "/hello"' in text
    assert '"x-forwarded-proto", "https"' in text
    assert str(details.get("subjectName")) == "app.localhost"
    assert str(details.get("issuer", "")).startswith("portside local CA")
    assert str(details.get("protocol")) in ("TLS 1.3", "TLS 1.2")
    assert shot.stat().st_size > 1000
