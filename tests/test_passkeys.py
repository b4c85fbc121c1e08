"""Passkeys through the pages: add on /account, answer at /login/otp, remove with the
current second factor; bad answers get a page, never a 500; ``acr_values`` asks for the
second step and the ID Token says which (``amr``, ``acr``)."""

from __future__ import annotations

import html
import json
import re
import time

import pyotp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.oidc.signin import sign_in_facts
from tests.conftest import authorize_url, consent, location_params
from tests.factories import REDIRECT, csrf_from, login
from tests.oauth2.conftest import redeem
from tests.oidc.core_helpers import decode
from tests.test_passkeys_fuzz import JSON
from tests.test_two_factor import enrol
from tests.webauthn_soft import SoftAuthenticator


def _attr(page: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', page)
    assert found, f"no {name} on the page"
    return html.unescape(found.group(1))


def device_for(app) -> SoftAuthenticator:
    store = app.extensions["passkeys"]
    return SoftAuthenticator(store.rp_id, store.origin)


def add_passkey(http, app, name: str = "Laptop") -> tuple[SoftAuthenticator, object]:
    page = http.get("/account")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    text = page.get_data(as_text=True)
    device = device_for(app)
    form = {
        "csrf_token": csrf_from(text),
        "action": "passkey_add",
        "name": name,
        "credential": device.register(_attr(text, "data-passkey-create")),
    }
    return device, http.post("/account", data=form)


def passkey_post(http, device: SoftAuthenticator | None, answer: str | None = None, **kw):
    page = http.get("/login/otp")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    if answer is None:
        assert device is not None
        answer = device.assert_(_attr(text, "data-passkey-get"), **kw)
    return http.post("/login/otp", data={"csrf_token": csrf_from(text), "passkey": answer})


def sign_out(http) -> None:
    http._cookies.clear()  # type: ignore[attr-defined]


def audit_events(app) -> list[str]:
    return [r["event"] for r in app.extensions["oauth2"].storage.audit.recent(200)]


def test_a_passkey_alone_is_a_second_factor(client, app) -> None:
    login(client)
    device, added = add_passkey(client, app)
    assert added.status_code == 200  # the first factor: recovery codes, once
    codes = re.findall(r"<code>([a-z0-9-]{19})</code>", added.get_data(as_text=True))
    assert len(codes) == 10
    account = client.get("/account").get_data(as_text=True)
    assert "Laptop" in account and "10 unused recovery codes" in account
    sign_out(client)
    answer = login(client, next_url="/review")
    assert answer.headers["Location"] == "/login/otp"
    page = client.get("/login/otp")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "Recovery code" in page.get_data(as_text=True)  # no app: codes are recovery codes
    done = passkey_post(client, device)
    assert done.status_code == 302 and done.headers["Location"] == "/review"
    assert client.get("/review").status_code == 200
    events = audit_events(app)
    assert {"passkey_registered", "passkey_used", "login"} <= set(events)


def _regenerate_options(page: str) -> str:
    forms = re.findall(
        r'<form[^>]*data-passkey-get="([^"]*)"[^>]*>((?:(?!</form>).)*)</form>', page, re.S
    )
    found = [options for options, body in forms if 'value="regenerate"' in body]
    assert len(found) == 1
    return html.unescape(found[0])


def test_new_recovery_codes_without_the_app_are_confirmed_with_a_passkey(client, app) -> None:
    login(client)
    device, first = add_passkey(client, app)
    old = re.findall(r"<code>([a-z0-9-]{19})</code>", first.get_data(as_text=True))
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "regenerate", "code": old[0]}
    assert client.post("/account", data=form).status_code == 400  # a recovery code will not do
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "regenerate"}
    form["passkey"] = device.assert_(_regenerate_options(page))
    done = client.post("/account", data=form)
    new = re.findall(r"<code>([a-z0-9-]{19})</code>", done.get_data(as_text=True))
    assert done.status_code == 200 and len(new) == 10 and not set(new) & set(old)


