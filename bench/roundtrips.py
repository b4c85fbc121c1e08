"""Redis round trips per request, in process: ``python -m bench.roundtrips [scenario ...]``.

Calls the WSGI app directly, as :mod:`bench.inproc` does (same configuration, Redis
storage, every limit on), from 1 thread and then from ``ROUNDTRIPS_THREADS`` threads
(default 8, as many as a served worker's threads and more) for ``ROUNDTRIPS_SECONDS``
each (default 3), and counts every command batch sent to any Redis (the storage's and
the limiter's clients alike) by commands: what a request costs the store beside its CPU,
and what threads add (a counter several threads sync at once). Flows count per flow.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis.connection

from bench import inproc, procs, run

THREADS = int(os.environ.get("ROUNDTRIPS_THREADS", "8"))
SECONDS = float(os.environ.get("ROUNDTRIPS_SECONDS", "3"))
#: How many kinds of command batch each line names (the most sent first).
TOP = int(os.environ.get("ROUNDTRIPS_TOP", "4"))


def _named(word: bytes) -> str:
    """A command's word as counted: a key's part before its ``{hash tag}`` (so one kind of
    key, a session or a user, counts as one), else its first 24 characters."""
    text = word[:48].decode("latin-1")
    return text.partition("{")[0] + "{…" if "{" in text else text[:24]


class Meter:
    """Counts command batches by their first command (and the script or key it names)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: collections.Counter[str] = collections.Counter()
        self._send = redis.connection.AbstractConnection.send_packed_command

    def install(self) -> None:
        meter, send = self, self._send

        def counting(self: Any, command: Any, check_health: bool = True) -> None:
            first = b"".join(command[:1]) if isinstance(command, (list, tuple)) else command
            words = bytes(first[:160]).split(b"\r\n")[2::2][:2]
            with meter.lock:
                meter.sent[" ".join(_named(w) for w in words)] += 1
            send(self, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]

    def uninstall(self) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._send  # type: ignore[method-assign]


def drive(step: Callable[[int, int], None], threads: int, seconds: float) -> int:
    """Run ``step(thread, n)`` from ``threads`` threads for ``seconds``; return the count."""
    done, lock, stop = [0], threading.Lock(), time.monotonic() + seconds

    def worker(k: int) -> None:
        n = 0
        while time.monotonic() < stop:
            step(k, n)
            n += 1
        with lock:
            done[0] += n

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return done[0]


def steps(
    wsgi: Any, access: str, pool: Iterator[str], openid_access: str
) -> dict[str, Callable[[int, int], None]]:
    """One request (a whole flow for ``flow``) of each scenario, callable from any thread."""
    lock = threading.Lock()

    class Shared:
        def __next__(self) -> str:
            with lock:
                return next(pool)

    makers = inproc.requests(access, Shared(), openid_access)
    browsers: dict[int, inproc.InprocBrowser] = {}

    def request(make: Callable[[], dict[str, Any]]) -> Callable[[int, int], None]:
        def step(_k: int, _n: int) -> None:
            if inproc.call(wsgi, make) != 200:
                raise RuntimeError("a request failed")

        return step

    def flow(k: int, n: int) -> None:
        browser = browsers.setdefault(k, inproc.InprocBrowser(wsgi, f"bench-user-{k}"))
        browser.flow({step: [] for step in inproc.flow.STEPS}, n)

    return {**{name: request(make) for name, make in makers.items()}, "flow": flow}


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(inproc.SCENARIOS)
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-roundtrips-"))
    site, port = run.start_site(run_dir)
    meter = Meter()
    try:
        run.flush_redis()
        app, state = inproc.build(True, port)
        server = run.Server(
            "inproc", "redis", site, 8080, port, run_dir, {}, run.storage_for("redis")
        )
        fx = run.Fixtures(server)
        access = fx.live_token()
        pool = iter(fx.refresh_pool(40_000))
        calls = steps(app.wsgi_app, access, pool, fx.live_token("openid profile email"))
        meter.install()
        for name in names:
            for threads in (1, THREADS):
                drive(calls[name], threads, 0.5)  # warm: connections, first syncs
                meter.sent.clear()
                count = drive(calls[name], threads, SECONDS)
                total = sum(meter.sent.values())
                top = ", ".join(
                    f"{n / count:.2f} {command}" for command, n in meter.sent.most_common(TOP)
                )
                print(
                    f"{name:20s} {threads} thread(s): {total / count:5.2f} round trips each"
                    f" ({count / SECONDS:,.0f}/s)  {top}"
                )
        meter.uninstall()
        state.storage.close()
        fx.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
