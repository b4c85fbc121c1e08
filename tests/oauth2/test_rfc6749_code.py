"""RFC 6749 §4.1, the authorization code grant: the front channel, then the back channel."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlsplit

import pytest

from tests.conftest import (
    REDIRECT,
    authorize_url,
    basic,
    bearer,
    consent,
    csrf_from,
    exchange,
    get_code,
    hidden,
    location_params,
    login,
    table,
)
from tests.oauth2.conftest import (
    EXTRA_CLIENTS,
    batches_sent,
    entries_of,
    error_of,
    lose_the_race,
    make_app,
    page_detail,
    profile_status,
    redeem,
    redirect_error,
    refresh,
    snapshot,
    unchanged,
)

TOKEN_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}


def consent_form(client, url: str) -> dict[str, str]:
    """Open the consent page and return the form it asks the user to submit (Allow)."""
    page = client.get(url)
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    return {
        "csrf_token": csrf_from(html),
        "transaction_id": hidden(html, "transaction_id"),
        "scope": hidden(html, "scope"),
        "allow": "Allow",
    }


def is_error_page(response, status: int = 400) -> bool:
    return (
        response.status_code == status
        and "Location" not in response.headers
        and response.mimetype == "text/html"
    )


# -- front channel: logging in ----------------------------------------------------------
def test_logged_out_user_is_sent_to_login_with_the_request_as_next(client, state):
    url = authorize_url()
    with unchanged(state):
        response = client.get(url)
    assert response.status_code == 302
    parts = urlsplit(response.headers["Location"])
    assert parts.path == "/login"
    assert location_params(response) == {"next": url}


def test_login_returns_to_the_authorization_request_then_shows_consent(client):
    url = authorize_url()
    response = login(client, next_url=url)
    assert response.status_code == 302
    assert response.headers["Location"] == url
    page = client.get(url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Automated tests" in html
    assert '<form class="form" method="post" action="/authorize">' in html
    assert hidden(html, "transaction_id")
    assert hidden(html, "scope") == "read-only"
    assert 'name="allow"' in html
    assert 'name="cancel" value="Deny"' in html


@pytest.mark.parametrize(
    ("username", "password", "status"),
    [("alice", "wrong", 401), ("alice", "", 400), ("", "password", 400), ("a" * 300, "x", 400)],
    ids=["bad-password", "no-password", "no-username", "oversized"],
)
def test_bad_login_shows_the_form_again_and_signs_nobody_in(
    client, state, username, password, status
):
    with unchanged(state):
        response = login(client, username=username, password=password, next_url=authorize_url())
    html = response.get_data(as_text=True)
    assert response.status_code == status
    assert 'name="username"' in html and 'name="password"' in html
    assert 'role="alert"' in html
    assert client.get(authorize_url()).headers["Location"].startswith("/login?")


def test_session_is_remembered_between_requests(client):
    login(client)
    first = client.get(authorize_url())
    second = client.get(authorize_url(state="other"))
    assert first.status_code == second.status_code == 200


def test_each_consent_page_gets_a_new_transaction_id(client, state):
    login(client)
    ids = {
        hidden(client.get(authorize_url()).get_data(as_text=True), "transaction_id")
        for _ in range(3)
    }
    assert len(ids) == 3
    assert len(snapshot(state)["transactions"]) == 3


# -- front channel: bad requests --------------------------------------------------------
BAD_CLIENT_OR_REDIRECT = [
    {"client_id": "nope"},
    {"client_id": ""},
    {"redirect_uri": "http://evil.example/"},
    {"redirect_uri": "http://localhost:8080/other"},
    {"redirect_uri": "http://localhost:8080/#fragment"},
    {"redirect_uri": "not a url"},
    {"redirect_uri": "javascript:alert(1)"},
    {"redirect_uri": "http://localhost:8080:99999/"},
]


@pytest.mark.parametrize("logged_in", [True, False], ids=["logged-in", "logged-out"])
@pytest.mark.parametrize("params", BAD_CLIENT_OR_REDIRECT, ids=lambda p: repr(p))
def test_unknown_client_or_redirect_uri_gets_an_error_page_never_a_redirect(
    client, state, params, logged_in
):
    if logged_in:
        login(client)
    with unchanged(state):
        response = client.get(authorize_url(**params))
    assert is_error_page(response)


@pytest.mark.parametrize(
    "suffix",
    ["&client_id=test", "&redirect_uri=http%3A%2F%2Fevil.example%2F"],
    ids=["client_id", "redirect_uri"],
)
def test_repeated_client_id_or_redirect_uri_gets_an_error_page(client, state, suffix):
    login(client)
    with unchanged(state):
        response = client.get(authorize_url() + suffix)
    assert is_error_page(response)


NO_RESPONSE_TYPE = (
    "/authorize?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F&state=xyz"
)

REDIRECTED_ERRORS = [
    # (id, authorization request, error)
    ("unsupported-response-type", authorize_url(response_type="foo"), "unsupported_response_type"),
    ("missing-response-type", NO_RESPONSE_TYPE, "invalid_request"),
    ("unknown-scope", authorize_url(scope="bogus"), "invalid_scope"),
    ("known-and-unknown-scope", authorize_url(scope="read-only bogus"), "invalid_scope"),
    (
        "bad-challenge-method",
        authorize_url(code_challenge="x" * 43, code_challenge_method="S512"),
        "invalid_request",
    ),
    ("bad-challenge", authorize_url(code_challenge="short"), "invalid_request"),
    ("repeated-scope", authorize_url(scope="read-only") + "&scope=read-write", "invalid_request"),
    ("repeated-response-type", authorize_url() + "&response_type=token", "invalid_request"),
    ("unknown-response-mode", authorize_url(response_mode="form_post"), "invalid_request"),
    ("fragment-mode-for-code", authorize_url(response_mode="fragment"), "invalid_request"),
]


@pytest.mark.parametrize(("url", "error"), table(REDIRECTED_ERRORS))
def test_bad_request_from_a_good_client_is_redirected_with_the_error(client, state, url, error):
    login(client)
    with unchanged(state):
        response = client.get(url)
    assert redirect_error(response) == error
    assert location_params(response)["state"] == "xyz"


@pytest.mark.parametrize("url", table(case[:2] for case in REDIRECTED_ERRORS))
def test_bad_request_before_sign_in_shows_the_error_page(client, state, url):
    """RFC 9700 §4.11.2: no redirect to the client until the user has authenticated."""
    with unchanged(state):
        response = client.get(url)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "Location" not in response.headers


def test_query_response_mode_is_accepted_for_code(client):
    login(client)
    response = consent(client, authorize_url(response_mode="query"))
    assert "code" in location_params(response)


@pytest.mark.parametrize(
    "url", [authorize_url(response_type="foo"), authorize_url(scope="bogus")], ids=["rt", "scope"]
)
def test_error_redirect_carries_iss(client, state, url):
    """RFC 9207 §2: ``iss`` goes in every authorization response, error responses included."""
    login(client)
    response = client.get(url)
    assert redirect_error(response)
    assert location_params(response).get("iss") == state.server.issuer


# -- front channel: answering the consent page ------------------------------------------
def test_allow_redirects_with_a_code_state_and_iss(client, state):
    login(client)
    response = consent(client, authorize_url())
    assert response.status_code == 302
    assert response.headers["Location"].startswith(REDIRECT + "?")
    params = location_params(response)
    assert set(params) == {"code", "state", "iss"}
    assert params["state"] == "xyz"
    assert params["iss"] == state.server.issuer
    # Stored under its SHA-256 only.
    digest = hashlib.sha256(params["code"].encode()).hexdigest()
    assert snapshot(state)["codes"] == {digest}
    # 48 URL-safe characters (288 random bits), as many as Authlib's codes have.
    assert re.fullmatch(r"[A-Za-z0-9_-]{48}", params["code"])


@pytest.mark.parametrize("state_param", ["xyz", None], ids=["with-state", "without-state"])
def test_deny_redirects_with_access_denied_and_issues_nothing(client, state, state_param):
    login(client)
    before = snapshot(state)
    response = consent(client, authorize_url(state=state_param), allow=False)
    assert redirect_error(response) == "access_denied"
    params = location_params(response)
    assert "code" not in params
    assert params.get("state") == state_param
    assert params["iss"] == state.server.issuer
    after = snapshot(state)
    assert (after["codes"], after["tokens"]) == (before["codes"], before["tokens"])


def test_transaction_id_is_single_use(client, state):
    login(client)
    form = consent_form(client, authorize_url())
    assert client.post("/authorize", data=form).status_code == 302
    with unchanged(state):
        again = client.post("/authorize", data=form)
    assert is_error_page(again)


@pytest.mark.parametrize(
    "transaction_id", ["forged", "", "x" * 5000], ids=["forged", "empty", "oversized"]
)
def test_forged_transaction_id_gets_an_error_page(client, state, transaction_id):
    login(client)
    form = consent_form(client, authorize_url())
    with unchanged(state):
        response = client.post("/authorize", data=dict(form, transaction_id=transaction_id))
    assert is_error_page(response)
    assert client.post("/authorize", data=form).status_code == 302


def test_another_users_transaction_id_gets_an_error_page_and_stays_usable(app, state):
    alice, mallory = app.test_client(), app.test_client()
    login(alice, username="alice")
    login(mallory, username="mallory")
    form = consent_form(alice, authorize_url())
    stolen = dict(consent_form(mallory, authorize_url()), transaction_id=form["transaction_id"])
    with unchanged(state):
        response = mallory.post("/authorize", data=stolen)
    assert is_error_page(response)
    assert "code" in location_params(alice.post("/authorize", data=form))


@pytest.mark.parametrize("csrf", [None, "", "not-the-token"], ids=["missing", "empty", "wrong"])
def test_consent_without_the_csrf_token_is_refused(client, state, csrf):
    login(client)
    form = consent_form(client, authorize_url())
    bad = {k: v for k, v in form.items() if k != "csrf_token"}
    if csrf is not None:
        bad["csrf_token"] = csrf
    with unchanged(state):
        response = client.post("/authorize", data=bad)
    assert is_error_page(response)
    assert client.post("/authorize", data=form).status_code == 302


def test_consent_form_cannot_widen_the_scope(client, state):
    login(client)
    form = consent_form(client, authorize_url(scope="read-only"))
    with unchanged(state):  # the transaction too: a refused answer uses nothing up
        response = client.post("/authorize", data=dict(form, scope="read-only read-write"))
    assert is_error_page(response)
    assert "invalid_scope" in page_detail(response)
    assert snapshot(state)["codes"] == frozenset()
    assert "code" in location_params(client.post("/authorize", data=form))


#: A client whose default scope (its first) is wider than what it asks for below.
WRITER_FIRST = dict(EXTRA_CLIENTS[2], client_id="writer-first", scopes=["read-write", "read-only"])


@pytest.mark.parametrize("blank", [" ", "\t", "  \n "])
def test_blank_consent_scope_grants_what_the_page_showed(tmp_path, dummy_site, blank):
    """A whitespace-only scope is "no change", never the client's wider default."""
    client = make_app(tmp_path, dummy_site, [WRITER_FIRST]).test_client()
    login(client)
    form = consent_form(client, authorize_url(client_id="writer-first", scope="read-only"))
    response = client.post("/authorize", data=dict(form, scope=blank))
    code = location_params(response)["code"]
    assert redeem(client, code, "writer-first").get_json()["scope"] == "read-only"


