"""Remembered consent: an OpenID Connect request for scopes already allowed skips the
page; new scopes ask for the new ones only; ``prompt=consent`` and plain OAuth 2.0
requests always ask; a ``skip_consent`` client never asks; ``/review`` forgets it."""

from __future__ import annotations

import re

from app.oidc.consent import Consents
from tests.conftest import bearer, consent, csrf_from, hidden, location_params
from tests.factories import login, make_user
from tests.oauth2.conftest import redeem, refresh
from tests.oidc import consent_support as support
from tests.oidc.consent_support import allow, code_of, url

oidc_app, http, st = support.oidc_app, support.http, support.st  # the fixtures
later = support.later


def tokens(http, code: str, client_id: str = "oidc") -> dict:
    response = redeem(http, code, client_id)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def audited(state, event: str) -> list[dict]:
    return [r for r in state.storage.audit.recent(200) if r["event"] == event]


def page_of(http, scope: str, **extra) -> str:
    page = http.get(url(scope=scope, **extra))
    assert page.status_code == 200, page.headers.get("Location")
    return page.get_data(as_text=True)


def listed_scopes(html: str) -> list[str]:
    return re.findall(r'<span class="scopes__name">([^<]+)</span>', html)


def test_a_second_request_for_the_same_scopes_skips_the_page(http, st):
    login(http)
    allow(http)
    response = http.get(url())
    code = code_of(response)
    assert location_params(response)["state"] == "xyz"
    assert tokens(http, code)["scope"] == "openid read-only"
    remembered = audited(st, "consent")[0]  # newest first
    assert remembered["remembered"] is True and remembered["client_id"] == "oidc"
    assert audited(st, "code_issued")  # the code came through the same Authlib path


def test_fewer_scopes_than_remembered_skip_the_page(http):
    login(http)
    allow(http, scope="openid read-only read-write")
    code = code_of(http.get(url(scope="openid read-write")))
    assert tokens(http, code)["scope"] == "openid read-write"


def test_new_scopes_ask_for_the_new_ones_only(http, st):
    login(http)
    allow(http)
    html = page_of(http, "openid read-only read-write")
    assert listed_scopes(html) == ["read-write"]
    assert "You already allowed it to" in html and "Read your profile;" not in html
    assert hidden(html, "scope") == "openid read-only read-write"
    form = {"csrf_token": csrf_from(html), "transaction_id": hidden(html, "transaction_id")}
    response = http.post("/authorize", data={**form, "scope": hidden(html, "scope"), "allow": "1"})
    assert tokens(http, location_params(response)["code"])["scope"] == (
        "openid read-only read-write"
    )
    granted = Consents.of(st).granted(make_user(st).id, "oidc")
    assert granted == {"openid", "read-only", "read-write"}
    code_of(http.get(url(scope="openid read-write read-only")))  # all remembered now


def test_the_code_keeps_remembered_scopes_when_only_new_ones_are_posted(http):
    login(http)
    allow(http)
    html = page_of(http, "openid read-only read-write")
    form = {"csrf_token": csrf_from(html), "transaction_id": hidden(html, "transaction_id")}
    response = http.post("/authorize", data={**form, "scope": "read-write", "allow": "Allow"})
    assert tokens(http, location_params(response)["code"])["scope"] == (
        "openid read-only read-write"
    )


def test_posting_more_than_asked_is_still_refused(http, st):
    login(http)
    allow(http)
    html = page_of(http, "openid read-only", prompt="consent")
    form = {"csrf_token": csrf_from(html), "transaction_id": hidden(html, "transaction_id")}
    response = http.post(
        "/authorize", data={**form, "scope": "openid read-only read-write", "allow": "Allow"}
    )
    assert response.status_code == 400
    assert "invalid_scope" in response.get_data(as_text=True)
    assert not Consents.of(st).granted(make_user(st).id, "oidc") >= {"read-write"}


