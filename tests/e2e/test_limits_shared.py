"""Rate limits held in Redis are shared by every worker: parallel requests, one budget."""

from __future__ import annotations

import threading

import pytest
import redis
import requests

from tests.backends import redis_url, require_service

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LIMIT = 10
DB = 11


def test_token_limit_is_shared_across_two_workers(start_server):
    base = redis_url().rsplit("/", 1)[0]
    url = f"{base}/{DB}"
    require_service("redis", url)
    with redis.Redis.from_url(url) as store:
        store.flushdb()
    server = start_server(
        workers=2,
        # The per-IP limit counts each request as it arrives (one atomic INCR): exact
        # under concurrency. (The per-client one counts after the answer, so it can
        # overshoot by the number of requests in flight.)
        config={"limits": {"storage": url, "token_ip": f"{LIMIT}/hour"}},
    )
    assert len(server.workers()) == 2
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with requests.Session() as session:
            barrier.wait(10)
            for _ in range(5):
                answer = session.post(
                    f"{server.url}/token",
                    data={"grant_type": "client_credentials"},
                    auth=("test", "hunter2"),
                    timeout=10,
                )
                with lock:
                    statuses.append(answer.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # 40 requests spread over both workers: exactly the shared budget succeeds.
    assert len(statuses) == 40
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 40 - LIMIT
    store = redis.Redis.from_url(url)
    assert any(b"oauth2-limits" in key for key in store.keys("*"))  # the counters live in Redis
    store.flushdb()
    store.close()
