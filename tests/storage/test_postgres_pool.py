"""The Postgres pool checks a connection on checkout only when it sat idle a while.

A connection back from a statement less than ``FRESH_SECONDS`` ago goes out unchecked
(no empty query first: one round trip per statement, not two); one found dead by its
statement makes the pool check every idle connection before the statement runs again.
"""

from __future__ import annotations

import math
import secrets

import psycopg
import pytest

from app.storage import postgres as postgres_module
from app.storage.postgres import PostgresBackend
from tests.backends import database_url, with_search_path


def backend_named(pg_schema: str, **options: int) -> tuple[PostgresBackend, str]:
    name = f"oauth2-test-{secrets.token_hex(4)}"
    url = with_search_path(database_url(), pg_schema) + f"&application_name={name}"
    return PostgresBackend(url, dict(options)), name


def terminate(name: str) -> int:
    with psycopg.connect(database_url(), autocommit=True) as admin:
        found = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (name,),
        ).fetchone()
    return found[0] if found else 0


def test_a_connection_in_use_is_not_checked_on_every_checkout(
    postgres_backend: PostgresBackend, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = backend_named(pg_schema, min_size=1, max_size=1)
    try:
        table = backend.table("tokens", None)
        table.put("k", {"user_id": "u"})
        sent: list[str] = []
        execute = psycopg.Cursor.execute

        def counting(cursor, query, params=None, **kwargs):
            sent.append(query)
            return execute(cursor, query, params, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", counting)
        for _ in range(5):
            assert table.get("k") is not None
        assert "" not in sent  # no check: the connection was used a moment ago
        assert len(sent) == 5
        monkeypatch.setattr(postgres_module, "FRESH_SECONDS", 0.0)  # every connection stale
        assert table.get("k") is not None
        assert sent[5:] == ["", sent[0]]  # checked, then the statement
    finally:
        backend.close()


def test_every_idle_connection_dead_is_replaced_before_the_statement_runs_again(
    postgres_backend: PostgresBackend, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server kills every pooled connection: one failed statement, not many."""
    monkeypatch.setattr(postgres_module, "FRESH_SECONDS", math.inf)  # none checked on checkout
    backend, name = backend_named(pg_schema, min_size=3, max_size=3)
    try:
        table = backend.table("tokens", None)
        table.put("k", {"user_id": "u"})
        backend._get_pool().wait()
        assert terminate(name) == 3
        assert table.get("k") is not None
        assert table.take("k") is not None
    finally:
        backend.close()