def test_bad_passkey_answers_get_a_page_and_are_throttled(client, app) -> None:
    login(client)
    device, _ = add_passkey(client, app)
    sign_out(client)
    login(client)
    wrong_origin = passkey_post(client, device, origin="https://evil.example")
    assert wrong_origin.status_code == 401
    assert "passkey was not accepted" in wrong_origin.get_data(as_text=True)
    assert passkey_post(client, device, rp_id="evil.example").status_code == 401
    assert passkey_post(client, None, answer='{"response": []}').status_code == 401
    assert passkey_post(client, None, answer="x" * 40_000).status_code in (401, 429)
    assert client.get("/review").status_code == 302  # still not signed in
    assert "passkey_failed" in audit_events(app)
    statuses = [passkey_post(client, device, origin="https://evil.example").status_code]
    statuses += [
        passkey_post(client, device, origin="https://e.example").status_code for _ in range(6)
    ]
    assert 429 in statuses  # the same lockout as wrong codes


def test_a_replayed_answer_and_a_stale_counter_are_refused(client, app) -> None:
    login(client)
    device, _ = add_passkey(client, app)
    sign_out(client)
    login(client)
    page = client.get("/login/otp").get_data(as_text=True)
    answer = device.assert_(_attr(page, "data-passkey-get"))
    form = {"csrf_token": csrf_from(page), "passkey": answer}
    assert client.post("/login/otp", data=form).status_code == 302
    sign_out(client)
    login(client)
    assert passkey_post(client, None, answer=answer).status_code == 401  # its challenge is spent
    assert passkey_post(client, device, count=1).status_code == 401  # counter did not grow


def test_removing_a_passkey_needs_the_second_factor(client, app) -> None:
    login(client)
    device, _ = add_passkey(client, app)
    page = client.get("/account").get_data(as_text=True)
    key = html.unescape(re.search(r'name="credential" value="(passkey:[^"]+)"', page).group(1))
    form = {"csrf_token": csrf_from(page), "action": "passkey_remove", "credential": key}
    refused = client.post("/account", data=form)
    assert refused.status_code == 400
    assert "<strong>Laptop</strong>" in client.get("/account").get_data(as_text=True)
    page = client.get("/account").get_data(as_text=True)
    form["passkey"] = device.assert_(_attr(page, "data-passkey-get"))
    form["csrf_token"] = csrf_from(page)
    done = client.post("/account", data=form)
    assert done.status_code == 302 and done.headers["Location"] == "/account?removed=1"
    account = client.get("/account").get_data(as_text=True)
    assert "<strong>Laptop</strong>" not in account and "passkey_removed" in audit_events(app)
    sign_out(client)
    assert login(client).headers["Location"] != "/login/otp"  # no second factor left


def test_adding_a_passkey_to_an_account_with_a_factor_needs_a_two_step_sign_in(client, app) -> None:
    login(client)
    enrol(client)  # the session now used the app's code
    _, added = add_passkey(client, app)
    assert added.status_code == 302
    with client.session_transaction() as session:
        session["_amr"] = ["pwd"]  # a sign-in from before the factor existed
    page = client.get("/account").get_data(as_text=True)
    assert "data-passkey-create" not in page and "sign in again" in page
    form = {"csrf_token": csrf_from(page), "action": "passkey_add", "credential": "{}"}
    assert client.post("/account", data=form).status_code == 403


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    answer=st.one_of(
        st.text(max_size=200),
        JSON.map(json.dumps),
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=30),
                "rawId": st.text(max_size=30) | st.integers(),
                "type": st.sampled_from(["public-key", "x"]),
                "response": st.fixed_dictionaries(
                    {
                        "clientDataJSON": st.text(max_size=60) | st.integers(),
                        "authenticatorData": st.text(max_size=60),
                        "signature": st.text(max_size=60),
                    }
                ),
            }
        ).map(json.dumps),
    )
)
def test_any_posted_answer_gets_a_page_not_a_500(passkey_user, answer) -> None:
    http, app, user_id = passkey_user
    with app.app_context():
        app.extensions["oauth2"].limits.otp.succeeded(user_id)  # each answer reaches the check
    status = passkey_post(http, None, answer=answer).status_code
    assert status == (401 if answer else 400)  # an empty field is no answer
    assert http.get("/review").status_code == 302


@pytest.fixture
def passkey_user(client, app):
    login(client)
    add_passkey(client, app)
    sign_out(client)
    login(client)
    with client.session_transaction() as session:
        user_id = session["_2fa_pending"]["user_id"]
    return client, app, user_id


# -- acr_values and acr -----------------------------------------------------------------


def _code_flow(http, **extra) -> dict:
    answer = consent(http, authorize_url(scope="openid", **extra))
    assert answer.status_code == 302, answer.get_data(as_text=True)
    tokens = redeem(http, location_params(answer)["code"], "test", redirect_uri=REDIRECT)
    return decode(http, tokens.get_json()["id_token"]).claims


