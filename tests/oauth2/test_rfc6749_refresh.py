"""RFC 6749 §6, refreshing an access token, with rotation and reuse detection (RFC 9700)."""

from __future__ import annotations

import pytest

from tests.conftest import basic, bearer, race, table
from tests.oauth2.conftest import (
    batches_sent,
    entries_of,
    error_of,
    issue_tokens,
    lose_the_race,
    profile_status,
    refresh,
    unchanged,
)


def test_refresh_rotates_both_tokens(client):
    old = issue_tokens(client)
    response = refresh(client, old["refresh_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    new = response.get_json()
    assert set(new) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert new["token_type"] == "Bearer"
    assert new["scope"] == "read-only"
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    assert profile_status(client, new["access_token"]) == 200
    assert profile_status(client, old["access_token"]) == 401
    assert refresh(client, new["refresh_token"]).status_code == 200


def test_old_refresh_token_is_refused_after_rotation(client):
    old = issue_tokens(client)
    refresh(client, old["refresh_token"])
    again = refresh(client, old["refresh_token"])
    assert again.status_code == 400
    assert error_of(again) == "invalid_grant"


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(client, state):
    first = issue_tokens(client)
    second = refresh(client, first["refresh_token"]).get_json()
    third = refresh(client, second["refresh_token"]).get_json()
    assert refresh(client, first["refresh_token"]).status_code == 400
    assert profile_status(client, third["access_token"]) == 401
    assert error_of(refresh(client, third["refresh_token"])) == "invalid_grant"
    assert state.storage.tokens.list_by_client("test") == []
    assert state.storage.refresh_tokens.list_by_client("test") == []


def test_reuse_leaves_other_grants_of_the_same_user_alone(client):
    other = issue_tokens(client)
    first = issue_tokens(client)
    refresh(client, first["refresh_token"])
    refresh(client, first["refresh_token"])
    assert profile_status(client, other["access_token"]) == 200
    assert refresh(client, other["refresh_token"]).status_code == 200


def test_refresh_may_narrow_the_scope(client):
    tokens = issue_tokens(client, scope="read-only read-write")
    response = refresh(client, tokens["refresh_token"], scope="read-only")
    assert response.status_code == 200
    narrowed = response.get_json()
    assert narrowed["scope"] == "read-only"
    avatar = client.post("/api/update_avatar", headers=bearer(narrowed["access_token"]))
    assert avatar.status_code == 403


BAD_REFRESHES = [
    # (id, client_id, secret, extra fields (None removes refresh_token), status, error)
    ("wider-scope", "test", "hunter2", {"scope": "read-only read-write"}, 400, "invalid_scope"),
    ("unknown-scope", "test", "hunter2", {"scope": "bogus"}, 400, "invalid_scope"),
    ("other-client", "sp-demo", "hunter2", {}, 400, "invalid_grant"),
    ("wrong-secret", "test", "wrong", {}, 401, "invalid_client"),
    ("unknown-client", "nope", "hunter2", {}, 401, "invalid_client"),
    ("unknown-token", "test", "hunter2", {"refresh_token": "nope"}, 400, "invalid_grant"),
    ("missing-token", "test", "hunter2", {"refresh_token": None}, 400, "invalid_request"),
]


@pytest.mark.parametrize(("client_id", "secret", "extra", "status", "error"), table(BAD_REFRESHES))
def test_bad_refresh_changes_nothing(client, state, client_id, secret, extra, status, error):
    tokens = issue_tokens(client)
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **extra}
    data = {k: v for k, v in data.items() if v is not None}
    with unchanged(state):
        response = client.post("/token", data=data, headers=basic(client_id, secret))
    assert response.status_code == status
    assert error_of(response) == error
    assert profile_status(client, tokens["access_token"]) == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_expired_refresh_token_is_invalid_grant(client, state, later):
    tokens = issue_tokens(client)
    later(state.storage.refresh_tokens.ttl + 1)
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


def test_access_token_is_not_a_refresh_token(client, state):
    tokens = issue_tokens(client)
    with unchanged(state):
        response = refresh(client, tokens["access_token"])
    assert error_of(response) == "invalid_grant"


def test_a_refresh_commits_once_its_audit_entry_in_the_exchange(client, state, monkeypatch):
    tokens = issue_tokens(client)
    user_id = state.grants.find_refresh(tokens["refresh_token"]).user_id
    sent = batches_sent(state, monkeypatch)
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert sent == []  # nothing written after the exchange: the entry was in it
    [entry] = entries_of(state, "token_refreshed")
    assert set(entry) == {"event", "at", "client_id", "user_id", "ip", "key", "expires_at"}
    assert (entry["client_id"], entry["user_id"], entry["ip"]) == ("test", user_id, "127.0.0.1")


def test_a_refresh_that_lost_the_race_to_its_exchange_records_nothing(client, state, monkeypatch):
    tokens = issue_tokens(client)
    lose_the_race(state, monkeypatch)
    assert error_of(refresh(client, tokens["refresh_token"])) == "invalid_grant"
    assert entries_of(state, "token_refreshed") == []


def test_concurrent_refreshes_of_one_token_yield_exactly_one_success(app, client, state):
    tokens = issue_tokens(client)

    def attempt(go) -> tuple[int, str | None]:
        own = app.test_client()
        go()
        response = refresh(own, tokens["refresh_token"])
        return response.status_code, error_of(response)

    results = race(20, attempt)
    assert len(results) == 20
    assert sorted(results, key=str) == sorted(
        [(200, None)] + [(400, "invalid_grant")] * 19, key=str
    )
    assert len(entries_of(state, "token_refreshed")) == 1
