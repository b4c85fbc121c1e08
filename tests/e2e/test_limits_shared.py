"""Limits held in Redis are shared by every worker: parallel requests, one budget."""

from __future__ import annotations

import re

import pytest
import redis
import requests

from tests.backends import redis_db_url, require_service, worker_db
from tests.conftest import race

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

FREE = 5
DB = worker_db(11)


def test_the_sign_in_lockout_is_reserved_across_two_workers(start_server):
    url = redis_db_url(DB)
    require_service("redis", url)
    with redis.Redis.from_url(url) as store:
        store.flushdb()
    server = start_server(
        workers=2,
        # Each attempt is reserved with one atomic INCR before the site is asked, so
        # parallel wrong passwords on both workers share one count.
        config={"limits": {"storage": url, "lockout_after": FREE, "lockout_base": 60}},
    )
    assert len(server.workers()) == 2

    def hammer(go) -> list[int]:
        statuses = []
        with requests.Session() as session:
            page = session.get(f"{server.url}/login", timeout=10).text
            csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
            assert csrf is not None
            go()
            for _ in range(5):
                answer = session.post(
                    f"{server.url}/login",
                    data={"username": "victim", "password": "wrong", "csrf_token": csrf[1]},
                    timeout=10,
                    allow_redirects=False,
                )
                statuses.append(answer.status_code)
        return statuses

    statuses = [status for answers in race(8, hammer) for status in answers]
    # 40 attempts spread over both workers: the free ones and one more reach the site.
    assert len(statuses) == 40
    assert statuses.count(401) == FREE + 1
    assert statuses.count(429) == 40 - FREE - 1
    store = redis.Redis.from_url(url)
    assert any(b"oauth2-limits" in key for key in store.keys("*"))  # the counts live in Redis
    store.flushdb()
    store.close()
