"""CORS at /token and /revoke for public clients kept in storage (admin API, RFC 7591
registration): their ``allowed_origins`` count on the next request, and a request
without ``Origin``, or with one of the clients file's, reads nothing of the store."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import CHALLENGE, VERIFIER, basic, bearer, get_code
from tests.oauth2.conftest import REDIRECT, open_app
from tests.test_cors import APP_ORIGIN, CLIENTS, EVIL, cors_headers, preflight

STORED = "https://stored.example"
DEV = "http://localhost:5173"
SPA = {
    "client_name": "Stored SPA",
    "token_endpoint_auth_method": "none",
    "redirect_uris": [REDIRECT],
    "scope": "read-only",
    "allowed_origins": [STORED, DEV],
}
OPERATOR_TOKEN = "operator-initial-token-0123456789"
REGISTRATION = {
    "enabled": True,
    "initial_access_token_hash": "sha256$" + hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(),
}


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, clients=CLIENTS, registration=REGISTRATION) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def state(app):
    return app.extensions["oauth2"]


@pytest.fixture
def admin(client):
    data = {"grant_type": "client_credentials", "scope": "admin"}
    token = client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]

    def call(method: str, path: str = "/admin/clients", **kw):
        return client.open(path, method=method, headers=bearer(token), **kw)

    return call


def allowed(client, origin: str, path: str = "/token") -> str | None:
    """The ``Access-Control-Allow-Origin`` of a preflight from ``origin``."""
    response = client.options(path, headers=preflight(origin, headers="content-type"))
    assert response.status_code == 204
    assert "Origin" in response.headers["Vary"]
    return response.headers.get("Access-Control-Allow-Origin")


def exchange(client, client_id: str, origin: str | None):
    code = get_code(
        client, client_id=client_id, code_challenge=CHALLENGE, code_challenge_method="S256"
    )
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
        "code_verifier": VERIFIER,
    }
    return client.post("/token", data=data, headers={"Origin": origin} if origin else {})


def create(admin, **over) -> str:
    response = admin("POST", json={**SPA, **over})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["allowed_origins"] == over.get("allowed_origins", [STORED, DEV])
    return response.get_json()["client_id"]


def test_a_stored_public_clients_origins_are_answered(client, admin):
    assert allowed(client, STORED) is None
    client_id = create(admin)
    for path in ("/token", "/revoke"):
        assert allowed(client, STORED, path) == STORED
        assert allowed(client, DEV, path) == DEV
        assert allowed(client, EVIL, path) is None
    response = exchange(client, client_id, STORED)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == STORED
    token = response.get_json()["access_token"]
    revoked = client.post(
        "/revoke", data={"token": token, "client_id": client_id}, headers={"Origin": DEV}
    )
    assert revoked.status_code == 200
    assert revoked.headers["Access-Control-Allow-Origin"] == DEV


def test_another_origin_and_another_client_get_no_cors(client, admin):
    client_id = create(admin)
    response = exchange(client, client_id, EVIL)
    assert response.status_code == 200
    assert cors_headers(response) == {}
    # The file's SPA named with the stored client's origin: that origin is not its own.
    response = exchange(client, "spa", STORED)
    assert response.status_code == 200
    assert cors_headers(response) == {}
    # And the stored client does not get the file client's origin.
    assert cors_headers(exchange(client, client_id, APP_ORIGIN)) == {}


def test_update_disable_and_delete_take_the_origin_away_at_once(client, admin):
    client_id = create(admin)
    path = f"/admin/clients/{client_id}"
    assert admin("PATCH", path, json={"allowed_origins": [DEV]}).status_code == 200
    assert allowed(client, STORED) is None and allowed(client, DEV) == DEV
    assert cors_headers(exchange(client, client_id, STORED)) == {}
    assert admin("PATCH", path, json={"disabled": True}).status_code == 200
    assert allowed(client, DEV) is None
    assert admin("PATCH", path, json={"disabled": False}).status_code == 200
    assert allowed(client, DEV) == DEV
    assert admin("PATCH", path, json={"allowed_origins": None}).status_code == 200
    assert allowed(client, DEV) is None
    assert admin("PUT", path, json=SPA).status_code == 200
    assert allowed(client, STORED) == STORED
    assert admin("DELETE", path).status_code == 204
    assert allowed(client, STORED) is None and allowed(client, DEV) is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**SPA, "token_endpoint_auth_method": "client_secret_basic"}, "only a public client"),
        ({**SPA, "public": False, "token_endpoint_auth_method": None}, "only a public client"),
        ({**SPA, "allowed_origins": ["https://stored.example/app"]}, "is not an origin"),
        ({**SPA, "allowed_origins": ["*"]}, "is not an origin"),
        ({**SPA, "allowed_origins": "https://stored.example"}, "expected a list"),
    ],
)
def test_a_confidential_client_or_a_bad_origin_is_refused(client, admin, state, body, problem):
    response = admin("POST", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert problem in response.get_json()["error_description"]
    assert state.clients.store.records() == []
    assert allowed(client, STORED) is None


def test_a_confidential_client_cannot_gain_origins_by_update(client, admin):
    body = {**SPA, "token_endpoint_auth_method": "client_secret_basic"}
    del body["allowed_origins"]
    made = admin("POST", json=body)
    assert made.status_code == 201
    path = f"/admin/clients/{made.get_json()['client_id']}"
    response = admin("PATCH", path, json={"allowed_origins": [STORED]})
    assert response.status_code == 400
    assert "allowed_origins" not in admin("GET", path).get_json()
    assert allowed(client, STORED) is None


def test_a_registered_public_client_may_list_origins(client):
    response = client.post("/register", json=SPA, headers=bearer(OPERATOR_TOKEN))
    assert response.status_code == 201, response.get_json()
    info = response.get_json()
    assert info["allowed_origins"] == [STORED, DEV]
    assert allowed(client, STORED) == STORED
    assert (
        exchange(client, info["client_id"], STORED).headers.get("Access-Control-Allow-Origin")
        == STORED
    )
    # RFC 7592: the registrant changes them with its registration access token.
    manage = {"Authorization": f"Bearer {info['registration_access_token']}"}
    body = {**SPA, "client_id": info["client_id"], "allowed_origins": [DEV]}
    updated = client.put(f"/register/{info['client_id']}", json=body, headers=manage)
    assert updated.status_code == 200, updated.get_json()
    assert allowed(client, STORED) is None and allowed(client, DEV) == DEV


def test_a_registered_confidential_client_may_not(client, state):
    body = {**SPA, "token_endpoint_auth_method": "client_secret_basic"}
    response = client.post("/register", json=body, headers=bearer(OPERATOR_TOKEN))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert state.clients.store.records() == []


def test_no_origin_or_a_file_origin_reads_nothing_of_the_store(client, admin, state, monkeypatch):
    create(admin)
    code = get_code(client, client_id="spa", code_challenge=CHALLENGE, code_challenge_method="S256")
    reads: list[str] = []
    table = state.clients.store.table
    for verb in ("get", "list_by_user", "list_by_client"):
        real = getattr(table, verb)
        monkeypatch.setattr(table, verb, lambda *a, _v=verb, _r=real: reads.append(_v) or _r(*a))
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "spa",
        "code_verifier": VERIFIER,
    }
    assert client.post("/token", data=data).status_code == 200  # no Origin
    assert client.options("/token").status_code == 204
    assert client.options("/revoke", headers={"Access-Control-Request-Method": "POST"})
    assert allowed(client, APP_ORIGIN) == APP_ORIGIN  # the file's: known in memory
    assert reads == []
    assert allowed(client, STORED) == STORED  # an origin the file did not register
    assert "list_by_user" in reads
