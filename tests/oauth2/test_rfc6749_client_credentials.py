"""RFC 6749 §4.4, the client credentials grant: a token for the client itself."""

from __future__ import annotations

import pytest

from tests.conftest import basic, bearer, table
from tests.oauth2.conftest import error_of, unchanged


def client_credentials(client, client_id="test", secret="hunter2", **extra):
    data = {"grant_type": "client_credentials", **extra}
    return client.post("/token", data=data, headers=basic(client_id, secret))


def test_allowed_client_gets_a_token_with_the_default_scope_and_no_refresh(client):
    response = client_credentials(client)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read-only"
    assert body["expires_in"] > 0


def test_client_may_ask_for_an_explicit_scope(client):
    assert client_credentials(client, scope="read-write").get_json()["scope"] == "read-write"


def test_token_answers_for_no_user_so_user_functions_refuse_it(client):
    token = client_credentials(client).get_json()["access_token"]
    response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json() == {
        "success": 0,
        "error": "this function acts for a user; use a user's token",
    }


BAD_REQUESTS = [
    # (id, client_id, secret, extra, status, error)
    ("grant-not-allowed", "sp-demo", "hunter2", {}, 400, "unauthorized_client"),
    ("wrong-secret", "test", "wrong", {}, 401, "invalid_client"),
    ("unknown-client", "nope", "hunter2", {}, 401, "invalid_client"),
    ("unknown-scope", "test", "hunter2", {"scope": "bogus"}, 400, "invalid_scope"),
    ("scope-not-allowed", "reader", "hunter2", {"scope": "read-write"}, 400, "invalid_scope"),
]


@pytest.mark.parametrize(("client_id", "secret", "extra", "status", "error"), table(BAD_REQUESTS))
def test_bad_client_credentials_request_issues_nothing(
    client, state, client_id, secret, extra, status, error
):
    with unchanged(state):
        response = client_credentials(client, client_id, secret, **extra)
    assert response.status_code == status
    assert error_of(response) == error


def test_public_client_cannot_use_client_credentials(client, state):
    with unchanged(state):
        response = client.post(
            "/token", data={"grant_type": "client_credentials", "client_id": "spa"}
        )
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"