def test_consent_form_may_narrow_the_scope(client):
    login(client)
    form = consent_form(client, authorize_url(scope="read-only read-write"))
    response = client.post("/authorize", data=dict(form, scope="read-only"))
    token = exchange(client, location_params(response)["code"]).get_json()
    assert token["scope"] == "read-only"


# -- back channel -----------------------------------------------------------------------
def test_token_response_has_the_documented_shape_and_no_store(client):
    response = exchange(client, get_code(client))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == TOKEN_KEYS
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["scope"] == "read-only"
    assert body["access_token"] != body["refresh_token"]
    assert profile_status(client, body["access_token"]) == 200


@pytest.mark.parametrize("auth", ["basic", "body"])
@pytest.mark.parametrize("body", ["form", "json"])
def test_client_authenticates_by_basic_or_body_with_form_or_json(client, state, auth, body):
    code = get_code(client)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    headers = {}
    if auth == "basic":
        headers = basic()
    else:
        data.update(client_id="test", client_secret="hunter2")
    if body == "json":
        response = client.post("/token", json=data, headers=headers)
    else:
        response = client.post("/token", data=data, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert profile_status(client, response.get_json()["access_token"]) == 200


def test_code_is_single_use_and_a_replay_revokes_what_it_issued(client, state):
    code = get_code(client)
    tokens = exchange(client, code).get_json()
    replay = exchange(client, code)
    assert replay.status_code == 400
    assert error_of(replay) == "invalid_grant"
    assert replay.headers["Cache-Control"] == "no-store"
    assert profile_status(client, tokens["access_token"]) == 401
    assert error_of(refresh(client, tokens["refresh_token"])) == "invalid_grant"
    assert state.storage.tokens.list_by_client("test") == []
    assert state.storage.refresh_tokens.list_by_client("test") == []


def test_replay_revokes_only_the_grant_of_that_code(client):
    first, second = get_code(client), get_code(client)
    kept = exchange(client, second).get_json()
    exchange(client, first)
    exchange(client, first)
    assert profile_status(client, kept["access_token"]) == 200


GOOD = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}

