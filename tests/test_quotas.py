"""Quotas of /api calls: per client, per function, the user's own lower one; the 429, the
windows, what the review page and introspection show, and the quota fields' checks."""

from __future__ import annotations

import calendar
import json
import re

import jsonschema_rs
import pytest

from app.adapters import UpstreamUnavailable
from app.clients import ClientFileError, load_clients_file
from app.quotas import Quota
from app.secrets_hash import token_digest
from tests.conftest import authorize_url, basic, bearer, close_app, csrf_from, hidden, login, table
from tests.factories import REDIRECT, make_client, make_token
from tests.oauth2.conftest import issue_tokens, make_app, refresh
from tests.test_openapi import load_spec

#: 2024-05-17 23:59:30 UTC: thirty seconds before the day's window ends.
LATE = calendar.timegm((2024, 5, 17, 23, 59, 30))
BOTH = "read-only read-write"
QUOTA_CLIENTS = [
    make_client(
        "metered",
        name="Metered partner",
        quota={"calls": 3, "per": "day"},
        api_quotas={"update_avatar": {"calls": 1, "per": "hour"}},
    ),
    make_client(
        "choosy",
        name="Choosy partner",
        quota={"calls": 5, "per": "day"},
        quota_user_choice=True,
    ),
]


@pytest.fixture
def app(tmp_path, dummy_site):
    app = make_app(tmp_path, dummy_site, QUOTA_CLIENTS)
    yield app
    close_app(app)


@pytest.fixture
def clock(state):
    """The quotas' clock, set to :data:`LATE`; ``clock.now`` moves it."""

    class Clock:
        now = float(LATE)

    state.quotas.clock = lambda: Clock.now
    return Clock


def profile(http, token: str):
    return http.get("/api/profile", headers=bearer(token))


def fields_of(response) -> tuple[str, str]:
    return response.headers["RateLimit-Policy"], response.headers["RateLimit"]


