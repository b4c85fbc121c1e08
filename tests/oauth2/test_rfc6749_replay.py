"""Who may trigger a revocation (RFC 6749 §4.1.2, RFC 9700 §4.14.2), and the refresh grace."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.oauth2 import grant_store
from tests.conftest import CHALLENGE, REDIRECT, VERIFIER, basic, exchange, get_code, race
from tests.oauth2.conftest import (
    error_of,
    issue_tokens,
    open_app,
    profile_status,
    refresh,
    unchanged,
)

FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def unlimited(tmp_path, dummy_site):
    """An app without rate limits, so that many examples may sign in and redeem."""
    with open_app(tmp_path, dummy_site, limits={"enabled": False}) as app:
        yield app


def events(state) -> list[str]:
    return [record["event"] for record in state.storage.audit.recent(100)]


def public_exchange(client, code: str, **extra):
    data = {"grant_type": "authorization_code", "code": code, "client_id": "spa"}
    data.update(redirect_uri=REDIRECT, **extra)
    return client.post("/token", data=data)


def public_tokens(client) -> tuple[str, dict]:
    """A code of the public client ``spa`` (with PKCE) and the tokens it bought."""
    code = get_code(client, client_id="spa", code_challenge=CHALLENGE, code_challenge_method="S256")
    response = public_exchange(client, code, code_verifier=VERIFIER)
    assert response.status_code == 200, response.get_json()
    return code, response.get_json()


def alive(client, tokens: dict, client_id: str = "test") -> bool:
    """Whether the pair still works (the refresh is tried last: it rotates)."""
    if profile_status(client, tokens["access_token"]) != 200:
        return False
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    if client_id == "spa":
        return client.post("/token", data={**data, "client_id": "spa"}).status_code == 200
    return client.post("/token", data=data, headers=basic(client_id)).status_code == 200


# -- codes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "verifier", [None, "w" * 43, VERIFIER + "x"], ids=["no-verifier", "wrong", "longer"]
)
def test_replay_without_the_right_verifier_revokes_nothing(client, state, verifier):
    code, tokens = public_tokens(client)
    extra = {"code_verifier": verifier} if verifier else {}
    with unchanged(state):
        replay = public_exchange(client, code, **extra)
    assert replay.status_code == 400
    assert error_of(replay) == "invalid_grant"
    assert events(state)[0] == "code_replay_refused"
    assert alive(client, tokens, "spa")


def test_replay_by_the_owner_with_its_verifier_revokes_the_grant(client, state):
    code, tokens = public_tokens(client)
    replay = public_exchange(client, code, code_verifier=VERIFIER)
    assert error_of(replay) == "invalid_grant"
    assert events(state)[0] == "code_replay"
    assert profile_status(client, tokens["access_token"]) == 401


def replayed_by(client, state, headers: dict[str, str]):
    """Redeem a new code as ``test``, then again with ``headers``, which changes nothing.
    Return the replay's response and the first redemption's tokens."""
    code = get_code(client)
    tokens = exchange(client, code).get_json()
    data = {"grant_type": "authorization_code", "code": code}
    with unchanged(state):
        replay = client.post("/token", data=data, headers=headers)
    return replay, tokens


def test_replay_by_another_authenticated_client_revokes_nothing(client, state):
    replay, tokens = replayed_by(client, state, basic("sp-demo"))
    assert error_of(replay) == "invalid_grant"
    assert events(state)[0] == "code_replay_refused"
    assert alive(client, tokens)


def test_replay_with_a_wrong_secret_revokes_nothing(client, state):
    replay, tokens = replayed_by(client, state, basic("test", "wrong"))
    assert error_of(replay) == "invalid_client"
    assert alive(client, tokens)


@FUZZ
@given(verifier=st.text(max_size=200))
def test_any_verifier_on_a_replay_is_answered_and_revokes_only_when_right(unlimited, verifier):
    client, state = unlimited.test_client(), unlimited.extensions["oauth2"]
    code, tokens = public_tokens(client)
    replay = public_exchange(client, code, code_verifier=verifier)
    assert replay.status_code == 400
    assert (profile_status(client, tokens["access_token"]) == 200) == (verifier != VERIFIER)
    assert (events(state)[0] == "code_replay") == (verifier == VERIFIER)


# -- refresh tokens -----------------------------------------------------------------------
@pytest.fixture
def clock(monkeypatch):
    """Move the grant store's clock (rotation times, grace) forward by some seconds."""

    def advance(seconds: float) -> None:
        now = time.time() + seconds
        monkeypatch.setattr(grant_store, "time", SimpleNamespace(time=lambda: now))

    return advance


