"""A refresh-token family: its scope, its absolute lifetime, its tombstones, its atomic steps."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from app.oauth2 import grant_store
from app.oauth2.grant_store import ROTATED, ROTATIONS_REMEMBERED, USED_CODE
from app.secrets_hash import token_digest
from app.storage import sql
from tests.conftest import bearer, exchange, get_code
from tests.oauth2.conftest import error_of, issue_tokens, open_app, profile_status, refresh

LIFETIME = 1000


@pytest.fixture
def short_app(tmp_path, dummy_site):
    """Families end 1,000 s after the user's consent."""
    with open_app(tmp_path, dummy_site, auth_server={"refresh_absolute_lifetime": LIFETIME}) as app:
        yield app


@pytest.fixture
def clock(monkeypatch):
    """Move every clock (the grant store's and the storage's) forward by some seconds."""

    def advance(seconds: float) -> None:
        fake = SimpleNamespace(time=lambda: time.time() + seconds)
        monkeypatch.setattr(grant_store, "time", fake)
        monkeypatch.setattr(sql, "time", fake)

    return advance


def stored(state, token: str) -> dict:
    return state.storage.refresh_tokens.get(token_digest(token))


# -- scope (RFC 6749 §6) --------------------------------------------------------------
def test_a_narrowed_refresh_does_not_narrow_the_grant(client):
    tokens = issue_tokens(client, scope="read-only read-write")
    narrowed = refresh(client, tokens["refresh_token"], scope="read-only").get_json()
    assert narrowed["scope"] == "read-only"
    full = refresh(client, narrowed["refresh_token"]).get_json()
    assert full["scope"] == "read-only read-write"
    avatar = client.post("/api/update_avatar", headers=bearer(full["access_token"]))
    assert avatar.status_code == 200


def test_a_later_refresh_may_ask_again_for_the_original_scope_but_no_more(client):
    tokens = issue_tokens(client, scope="read-only")
    narrowed = refresh(client, tokens["refresh_token"], scope="read-only").get_json()
    wider = refresh(client, narrowed["refresh_token"], scope="read-only read-write")
    assert error_of(wider) == "invalid_scope"
    again = refresh(client, narrowed["refresh_token"], scope="read-only")
    assert again.status_code == 200


# -- absolute lifetime ----------------------------------------------------------------
def test_every_rotated_token_ends_with_its_family(short_app):
    client, state = short_app.test_client(), short_app.extensions["oauth2"]
    first = issue_tokens(client)
    end = stored(state, first["refresh_token"])["family_start"] + LIFETIME
    second = refresh(client, first["refresh_token"]).get_json()
    record = stored(state, second["refresh_token"])
    assert record["family_start"] + LIFETIME == pytest.approx(end)
    assert end <= record["expires_at"] <= end + 1


def test_a_family_past_its_absolute_lifetime_cannot_refresh(short_app, clock):
    client = short_app.test_client()
    first = issue_tokens(client)
    clock(LIFETIME / 2)
    second = refresh(client, first["refresh_token"]).get_json()
    assert second["refresh_token"]
    clock(LIFETIME + 1)
    assert error_of(refresh(client, second["refresh_token"])) == "invalid_grant"


def test_absolute_lifetime_zero_means_none(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, auth_server={"refresh_absolute_lifetime": 0}) as app:
        client, state = app.test_client(), app.extensions["oauth2"]
        tokens = issue_tokens(client)
        ttl = state.storage.refresh_tokens.ttl
        assert stored(state, tokens["refresh_token"])["expires_at"] == pytest.approx(
            time.time() + ttl, abs=5
        )


# -- tombstones -----------------------------------------------------------------------
def test_a_rotated_tombstone_lives_no_longer_than_its_token_would_have(short_app):
    client, state = short_app.test_client(), short_app.extensions["oauth2"]
    first = issue_tokens(client)
    expires_at = stored(state, first["refresh_token"])["expires_at"]
    refresh(client, first["refresh_token"])
    tombstone = state.storage.refresh_tokens.get(ROTATED + token_digest(first["refresh_token"]))
    assert tombstone is not None
    assert tombstone["expires_at"] <= expires_at + 1


def test_a_used_code_tombstone_lives_as_long_as_what_it_bought(short_app):
    client, state = short_app.test_client(), short_app.extensions["oauth2"]
    code = get_code(client)
    tokens = exchange(client, code).get_json()
    tombstone = state.storage.codes.get(USED_CODE + token_digest(code))
    access = state.storage.tokens.get(token_digest(tokens["access_token"]))
    longest = max(access["expires_at"], stored(state, tokens["refresh_token"])["expires_at"])
    assert tombstone["expires_at"] == pytest.approx(longest, abs=1)


def test_a_family_keeps_a_bounded_number_of_tombstones(client, state):
    tokens = issue_tokens(client)
    presented = []
    for _ in range(ROTATIONS_REMEMBERED + 4):
        presented.append(tokens["refresh_token"])
        tokens = refresh(client, tokens["refresh_token"]).get_json()
    kept = [state.storage.refresh_tokens.get(ROTATED + token_digest(t)) for t in presented]
    assert [k is not None for k in kept] == [False] * 4 + [True] * ROTATIONS_REMEMBERED


# -- all or nothing (the storage exchange) ----------------------------------------------
def test_a_failed_write_leaves_the_code_redeemable(client, state, monkeypatch):
    code = get_code(client)
    monkeypatch.setattr(state.storage.refresh_tokens, "_put", "INSERT INTO nowhere VALUES (1)")
    assert exchange(client, code).status_code == 503
    monkeypatch.undo()
    assert state.storage.tokens.list_by_client("test") == []
    response = exchange(client, code)
    assert response.status_code == 200, response.get_json()
    assert profile_status(client, response.get_json()["access_token"]) == 200


def test_a_failed_write_leaves_the_refresh_token_and_its_pair_working(client, state, monkeypatch):
    tokens = issue_tokens(client)
    monkeypatch.setattr(state.storage.refresh_tokens, "_put", "INSERT INTO nowhere VALUES (1)")
    assert refresh(client, tokens["refresh_token"]).status_code == 503
    monkeypatch.undo()
    assert profile_status(client, tokens["access_token"]) == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200
