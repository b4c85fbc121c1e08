"""CPU per request with several threads at once, in process: ``python -m bench.threads
[scenario ...]``.

Builds ``bench.inproc``'s app (limits on, metrics on unless ``INPROC_METRICS=off``, the
request line on unless ``INPROC_REQUEST_LOG=off``; Redis at ``BENCH_REDIS_URL``, flushed)
(``THREADS_LOG=serve``: the request line written as ``serve`` writes it, to
``/dev/null`` line-buffered; else, as in ``bench.inproc``, handed to no handler) and
drives each scenario (default ``client_credentials introspect``) from ``THREADS``
threads at once (default ``1,2,4,8``: one run for each count), the way a served worker's
request threads share one interpreter. Prints the CPU and wall µs per request, the least
of 3 rounds. What it shows is the cost of the GIL hand-overs at each blocking call (a
Redis round trip, the site call, a log write), which single-threaded ``bench.inproc``
does not see and served runs cannot price apart from the window's noise.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import inproc, procs, run

REQUESTS = 2400
ROUNDS = 3


def measure(wsgi: Any, make: Any, threads: int) -> tuple[float, float]:
    """The least CPU and wall µs per request over ``ROUNDS`` rounds of ``threads`` threads."""
    per_thread = REQUESTS // threads
    failures: list[int] = []

    def work() -> None:
        for _ in range(per_thread):
            code = inproc.call(wsgi, make)
            if code != 200:
                failures.append(code)

    best = (float("inf"), float("inf"))
    for _ in range(ROUNDS):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        count = per_thread * threads
        best = min(
            best,
            (
                (time.process_time() - cpu0) / count * 1e6,
                (time.perf_counter() - wall0) / count * 1e6,
            ),
        )
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, first status {failures[0]}")
    return best


def main(argv: list[str]) -> int:
    names = argv or ["client_credentials", "introspect"]
    counts = [int(n) for n in os.environ.get("THREADS", "1,2,4,8").split(",") if n]
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-threads-"))
    site, port = run.start_site(run_dir)
    try:
        run.flush_redis()
        if os.environ.get("THREADS_LOG") == "serve":
            from bench.obs_pair import log_like_serve

            log_like_serve()
        app, _ = inproc.build(True, port, metrics=os.environ.get("INPROC_METRICS") != "off")
        server = run.Server(
            "inproc", "redis", site, 8080, port, run_dir, {}, run.storage_for("redis")
        )
        fx = run.Fixtures(server)
        access = fx.live_token()
        pool = iter(fx.refresh_pool(REQUESTS * ROUNDS * len(counts) + 200))
        makers = inproc.requests(access, pool, fx.live_token("openid profile email"))
        lock = threading.Lock()  # the refresh pool's iterator is not thread-safe
        for name in names:
            raw = makers[name]

            def make(raw: Any = raw) -> dict[str, Any]:
                with lock:
                    return raw()

            for _ in range(200):
                inproc.call(app.wsgi_app, make)
            for threads in counts:
                cpu, wall = measure(app.wsgi_app, make, threads)
                print(f"{name:20s} threads {threads}  cpu {cpu:6.0f} µs  wall {wall:6.0f} µs")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
