"""What the limits cost a successful request in storage round trips: nothing per request.

Budgets are counted in batches per process, and a claimed client's failure count is
read at most once per ``SYNC_EVERY`` per process (``app/limits``); a success that found
it clean clears nothing. With that period made longer than the test, a burst of
successful requests must send exactly the round trips of its own work (the token's
lookup or write): a store trip per request for a budget or a failure counter makes
these tests fail. On SQL storage the failure counters live in the session table:
no counter call at all.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.limits import counters, delays

from .backends import redis_round_trips, redis_url, require_service
from .conftest import base_config, basic, bearer, close_app
from .factories import REDIRECT, SECRET, make_client, make_code, make_token

BURST = 20
#: The round trips of each request's own work, on Redis: one token lookup or one
#: pipelined write (the token and its audit record).
OWN_WORK = {"introspect": 1, "client_credentials": 1, "gateway": 1}


@pytest.fixture(autouse=True)
def sync_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    """No periodic sync of budgets or failure counts within a test."""
    monkeypatch.setattr(counters, "SYNC_EVERY", 3600.0)
    monkeypatch.setattr(delays, "SYNC_EVERY", 3600.0)


@pytest.fixture(params=["redis", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require_service("redis", redis_url())
    return request.param


@pytest.fixture
def partner(tmp_path, dummy_site, backend) -> Iterator[tuple[Flask, str]]:
    """An app with default limits, and a client id no other test (or run) shares."""
    client_id = f"rt-{secrets.token_hex(6)}"
    entry = make_client(client_id, grant_types=["client_credentials"], scope="read-only")
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([entry]))
    config = base_config(tmp_path, dummy_site, client_credentials={"file": str(clients)})
    if backend == "redis":
        config["storage"] = {"default": redis_url()}
        # Each request's own work is one token read: without the token cache (and its
        # subscriber's heartbeats on the same server), every command here is counted.
        config["token_cache"] = {"enabled": False}
    app = create_app(config)
    yield app, client_id
    close_app(app)


def caller(app: Flask) -> FlaskClient:
    """A test client from an address of its own (its per-IP counters are new)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"2001:db8:{secrets.randbelow(65536):x}::1"
    return client


def scenarios(app: Flask, client_id: str) -> dict[str, Callable[[FlaskClient], Any]]:
    state = app.extensions["oauth2"]
    auth = basic(client_id, SECRET)
    access = make_token(state, client_id=client_id)["access_token"]
    return {
        "introspect": lambda c: c.post("/introspect", data={"token": access}, headers=auth),
        "client_credentials": lambda c: c.post(
            "/token", data={"grant_type": "client_credentials"}, headers=auth
        ),
        "gateway": lambda c: c.get("/api/profile", headers=bearer(access)),
    }


def counter_calls(monkeypatch: pytest.MonkeyPatch, app: Flask) -> list[int]:
    """Count calls on the failure counters kept in storage (SQL: the session table)."""
    store = app.extensions["oauth2"].limits.client_id.store
    calls = [0]
    for verb in ("incr", "get", "clear", "get_expiry"):
        method = getattr(store, verb)

        def counting(*args: Any, method: Callable[..., Any] = method) -> Any:
            calls[0] += 1
            return method(*args)

        monkeypatch.setattr(store, verb, counting)
    return calls


@pytest.mark.parametrize("scenario", list(OWN_WORK))
def test_successful_requests_cost_the_limits_no_round_trip(partner, backend, scenario, monkeypatch):
    app, client_id = partner
    send = scenarios(app, client_id)[scenario]
    client = caller(app)
    for _ in range(2):  # the first sync of each counter, and the warm-up of connections
        assert send(client).status_code == 200
    if backend == "redis":
        sent = redis_round_trips(monkeypatch)
        expected = OWN_WORK[scenario] * BURST
    else:
        sent, expected = counter_calls(monkeypatch, app), 0
    answers = [send(client) for _ in range(BURST)]
    assert [answer.status_code for answer in answers] == [200] * BURST
    assert all("RateLimit" in answer.headers for answer in answers)  # under a budget
    assert sent[0] == expected


def test_a_success_clears_only_the_failures_its_check_saw(partner, monkeypatch):
    """Every check reads the store here; a success clears the count only when it saw one."""
    app, client_id = partner
    monkeypatch.setattr(delays, "SYNC_EVERY", 0.0)
    clears: list[tuple[str, ...]] = []
    clear = delays._clear
    monkeypatch.setattr(
        delays, "_clear", lambda store, keys: (clears.append(keys), clear(store, keys))
    )
    send = scenarios(app, client_id)["client_credentials"]
    client = caller(app)
    assert [send(client).status_code for _ in range(3)] == [200] * 3
    assert clears == []  # nothing counted, nothing to clear
    wrong = client.post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic(client_id, "wrong")
    )
    assert wrong.status_code == 401
    assert app.extensions["oauth2"].limits.client_id.check(client_id).clean is False
    assert send(client).status_code == 200
    assert len(clears) == 1  # the failure is forgiven ...
    assert app.extensions["oauth2"].limits.client_id.check(client_id).clean is True
    assert send(client).status_code == 200
    assert len(clears) == 1  # ... once


@pytest.mark.parametrize("backend", ["redis"])
@pytest.mark.parametrize("grant", ["refresh_token", "authorization_code"])
def test_a_grant_reads_its_credential_and_user_in_one_round_trip(
    tmp_path, dummy_site, backend, grant, monkeypatch
):
    """A refresh or a code redemption on one Redis: the credential with its user's record
    (one script), then the exchange: two round trips, the limits none."""
    client_id = f"rt-{secrets.token_hex(6)}"
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([make_client(client_id)]))
    config = base_config(tmp_path, dummy_site, client_credentials={"file": str(clients)})
    config["storage"] = {"default": redis_url()}
    config["token_cache"] = {"enabled": False}
    app = create_app(config)
    try:
        state = app.extensions["oauth2"]
        client = caller(app)
        auth = basic(client_id, SECRET)

        def send() -> Any:
            if grant == "refresh_token":
                refresh = make_token(state, client_id)["refresh_token"]
                data = {"grant_type": grant, "refresh_token": refresh}
            else:
                data = {"grant_type": grant, "code": make_code(state, client_id)}
                data["redirect_uri"] = REDIRECT
            return data

        for _ in range(2):  # the counters' first sync, the connections' warm-up
            assert client.post("/token", data=send(), headers=auth).status_code == 200
        bodies = [send() for _ in range(BURST)]
        sent = redis_round_trips(monkeypatch)
        answers = [client.post("/token", data=body, headers=auth) for body in bodies]
        assert [answer.status_code for answer in answers] == [200] * BURST
        assert sent[0] == 2 * BURST
    finally:
        close_app(app)