def test_another_clients_rotated_token_revokes_nothing(client, state, clock):
    first = issue_tokens(client)
    second = refresh(client, first["refresh_token"]).get_json()
    clock(60)
    with unchanged(state):
        reuse = refresh(client, first["refresh_token"], client_id="sp-demo")
    assert error_of(reuse) == "invalid_grant"
    assert events(state)[0] == "refresh_reuse_refused"
    assert alive(client, second)


def test_reuse_after_the_grace_period_revokes_the_family(client, state, clock):
    first = issue_tokens(client)
    second = refresh(client, first["refresh_token"]).get_json()
    clock(state.settings.auth.refresh_grace_period)
    assert error_of(refresh(client, first["refresh_token"])) == "invalid_grant"
    assert events(state)[0] == "refresh_reuse"
    assert profile_status(client, second["access_token"]) == 401
    assert error_of(refresh(client, second["refresh_token"])) == "invalid_grant"


def test_reuse_within_the_grace_period_is_refused_and_keeps_the_new_pair(client, state, clock):
    first = issue_tokens(client)
    second = refresh(client, first["refresh_token"]).get_json()
    clock(state.settings.auth.refresh_grace_period - 1)
    with unchanged(state):
        again = refresh(client, first["refresh_token"])
    assert again.status_code == 400 and error_of(again) == "invalid_grant"
    assert events(state)[0] == "refresh_reuse_in_grace"
    assert alive(client, second)


def test_grace_covers_only_the_newest_rotation(client, state):
    first = issue_tokens(client)
    second = refresh(client, first["refresh_token"]).get_json()
    third = refresh(client, second["refresh_token"]).get_json()
    assert error_of(refresh(client, first["refresh_token"])) == "invalid_grant"
    assert events(state)[0] == "refresh_reuse"
    assert profile_status(client, third["access_token"]) == 401


@pytest.fixture
def strict_client(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, auth_server={"refresh_grace_period": 0}) as app:
        yield app.test_client()


def test_a_grace_period_of_zero_is_strict(strict_client):
    first = issue_tokens(strict_client)
    second = refresh(strict_client, first["refresh_token"]).get_json()
    assert error_of(refresh(strict_client, first["refresh_token"])) == "invalid_grant"
    assert profile_status(strict_client, second["access_token"]) == 401


def test_concurrent_refreshes_leave_the_winners_pair_working(app, client):
    tokens = issue_tokens(client)

    def attempt(go):
        own = app.test_client()
        go()
        return refresh(own, tokens["refresh_token"])

    won = [response.get_json() for response in race(12, attempt) if response.status_code == 200]
    assert len(won) == 1
    assert alive(client, won[0])


@FUZZ
@given(token=st.text(max_size=300), client_id=st.sampled_from(["test", "sp-demo", "spa"]))
def test_any_refresh_token_is_answered_without_a_5xx_or_a_change(unlimited, token, client_id):
    client, state = unlimited.test_client(), unlimited.extensions["oauth2"]
    data = {"grant_type": "refresh_token", "refresh_token": token}
    headers = basic(client_id) if client_id != "spa" else {}
    data.update({"client_id": "spa"} if client_id == "spa" else {})
    with unchanged(state):
        response = client.post("/token", data=data, headers=headers)
    assert response.status_code in (400, 401)