def test_prompt_consent_always_asks_and_lists_everything(http):
    login(http)
    allow(http)
    html = page_of(http, "openid read-only", prompt="consent")
    assert listed_scopes(html) == ["openid", "read-only"]


def test_a_skip_consent_client_never_asks(http, st):
    login(http)
    code = code_of(http.get(url("first")))
    assert tokens(http, code, "first")["scope"] == "openid read-only"
    assert audited(st, "consent")[0]["skip_consent"] is True
    code_of(http.get(url("first", scope="read-only read-write")))  # plain OAuth too
    code_of(http.get(url("first", prompt="none")))


def test_a_skip_consent_client_is_still_asked_under_prompt_consent(http):
    login(http)
    assert "Allow access?" in page_of(http, "openid", client_id="first", prompt="consent")


def test_plain_oauth_requests_ask_every_time_and_remember_nothing(http, st):
    login(http)
    allow(http, scope="read-only")
    allow(http, scope="read-only")  # asked again
    assert Consents.of(st).of_user(make_user(st).id) == {}


def test_deny_keeps_earlier_consent(http):
    login(http)
    allow(http)
    denied = consent(http, url(scope="openid read-only read-write"), allow=False)
    assert location_params(denied)["error"] == "access_denied"
    code_of(http.get(url()))


def test_consent_is_per_user_and_per_client(http):
    login(http)
    allow(http)
    assert http.get(url("other")).status_code == 200  # another client asks
    login(http, username="bob")
    assert http.get(url()).status_code == 200  # another user is asked


def test_consent_expires_after_its_lifetime(http, later):
    login(http)
    allow(http)
    later(599)  # oidc.consent_lifetime is 600 s here
    code_of(http.get(url()))
    later(601)
    assert http.get(url()).status_code == 200


def test_a_new_allow_renews_the_lifetime(http, st, later):
    login(http)
    allow(http)
    later(300)
    allow(http, scope="openid read-only", prompt="consent")
    later(700)  # 600 s after the first Allow, 400 s after the second
    code_of(http.get(url()))
    later(901)
    assert http.get(url()).status_code == 200


# -- /review ----------------------------------------------------------------------------
def checkboxes(html: str) -> list[str]:
    return re.findall(r'<input class="grant__check" type="checkbox" name="([^"]+)"', html)


def save(http, keep: list[str]):
    page = http.get("/review").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "save": "Save", **{c: "1" for c in keep}}
    return http.post("/review", data=form)


def test_review_lists_a_client_holding_only_remembered_consent(http):
    login(http)
    allow(http, scope="openid read-only read-write")  # the code is never redeemed
    html = http.get("/review").get_data(as_text=True)
    assert checkboxes(html) == ["oidc"]
    assert "OIDC partner" in html and "Remembered" in html
    assert "Read your profile and change your avatar" in html  # what was consented


def test_review_revokes_tokens_and_forgets_consent(http, st):
    login(http)
    held = tokens(http, allow(http))
    other = tokens(http, allow(http, "other"), "other")
    assert save(http, keep=["other"]).status_code == 302
    assert http.get("/api/profile", headers=bearer(held["access_token"])).status_code == 401
    assert refresh(http, held["refresh_token"], "oidc").status_code == 400
    assert http.get(url()).status_code == 200  # asked again
    assert http.get("/api/profile", headers=bearer(other["access_token"])).status_code == 200
    code_of(http.get(url("other")))  # the kept client is still remembered
    forgotten = [r for r in audited(st, "grant_revoked") if r["client_id"] == "oidc"]
    assert forgotten[0]["consent_forgotten"] is True and forgotten[0]["revoked"] == 2


def test_review_forgets_consent_without_tokens(http, st):
    login(http)
    pending = allow(http)
    assert save(http, keep=[]).status_code == 302
    assert Consents.of(st).of_user(make_user(st).id) == {}
    assert redeem(http, pending, "oidc").status_code == 400  # its pending code died too
    assert checkboxes(http.get("/review").get_data(as_text=True)) == []