def test_acr_is_pwd_without_a_second_step_and_mfa_asks_for_one(client, app) -> None:
    login(client)
    assert _code_flow(client)["acr"] == "pwd"
    device, _ = add_passkey(client, app)
    with client.session_transaction() as session:
        session["_amr"] = ["pwd"]  # signed in before the passkey was added
    # a client asking for "mfa" gets an enrolled user through the second step first
    url = authorize_url(scope="openid", acr_values="phr mfa")
    step = client.get(url)
    assert step.status_code == 302 and step.headers["Location"] == "/login/otp"
    done = passkey_post(client, device)
    assert done.status_code == 302 and done.headers["Location"] == url
    claims = _code_flow(client, acr_values="phr mfa")
    assert claims["amr"] == ["pwd", "hwk"] and claims["acr"] == "phr"


def test_acr_values_steps_up_a_password_only_session(client, app) -> None:
    login(client)
    key, _ = enrol(client)
    device, _ = add_passkey(client, app)
    with client.session_transaction() as session:
        session["_amr"] = ["pwd", "otp"]  # signed in with the app's code
    # "phr" asks for a passkey: the code is not enough
    url = authorize_url(scope="openid", acr_values="phr")
    step = client.get(url)
    assert step.status_code == 302 and step.headers["Location"] == "/login/otp"
    page = client.get("/login/otp").get_data(as_text=True)
    assert 'name="code"' not in page and "asks for a passkey" in page
    form = {"csrf_token": csrf_from(page), "code": pyotp.TOTP(key).now()}
    assert client.post("/login/otp", data=form).status_code == 400
    done = passkey_post(client, device)
    assert done.status_code == 302 and done.headers["Location"] == url
    claims = _code_flow(client, acr_values="phr")
    assert claims["acr"] == "phr" and claims["amr"] == ["pwd", "hwk"]


def test_acr_values_for_a_user_without_a_factor_sends_them_to_enrol(client) -> None:
    login(client)
    answer = client.get(authorize_url(scope="openid", acr_values="mfa"))
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/account?next=")
    silent = client.get(authorize_url(scope="openid", acr_values="mfa", prompt="none"))
    assert location_params(silent)["error"] == "login_required"
    # unknown values are voluntary: ignored
    assert (
        consent(client, authorize_url(scope="openid", acr_values="urn:x:gold")).status_code == 302
    )


def test_discovery_lists_the_levels(client) -> None:
    meta = client.get("/.well-known/openid-configuration").get_json()
    assert meta["acr_values_supported"] == ["pwd", "mfa", "phr"]
    assert "acr" in meta["claims_supported"]


def test_sign_in_facts_carry_the_level(app) -> None:
    from flask import session

    with app.test_request_context():
        assert sign_in_facts()["acr"] == "pwd"
        session["_amr"] = ["pwd", "otp"]
        assert sign_in_facts()["acr"] == "mfa"
        session["_amr"] = ["pwd", "hwk"]
        assert sign_in_facts()["acr"] == "phr"


def test_enrolling_an_app_next_to_a_passkey_needs_a_two_step_sign_in(client, app) -> None:
    login(client)
    add_passkey(client, app)
    page = client.get("/account").get_data(as_text=True)
    key = re.search(r'id="manual-key">([^<]+)<', page).group(1).replace(" ", "")
    with client.session_transaction() as session:
        session["_amr"] = ["pwd"]  # a password-only sign-in from before the passkey
    page = client.get("/account").get_data(as_text=True)
    assert 'id="manual-key"' not in page and "sign in again with your passkey" in page
    form = {"csrf_token": csrf_from(page), "action": "enrol", "code": pyotp.TOTP(key).now()}
    refused = client.post("/account", data=form)
    assert refused.status_code == 403
    assert "<code>" not in refused.get_data(as_text=True)  # no new recovery codes
    with client.session_transaction() as session:
        assert session["_amr"] == ["pwd"]
    assert "totp_enrolled" not in audit_events(app)


