"""Two-step sign-in through the pages: enrol, the second step, lockout, amr, removal, required."""

from __future__ import annotations

import re

import pyotp
import pytest
from flask import session

from app import create_app
from app.oidc.signin import sign_in_facts
from tests.conftest import base_config, close_app
from tests.factories import csrf_from, login


def enrol(http) -> tuple[str, list[str]]:
    page = http.get("/account")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<svg" in html and "http" not in re.sub(
        r'xmlns="[^"]+"', "", html.split("<svg", 1)[1].split("</svg>")[0]
    )
    key = re.search(r'id="manual-key">([^<]+)<', html).group(1).replace(" ", "")
    form = {"csrf_token": csrf_from(html), "action": "enrol", "code": "12345x"}
    assert http.post("/account", data=form).status_code == 400
    form["code"] = pyotp.TOTP(key).now()
    done = http.post("/account", data=form)
    assert done.status_code == 200
    codes = re.findall(r"<code>([a-z0-9-]{19})</code>", done.get_data(as_text=True))
    assert len(codes) == 10
    return key, codes


def otp_post(http, code: str):
    page = http.get("/login/otp")
    assert page.status_code == 200
    return http.post(
        "/login/otp", data={"csrf_token": csrf_from(page.get_data(as_text=True)), "code": code}
    )


def test_enrolled_user_needs_a_code_then_is_signed_in_with_otp(client, app, monkeypatch) -> None:
    login(client)
    key, _ = enrol(client)
    client._cookies.clear()  # type: ignore[attr-defined]
    answer = login(client, next_url="/review")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login/otp"
    assert client.get("/review").status_code == 302  # not signed in yet
    # a fixed clock: the code of the next step (the enrolment used this one)
    later = pyotp.TOTP(key).timecode(__import__("datetime").datetime.now()) * 30 + 30
    monkeypatch.setattr("app.twofactor.time.time", lambda: later + 1)
    monkeypatch.setattr("app.views.account.time.time", lambda: later + 1)
    wrong = otp_post(client, "000000" if pyotp.TOTP(key).at(later) != "000000" else "111111")
    assert wrong.status_code == 401
    right = otp_post(client, pyotp.TOTP(key).at(later))
    assert right.status_code == 302 and right.headers["Location"] == "/review"
    assert client.get("/review").status_code == 200
    # replay of the same code in a new sign-in is refused
    client._cookies.clear()  # type: ignore[attr-defined]
    login(client)
    assert otp_post(client, pyotp.TOTP(key).at(later)).status_code == 401


def test_amr_read_from_the_session(app) -> None:
    with app.test_request_context():
        assert sign_in_facts()["amr"] == ["pwd"]
        session["_amr"] = ["pwd", "otp"]
        assert sign_in_facts()["amr"] == ["pwd", "otp"]


def test_recovery_code_signs_in_once_and_failures_lock_out(client, app) -> None:
    login(client)
    _, codes = enrol(client)
    client._cookies.clear()  # type: ignore[attr-defined]
    login(client)
    assert otp_post(client, codes[0]).status_code == 302
    client._cookies.clear()  # type: ignore[attr-defined]
    login(client)
    assert otp_post(client, codes[0]).status_code == 401  # used
    statuses = [otp_post(client, "99999" + str(i)).status_code for i in range(8)]
    assert 429 in statuses
    assert otp_post(client, codes[1]).status_code == 429  # gate shut: even a good code waits
    audit = [r["event"] for r in app.extensions["oauth2"].storage.audit.recent(100)]
    assert {"totp_enrolled", "recovery_code_used", "otp_failed", "otp_locked"} <= set(audit)


def test_removal_needs_a_current_code(client) -> None:
    login(client)
    key, codes = enrol(client)
    page = client.get("/account").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "action": "remove", "code": "not-a-code"}
    assert client.post("/account", data=form).status_code == 400
    form["code"] = codes[0]
    assert client.post("/account", data=form).status_code == 302
    assert "manual-key" in client.get("/account").get_data(as_text=True)


def test_pending_second_step_expires(client, monkeypatch) -> None:
    login(client)
    enrol(client)
    client._cookies.clear()  # type: ignore[attr-defined]
    login(client)
    import time as real

    now = real.time()
    monkeypatch.setattr("app.views.account.time.time", lambda: now + 301)
    assert client.get("/login/otp").headers["Location"] == "/login"


@pytest.fixture
def required(tmp_path, dummy_site):
    app = create_app(base_config(tmp_path, dummy_site, two_factor={"required": True}))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def test_required_enrolment_sends_the_user_to_enrol(required) -> None:
    http = required.test_client()
    answer = login(http, next_url="/review")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/account?next=")
    page = http.get("/account").get_data(as_text=True)
    assert "asks every account" in page and "Turn off" not in page


@pytest.fixture
def strict_client(tmp_path, dummy_site):
    """The demo clients and one whose users must use a second factor."""
    import json

    from tests.factories import make_client

    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([make_client("strict", require_two_factor=True)]))
    app = create_app(base_config(tmp_path, dummy_site, client_credentials={"file": str(clients)}))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def test_a_client_may_require_a_second_factor_of_its_users(strict_client) -> None:
    from tests.conftest import authorize_url

    http = strict_client.test_client()
    login(http)
    answer = http.get(authorize_url(client_id="strict", scope="read-only"))
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/account?next=")
    assert strict_client.extensions["oauth2"].clients.get("strict").require_two_factor


def test_the_id_token_says_otp_after_the_second_step(client, monkeypatch) -> None:
    from tests.conftest import authorize_url, consent, location_params
    from tests.factories import REDIRECT
    from tests.oauth2.conftest import redeem
    from tests.oidc.core_helpers import decode

    login(client)
    key, _ = enrol(client)
    client._cookies.clear()  # type: ignore[attr-defined]
    login(client)
    # the code of the next time step (the enrolment used this one)
    later = pyotp.TOTP(key).timecode(__import__("datetime").datetime.now()) * 30 + 30
    monkeypatch.setattr("app.twofactor.time.time", lambda: later + 1)
    monkeypatch.setattr("app.views.account.time.time", lambda: later + 1)
    assert otp_post(client, pyotp.TOTP(key).at(later)).status_code == 302
    answer = consent(client, authorize_url(scope="openid"))
    code = location_params(answer)["code"]
    tokens = redeem(client, code, "test", redirect_uri=REDIRECT).get_json()
    assert decode(client, tokens["id_token"]).claims["amr"] == ["pwd", "otp"]


@pytest.mark.parametrize("at_once", [True, False])
def test_a_totp_record_missing_from_its_index_still_asks_for_the_code_where_that_can_happen(
    client, app, monkeypatch, at_once
) -> None:
    """Sign-in reads the user's factor records by their index only where a record is
    never stored without its entries (``indexed_at_once``); a Redis Cluster writes them
    in two steps, so there the TOTP record is read by its key: an entry lost in a failed
    write must not sign the user in with the password alone."""
    login(client)
    enrol(client)
    client._cookies.clear()  # type: ignore[attr-defined]
    table = app.extensions["oauth2"].storage.factors
    monkeypatch.setattr(type(table), "indexed_at_once", property(lambda _self: at_once))
    lost = [] if not at_once else None  # (where the index is kept with the record: intact)
    if lost is not None:
        monkeypatch.setattr(table, "list_by_user", lambda _user_id: lost)
    answer = login(client, next_url="/review")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login/otp"
