"""Postgres round trips and commits per request, before/after: ``python -m bench.pgtrips``.

In process, as :mod:`bench.inproc` (limits on, one thread), on two layouts: ``tokens``
(the bench's Postgres runs: tokens and refresh tokens on Postgres, the rest on Redis)
and ``all`` (every table on Postgres; give one or both as arguments). For client
credentials, refresh, introspection and the code exchange (a code flow's ``POST /token``)
it counts what a request sends to Postgres: round trips (every statement, the pool's
check of a connection on checkout included) and, of them, writes (each one transaction
in autocommit, so one commit and one WAL flush). Then it times each scenario before and
after in alternating blocks in this one process (``PGTRIPS_BLOCKS`` pairs of blocks of
``PGTRIPS_BLOCK`` requests; flows: a tenth): the medians of the blocks' CPU and wall
microseconds per request. "before" is the app as before the SQL batch, in process:
``SQLBackend.hold`` answers ``False`` (every write sent at once) and the pool checks every
connection on checkout (``FRESH_SECONDS = 0``); "after" is the app as it is.

``BENCH_PG_URL`` (created if missing, schema ``public`` dropped) and ``BENCH_REDIS_URL``
(flushed) as for ``make bench``: point them at a database of your own.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from app.storage import postgres
from app.storage.sql import SQLBackend
from bench import inproc, procs, run

BLOCKS = int(os.environ.get("PGTRIPS_BLOCKS", "8"))
BLOCK = int(os.environ.get("PGTRIPS_BLOCK", "100"))
COUNTED = 50
LAYOUTS = {
    "tokens": lambda: run.storage_for("postgres"),
    "all": lambda: {"default": run.PG_URL},
}
SCENARIOS = ("client_credentials", "refresh", "introspect", "code")


class Meter:
    """Counts the statements sent to Postgres by the request path that sent them."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.sent: collections.Counter[tuple[str, str]] = collections.Counter()
        self._execute = psycopg.Cursor.execute

    def install(self) -> None:
        meter, execute = self, self._execute

        def counting(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            text = query if isinstance(query, str) else ""
            kind = "check" if not text else "read" if text.startswith("SELECT") else "write"
            meter.sent[(getattr(meter.local, "path", "?"), kind)] += 1
            return execute(cursor, query, params, **kwargs)

        psycopg.Cursor.execute = counting  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        psycopg.Cursor.execute = self._execute  # type: ignore[method-assign]

    def tagged(self, wsgi: Any) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            self.local.path = environ["PATH_INFO"]
            return wsgi(environ, start_response)

        return app


class Switch:
    """Turns the SQL batch and the pool's lazy check off (as before them) and on again."""

    def __init__(self) -> None:
        self._hold = SQLBackend.hold
        self._fresh = postgres.FRESH_SECONDS

    def set(self, on: bool) -> None:
        SQLBackend.hold = self._hold if on else (lambda *_: False)  # type: ignore[method-assign]
        postgres.FRESH_SECONDS = self._fresh if on else 0.0


def scenarios(wsgi: Any, access: str, pool: Iterator[str]) -> dict[str, Callable[[], None]]:
    makers = inproc.requests(access, pool, "")
    browser = inproc.InprocBrowser(wsgi, "pgtrips-user")
    timings: dict[str, list[float]] = {step: [] for step in inproc.flow.STEPS}
    flows = iter(range(10**9))

    def request(make: Callable[[], dict[str, Any]]) -> Callable[[], None]:
        def one() -> None:
            if inproc.call(wsgi, make) != 200:
                raise RuntimeError("a request failed")

        return one

    return {
        "client_credentials": request(makers["client_credentials"]),
        "refresh": request(makers["refresh"]),
        "introspect": request(makers["introspect"]),
        "code": lambda: browser.flow(timings, next(flows)),
    }


def count(meter: Meter, one: Callable[[], None], times: int) -> str:
    meter.sent.clear()
    for _ in range(times):
        one()
    path = next((p for p, _ in meter.sent if p in ("/token", "/introspect")), "/token")
    token = {kind: meter.sent[(path, kind)] / times for kind in ("check", "read", "write")}
    total = sum(meter.sent.values()) / times
    return (
        f"{path} {sum(token.values()):5.2f} round trips ({token['check']:.2f} checks,"
        f" {token['read']:.2f} reads, {token['write']:.2f} writes = commits)"
        f"  [whole request{'s of the flow' if total != sum(token.values()) else ''}: {total:.2f}]"
    )


def timed(one: Callable[[], None], switch: Switch, block: int) -> dict[bool, list[tuple]]:
    results: dict[bool, list[tuple]] = {False: [], True: []}
    for n in range(BLOCKS * 2):
        on = bool(n % 2) if (n // 2) % 2 == 0 else not n % 2  # off,on,on,off,off,on,...
        switch.set(on)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(block):
            one()
        cpu = (time.process_time() - c0) / block * 1e6
        results[on].append((cpu, (time.perf_counter() - w0) / block * 1e6))
    switch.set(True)
    return results


def main(argv: list[str]) -> int:
    layouts = [a for a in argv if a in LAYOUTS] or list(LAYOUTS)
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-pgtrips-"))
    site, port = run.start_site(run_dir)
    meter, switch = Meter(), Switch()
    try:
        for layout in layouts:
            run.prepare_postgres()
            run.flush_redis()
            storage = LAYOUTS[layout]()
            app, state = inproc.build(True, port, storage=storage)
            server = run.Server("inproc", "postgres", site, 8080, port, run_dir, {}, storage)
            fx = run.Fixtures(server)
            wsgi = meter.tagged(app.wsgi_app)
            need = 2 * (COUNTED + 20) + 2 * BLOCKS * BLOCK + 100
            calls = scenarios(wsgi, fx.live_token(), iter(fx.refresh_pool(need)))
            meter.install()
            print(f"layout {layout}: {storage}")
            for name in SCENARIOS:
                one, times = calls[name], COUNTED if name != "code" else COUNTED // 5
                for _ in range(20):
                    one()  # warm: connections, prepared statements, caches
                for on in (False, True):
                    switch.set(on)
                    when = "after " if on else "before"
                    print(f"  {name:18s} {when} {count(meter, one, times)}")
                switch.set(True)
                result = timed(one, switch, BLOCK if name != "code" else BLOCK // 10)
                med = {
                    on: [statistics.median(v[i] for v in result[on]) for i in (0, 1)]
                    for on in (False, True)
                }
                print(
                    f"  {name:18s} per request{' (flow)' if name == 'code' else ''}:"
                    f" cpu before {med[False][0]:6.0f} after {med[True][0]:6.0f} µs"
                    f" ({med[True][0] / med[False][0] - 1:+.1%}),"
                    f" wall before {med[False][1]:6.0f} after {med[True][1]:6.0f} µs"
                    f" ({med[True][1] / med[False][1] - 1:+.1%})"
                )
            meter.uninstall()
            state.storage.close()
            fx.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
