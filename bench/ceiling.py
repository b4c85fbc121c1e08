"""The ceilings: a bare Flask endpoint, the same plus one storage round trip, and the
least a gateway call costs (a Flask view that fetches the site's answer and returns it).

Served by gunicorn with 2 sync workers (``gunicorn bench.ceiling:bare``), the fixed
reference every scenario is divided by. ``BENCH_REDIS_URL`` and ``BENCH_PG_URL``
name the stores; clients are made lazily, after the fork.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify

bare = Flask("bench_bare")


@bare.get("/")
def bare_index():
    return jsonify(ok=True)


redis_app = Flask("bench_redis")
_clients: dict[str, Any] = {}


def _redis():
    if "redis" not in _clients:
        import redis

        _clients["redis"] = redis.Redis.from_url(
            os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
        )
    return _clients["redis"]


@redis_app.get("/")
def redis_index():
    client = _redis()
    seen = client.get("bench:ceiling")
    client.setex("bench:ceiling", 60, b"1" if seen is None else seen)
    return jsonify(ok=True)


postgres_app = Flask("bench_postgres")


def _pg():
    if "pg" not in _clients:
        import psycopg

        conn = psycopg.connect(
            os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/bench"),
            autocommit=True,
        )
        _clients["pg"] = conn
    return _clients["pg"]


@postgres_app.get("/")
def postgres_index():
    # One durable write (synchronous_commit as configured, on by default).
    _pg().execute(
        "INSERT INTO bench_ceiling (k, v) VALUES (%s, 1)"
        " ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
        (os.urandom(8).hex(),),
    )
    return jsonify(ok=True)


redis_get_app = Flask("bench_redis_get")


@redis_get_app.get("/")
def redis_get_index():
    # What a token check costs at least: one GET of a small record.
    seen = _redis().get("bench:ceiling")
    return jsonify(ok=seen is None)


proxy_app = Flask("bench_proxy")


def _site() -> Any:
    if "site" not in _clients:
        from app.adapters.http import SiteClient

        _clients["site"] = SiteClient(timeout=5.0)
    return _clients["site"]


@proxy_app.get("/")
def proxy_index():
    # What the gateway costs at least: the site's answer fetched through the same libcurl
    # client (a handle per thread, reset per call) and returned; no token, no checks.
    answer = _site().request("GET", os.environ["BENCH_SITE_URL"])
    return answer.data, answer.status, {"Content-Type": "application/json"}
