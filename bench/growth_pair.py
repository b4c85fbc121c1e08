"""Does a full store slow requests down? Paired in one process: ``python -m bench.growth_pair``.

Issue 14 asks for the hot paths "at 1M live tokens within run-to-run noise". Served runs
(`make bench`'s growth rows) compare an empty store with a full one minutes apart, and on
this VM the same app's figures move ±30% in that time, so they cannot answer it. This
builds two apps in one process over two stores of the same layout, one empty and one
holding ``GROWTH_ROWS`` live token pairs (default 1,000,000, bulk-loaded as the bench
loads them, plus ``VACUUM ANALYZE`` on Postgres), and alternates blocks of
``GROWTH_BLOCK`` requests (default 20) ``GROWTH_BLOCKS`` times (default 100), each app
first in turn, as :mod:`bench.obs_pair` does. Each pair of blocks gives a ratio full ÷
empty of **wall** time (what a caller waits: the store's own work included) and of this
process's CPU; the medians and quartiles are the figures.

``GROWTH_STORE``: ``redis`` (every table on Redis: ``BENCH_REDIS_URL`` empty, the next
database number full) or ``postgres`` (tokens and refresh tokens on Postgres,
``BENCH_PG_URL`` empty and the same URL's database with ``_full`` appended full; the rest
on those two Redis databases). Both stores are emptied first; the full one is left full
(``GROWTH_KEEP=1`` reuses it when it already holds the rows, to rerun quickly).
Scenarios: client credentials, refresh, introspection, the gateway (default all four).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis

from bench import inproc, loader, procs, run

SCENARIOS = ("client_credentials", "refresh", "introspect", "gateway")
ROWS = int(os.environ.get("GROWTH_ROWS", "1000000"))
BLOCK = int(os.environ.get("GROWTH_BLOCK", "20"))
BLOCKS = int(os.environ.get("GROWTH_BLOCKS", "100"))
STORE = os.environ.get("GROWTH_STORE", "redis")
KEEP = os.environ.get("GROWTH_KEEP") == "1"
#: Refresh tokens each app needs: warm-up, the blocks, and the calls count.
POOL = inproc.WARM_REQUESTS + BLOCK * BLOCKS + 200


def _next_db(url: str) -> str:
    parts = urlsplit(url)
    number = int(parts.path.lstrip("/") or 0) + 1
    return parts._replace(path=f"/{number}").geturl()


def stores() -> dict[str, dict[str, str]]:
    """The storage section of each app: ``empty`` and ``full``."""
    empty_redis, full_redis = run.REDIS_URL, _next_db(run.REDIS_URL)
    if STORE == "redis":
        return {"empty": {"default": empty_redis}, "full": {"default": full_redis}}
    full_pg = run._db_url(run.PG_URL, urlsplit(run.PG_URL).path.lstrip("/") + "_full")
    return {
        "empty": {"default": empty_redis, "tokens": run.PG_URL, "refresh_tokens": run.PG_URL},
        "full": {"default": full_redis, "tokens": full_pg, "refresh_tokens": full_pg},
    }


def _holds_rows(section: dict[str, str]) -> bool:
    """Whether the full store already has ``ROWS`` filler pairs (``GROWTH_KEEP``)."""
    if STORE == "redis":
        with redis.Redis.from_url(section["default"]) as client:
            return client.dbsize() >= 4 * ROWS  # two records, their grant index and expiry
    try:
        with psycopg.connect(section["tokens"], connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*) FROM oauth2_tokens").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] >= ROWS


def empty(section: dict[str, str]) -> None:
    """Empty one store: its Redis database and, on Postgres, its ``public`` schema."""
    saved = run.REDIS_URL, run.PG_URL
    run.REDIS_URL = section["default"]
    run.PG_URL = section.get("tokens", run.PG_URL)
    try:
        run.flush_redis()
        if STORE == "postgres":
            run.prepare_postgres()
    finally:
        run.REDIS_URL, run.PG_URL = saved


def fill(section: dict[str, str]) -> None:
    """Load ``ROWS`` filler pairs into the full store (its schema made by the app)."""
    started = time.monotonic()
    if STORE == "redis":
        writer = loader.RedisWriter(section["default"])
        writer.put_pairs(loader.filler_pairs(ROWS, "growth"))
        writer.close()
        waited = loader.settle(section["default"])
        print(f"full store: Redis's tables settled (rehashed) {waited:.1f}s after the load")
    else:
        with psycopg.connect(section["tokens"], autocommit=True) as conn:
            loader.pg_fill(conn, ROWS, "growth")
            conn.execute("VACUUM ANALYZE oauth2_tokens")
            conn.execute("VACUUM ANALYZE oauth2_refresh_tokens")
    print(f"full store: {ROWS:,} live token pairs loaded in {time.monotonic() - started:.1f}s")


def refresh_pool(fx: run.Fixtures, section: dict[str, str], count: int) -> Iterator[str]:
    """``count`` refresh tokens of one user, written straight into ``section``'s store."""
    uid, display, site_token = fx.user("bench")
    tokens, pairs = loader.known_pairs(count, uid, display, site_token)
    if STORE == "redis":
        writer = loader.RedisWriter(section["default"])
        writer.put_pairs(pairs)
        writer.close()
    else:
        with psycopg.connect(section["tokens"], autocommit=True) as conn:
            loader.pg_copy_pairs(conn, pairs)
    return iter(tokens)


