"""Headless Chromium: the user lowers a partner's quota on the consent page (a labelled
field), the partner's calls stop there, and the review page says how many were used."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.e2e import test_browser as browser
from tests.e2e.test_browser_consent import check_page
from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

chromium, partner_site = browser.chromium, browser.partner_site  # the fixtures


def test_a_quota_lowered_on_the_consent_page_holds(start_server, partner_site, chromium):
    callback, _seen = partner_site
    secret = secrets.token_urlsafe(24)
    choosy = make_client(
        "e2e-quota",
        [callback],
        secret,
        name="Quota Partner",
        quota={"calls": 50, "per": "day"},
        quota_user_choice=True,
    )
    server = start_server([choosy])
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    query = {"response_type": "code", "client_id": "e2e-quota", "redirect_uri": callback}
    try:
        page.goto(f"{server.url}/authorize?{urlencode(query)}")
        page.wait_for_url(re.compile(r"/login\?next="))
        page.fill("input[name=username]", "quota-" + secrets.token_hex(3))
        page.fill("input[name=password]", "password")
        page.click("main form button[type=submit]")
        page.wait_for_url(re.compile(r"/authorize\?"))
        check_page(page)  # the quota field is named by its label
        field = page.get_by_label(re.compile("Most calls Quota Partner may make for you a day"))
        assert field.get_attribute("max") == "50"
        field.fill("2")
        page.click("button[name=allow]")
        page.wait_for_url(f"{callback}?**")
        code = parse_qs(urlsplit(page.url).query)["code"][0]
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": callback}
        tokens = requests.post(
            f"{server.url}/token", data=data, auth=("e2e-quota", secret), timeout=5
        )
        assert tokens.status_code == 200, tokens.text
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        statuses = [
            requests.get(f"{server.url}/api/profile", headers=headers, timeout=5).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        page.goto(f"{server.url}/review")
        check_page(page)
        assert re.search(r"Used 2 of 2 calls today \(your limit\)", page.inner_text("main"))
    finally:
        context.close()
