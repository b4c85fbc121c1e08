"""Headless Chromium against the real server: the sign-out confirmation and its answer."""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlencode

import pytest

from tests.e2e.conftest import start_server  # noqa: F401 - a fixture
from tests.e2e.test_browser import chromium  # noqa: F401 - a fixture
from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_a_partner_without_a_hint_gets_a_confirmation_then_the_signed_out_page(
    start_server,  # noqa: F811
    chromium,  # noqa: F811
):
    server = start_server([make_client("e2e-logout", name="Logout Partner")])
    base = server.url
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "logout-" + secrets.token_hex(3))
        page.fill("input[name=password]", "password")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/review$"))

        # An unregistered way back: the error page, and the user stays signed in.
        bad = {"client_id": "e2e-logout", "post_logout_redirect_uri": "https://evil.example/"}
        answer = page.goto(f"{base}/logout?{urlencode(bad)}")
        assert answer is not None and answer.status == 400
        assert page.url.startswith(base)
        assert "cannot be used" in page.inner_text("main")

        page.goto(f"{base}/logout?{urlencode({'client_id': 'e2e-logout'})}")
        assert page.inner_text("h1") == "Sign out?"
        assert "Logout Partner" in page.inner_text("main")
        assert page.locator("form").count() == 1  # not the header's sign-out form too
        buttons = page.locator("button")
        assert buttons.count() == 1
        assert buttons.first.inner_text().strip() == "Sign out"
        assert page.get_by_role("button", name="Sign out").is_visible()
        problems.clear()  # the 400 above was meant

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{base}/logout")
        assert page.inner_text("h1") == "You are signed out"
        page.goto(f"{base}/review")
        page.wait_for_url(re.compile(r"/login\?next="))
    finally:
        context.close()
    assert not problems, problems
