"""The factories make what the server itself issues: it accepts each as its own."""

from __future__ import annotations

from tests.conftest import basic, bearer, exchange
from tests.factories import make_code, make_token


def test_a_made_code_redeems_once(client, state) -> None:
    code = make_code(state)
    first = exchange(client, code)
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["scope"] == "read-only"
    assert exchange(client, code).get_json()["error"] == "invalid_grant"


def test_a_made_token_calls_the_api_and_refreshes(client, state) -> None:
    token = make_token(state, scope="read-only read-write")
    assert client.get("/api/profile", headers=bearer(token["access_token"])).status_code == 200
    data = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    refreshed = client.post("/token", data=data, headers=basic())
    assert refreshed.status_code == 200, refreshed.get_json()
    assert refreshed.get_json()["scope"] == "read-only read-write"


def test_a_made_token_with_a_negative_lifetime_has_expired(client, state) -> None:
    token = make_token(state, expires_in=-5, refresh=False)
    assert "refresh_token" not in token
    assert client.get("/api/profile", headers=bearer(token["access_token"])).status_code == 401
