"""Tokens of a client removed from the clients file stop working everywhere at once."""

from __future__ import annotations

import pytest

from app.oauth2.accept import find_access, find_either, find_refresh
from tests.conftest import basic, close_app
from tests.oauth2.conftest import EXTRA_CLIENTS, issue_tokens, make_app, profile_status, refresh

KEPT = [c for c in EXTRA_CLIENTS if c["client_id"] != "reader"]


@pytest.fixture
def removed(tmp_path, dummy_site):
    """``reader``'s tokens, then the app rebuilt (as by SIGHUP) from a file without it."""
    before = make_app(tmp_path, dummy_site)
    tokens = issue_tokens(before.test_client(), client_id="reader", scope="read-only")
    assert profile_status(before.test_client(), tokens["access_token"]) == 200
    close_app(before)
    after = make_app(tmp_path, dummy_site, clients=KEPT)
    yield after, tokens
    close_app(after)


def test_api_refuses_the_token_of_a_removed_client(removed):
    app, tokens = removed
    response = app.test_client().get(
        "/api/profile", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_every_lookup_refuses_them_though_storage_still_holds_them(removed):
    app, tokens = removed
    state = app.extensions["oauth2"]
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    assert state.grants.find_access(access) is not None
    assert state.grants.find_refresh(refresh_token) is not None
    assert find_access(state.server, access) is None
    assert find_refresh(state.server, refresh_token) is None
    for hint in (None, "access_token", "refresh_token"):
        assert find_either(state.server, access, hint) is None
        assert find_either(state.server, refresh_token, hint) is None


def test_introspection_reads_them_as_inactive(removed):
    app, tokens = removed
    for token in (tokens["access_token"], tokens["refresh_token"]):
        response = app.test_client().post("/introspect", data={"token": token}, headers=basic())
        assert response.get_json() == {"active": False}


def test_refresh_and_revocation_by_the_removed_client_are_refused(removed):
    app, tokens = removed
    http = app.test_client()
    assert refresh(http, tokens["refresh_token"], client_id="reader").status_code == 401
    revoke = http.post("/revoke", data={"token": tokens["access_token"]}, headers=basic("reader"))
    assert revoke.status_code == 401


def test_the_other_clients_tokens_keep_working(removed):
    app, _ = removed
    http = app.test_client()
    tokens = issue_tokens(http, client_id="test")
    assert profile_status(http, tokens["access_token"]) == 200
    assert refresh(http, tokens["refresh_token"]).status_code == 200