def block(wsgi: Any, make: Callable[[], dict[str, Any]], count: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``count`` requests."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        code = inproc.call(wsgi, make)
        if code != 200:
            raise RuntimeError(f"status {code}")
    return time.perf_counter() - wall, time.process_time() - cpu


def _spread(ratios: list[float]) -> str:
    low, mid, high = ((q - 1) * 100 for q in statistics.quantiles(ratios, n=4))
    return f"{(statistics.median(ratios) - 1) * 100:+6.1f}% ({low:+.1f} .. {high:+.1f})"


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    sections = stores()
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-growthpair-"))
    site, port = run.start_site(run_dir)
    try:
        empty(sections["empty"])
        loaded = KEEP and _holds_rows(sections["full"])
        if not loaded:
            empty(sections["full"])
        built = {
            mode: inproc.build(True, port, metrics=False, storage=section)
            for mode, section in sections.items()
        }  # each app makes its schema
        if not loaded:
            fill(sections["full"])
        apps: dict[str, Any] = {}
        makers: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {}
        closing: list[Any] = []
        for mode, section in sections.items():
            app, state = built[mode]
            server = run.Server("inproc", STORE, site, 8080, port, run_dir, {}, section)
            fx = run.Fixtures(server)
            pool = refresh_pool(fx, section, POOL) if "refresh" in names else iter(())
            makers[mode] = inproc.requests(fx.live_token(), pool, fx.live_token())
            apps[mode] = app.wsgi_app
            closing += [state.storage, fx]
        load = os.getloadavg()[0]
        print(
            f"{STORE}: full ({ROWS:,} pairs) vs empty; blocks of {BLOCK}, {BLOCKS} pairs,"
            f" limits on, load {load:.1f}; median (quartiles) of full ÷ empty"
        )
        for name in names:
            for mode in apps:
                for _ in range(inproc.WARM_REQUESTS // BLOCK):
                    block(apps[mode], makers[mode][name], BLOCK)
            walls: list[float] = []
            cpus: list[float] = []
            wall_us: dict[str, list[float]] = {"full": [], "empty": []}
            for i in range(BLOCKS):
                order = ("full", "empty") if i % 2 == 0 else ("empty", "full")
                took = {mode: block(apps[mode], makers[mode][name], BLOCK) for mode in order}
                walls.append(took["full"][0] / took["empty"][0])
                cpus.append(took["full"][1] / took["empty"][1])
                for mode in wall_us:
                    wall_us[mode].append(took[mode][0] / BLOCK * 1e6)
            print(
                f"{name:20s} wall {_spread(walls)}  cpu {_spread(cpus)}"
                f"  wall µs full {statistics.median(wall_us['full']):6.0f}"
                f" empty {statistics.median(wall_us['empty']):6.0f}"
            )
        for item in closing:
            item.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
