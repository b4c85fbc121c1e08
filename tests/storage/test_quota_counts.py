"""Quota reservations on every backend's ``incr``: exactly N of many parallel callers."""

from __future__ import annotations

import uuid

import pytest
from limits.storage import storage_from_string

from app.limits.delays import TableCounters
from app.quotas import Quota
from app.quotas.counting import Budget, Quotas
from app.storage.base import Table
from tests.backends import redis_url, require_service
from tests.storage.test_concurrency import at_once

NOON = 1_715_947_200.0  # 2024-05-17 12:00 UTC


def quotas(table: Table) -> Quotas:
    return Quotas(TableCounters(table), clock=lambda: NOON)


def test_twenty_parallel_callers_of_a_quota_of_seven_get_seven(table: Table) -> None:
    counts = quotas(table)
    budget = Budget("quota", "client/partner", Quota(7, "day"))
    results = at_once(20, lambda _: counts.reserve([budget]))
    allowed = [spent for spent, refused in results if refused is None]
    assert len(allowed) == 7
    assert sorted(spent[0].used for spent in allowed) == list(range(1, 8))
    assert counts.usage(budget).used == 7  # the refused ones were taken back


def test_a_refusal_takes_back_what_the_call_reserved_before(table: Table) -> None:
    counts = quotas(table)
    wide = Budget("quota", "client/partner", Quota(10, "day"))
    narrow = Budget("quota:profile", "api/partner/profile", Quota(1, "hour"))
    spent, refused = counts.reserve([wide, narrow])
    assert refused is None and [s.used for s in spent] == [1, 1]
    spent, refused = counts.reserve([wide, narrow])
    assert spent == [] and refused is not None and refused.budget == narrow
    assert counts.usage(wide).used == 1
    assert counts.usage(wide).reset == NOON + 12 * 3600


@pytest.mark.parametrize("calls", [1, 3])
def test_a_refund_frees_the_call_again(table: Table, calls: int) -> None:
    counts = quotas(table)
    budget = Budget("quota", "client/partner", Quota(calls, "minute"))
    spent = [counts.reserve([budget])[0] for _ in range(calls)]
    assert counts.reserve([budget])[1] is not None
    counts.refund(spent[0])
    assert counts.reserve([budget])[1] is None


@pytest.mark.redis
def test_on_the_limiters_redis_store_too() -> None:
    """With Redis configured the counts live in the limiter's store (``limits``'s INCRBY)."""
    require_service("redis", redis_url())
    store = storage_from_string(redis_url())
    counts = Quotas(store, clock=lambda: NOON)
    budget = Budget("quota", f"client/{uuid.uuid4()}", Quota(7, "day"))
    try:
        results = at_once(20, lambda _: counts.reserve([budget]))
        assert sum(refused is None for _, refused in results) == 7
        assert counts.usage(budget).used == 7
    finally:
        store.clear(budget.key(NOON))