# -- the client's quota -------------------------------------------------------------------
def test_a_quota_of_three_lets_three_through_then_429_unproxied(client, state, clock, site_calls):
    token = make_token(state, "metered", scope=BOTH)["access_token"]
    answers = [profile(client, token) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert site_calls == ["profile"] * 3  # the refused call never reached the site
    assert fields_of(answers[0]) == ('"quota";q=3;w=86400', '"quota";r=2;t=30')
    assert answers[2].headers["RateLimit"] == '"quota";r=0;t=30'
    refused = answers[3]
    assert refused.headers["Retry-After"] == "30"  # seconds to 00:00 UTC
    assert fields_of(refused) == ('"quota";q=3;w=86400', '"quota";r=0;t=30')
    assert refused.get_json()["error"] == "quota exceeded"
    assert refused.headers["Cache-Control"] == "no-store"


def test_the_next_window_starts_from_zero(client, state, clock):
    token = make_token(state, "metered", scope=BOTH)["access_token"]
    assert [profile(client, token).status_code for _ in range(4)] == [200, 200, 200, 429]
    clock.now = LATE + 31  # 00:00:01 UTC the next day
    answer = profile(client, token)
    assert answer.status_code == 200
    assert answer.headers["RateLimit"] == '"quota";r=2;t=86399'


def test_one_refusal_is_audited_per_window(client, state, clock):
    token = make_token(state, "metered", scope=BOTH)["access_token"]
    for _ in range(6):
        profile(client, token)
    spent = [r for r in state.storage.audit.recent(100) if r.get("event") == "quota_spent"]
    assert len(spent) == 1
    assert spent[0]["client_id"] == "metered" and spent[0]["limit"] == "3/day"


def test_a_call_the_site_did_not_answer_is_given_back(client, state, clock, monkeypatch):
    token = make_token(state, "metered", scope=BOTH)["access_token"]
    real = state.adapter.call

    def down(*args, **kwargs):
        raise UpstreamUnavailable("down")

    monkeypatch.setattr(state.adapter, "call", down)
    assert [profile(client, token).status_code for _ in range(5)] == [502] * 5
    monkeypatch.setattr(state.adapter, "call", real)
    assert [profile(client, token).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_refusals_before_the_site_spend_nothing(client, state, clock):
    token = make_token(state, "metered", scope="read-only")["access_token"]
    for _ in range(4):  # insufficient scope: 403, not a call of the quota
        assert client.post("/api/update_avatar", headers=bearer(token)).status_code == 403
    assert client.get("/api/nope", headers=bearer(token)).status_code == 404
    assert [profile(client, token).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_clients_without_a_quota_get_no_quota_fields(client, state):
    token = make_token(state, "test")["access_token"]
    answer = profile(client, token)
    assert answer.status_code == 200
    assert '"quota' not in answer.headers.get("RateLimit-Policy", "")


def test_the_quota_is_the_clients_over_all_its_users(client, state, clock):
    first = make_token(state, "metered", scope=BOTH)["access_token"]
    second = make_token(state, "metered", scope=BOTH)["access_token"]
    assert [profile(client, t).status_code for t in (first, second, first)] == [200] * 3
    assert profile(client, second).status_code == 429


# -- per-function quotas ------------------------------------------------------------------
def test_a_functions_quota_is_spent_beside_the_clients(client, state, clock, site_calls):
    token = make_token(state, "metered", scope=BOTH)["access_token"]
    first = client.post("/api/update_avatar", headers=bearer(token))
    assert first.status_code == 200
    policy, left = fields_of(first)
    assert policy == '"quota";q=3;w=86400, "quota:update_avatar";q=1;w=3600'
    assert left == '"quota";r=2;t=30, "quota:update_avatar";r=0;t=30'
    second = client.post("/api/update_avatar", headers=bearer(token))
    assert second.status_code == 429
    assert second.headers["RateLimit-Policy"] == '"quota:update_avatar";q=1;w=3600'
    assert "quota:update_avatar" in second.get_json()["error_description"]
    # The refused call took nothing from the client's quota: two calls are left.
    assert [profile(client, token).status_code for _ in range(3)] == [200, 200, 429]
    assert site_calls == ["update_avatar", "profile", "profile"]


# -- windows ------------------------------------------------------------------------------
WINDOWS = [
    (
        "minute",
        "minute",
        (2024, 5, 17, 10, 20, 30),
        (2024, 5, 17, 10, 20, 0),
        (2024, 5, 17, 10, 21, 0),
    ),
    ("hour", "hour", (2024, 5, 17, 10, 20, 30), (2024, 5, 17, 10, 0, 0), (2024, 5, 17, 11, 0, 0)),
    ("day", "day", (2024, 5, 17, 10, 20, 30), (2024, 5, 17, 0, 0, 0), (2024, 5, 18, 0, 0, 0)),
    ("month", "month", (2024, 2, 29, 23, 0, 0), (2024, 2, 1, 0, 0, 0), (2024, 3, 1, 0, 0, 0)),
    (
        "december",
        "month",
        (2024, 12, 31, 23, 59, 59),
        (2024, 12, 1, 0, 0, 0),
        (2025, 1, 1, 0, 0, 0),
    ),
]


@pytest.mark.parametrize("per, now, start, end", table(WINDOWS))
def test_windows_are_fixed_and_aligned_to_utc(per, now, start, end):
    quota = Quota(10, per)
    at = calendar.timegm(now)
    assert quota.window(at) == (calendar.timegm(start), calendar.timegm(end))
    assert quota.reset_in(at) == calendar.timegm(end) - at


def test_a_monthly_quota_says_its_months_length(tmp_path, dummy_site):
    monthly = make_client("monthly", quota={"calls": 2, "per": "month"})
    app = make_app(tmp_path, dummy_site, [monthly])
    try:
        quotas = app.extensions["oauth2"].quotas
        quotas.clock = lambda: float(calendar.timegm((2024, 2, 10, 0, 0, 0)))
        token = make_token(app.extensions["oauth2"], "monthly")["access_token"]
        answer = profile(app.test_client(), token)
        assert answer.headers["RateLimit-Policy"] == f'"quota";q=2;w={29 * 86400}'
    finally:
        close_app(app)


# -- the user's own quota -----------------------------------------------------------------
def consent_page(http, client_id="choosy", scope="read-only"):
    page = http.get(authorize_url(client_id=client_id, scope=scope))
    assert page.status_code == 200, page.get_data(as_text=True)
    return page.get_data(as_text=True)


def answer(http, html: str, quota: str | None):
    form = {
        "csrf_token": csrf_from(html),
        "transaction_id": hidden(html, "transaction_id"),
        "scope": hidden(html, "scope"),
        "allow": "Allow",
    }
    if quota is not None:
        form["quota"] = quota
    return http.post("/authorize", data=form)


def chosen_token(http, quota: str | None, client_id="choosy", scope="read-only") -> dict:
    login(http)
    response = answer(http, consent_page(http, client_id, scope), quota)
    assert response.status_code == 302, response.get_data(as_text=True)
    code = dict(re.findall(r"[?&](\w+)=([^&]*)", response.headers["Location"]))["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    tokens = http.post("/token", data=data, headers=basic(client_id))
    assert tokens.status_code == 200, tokens.get_json()
    return tokens.get_json()


def test_the_consent_page_offers_a_labelled_quota_field(client):
    login(client)
    html = consent_page(client)
    field = re.search(r'<input id="quota" name="quota" type="number"[^>]*>', html)
    assert field is not None
    assert 'max="5"' in field.group(0) and 'min="1"' in field.group(0)
    assert re.search(r'<label for="quota">Most calls Choosy partner may make for you a day', html)
    assert "5 calls a day" in html


def test_no_field_when_the_operator_allows_no_choice(client):
    login(client)
    assert 'name="quota"' not in consent_page(client, "metered")


def test_a_user_lowered_quota_is_kept_with_the_grant_and_enforced(client, state, clock):
    tokens = chosen_token(client, "2")
    record = state.storage.tokens.get(token_digest(tokens["access_token"]))
    assert record["user_quota"] == {"calls": 2, "per": "day"}
    answers = [profile(client, tokens["access_token"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["RateLimit-Policy"] == '"quota";q=5;w=86400, "quota:user";q=2;w=86400'
    assert answers[0].headers["RateLimit"] == '"quota";r=4;t=30, "quota:user";r=1;t=30'
    assert answers[2].headers["RateLimit-Policy"] == '"quota:user";q=2;w=86400'
    # A refresh keeps the user's quota; the count is the user's with this client.
    renewed = refresh(client, tokens["refresh_token"], "choosy").get_json()
    assert state.storage.tokens.get(token_digest(renewed["access_token"]))["user_quota"] == {
        "calls": 2,
        "per": "day",
    }
    assert profile(client, renewed["access_token"]).status_code == 429


def test_an_empty_choice_leaves_the_clients_quota(client, state, clock):
    tokens = chosen_token(client, "")
    assert "user_quota" not in state.storage.tokens.get(token_digest(tokens["access_token"]))
    assert [profile(client, tokens["access_token"]).status_code for _ in range(6)] == [200] * 5 + [
        429
    ]


@pytest.mark.parametrize("typed", ["0", "6", "-1", "2.5", "abc", "1e3", "٣", "9" * 40])
def test_a_bad_choice_gets_a_clear_page_and_changes_nothing(client, state, typed):
    login(client)
    html = consent_page(client)
    refused = answer(client, html, typed)
    assert refused.status_code == 400
    assert "from 1 to 5" in refused.get_data(as_text=True)
    assert state.storage.codes.list_by_client("choosy") == []
    # The request is still open: the user can go back and answer it.
    assert answer(client, html, "3").status_code == 302


def test_a_remembered_consent_keeps_the_users_choice(client, state):
    first = chosen_token(client, "2", scope="openid read-only")
    login(client)
    again = client.get(authorize_url(client_id="choosy", scope="openid read-only"))
    assert again.status_code == 302 and "code=" in again.headers["Location"]  # not asked
    code = dict(re.findall(r"[?&](\w+)=([^&]*)", again.headers["Location"]))["code"]
    assert state.storage.codes.get(token_digest(code))["user_quota"] == {"calls": 2, "per": "day"}
    # The next consent page shows the choice the user made.
    assert first["access_token"]
    html = consent_page(client, scope="read-only")
    assert re.search(r'<input id="quota"[^>]*value="2"', html)


# -- what the user and the client see -----------------------------------------------------
def test_review_shows_calls_used_of_the_users_quota(client, state, clock):
    tokens = chosen_token(client, "2")
    profile(client, tokens["access_token"])
    page = client.get("/review").get_data(as_text=True)
    assert "Used 1 of 2 calls today (your limit)" in page


def test_review_shows_the_users_calls_of_a_clients_quota(client, state, clock):
    tokens = chosen_token(client, None, client_id="metered")
    for _ in range(2):
        profile(client, tokens["access_token"])
    page = client.get("/review").get_data(as_text=True)
    assert "Used 2 calls today; the site allows it 3 calls a day in all" in page


def test_introspection_names_the_quota_that_binds_first(client, state, clock):
    tokens = chosen_token(client, "2")
    profile(client, tokens["access_token"])
    body = client.post(
        "/introspect", data={"token": tokens["access_token"]}, headers=basic("choosy")
    ).get_json()
    reset = calendar.timegm((2024, 5, 18, 0, 0, 0))
    assert body["quota"] == {"limit": 2, "used": 1, "remaining": 1, "per": "day", "reset": reset}
    documented = load_spec()["components"]["schemas"]["Introspection"]
    assert jsonschema_rs.validator_for(documented).is_valid(body)


def test_introspection_of_a_client_without_quota_has_no_member(client):
    tokens = issue_tokens(client)
    body = client.post("/introspect", data={"token": tokens["access_token"]}, headers=basic())
    assert body.get_json()["active"] is True and "quota" not in body.get_json()


# -- the fields' checks ---------------------------------------------------------------------
BAD_FIELDS = [
    ("not-an-object", {"quota": 100}, "quota: expected"),
    ("no-period", {"quota": {"calls": 100}}, "quota: expected"),
    ("extra-key", {"quota": {"calls": 1, "per": "day", "burst": 2}}, "quota: expected"),
    ("zero", {"quota": {"calls": 0, "per": "day"}}, "quota.calls:"),
    ("bool", {"quota": {"calls": True, "per": "day"}}, "quota.calls:"),
    ("text", {"quota": {"calls": "100", "per": "day"}}, "quota.calls:"),
    ("huge", {"quota": {"calls": 10**13, "per": "day"}}, "quota.calls:"),
    ("week", {"quota": {"calls": 1, "per": "week"}}, "quota.per: one of minute, hour, day, month"),
    ("api-list", {"api_quotas": [{"calls": 1, "per": "day"}]}, "api_quotas: expected"),
    ("api-name", {"api_quotas": {"a b": {"calls": 1, "per": "day"}}}, "api_quotas: 'a b'"),
    (
        "api-quota",
        {"api_quotas": {"profile": {"calls": -1, "per": "day"}}},
        "api_quotas.profile.calls",
    ),
    (
        "choice-text",
        {"quota": {"calls": 1, "per": "day"}, "quota_user_choice": "yes"},
        "quota_user_choice: must",
    ),
    ("choice-alone", {"quota_user_choice": True}, "quota_user_choice: needs a quota"),
]


@pytest.mark.parametrize("fields, named", table(BAD_FIELDS))
def test_the_clients_file_names_a_bad_quota_field(tmp_path, fields, named):
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([make_client("bad", **fields)]))
    with pytest.raises(ClientFileError) as raised:
        load_clients_file(path, ["read-only"])
    assert f"client 'bad'.{named}" in str(raised.value)


def admin_call(http):
    data = {"grant_type": "client_credentials", "scope": "admin"}
    token = http.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    return lambda method, path, **kw: http.open(path, method=method, headers=bearer(token), **kw)


WEB = {"client_name": "Partner", "redirect_uris": [REDIRECT], "scope": "read-only"}


@pytest.mark.parametrize("fields, named", table(BAD_FIELDS))
def test_the_admin_api_names_a_bad_quota_field(client, state, fields, named):
    call = admin_call(client)
    before = state.clients.store.records()
    response = call("POST", "/admin/clients", json=WEB | fields)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_client_metadata"
    assert body["error_description"].startswith(named)
    assert state.clients.store.records() == before


def test_the_admin_api_keeps_and_enforces_quota_fields(client, state, clock):
    call = admin_call(client)
    quota = {
        "quota": {"calls": 1, "per": "day"},
        "api_quotas": {"profile": {"calls": 1, "per": "hour"}},
    }
    made = call("POST", "/admin/clients", json=WEB | quota | {"quota_user_choice": True})
    assert made.status_code == 201, made.get_json()
    client_id = made.get_json()["client_id"]
    shown = call("GET", f"/admin/clients/{client_id}").get_json()
    assert shown["quota"] == quota["quota"] and shown["api_quotas"] == quota["api_quotas"]
    assert shown["quota_user_choice"] is True
    patched = call(
        "PATCH", f"/admin/clients/{client_id}", json={"quota": {"calls": 9, "per": "minute"}}
    )
    assert patched.get_json()["quota"] == {"calls": 9, "per": "minute"}
    token = make_token(state, client_id)["access_token"]
    assert [profile(client, token).status_code for _ in range(2)] == [200, 429]


def test_a_file_clients_quota_is_shown_by_the_admin_api(client):
    call = admin_call(client)
    shown = call("GET", "/admin/clients/metered").get_json()
    assert shown["quota"] == {"calls": 3, "per": "day"}
    assert shown["api_quotas"] == {"update_avatar": {"calls": 1, "per": "hour"}}
    assert shown["read_only"] is True