def test_a_new_sign_in_keeps_nothing_of_the_previous_one(client, app) -> None:
    login(client)
    device, _ = add_passkey(client, app)
    sign_out(client)
    login(client)
    assert passkey_post(client, device).status_code == 302
    with client.session_transaction() as session:
        assert session["_amr"] == ["pwd", "hwk"]
        alice_sid = session["_sid"]
        session["_rps"] = ["someone"]
    assert login(client, username="bob").status_code == 302  # no factor: signed in
    with client.session_transaction() as session:
        assert "_amr" not in session and "_rps" not in session
        assert session["_sid"] != alice_sid
    page = client.get("/account").get_data(as_text=True)
    assert "data-passkey-create" in page  # bob's account: no factor yet


def _age(http, app, prefix: str, seconds: float) -> None:
    """Make the factors under ``prefix`` (``passkey:``, ``totp:``) ``seconds`` older."""
    with http.session_transaction() as session:
        user_id = session["_user_id"]
    table = app.extensions["oauth2"].storage.factors
    found = [r for r in table.list_by_user(user_id) if r["key"].startswith(prefix)]
    assert found
    for record in found:
        field = "created_at" if prefix == "passkey:" else "enrolled_at"
        key = record.pop("key")
        record.pop("expires_at", None)
        table.put(key, record | {field: record[field] - seconds})


def test_adding_a_factor_next_to_one_needs_a_recent_second_factor(client, app) -> None:
    login(client)
    _, codes = enrol(client)  # the session just showed the app's code
    with client.session_transaction() as session:
        session["_2fa_at"] -= 601  # a session left open for more than ten minutes
    page = client.get("/account").get_data(as_text=True)
    assert "data-passkey-create" not in page and "last 10 minutes" in page
    form = {"csrf_token": csrf_from(page), "action": "passkey_add", "credential": "{}"}
    assert client.post("/account", data=form).status_code == 403
    sign_out(client)
    login(client)
    with client.session_transaction() as session:
        user_id = session["_2fa_pending"]["user_id"]
    from tests.test_two_factor import otp_post

    with app.app_context():
        app.extensions["oauth2"].limits.otp.succeeded(user_id)
    assert otp_post(client, codes[0]).status_code == 302  # a new two-step sign-in
    _, added = add_passkey(client, app)
    assert added.status_code == 302


def test_a_new_factor_does_not_prove_anything_about_the_others(client, app) -> None:
    login(client)
    old_device, first = add_passkey(client, app, "Old")
    old_codes = re.findall(r"<code>([a-z0-9-]{19})</code>", first.get_data(as_text=True))
    _age(client, app, "passkey:", 3600)
    new_device, added = add_passkey(client, app, "New")  # a fresh session may add one
    assert added.status_code == 302
    page = client.get("/account").get_data(as_text=True)
    keys = re.findall(r'name="credential" value="(passkey:[^"]+)"', page)
    old_key, new_key = (html.unescape(k) for k in keys)
    form = {"csrf_token": csrf_from(page), "action": "passkey_remove", "credential": old_key}
    form["passkey"] = new_device.assert_(_attr(page, "data-passkey-get"))
    assert client.post("/account", data=form).status_code == 400  # the new one proves nothing
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "regenerate"}
    form["passkey"] = new_device.assert_(_regenerate_options(page))
    assert client.post("/account", data=form).status_code == 400
    assert "<strong>Old</strong>" in client.get("/account").get_data(as_text=True)
    # An app enrolled next to the passkeys keeps their recovery codes and proves nothing yet.
    page = client.get("/account").get_data(as_text=True)
    key = re.search(r'id="manual-key">([^<]+)<', page).group(1).replace(" ", "")
    form = {"csrf_token": csrf_from(page), "action": "enrol", "code": pyotp.TOTP(key).now()}
    enrolled = client.post("/account", data=form)
    assert enrolled.headers["Location"] == "/account?enrolled=1"
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "regenerate"}
    form["code"] = pyotp.TOTP(key).at(time.time() + 30)
    assert client.post("/account", data=form).status_code == 400
    # The new passkey still removes itself, and the old one anything.
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "passkey_remove", "credential": new_key}
    form["passkey"] = new_device.assert_(_attr(page, "data-passkey-get"))
    assert client.post("/account", data=form).status_code == 302
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "regenerate", "code": ""}
    form["passkey"] = old_device.assert_(_attr(page, "data-passkey-get"))
    done = client.post("/account", data=form)
    new_codes = re.findall(r"<code>([a-z0-9-]{19})</code>", done.get_data(as_text=True))
    assert done.status_code == 200 and len(new_codes) == 10
    assert len(old_codes) == 10 and not set(new_codes) & set(old_codes)
