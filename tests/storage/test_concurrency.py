"""Concurrent callers: single-use takes, parallel writers, racing migrations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.storage.base import Table
from app.storage.postgres import PostgresBackend
from app.storage.sql import MIGRATIONS
from tests.backends import database_url, postgres_schema, with_search_path


def at_once(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``count`` threads released together; return the results."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_take_is_atomic(table: Table) -> None:
    table.put("code", {"user_id": "alice"})
    results = at_once(20, lambda _: table.take("code"))
    assert sum(r is not None for r in results) == 1


def test_parallel_puts_are_all_indexed(table: Table) -> None:
    at_once(20, lambda i: table.put(f"k{i}", {"user_id": "alice", "grant_id": "g"}))
    assert len(table.list_by_user("alice")) == 20
    assert table.revoke_by_grant("g") == 20


def test_take_and_revoke_racing_leave_nothing(table: Table) -> None:
    for i in range(10):
        table.put(f"k{i}", {"user_id": "alice", "grant_id": "g"})
    results = at_once(11, lambda i: table.revoke_by_grant("g") if i == 10 else table.take(f"k{i}"))
    taken = sum(r is not None for r in results[:10])
    assert taken + results[10] == 10
    assert table.list_by_user("alice") == []


@pytest.mark.postgres
def test_racing_migrations_apply_once() -> None:
    with postgres_schema(database_url()) as schema:
        url = with_search_path(database_url(), schema)
        backends = [PostgresBackend(url, {"max_size": 2}) for _ in range(3)]
        try:
            applied = at_once(3, lambda i: backends[i].migrate())
            # Each migration is applied by exactly one process; the others find it applied.
            steps = [step for steps in applied for step in steps]
            assert sorted(steps) == sorted(f"{v}: {d}" for v, d, _ in MIGRATIONS)
            backends[0].table("codes", 60).put("k", {"user_id": "alice"})
            assert backends[1].table("codes", 60).get("k") is not None
        finally:
            for backend in backends:
                backend.close()


def test_parallel_increments_are_never_lost(table: Table) -> None:
    results = at_once(20, lambda _: table.incr("failures", ttl=60))
    assert sorted(results) == list(range(1, 21))
    assert table.get("failures")["count"] == 20
