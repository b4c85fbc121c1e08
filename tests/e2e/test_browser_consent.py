"""Headless Chromium against the real server: the sign-in page filled in from
``login_hint``, ``prompt=login`` asking a signed-in user once more and then going on,
and the pages' form controls all named (labels, button text) for assistive technology.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.e2e import test_browser as browser
from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

chromium, partner_site = browser.chromium, browser.partner_site  # the fixtures

#: Controls without an accessible name: no label, no aria-label, no text (hidden aside).
UNNAMED = """() => [...document.querySelectorAll('input, button, select, textarea')]
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.textContent || '').trim())
  .map(el => el.outerHTML)"""


def check_page(page) -> None:
    """What every page must have: a language, one heading, named controls."""
    assert page.get_attribute("html", "lang") == "en"
    assert page.locator("h1").count() == 1
    assert page.evaluate(UNNAMED) == []


def test_login_hint_and_prompt_login_in_a_browser(start_server, partner_site, chromium):
    callback, seen = partner_site
    secret = secrets.token_urlsafe(24)
    server = start_server([make_client("e2e-hint", [callback], secret, name="Hint Partner")])
    username = "hint-" + secrets.token_hex(3)
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)

    def authorize(**extra: str) -> None:
        query = {"response_type": "code", "client_id": "e2e-hint", "redirect_uri": callback}
        page.goto(f"{server.url}/authorize?{urlencode({**query, 'state': 's1', **extra})}")

    def sign_in() -> None:
        page.wait_for_url(re.compile(r"/login\?next="))
        check_page(page)
        page.fill("input[name=password]", "password")
        page.click("main form button[type=submit]")
        page.wait_for_url(re.compile(r"/authorize\?"))

    try:
        # Signed out, with a hint: the username is filled in; one sign-in, then consent.
        authorize(login_hint=username, prompt="login")
        page.wait_for_url(re.compile(r"/login\?next="))
        assert page.input_value("input[name=username]") == username
        sign_in()
        check_page(page)
        assert "Allow access?" in page.inner_text("main")
        page.click("button[name=allow]")
        page.wait_for_url(f"{callback}?**")
        assert "code" in parse_qs(urlsplit(page.url).query)

        # Signed in: prompt=login asks for the password again, then goes on.
        authorize(prompt="login", login_hint=username)
        sign_in()
        assert "Allow access?" in page.inner_text("main")
        page.click("button[name=cancel]")
        page.wait_for_url(f"{callback}?**")
        assert parse_qs(urlsplit(page.url).query)["error"] == ["access_denied"]
        assert len(seen) == 2

        page.goto(f"{server.url}/review")
        check_page(page)
    finally:
        context.close()
