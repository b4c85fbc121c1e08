"""Audit rows expire after ``audit.retention_days`` on every backend (the table's TTL)."""

from __future__ import annotations

import time

import pytest

from app.storage.base import Backend


def test_appended_audit_rows_carry_the_tables_lifetime(backend: Backend) -> None:
    audit = backend.table("audit", 90 * 86400)
    key = audit.append({"event": "login"})
    assert audit.get(key)["expires_at"] == pytest.approx(time.time() + 90 * 86400, abs=5)


def test_expired_audit_rows_are_gone_from_tail_and_purged(backend: Backend) -> None:
    audit = backend.table("audit", 1)
    audit.append({"event": "old"})
    time.sleep(1.1)
    audit.append({"event": "new"})  # appended after the first expired
    assert [r["event"] for r in audit.recent()] == ["new"]
    audit.purge()
    assert [r["event"] for r in audit.recent()] == ["new"]


def test_retention_zero_keeps_audit_rows(backend: Backend) -> None:
    audit = backend.table("audit", None)
    assert audit.get(audit.append({"event": "kept"}))["expires_at"] is None
