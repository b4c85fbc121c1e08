"""Micro-benchmarks of hot-path pieces, in one process: ``python -m bench.micro``.

Each line is the cost of one operation (wall and CPU microseconds, single thread,
loopback), to price what the profiles point at: the upstream call of the gateway
(requests vs urllib3 vs http.client vs the adapter's pycurl), the rate limiter's
storage hit (moving vs fixed window), a Redis round trip vs a pipelined one, an audit
record, JSON and hashing. Needs the Redis of the bench (``BENCH_REDIS_URL``, database flushed) and
starts the dummy site itself.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from app.adapters.http import SiteClient
from bench import loader, procs, run


def cost(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):
        fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w0) / n * 1e6, (time.process_time() - c0) / n * 1e6


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-micro-"))
    site, port = run.start_site(run_dir)
    rows: list[tuple[str, float, float]] = []
    try:
        import requests
        import urllib3

        _, _, site_token = loader.site_user("bench")
        url = f"http://127.0.0.1:{port}/info"
        session = requests.Session()
        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=4)
        curl = SiteClient(5)
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def via_http_client() -> None:
            conn.request("GET", f"/info?token={site_token}")
            conn.getresponse().read()

        checks = [
            ("upstream GET, requests.Session", lambda: session.get(
                url, params={"token": site_token}, timeout=5, allow_redirects=False).content),
            ("upstream GET, urllib3 pool", lambda: pool.request(
                "GET", f"/info?token={site_token}").data),
            ("upstream GET, pycurl SiteClient (the adapter's)", lambda: curl.request(
                "GET", f"{url}?token={site_token}", None, {"User-Agent": "micro"}).data),
            ("upstream GET, http.client keep-alive", via_http_client),
        ]  # fmt: skip
        for name, fn in checks:
            rows.append((name, *cost(fn, 2000)))

        client = redis.Redis.from_url(run.REDIS_URL)
        client.set("bench:micro", "x" * 300)
        rows.append(("Redis GET (one round trip)", *cost(lambda: client.get("bench:micro"), 5000)))

        def three_rtt() -> None:
            client.set("bench:m1", "x")
            client.zadd("bench:m2", {"a": 1})
            client.pexpire("bench:m2", 60000)

        def one_pipeline() -> None:
            pipe = client.pipeline(transaction=False)
            pipe.set("bench:m1", "x")
            pipe.zadd("bench:m2", {"a": 1})
            pipe.pexpire("bench:m2", 60000)
            pipe.execute()

        rows.append(("3 Redis writes, 3 round trips", *cost(three_rtt, 3000)))
        rows.append(("3 Redis writes, 1 pipeline", *cost(one_pipeline, 3000)))

        from limits import parse
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        store = storage_from_string(run.REDIS_URL)
        item = parse(run.HIGH_LIMIT)
        moving, fixed = MovingWindowRateLimiter(store), FixedWindowRateLimiter(store)
        rows.append(("rate limit hit, moving window (app's)",
                     *cost(lambda: moving.hit(item, "bench", "m"), 3000)))  # fmt: skip
        rows.append(("rate limit hit, fixed window",
                     *cost(lambda: fixed.hit(item, "bench", "f"), 3000)))  # fmt: skip

        from app.storage import Storage, parse_storage_config

        storage = Storage(parse_storage_config({"default": run.REDIS_URL}))
        record = {"event": "token_issued", "at": time.time(), "client_id": "test",
                  "grant": "client_credentials", "ip": "127.0.0.1"}  # fmt: skip
        rows.append(
            ("audit append (Redis table)", *cost(lambda: storage.audit.append(record), 2000))
        )
        token = {"client_id": "test", "grant_id": "g", "user_id": None, "scope": "read-only",
                 "issued_at": 1, "refresh_key": None}  # fmt: skip
        put = lambda: storage.tokens.put(os.urandom(8).hex(), token)  # noqa: E731
        rows.append(("token put, 2 indexes (Redis table)",
                     *cost(put, 2000)))  # fmt: skip
        rows.append(("json.dumps token record",
                     *cost(lambda: json.dumps(token, separators=(",", ":")), 20000)))  # fmt: skip
        rows.append(("sha256 hexdigest of a token",
                     *cost(lambda: hashlib.sha256(b"x" * 43).hexdigest(), 20000)))  # fmt: skip
        storage.close()
    finally:
        procs.stop(site)
        run.flush_redis()
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  wall us   cpu us")
    for name, wall, cpu in rows:
        print(f"{name:<{width}}  {wall:7.1f}  {cpu:7.1f}")
    out = Path(__file__).resolve().parent / "profiles" / "micro.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        "One operation, single thread, loopback (bench/micro.py):\n"
        + "\n".join(f"{n:<{width}}  wall {w:7.1f} us  cpu {c:7.1f} us" for n, w, c in rows)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
