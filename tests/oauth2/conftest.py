"""Fixtures for the OAuth 2.0 tests: a clients file with extra clients, flows, snapshots."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.storage import sql
from tests.conftest import (
    REDIRECT,
    base_config,
    basic,
    bearer,
    close_app,
    get_code,
    location_params,
)
from tests.factories import make_client

ROOT = Path(__file__).resolve().parents[2]

#: Clients beside the demo ones: public (PKCE), without implicit, limited to ``read-only``.
EXTRA_CLIENTS: list[dict[str, Any]] = [
    make_client("spa", secret=None, name="Single-page app"),
    make_client("code-only", name="Code only"),
    make_client(
        "reader",
        name="Read-only partner",
        grant_types=["authorization_code", "implicit", "refresh_token", "client_credentials"],
        scopes=["read-only"],
    ),
]

#: The issued state: every key (tombstones included) of these tables and the open
#: transactions; ``audit`` is left out because refusals are audited on purpose.
SNAPSHOT_QUERIES = {
    "codes": "SELECT key FROM oauth2_codes",
    "tokens": "SELECT key FROM oauth2_tokens",
    "refresh_tokens": "SELECT key FROM oauth2_refresh_tokens",
    "users": "SELECT key FROM oauth2_users",
    "transactions": "SELECT key FROM oauth2_session WHERE key LIKE 'txn:%'",
}


def make_app(tmp_path, dummy_site, clients: list[dict[str, Any]] | None = None, **over):
    """Build an app on SQLite in ``tmp_path`` with the demo clients plus ``clients``."""
    demo = json.loads((ROOT / "clients.json.example").read_text(encoding="utf-8"))
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(demo + list(clients or EXTRA_CLIENTS)), encoding="utf-8")
    over.setdefault("client_credentials", {})["file"] = str(path)
    app = create_app(base_config(tmp_path, dummy_site, **over))
    app.config["TESTING"] = True
    return app


@contextlib.contextmanager
def open_app(tmp_path, dummy_site, **over) -> Iterator[Flask]:
    """:func:`make_app`'s app, closed when the block ends."""
    app = make_app(tmp_path, dummy_site, **over)
    try:
        yield app
    finally:
        close_app(app)


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site) as app:
        yield app


@pytest.fixture
def later(monkeypatch) -> Callable[[float], None]:
    """Move the storage clock (what expiry is judged by) forward by some seconds."""

    def advance(seconds: float) -> None:
        monkeypatch.setattr(sql, "time", SimpleNamespace(time=lambda: time.time() + seconds))

    return advance


# -- storage snapshots ------------------------------------------------------------------
def snapshot(state) -> dict[str, frozenset[str]]:
    """Return the keys of every query in :data:`SNAPSHOT_QUERIES`."""
    url = state.storage.specs["tokens"].url
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
        return {
            name: frozenset(row[0] for row in db.execute(query))
            for name, query in SNAPSHOT_QUERIES.items()
        }


@contextlib.contextmanager
def unchanged(state) -> Iterator[None]:
    """Assert that the block issues, consumes and revokes nothing."""
    before = snapshot(state)
    yield
    after = snapshot(state)
    assert after == before, {t: (before[t] ^ after[t]) for t in before if before[t] != after[t]}


def batches_sent(state, monkeypatch) -> list[list[str]]:
    """Record the tables of every batch the storage sends (on SQLite, a commit each)."""
    sent: list[list[str]] = []
    for backend in state.storage.backends.values():

        def send(held, send=backend.send) -> None:
            sent.append([table for table, _, _ in held])
            send(held)

        monkeypatch.setattr(backend, "send", send)
    return sent


def lose_the_race(state, monkeypatch) -> None:
    """Make every exchange find its code or refresh token taken by another request first."""
    exchange = state.storage.exchange

    def lost(take, puts, discards=(), probe=None):
        assert take[0].take(take[1]) is not None  # the other request won
        return exchange(take, puts, discards, probe)

    monkeypatch.setattr(state.storage, "exchange", lost)


def entries_of(state, event: str) -> list[dict[str, Any]]:
    """The audit table's ``event`` records, newest first."""
    return [r for r in state.storage.audit.recent(200) if r["event"] == event]


# -- flows ------------------------------------------------------------------------------
def redeem(client, code: str, client_id="test", **extra):
    """Exchange ``code`` at ``/token``, authenticating ``client_id`` by HTTP Basic."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    return client.post("/token", data=data, headers=basic(client_id))


def issue_tokens(client, client_id="test", **authorize) -> dict[str, Any]:
    """Run the code flow (log in, allow, redeem); return the token response."""
    response = redeem(client, get_code(client, client_id=client_id, **authorize), client_id)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refresh(client, refresh_token: str, client_id="test", **extra):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
    return client.post("/token", data=data, headers=basic(client_id))


def profile_status(client, access_token: str) -> int:
    return client.get("/api/profile", headers=bearer(access_token)).status_code


def error_of(response) -> str | None:
    """The ``error`` of a JSON error body."""
    return (response.get_json(silent=True) or {}).get("error")


def page_detail(response) -> str:
    """The error detail of an HTML error page (or the start of any other body)."""
    text = response.get_data(as_text=True)
    found = re.search(r"<code>(.*?)</code>", text)
    return found.group(1) if found else text[:200]


def redirect_error(response, fragment=False) -> str | None:
    """The ``error`` of a redirect to the client (query, or fragment for implicit)."""
    assert response.status_code == 302, (response.status_code, page_detail(response))
    assert response.headers["Location"].startswith(REDIRECT)
    return location_params(response, fragment).get("error")