BAD_TOKEN_REQUESTS = [
    # (id, form fields over GOOD (None removes), headers, status, error)
    ("wrong-secret", {}, basic("test", "wrong"), 401, "invalid_client"),
    ("unknown-client", {}, basic("nope", "hunter2"), 401, "invalid_client"),
    ("no-client-auth", {}, {}, 401, "invalid_client"),
    (
        "wrong-secret-in-body",
        {"client_id": "test", "client_secret": "wrong"},
        {},
        401,
        "invalid_client",
    ),
    ("other-clients-code", {}, basic("sp-demo"), 400, "invalid_grant"),
    (
        "wrong-redirect-uri",
        {"redirect_uri": "http://localhost:8080/other"},
        basic(),
        400,
        "invalid_grant",
    ),
    ("missing-redirect-uri", {"redirect_uri": None}, basic(), 400, "invalid_grant"),
    ("unknown-code", {"code": "not-a-code"}, basic(), 400, "invalid_grant"),
    ("missing-code", {"code": None}, basic(), 400, "invalid_request"),
    ("unsupported-grant-type", {"grant_type": "password"}, basic(), 400, "unsupported_grant_type"),
    ("missing-grant-type", {"grant_type": None}, basic(), 400, "invalid_request"),
    ("unexpected-verifier", {"code_verifier": "v" * 43}, basic(), 400, "invalid_grant"),
]


