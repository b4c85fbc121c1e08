"""The whole app on each backend (SQLite, Redis, Postgres) for every table.

A full code flow with refresh and revocation, then the races of issue 3: 20 threads
redeem one code at once, 20 threads rotate one refresh token at once; exactly one wins.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask

from app import create_app
from app.storage import TABLES
from app.storage.postgres import PostgresBackend
from app.storage.redis import RedisBackend
from app.storage.sqlite import SQLiteBackend
from tests.conftest import base_config, basic, bearer, close_app, exchange, get_code

from .conftest import every_table

THREADS = 20
TOKEN_KINDS = ("access_token", "refresh_token")
BACKENDS = ("sqlite", "redis", "postgres")
#: Table names come from ``app.storage.TABLES``, never from input.
COUNT = "SELECT count(*) FROM oauth2_{t}"
EXPECTED = {"sqlite": SQLiteBackend, "redis": RedisBackend, "postgres": PostgresBackend}


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def storage_url(kind: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/oauth2.db"
    return request.getfixturevalue("shared_redis" if kind == "redis" else "pg_url")


@pytest.fixture
def app(tmp_path, dummy_site, storage_url: str) -> Iterator[Flask]:
    app = create_app(base_config(tmp_path, dummy_site, storage=every_table(storage_url)))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def row_counts(kind: str, url: str) -> dict[str, int]:
    """How many records each table holds, read with the driver, not through the app."""
    if kind == "redis":
        with redis.Redis.from_url(url, decode_responses=True) as client:
            keys = list(client.scan_iter(match="oauth2:*", count=1000))
        return {t: sum(1 for k in keys if k.startswith(f"oauth2:{t}:{{")) for t in TABLES}
    if kind == "postgres":
        with psycopg.connect(url) as conn:
            return {t: conn.execute(COUNT.format(t=t)).fetchone()[0] for t in TABLES}  # type: ignore[index]
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
        return {t: db.execute(COUNT.format(t=t)).fetchone()[0] for t in TABLES}


def refresh(client, token: str):
    return client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": token}, headers=basic()
    )


def introspect(client, token: str) -> dict[str, Any]:
    response = client.post("/introspect", data={"token": token}, headers=basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_every_table_is_on_the_backend(app: Flask, kind: str) -> None:
    storage = app.extensions["oauth2"].storage
    assert len(storage.backends) == 1
    for name, table in storage.tables().items():
        assert isinstance(table.backend, EXPECTED[kind]), name


def test_code_flow_refresh_and_revoke(app: Flask, kind: str, storage_url: str) -> None:
    client = app.test_client()
    code = get_code(client, scope="read-only")
    issued = exchange(client, code)
    assert issued.status_code == 200, issued.get_json()
    first = issued.get_json()
    assert client.get("/api/profile", headers=bearer(first["access_token"])).status_code == 200
    about = introspect(client, first["access_token"])
    assert about["active"] is True
    assert about["client_id"] == "test"
    assert about["scope"] == "read-only"

    # Refresh rotates both tokens: the old pair stops working at once.
    rotated = refresh(client, first["refresh_token"])
    assert rotated.status_code == 200, rotated.get_json()
    second = rotated.get_json()
    assert client.get("/api/profile", headers=bearer(second["access_token"])).status_code == 200
    assert client.get("/api/profile", headers=bearer(first["access_token"])).status_code == 401
    assert introspect(client, first["refresh_token"])["active"] is False

    # The review page lists the grant: lists by user work on this backend.
    review = client.get("/review")
    assert review.status_code == 200
    assert 'name="test"' in review.get_data(as_text=True)

    # Revoking the refresh token ends its access token too (RFC 7009 §2.1).
    revoked = client.post("/revoke", data={"token": second["refresh_token"]}, headers=basic())
    assert revoked.status_code == 200
    assert client.get("/api/profile", headers=bearer(second["access_token"])).status_code == 401
    assert introspect(client, second["access_token"])["active"] is False
    assert refresh(client, second["refresh_token"]).status_code == 400

    # Each table this flow writes holds its records in the configured backend.
    counts = row_counts(kind, storage_url)
    for table in ("session", "codes", "refresh_tokens", "users", "audit"):
        assert counts[table] > 0, (table, counts)

    # Client credentials, on the same backend.
    cc = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert cc.status_code == 200
    assert introspect(client, cc.get_json()["access_token"])["active"] is True


def race(app: Flask, request_once) -> tuple[Counter[tuple[int, str | None]], list[dict]]:
    """Run ``request_once(client)`` in :data:`THREADS` threads released together."""
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS

    def worker(index: int) -> None:
        client = app.test_client()
        try:
            barrier.wait(timeout=10)
            response = request_once(client)
            results[index] = (response.status_code, response.get_json(silent=True) or {})
        except Exception as exc:  # reported below, with the thread's index
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a racing request did not finish in 30 s"
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures
    tally = Counter((status, body.get("error")) for status, body in results)
    winners = [body for status, body in results if status == 200]
    return tally, winners


def test_twenty_threads_redeem_one_code(app: Flask) -> None:
    code = get_code(app.test_client())
    tally, winners = race(app, lambda client: exchange(client, code))
    assert tally == {(200, None): 1, (400, "invalid_grant"): THREADS - 1}, tally
    # A loser that came after the winner replayed the code and may have revoked the
    # grant (RFC 6749 §4.1.2): the winner's pair works, or all of it is dead.
    client = app.test_client()
    pair = [introspect(client, winners[0][name])["active"] for name in TOKEN_KINDS]
    assert pair in ([True, True], [False, False]), pair


def test_twenty_threads_rotate_one_refresh_token(app: Flask) -> None:
    client = app.test_client()
    tokens = exchange(client, get_code(client)).get_json()
    tally, winners = race(app, lambda c: refresh(c, tokens["refresh_token"]))
    assert tally == {(200, None): 1, (400, "invalid_grant"): THREADS - 1}, tally
    assert winners[0]["refresh_token"] != tokens["refresh_token"]
    # Within the grace period the losers' repeats revoke nothing: the winner's pair works,
    # and the old refresh token can never be used again.
    assert refresh(client, tokens["refresh_token"]).status_code == 400
    assert introspect(client, winners[0]["access_token"])["active"] is True
    assert refresh(client, winners[0]["refresh_token"]).status_code == 200
