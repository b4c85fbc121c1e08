"""RFC 6749 §4.2, the implicit grant: the token travels in the redirect URI's fragment."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pytest

from tests.conftest import REDIRECT, authorize_url, consent, location_params, login
from tests.oauth2.conftest import profile_status, redirect_error, snapshot, unchanged


def test_allow_puts_a_bearer_token_in_the_fragment(client, state):
    login(client)
    response = consent(client, authorize_url(response_type="token"))
    assert response.status_code == 302
    parts = urlsplit(response.headers["Location"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT
    assert parts.query == ""
    params = location_params(response, fragment=True)
    assert set(params) == {"access_token", "token_type", "expires_in", "scope", "state", "iss"}
    assert params["token_type"] == "Bearer"
    assert int(params["expires_in"]) > 0
    assert params["scope"] == "read-only"
    assert params["state"] == "xyz"
    assert params["iss"] == state.server.issuer
    assert profile_status(client, params["access_token"]) == 200
    stored = snapshot(state)
    assert stored["tokens"] == {hashlib.sha256(params["access_token"].encode()).hexdigest()}
    assert stored["refresh_tokens"] == frozenset()


def test_confidential_demo_client_may_use_the_implicit_grant(client):
    login(client)
    response = consent(client, authorize_url(client_id="sp-demo", response_type="token"))
    token = location_params(response, fragment=True)["access_token"]
    assert profile_status(client, token) == 200


@pytest.mark.parametrize("state_param", ["xyz", None], ids=["with-state", "without-state"])
def test_deny_puts_access_denied_in_the_fragment(client, state, state_param):
    login(client)
    before = snapshot(state)
    response = consent(client, authorize_url(response_type="token", state=state_param), False)
    assert redirect_error(response, fragment=True) == "access_denied"
    params = location_params(response, fragment=True)
    assert "access_token" not in params
    assert params.get("state") == state_param
    assert urlsplit(response.headers["Location"]).query == ""
    assert snapshot(state)["tokens"] == before["tokens"]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"client_id": "code-only"}, "unauthorized_client"),
        ({"scope": "bogus"}, "invalid_scope"),
        ({"client_id": "reader", "scope": "read-write"}, "invalid_scope"),
        ({"response_mode": "query"}, "invalid_request"),
    ],
    ids=["grant-not-allowed", "unknown-scope", "scope-not-allowed", "query-mode"],
)
def test_bad_implicit_request_gets_the_error_in_the_fragment(client, state, params, error):
    login(client)
    with unchanged(state):
        response = client.get(authorize_url(response_type="token", **params))
    assert redirect_error(response, fragment=True) == error
    assert location_params(response, fragment=True)["state"] == "xyz"
    assert urlsplit(response.headers["Location"]).query == ""


def test_implicit_token_cannot_be_refreshed_or_used_after_revocation(client, state):
    login(client)
    response = consent(client, authorize_url(response_type="token"))
    token = location_params(response, fragment=True)["access_token"]
    revoke = client.post(
        "/revoke", data={"token": token, "client_id": "test", "client_secret": "hunter2"}
    )
    assert revoke.status_code == 200
    assert profile_status(client, token) == 401


def test_fragment_response_mode_is_accepted_for_token(client):
    login(client)
    response = consent(client, authorize_url(response_type="token", response_mode="fragment"))
    assert "access_token" in location_params(response, fragment=True)