@pytest.mark.parametrize(("fields", "headers", "status", "error"), table(BAD_TOKEN_REQUESTS))
def test_bad_token_request_gets_the_rfc_error_and_leaves_the_code_usable(
    client, state, fields, headers, status, error
):
    code = get_code(client)
    data = {k: v for k, v in {**GOOD, "code": code, **fields}.items() if v is not None}
    with unchanged(state):
        response = client.post("/token", data=data, headers=headers)
    assert response.status_code == status
    assert error_of(response) == error
    assert response.headers["Cache-Control"] == "no-store"
    assert exchange(client, code).status_code == 200


def test_basic_auth_failure_names_the_scheme_to_use(client):
    data = dict(GOOD, code=get_code(client))
    response = client.post("/token", data=data, headers=basic("test", "wrong"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("repeated-code", "invalid_request"),
        ("query-string", "invalid_request"),
        ("json-list", "invalid_request"),
        ("json-nested", "invalid_request"),
    ],
)
def test_malformed_token_request_is_invalid_request(client, state, how, error):
    code = get_code(client)
    form = dict(GOOD, code=code)
    with unchanged(state):
        if how == "repeated-code":
            response = client.post("/token", data=dict(form, code=[code, code]), headers=basic())
        elif how == "query-string":
            response = client.post(f"/token?code={code}", data=form, headers=basic())
        elif how == "json-list":
            response = client.post("/token", json=[form], headers=basic())
        else:
            response = client.post("/token", json=dict(form, code={"c": code}), headers=basic())
    assert response.status_code == 400
    assert error_of(response) == error
    assert exchange(client, code).status_code == 200


