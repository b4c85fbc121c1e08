"""Scopes (RFC 6749 §3.3) and the ``/api/*`` gateway's token and scope checks."""

from __future__ import annotations

import pytest

from tests.conftest import authorize_url, bearer, hidden, location_params, login
from tests.oauth2.conftest import issue_tokens, redirect_error, unchanged


def api(client, name: str, token: str):
    method = client.post if name == "update_avatar" else client.get
    return method(f"/api/{name}", headers=bearer(token))


def test_read_only_token_reads_the_profile_but_cannot_update_the_avatar(client):
    token = issue_tokens(client, scope="read-only")["access_token"]
    profile = api(client, "profile", token)
    assert profile.status_code == 200
    assert "id" in profile.get_json()
    avatar = api(client, "update_avatar", token)
    assert avatar.status_code == 403
    assert avatar.get_json() == {"success": 0, "error": "insufficient scope"}
    assert 'error="insufficient_scope"' in avatar.headers["WWW-Authenticate"]


def test_unknown_function_is_404(client):
    token = issue_tokens(client)["access_token"]
    response = api(client, "no_such_thing", token)
    assert response.status_code == 404
    assert response.get_json() == {"success": 0, "error": "no such function"}


def test_two_scopes_allow_both_functions(client):
    tokens = issue_tokens(client, scope="read-only read-write")
    assert tokens["scope"] == "read-only read-write"
    assert api(client, "profile", tokens["access_token"]).status_code == 200
    avatar = api(client, "update_avatar", tokens["access_token"])
    assert avatar.status_code == 200
    assert avatar.get_json() == {"success": 1}


def test_no_scope_asks_for_the_default_read_only(client):
    login(client)
    page = client.get(authorize_url(scope=None)).get_data(as_text=True)
    assert hidden(page, "scope") == "read-only"
    assert issue_tokens(client, scope=None)["scope"] == "read-only"


@pytest.mark.parametrize(
    ("client_id", "scope"),
    [("test", "admin"), ("test", "read-only admin"), ("reader", "read-write")],
    ids=["unknown", "known-and-unknown", "not-the-clients"],
)
def test_scope_outside_the_clients_is_redirected_as_invalid_scope(client, state, client_id, scope):
    login(client)
    with unchanged(state):
        response = client.get(authorize_url(client_id=client_id, scope=scope))
    assert redirect_error(response) == "invalid_scope"
    assert location_params(response)["state"] == "xyz"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-token", "Basic dGVzdDpodW50ZXIy"],
    ids=["none", "empty-bearer", "unknown-token", "basic"],
)
def test_api_without_a_valid_bearer_token_is_401(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/api/profile", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["success"] == 0


def test_unknown_token_is_named_invalid_token(client):
    response = client.get("/api/profile", headers=bearer("not-a-token"))
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
