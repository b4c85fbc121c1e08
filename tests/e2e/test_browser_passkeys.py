"""Passkeys in real headless Chromium with a virtual authenticator (Chrome DevTools
Protocol ``WebAuthn``): add one on /account, sign in with the password and then the
passkey, reach the consent page; a passkey removed from the account is refused.

WebAuthn needs a secure context and a domain as RP ID (an IP address is not one), so this
server's issuer is ``http://localhost:<port>``.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bench import procs
from tests.e2e import test_accessibility as a11y
from tests.e2e import test_browser as browser
from tests.e2e.conftest import SESSION_SECRET, clean_env, serve, shut_down
from tests.e2e.test_browser_consent import check_page
from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

chromium, partner_site = browser.chromium, browser.partner_site  # the fixtures

SCREENSHOT = Path("/tmp/passkeys-account.png")
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
}


@pytest.fixture
def localhost_server(tmp_path: Path, partner_site):
    """``oauth2-server serve`` whose issuer is ``http://localhost:<port>``, one client."""
    callback, _ = partner_site
    clients = tmp_path / "clients.json"
    secret = secrets.token_urlsafe(24)
    clients.write_text(
        json.dumps([make_client("e2e-pk", [callback], secret, name="Passkey Partner")])
    )
    port, site_port = procs.free_ports(2)
    config = procs.serve_config(
        port,
        site_port,
        {"default": f"sqlite:///{tmp_path}/oauth2.db"},
        clients,
        SESSION_SECRET,
        1,
        auth_server={"url": f"http://localhost:{port}"},
    )
    server = serve(
        tmp_path / "server", config, clean_env(tmp_path), "/.well-known/oauth-authorization-server"
    )
    yield f"http://localhost:{port}", callback
    shut_down([server])


def browser_page(chromium, base: str, problems: list[str]):
    """A page in its own context (own cookies) with its own virtual authenticator."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and base in m.location.get("url", "")
            else None
        ),
    )
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    found = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    return context, page, cdp, found["authenticatorId"]


def accessibility(page, name: str, found: dict) -> None:
    """axe-core and the keyboard and reflow checks of ``test_accessibility``, both schemes
    (axe is evaluated through DevTools: the page's CSP, enforced here, allows no inline script)."""
    page.evaluate(a11y.AXE.read_text() + "\n;0")
    for scheme in a11y.SCHEMES:
        page.emulate_media(color_scheme=scheme)
        problems = page.evaluate(a11y.RUN_AXE, a11y.TAGS)
        problems += a11y.keyboard_problems(page) + a11y.reflow_problems(page)
        if problems:
            found[f"{name} [{scheme}]"] = problems


def sign_in(page, base: str, callback: str, username: str) -> None:
    query = {"response_type": "code", "client_id": "e2e-pk", "redirect_uri": callback, "state": "s"}
    page.goto(f"{base}/authorize?{urlencode(query)}")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "password")
    page.click("main form button[type=submit]")
    page.wait_for_url(re.compile(r"/login/otp$"))
    check_page(page)


def test_passkey_added_then_used_then_removed(localhost_server, chromium):
    base, callback = localhost_server
    username = "passkey-" + secrets.token_hex(3)
    problems: list[str] = []
    found: dict[str, list] = {}
    first, page, cdp, authenticator = browser_page(chromium, base, problems)
    second, other, other_cdp, other_authenticator = browser_page(chromium, base, problems)
    try:
        # Signed in with the password only: add a passkey on /account.
        page.goto(f"{base}/login?next=/account")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", "password")
        page.click("main form button[type=submit]")
        page.wait_for_url(re.compile(r"/account$"))
        check_page(page)
        page.fill("#passkey-name", "Test laptop")
        page.click("text=Add a passkey")
        page.wait_for_selector("h1:has-text('Your recovery codes')")
        (credential,) = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
            "credentials"
        ]
        assert credential["rpId"] == "localhost"
        page.goto(f"{base}/account")
        assert "Test laptop" in page.inner_text("main")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        accessibility(page, "account with a passkey", found)

        # The same passkey on a second browser: password, then the passkey, then consent.
        other_cdp.send(
            "WebAuthn.addCredential",
            {"authenticatorId": other_authenticator, "credential": credential},
        )
        sign_in(other, base, callback, username)
        assert other.locator("input[name=code]").count() == 1  # recovery codes still work
        accessibility(other, "second step with a passkey", found)
        other.click("#passkey-button")
        other.wait_for_url(re.compile(r"/authorize\?"))
        assert "Allow access?" in other.inner_text("main")
        assert "Passkey Partner" in other.inner_text("main")

        # The first browser signs out and starts again: its passkey page waits...
        page.click("header button:has-text('Sign out')")
        page.wait_for_load_state()
        sign_in(page, base, callback, username)

        # ...while the second removes the passkey, confirming with it.
        other.goto(f"{base}/account")
        check_page(other)
        other.check("input[type=radio][name=credential]")
        other.click("form:has(input[value=passkey_remove]) button[type=submit]")
        other.wait_for_url(re.compile(r"/account\?removed=1$"))
        assert "The passkey was removed." in other.inner_text("main")
        assert "Test laptop" not in other.inner_text("main")

        # The removed passkey is refused: a page saying so (401), still not signed in.
        assert not problems, problems
        page.click("#passkey-button")
        page.wait_for_selector("#otp-error")
        assert "passkey was not accepted" in page.inner_text("#otp-error")
        assert page.url.endswith("/login/otp")
        accessibility(page, "second step, passkey refused", found)
        page.goto(f"{base}/review")
        assert "/login" in page.url
        assert problems == [
            "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
        ]
    finally:
        first.close()
        second.close()
    assert not found, "accessibility violations:\n" + a11y.report(found)