def test_omitted_redirect_uri_means_the_registered_one(client):
    login(client)
    response = consent(client, "/authorize?response_type=code&client_id=test&state=s")
    assert response.headers["Location"].startswith(REDIRECT + "?")
    code = location_params(response)["code"]
    data = {"grant_type": "authorization_code", "code": code}
    assert client.post("/token", data=data, headers=basic()).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [("GET", "/token", 405, "invalid_request"), ("POST", "/token", 413, "invalid_request")],
    ids=["get", "oversized"],
)
def test_token_endpoint_refuses_other_methods_and_oversized_bodies(
    client, state, method, path, status, error
):
    code = get_code(client)
    data = dict(GOOD, code=code, padding="x" * 70_000) if method == "POST" else None
    with unchanged(state):
        response = client.open(path, method=method, data=data, headers=basic())
    assert response.status_code == status
    assert error_of(response) == error
    assert exchange(client, code).status_code == 200


def test_oversized_consent_form_is_413_and_issues_nothing(client, state):
    login(client)
    form = consent_form(client, authorize_url())
    with unchanged(state):
        response = client.post("/authorize", data=dict(form, padding="x" * 70_000))
    assert response.status_code == 413
    assert client.post("/authorize", data=form).status_code == 302


def test_login_without_the_csrf_token_is_refused(client, state):
    with unchanged(state):
        response = client.post("/login", data={"username": "alice", "password": "password"})
    assert is_error_page(response)
    assert client.get(authorize_url()).headers["Location"].startswith("/login?")


# -- expiry -----------------------------------------------------------------------------
def test_expired_code_is_invalid_grant(client, later):
    code = get_code(client)
    later(61)
    response = exchange(client, code)
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_expired_transaction_gets_an_error_page(client, state, later):
    login(client)
    form = consent_form(client, authorize_url())
    later(state.settings.auth.transaction_ttl + 1)
    assert is_error_page(client.post("/authorize", data=form))


def test_expired_access_token_is_refused(client, later):
    tokens = exchange(client, get_code(client)).get_json()
    later(tokens["expires_in"] + 1)
    response = client.get("/api/profile", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


# -- audit ------------------------------------------------------------------------------
def test_a_code_exchange_writes_its_audit_entry_in_the_exchange(client, state, monkeypatch):
    code = get_code(client)
    user_id = state.grants.find_code(code).record["user_id"]
    sent = batches_sent(state, monkeypatch)
    assert exchange(client, code).status_code == 200
    assert not any("audit" in tables for tables in sent)  # not after it: in it
    [entry] = entries_of(state, "token_issued")
    assert set(entry) == {"event", "at", "client_id", "user_id", "grant", "ip", "key", "expires_at"}
    assert (entry["client_id"], entry["user_id"]) == ("test", user_id)
    assert (entry["grant"], entry["ip"]) == ("authorization_code", "127.0.0.1")


def test_a_code_exchange_that_lost_the_race_records_nothing(client, state, monkeypatch):
    code = get_code(client)
    lose_the_race(state, monkeypatch)
    assert error_of(exchange(client, code)) == "invalid_grant"
    assert entries_of(state, "token_issued") == []


def test_every_step_is_audited_without_secrets(client, state):
    login(client, password="wrong")
    code = get_code(client)
    tokens = exchange(client, code).get_json()
    exchange(client, code)
    consent(client, authorize_url(), allow=False)
    records = state.storage.audit.recent(100)
    events = {record["event"] for record in records}
    assert {
        "login_failed",
        "login",
        "consent",
        "code_issued",
        "token_issued",
        "code_replay",
        "denied",
    } <= events
    text = json.dumps(records)
    for secret in (code, tokens["access_token"], tokens["refresh_token"], "hunter2"):
        assert secret not in text
