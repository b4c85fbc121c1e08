"""Each pytest-xdist worker of ``make test`` flushes Redis databases of its own."""

from __future__ import annotations

import pytest

from tests import backends


@pytest.mark.parametrize(("worker", "dbs"), [("gw0", (15, 14, 11)), ("gw1", (10, 9, 6))])
def test_each_worker_has_databases_of_its_own(monkeypatch, worker, dbs):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert tuple(backends.worker_db(db) for db in (15, 14, 11)) == dbs
    assert backends.redis_url() == f"redis://127.0.0.1:6379/{dbs[0]}"


def test_outside_xdist_the_databases_are_as_given(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/7")
    assert backends.worker_db(14) == 14
    assert backends.redis_url() == "redis://127.0.0.1:6379/7"


def test_a_worker_beyond_the_databases_is_told_so(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    with pytest.raises(RuntimeError, match="3 at most"):
        backends.worker_db(14)
