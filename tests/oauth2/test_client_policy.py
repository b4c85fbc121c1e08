"""Per-client policy: ``api_allowlist``, token lifetimes, and ``expires_in`` at /token."""

from __future__ import annotations

import pytest

from app.clients import ClientFileError, parse_client
from app.oauth2.grant_store import GrantStore
from tests.conftest import REDIRECT, basic, bearer, close_app, get_code, location_params, table
from tests.factories import make_client, make_token
from tests.oauth2.conftest import make_app

CLIENTS = [
    make_client(
        "limited",
        scopes=["read-only", "read-write"],
        api_allowlist=["profile"],
        access_token_lifetime=120,
        refresh_token_lifetime=600,
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
    ),
    make_client("nothing", api_allowlist=[]),
]


@pytest.fixture
def app(tmp_path, dummy_site):
    app = make_app(tmp_path, dummy_site, CLIENTS)
    yield app
    close_app(app)


@pytest.fixture
def state(app):
    return app.extensions["oauth2"]


def _code_tokens(client, client_id: str, **extra) -> dict:
    code = get_code(client, client_id=client_id, scope="read-only")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    return client.post("/token", data=data, headers=basic(client_id)).get_json()


# -- api_allowlist ----------------------------------------------------------------------
def test_allowlist_lets_a_listed_function_through(client, state):
    token = make_token(state, client_id="limited", scope="read-only read-write")
    response = client.get("/api/profile", headers=bearer(token["access_token"]))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_allowlist_refuses_a_function_the_scope_allows(client, state):
    token = make_token(state, client_id="limited", scope="read-only read-write")
    response = client.post("/api/update_avatar", headers=bearer(token["access_token"]))
    assert response.status_code == 403
    assert response.get_json() == {"success": 0, "error": "function not allowed"}
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_empty_allowlist_allows_nothing(client, state):
    token = make_token(state, client_id="nothing")
    response = client.get("/api/profile", headers=bearer(token["access_token"]))
    assert response.status_code == 403
    assert response.get_json()["error"] == "function not allowed"


def test_no_allowlist_leaves_scopes_alone(client, state):
    token = make_token(state, client_id="test")
    assert client.get("/api/profile", headers=bearer(token["access_token"])).status_code == 200


# -- lifetimes --------------------------------------------------------------------------
def test_client_access_lifetime_is_used(client):
    tokens = _code_tokens(client, "limited")
    assert tokens["expires_in"] == 120


def test_server_lifetime_without_the_clients(client, state):
    tokens = _code_tokens(client, "test")
    assert tokens["expires_in"] == state.server.access_ttl


def test_client_refresh_lifetime_is_the_records_ttl(client, state):
    tokens = _code_tokens(client, "limited")
    record = state.grants.find_refresh(tokens["refresh_token"]).record
    assert 590 <= record["expires_at"] - record["issued_at"] <= 601
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    again = client.post("/token", data=data, headers=basic("limited")).get_json()
    record = state.grants.find_refresh(again["refresh_token"]).record
    assert 590 <= record["expires_at"] - record["issued_at"] <= 601
    assert again["expires_in"] == 120


def test_refresh_ttl_takes_the_shortest_limit(state):
    store = GrantStore(state.storage, family_lifetime=1000)
    assert store._refresh_ttl(0, 0, 600) == 600
    assert store._refresh_ttl(0, 900, 600) == 100
    assert GrantStore(state.storage)._refresh_ttl(0, 0) is None


# -- expires_in -------------------------------------------------------------------------
def test_expires_in_shortens_the_access_token(client, state):
    tokens = _code_tokens(client, "limited", expires_in="30")
    assert tokens["expires_in"] == 30
    record = state.grants.find_access(tokens["access_token"]).record
    assert record["expires_at"] - record["issued_at"] <= 31


def test_expires_in_never_lengthens(client):
    tokens = _code_tokens(client, "limited", expires_in="999999")
    assert tokens["expires_in"] == 120


def test_expires_in_at_client_credentials_and_refresh(client):
    data = {"grant_type": "client_credentials", "expires_in": "45"}
    assert client.post("/token", data=data, headers=basic("limited")).get_json()["expires_in"] == 45
    tokens = _code_tokens(client, "test")
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    answer = client.post("/token", data={**data, "expires_in": "10"}, headers=basic())
    assert answer.get_json()["expires_in"] == 10


@pytest.mark.parametrize(
    "value", table([("zero", "0"), ("negative", "-5"), ("word", "soon"), ("float", "1.5")])
)
def test_bad_expires_in_is_refused_and_keeps_the_code(client, state, value):
    code = get_code(client, client_id="limited", scope="read-only")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    refused = client.post("/token", data={**data, "expires_in": value}, headers=basic("limited"))
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_request"
    assert state.grants.find_code(code) is not None  # the code was not used up
    assert client.post("/token", data=data, headers=basic("limited")).status_code == 200


def test_expires_in_in_json_body(client):
    code = get_code(client, client_id="limited", scope="read-only")
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    answer = client.post("/token", json={**body, "expires_in": 60}, headers=basic("limited"))
    assert answer.get_json()["expires_in"] == 60


def test_implicit_ignores_expires_in(client):
    from tests.conftest import authorize_url, consent, login

    login(client)
    url = authorize_url(response_type="token", scope="read-only", expires_in="5")
    params = location_params(consent(client, url), fragment=True)
    assert int(params["expires_in"]) > 5


# -- the clients file's checks ----------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    table(
        [
            ("short-access", "access_token_lifetime", 10),
            ("long-access", "access_token_lifetime", 86401),
            ("text-access", "access_token_lifetime", "600"),
            ("bool-refresh", "refresh_token_lifetime", True),
            ("long-refresh", "refresh_token_lifetime", 10**9),
            ("allowlist-text", "api_allowlist", "profile"),
            ("allowlist-number", "api_allowlist", [1]),
            ("allowlist-space", "api_allowlist", ["a b"]),
            ("logo-ftp", "logo_uri", "ftp://example.com/logo.png"),
            ("policy-number", "policy_uri", 5),
        ]
    ),
)
def test_bad_policy_in_the_clients_file_is_named(field, value):
    with pytest.raises(ClientFileError, match=f"client 'x'.{field}"):
        parse_client(make_client("x", **{field: value}), 0, ["read-only"], False)


def test_policy_fields_reach_the_client():
    entry = make_client(
        "x",
        api_allowlist=["/profile"],
        access_token_lifetime=60,
        refresh_token_lifetime=31536000,
        client_uri="https://partner.example/",
        logo_uri="https://partner.example/logo.png",
        policy_uri="https://partner.example/privacy",
        tos_uri="https://partner.example/terms",
    )
    client = parse_client(entry, 0, ["read-only"], False)
    assert client.api_allowlist == ["profile"]
    assert (client.access_token_lifetime, client.refresh_token_lifetime) == (60, 31536000)
    assert client.tos_uri == "https://partner.example/terms"
