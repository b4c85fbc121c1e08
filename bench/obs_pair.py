"""The cost of observability, paired in one process: ``python -m bench.obs_pair [scenario...]``.

Issue 14's measure: the app's CPU per request with metrics and the request line on
(multiprocess metric files, as ``serve`` keeps them; the line through the ``text``
formatter to ``/dev/null``, line-buffered as ``serve``'s stderr) against both off, limits
on, on Redis (``BENCH_REDIS_URL``, flushed). Both apps are built in this process and
called directly (WSGI, one thread), in blocks of ``PAIR_BLOCK`` requests (default 100)
alternated ``PAIR_BLOCKS`` times (default 20), each app first in turn; each pair of blocks
gives a ratio of CPU (``time.process_time``: any thread of ours counts, a metrics flush
thread too), and the median of those ratios is the figure: a loaded machine's drift hits
both blocks of a pair alike (also shown: their quartiles, and the ratio of the summed
CPU). Smaller blocks, more of them (``PAIR_BLOCK=10 PAIR_BLOCKS=200``), alternate finer:
on this loaded machine their ratio of sums was the steadiest figure. Also prints each
app's median CPU µs per request and its Python calls per request (exact). ``--profile``
prints the "on" app's top functions (cProfile, by own time) for each scenario.
``PAIR_ON=metrics`` (or ``log``) prices one of the two alone. ``PAIR_SINK``: a file the
line goes to instead of ``/dev/null`` (served, it goes to the server's log file).
"""

from __future__ import annotations

import cProfile
import io
import logging
import logging.config
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import inproc, procs, run

SCENARIOS = ("client_credentials", "introspect", "gateway", "userinfo")
BLOCK = int(os.environ.get("PAIR_BLOCK", "100"))
BLOCKS = int(os.environ.get("PAIR_BLOCKS", "20"))
#: What the "on" app has: ``metrics,log`` (the issue's measure), or one of the two.
ON = os.environ.get("PAIR_ON", "metrics,log")


def log_like_serve() -> Any:
    """The root logger as ``serve`` sets it (our text format, one stream handler), its
    stream ``/dev/null`` opened line-buffered as ``sys.stderr`` is."""
    from app.logconfig import log_config

    logging.config.dictConfig(log_config())
    path = os.environ.get("PAIR_SINK") or os.devnull
    sink = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)
    return sink


def block(wsgi: Any, make: Callable[[], dict[str, Any]], count: int) -> float:
    """CPU seconds of ``count`` requests."""
    started = time.process_time()
    for _ in range(count):
        code = inproc.call(wsgi, make)
        if code != 200:
            raise RuntimeError(f"status {code}")
    return time.process_time() - started


def main(argv: list[str]) -> int:
    from app.observability.multiproc import prepare_multiprocess_dir

    prepare_multiprocess_dir()  # before prometheus_client's import, as serve does
    want_profile = "--profile" in argv
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    sink = log_like_serve()
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-obspair-"))
    site, port = run.start_site(run_dir)
    try:
        run.flush_redis()
        parts = ON.split(",")
        on, state_on = inproc.build(
            True, port, metrics="metrics" in parts, request_log="log" in parts
        )
        off, state_off = inproc.build(True, port, metrics=False, request_log=False)
        server = run.Server(
            "inproc", "redis", site, 8080, port, run_dir, {}, run.storage_for("redis")
        )
        fx = run.Fixtures(server)
        makers = inproc.requests(fx.live_token(), iter(()), fx.live_token("openid profile email"))
        load = os.getloadavg()[0]
        print(f"on: {ON}; blocks of {BLOCK} requests, {BLOCKS} pairs, limits on, load {load:.1f}")
        for name in names:
            make = makers[name]
            apps = {"on": on.wsgi_app, "off": off.wsgi_app}
            for wsgi in apps.values():
                block(wsgi, make, inproc.WARM_REQUESTS)
            ratios: list[float] = []
            cpu: dict[str, list[float]] = {"on": [], "off": []}
            for i in range(BLOCKS):
                order = ("on", "off") if i % 2 == 0 else ("off", "on")
                took = {mode: block(apps[mode], make, BLOCK) for mode in order}
                ratios.append(took["on"] / took["off"])
                for mode in cpu:
                    cpu[mode].append(took[mode] / BLOCK * 1e6)
            calls = {
                mode: inproc.calls_per_request(lambda w=wsgi, m=make: inproc.call(w, m), 50)
                for mode, wsgi in apps.items()
            }
            share = (statistics.median(ratios) - 1) * 100
            low, _, high = ((q - 1) * 100 for q in statistics.quantiles(ratios, n=4))
            on_us, off_us = statistics.median(cpu["on"]), statistics.median(cpu["off"])
            summed = (sum(cpu["on"]) / sum(cpu["off"]) - 1) * 100
            least = (min(cpu["on"]) / min(cpu["off"]) - 1) * 100
            print(
                f"{name:20s} on vs off {share:+6.1f}%  (quartiles {low:+.1f}% .. {high:+.1f}%;"
                f" of the sums {summed:+.1f}%; of the least blocks {least:+.1f}%)"
                f"  cpu µs on {on_us:6.0f} off {off_us:6.0f}"
                f"  calls on {calls['on']:6.0f} off {calls['off']:6.0f}"
                f" (+{calls['on'] - calls['off']:.0f})"
            )
            if want_profile:
                profiler = cProfile.Profile()
                profiler.enable()
                block(apps["on"], make, 500)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
                print(out.getvalue())
        state_on.storage.close()
        state_off.storage.close()
        fx.close()
        from app.observability import direct

        direct.HOLDER.flush()  # the request lines held for it go before it closes
        sink.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
