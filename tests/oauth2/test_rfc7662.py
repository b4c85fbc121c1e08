"""OAuth 2.0 Token Introspection (RFC 7662): a client sees only its own tokens."""

from __future__ import annotations

import time

import pytest

from tests.conftest import basic, bearer
from tests.oauth2.conftest import error_of, issue_tokens, unchanged


def introspect(client, token: str, client_id="test", secret="hunter2", **extra):
    return client.post(
        "/introspect", data={"token": token, **extra}, headers=basic(client_id, secret)
    )


def user_id_of(client, access_token: str) -> str:
    return client.get("/api/profile", headers=bearer(access_token)).get_json()["id"]


def test_active_access_token_is_described(client):
    before = int(time.time())
    tokens = issue_tokens(client, scope="read-only read-write")
    response = introspect(client, tokens["access_token"])
    assert response.status_code == 200
    body = response.get_json()
    assert body["active"] is True
    assert body["scope"] == "read-only read-write"
    assert body["client_id"] == "test"
    assert body["token_type"] == "Bearer"
    assert body["sub"] == str(user_id_of(client, tokens["access_token"]))
    assert before <= body["iat"] <= time.time()
    assert body["exp"] - body["iat"] == pytest.approx(tokens["expires_in"], abs=2)


def test_refresh_token_is_active_until_rotated(client):
    tokens = issue_tokens(client)
    assert introspect(client, tokens["refresh_token"]).get_json()["active"] is True
    client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(),
    )
    assert introspect(client, tokens["refresh_token"]).get_json() == {"active": False}
    assert introspect(client, tokens["access_token"]).get_json() == {"active": False}


def test_client_credentials_token_has_no_subject(client):
    token = client.post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic()
    ).get_json()["access_token"]
    body = introspect(client, token).get_json()
    assert body["active"] is True
    assert "sub" not in body


def test_revoked_token_is_inactive(client):
    tokens = issue_tokens(client)
    client.post("/revoke", data={"token": tokens["access_token"]}, headers=basic())
    assert introspect(client, tokens["access_token"]).get_json() == {"active": False}


def test_unknown_token_is_inactive(client):
    response = introspect(client, "not-a-token")
    assert response.status_code == 200
    assert response.get_json() == {"active": False}


def test_another_clients_token_reads_as_inactive(client, state):
    tokens = issue_tokens(client)
    with unchanged(state):
        response = introspect(client, tokens["access_token"], client_id="sp-demo")
    assert response.status_code == 200
    assert response.get_json() == {"active": False}


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [("test", "wrong"), ("nope", "hunter2"), (None, None)],
    ids=["wrong-secret", "unknown-client", "no-client-auth"],
)
def test_bad_client_auth_is_401(client, state, client_id, secret):
    tokens = issue_tokens(client)
    headers = basic(client_id, secret) if client_id else {}
    with unchanged(state):
        response = client.post(
            "/introspect", data={"token": tokens["access_token"]}, headers=headers
        )
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"
    assert "active" not in response.get_json()


def test_missing_token_is_invalid_request(client):
    response = client.post("/introspect", data={}, headers=basic())
    assert response.status_code == 400
    assert error_of(response) == "invalid_request"
