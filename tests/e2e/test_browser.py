"""Headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) against the real
server: sign in, allow, land on the partner's redirect URI with a code, then take the
access back on ``/review``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path("/tmp/consent.png")


def _unavailable(reason: str) -> None:
    """In CI a missing browser is a broken build; elsewhere the test is skipped."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


class _Callback(BaseHTTPRequestHandler):
    """The partner site's redirect URI: records each query and shows a plain page."""

    seen: list[dict[str, list[str]]]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        if parts.path != "/callback":  # e.g. the browser's /favicon.ico
            self.send_error(404)
            return
        self.seen.append(parse_qs(parts.query))
        body = b"<!doctype html><title>Partner</title><h1>Partner site callback</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence the log
        pass


@pytest.fixture
def partner_site() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """A tiny HTTP server on a free loopback port standing in for the partner site."""
    seen: list[dict[str, list[str]]] = []
    handler = type("Callback", (_Callback,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/callback", seen
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def chromium():
    """A headless Chromium from the system (never a downloaded one)."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_browser_login_allow_then_revoke_on_review(start_server, partner_site, chromium):
    callback, seen = partner_site
    secret = secrets.token_urlsafe(24)
    server = start_server(
        [
            make_client("e2e-browser", [callback], secret, name="Browser Test Partner"),
            make_client("e2e-other", [callback], secret, name="Other Partner"),
        ]
    )
    base = server.url
    own = base + "/"
    username = "browser-" + secrets.token_hex(3)

    context = chromium.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    # Every page and file of the server loads cleanly (no CSP blocks, no missing assets).
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "console",
        lambda m: (
            problems.append(f"{m.text} ({m.location.get('url')})")
            if m.type == "error" and m.location.get("url", "").startswith(own)
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and r.url.startswith(own)
            else None
        ),
    )
    tokens: dict[str, str] = {}
    try:
        with requests.Session() as http:
            for client_id in ("e2e-browser", "e2e-other"):
                verifier, challenge = pkce_pair()
                state = secrets.token_urlsafe(8)
                query = {
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": callback,
                    "scope": "read-only",
                    "state": state,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
                page.goto(f"{base}/authorize?{urlencode(query)}")

                if client_id == "e2e-browser":
                    # Logged out: the login challenge, then back to the consent page.
                    page.wait_for_url(re.compile(r"/login\?next="))
                    assert "Browser Test Partner" in page.inner_text("main")
                    page.fill("input[name=username]", username)
                    page.fill("input[name=password]", "password")
                    page.click("button[type=submit]")
                    page.wait_for_url(re.compile(r"/authorize\?"))

                # The consent page: client, scope description, the user's name.
                assert page.locator("form[action='/authorize']").count() == 1
                text = page.inner_text("main")
                assert "Allow access?" in text
                name = "Browser Test Partner" if client_id == "e2e-browser" else "Other Partner"
                assert name in text and username in text
                assert "read-only" in text
                if client_id == "e2e-browser":
                    page.screenshot(path=str(SCREENSHOT), full_page=True)
                    # The stylesheet really applied (served by the app, allowed by the CSP).
                    display = page.eval_on_selector(
                        "button[name=allow]", "b => getComputedStyle(b).display"
                    )
                    assert display != "inline", "style.css did not load"

                # Allow: the browser lands on the partner's redirect URI with a code.
                page.click("button[name=allow]")
                page.wait_for_url(f"{callback}?**")
                params = parse_qs(urlsplit(page.url).query)
                assert params["state"] == [state]
                code = params["code"][0]
                assert seen[-1]["code"] == [code]
                assert page.inner_text("h1") == "Partner site callback"

                # The partner's back channel turns the code into tokens.
                answer = http.post(
                    f"{base}/token",
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": callback,
                        "code_verifier": verifier,
                    },
                    auth=(client_id, secret),
                    timeout=5,
                )
                assert answer.status_code == 200, answer.text
                tokens[client_id] = answer.json()["access_token"]
                assert api_status(http, base, tokens[client_id]) == 200

            # /review lists both partners, checked; uncheck one and save.
            page.goto(f"{base}/review")
            box = page.locator("input[type=checkbox][name='e2e-browser']")
            other = page.locator("input[type=checkbox][name='e2e-other']")
            assert box.is_checked() and other.is_checked()
            assert "Browser Test Partner" in page.inner_text("main")
            box.uncheck()
            page.click("button[name=save]")
            page.wait_for_url(re.compile(r"/review\?saved=1$"))

            # It is gone from the page and its token is refused; the other one stays.
            assert page.locator("input[type=checkbox][name='e2e-browser']").count() == 0
            assert "Browser Test Partner" not in page.inner_text("main")
            assert page.locator("input[type=checkbox][name='e2e-other']").is_checked()
            page.reload()
            assert page.locator("input[type=checkbox][name='e2e-browser']").count() == 0
            assert api_status(http, base, tokens["e2e-browser"]) == 401
            assert api_status(http, base, tokens["e2e-other"]) == 200
    finally:
        context.close()
    assert not problems, f"browser console errors: {problems}"


def api_status(http: requests.Session, base: str, token: str) -> int:
    answer = http.get(
        f"{base}/api/profile", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    return answer.status_code
