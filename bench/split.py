"""Where a scenario's CPU goes, by layer: ``python -m bench.split [scenario ...]``.

Profiles ``bench.inproc``'s scenarios (default ``gateway``; limits on, the request line
on, metrics off unless ``INPROC_METRICS=on``; Redis at ``BENCH_REDIS_URL``, flushed)
with cProfile on CPU time (the site's answer is waited for, not counted) and sums each
function's own time into the layer its code belongs to: Flask/Werkzeug (split further
by module; ``SPLIT_DETAIL`` names another layer or none), the gateway's dispatcher
(``app/gateway.py``), Redis (redis-py and hiredis: the token read and the limiter's and
quota's counters), the site call (pycurl and ``app/adapters/``), observability
(``app/observability``), the rate limiter (``app/limits``, ``limits``), our other code
(the checks, the view, the errors, the security headers) and Authlib. A builtin or
standard-library function has no layer of its own: its time goes to its callers' layers,
in proportion to the time each caller spent in it. cProfile's own overhead inflates
cheap, frequent calls, so read the shares, not the microseconds; the per-call CPU
without the profiler is printed beside them, with the Python calls per request.
"""

from __future__ import annotations

import cProfile
import functools
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import inproc, procs, run

#: (path fragment, layer), first match wins; anything else is "stdlib/builtin".
LAYERS = (
    ("/flask_login/", "sign-in (Flask-Login)"),
    ("/flask/", "Flask/Werkzeug"),
    ("/werkzeug/", "Flask/Werkzeug"),
    ("/redis/", "Redis (redis-py)"),
    ("/hiredis/", "Redis (redis-py)"),
    ("pycurl", "site call (pycurl)"),
    ("/app/adapters/", "site call (pycurl)"),
    ("/app/gateway.py", "the gateway's dispatcher (ours)"),
    ("/app/observability/", "observability"),
    ("/app/limits/", "rate limiter"),
    ("/limits/", "rate limiter"),
    ("/authlib/", "Authlib"),
    ("/jinja2/", "templates (Jinja2)"),
    ("/markupsafe/", "templates (Jinja2)"),
    ("/app/templates/", "templates (Jinja2)"),
    ("/itsdangerous/", "signing (itsdangerous)"),
    ("/app/", "our code (checks, view, errors, headers)"),
    ("/bench/", "bench driver"),
)
COUNT = 2000
#: A layer split further by module (``SPLIT_DETAIL``, default Flask/Werkzeug; empty: none).
DETAIL = os.environ.get("SPLIT_DETAIL", "Flask/Werkzeug")

Func = tuple[str, int, str]


def layer_of(func: Func) -> str | None:
    """The layer of a function's code, or None for a builtin or the standard library."""
    filename, _, name = func
    where = filename if filename != "~" else name
    for fragment, layer in LAYERS:
        if fragment in where:
            return layer
    return None


def split(stats: dict[Func, Any], detail: str = "") -> dict[str, float]:
    """Own time by layer; a layerless function's time goes up to its callers'. With
    ``detail`` (a layer), that layer's time is split further by module."""
    totals: dict[str, float] = defaultdict(float)

    def give(func: Func, seconds: float, depth: int = 0) -> None:
        layer = layer_of(func)
        if layer is not None or depth > 20:
            if layer == detail:
                layer += ": " + "/".join(Path(func[0]).parts[-2:])
            totals[layer or "stdlib/builtin"] += seconds
            return
        callers = stats[func][4]
        spent = sum(c[2] for c in callers.values())
        if not callers or spent <= 0:
            totals["stdlib/builtin"] += seconds
            return
        for caller, figures in callers.items():
            give(caller, seconds * figures[2] / spent, depth + 1)

    for func, (_cc, _nc, own, _cum, _callers) in stats.items():
        give(func, own)
    return totals


def profile(one: Callable[[], object], count: int) -> tuple[dict[str, float], float, float]:
    """The layers' seconds per call of ``one`` (a request, or a whole flow), the CPU µs
    per call without the profiler and the Python calls per call."""
    for _ in range(max(inproc.WARM_REQUESTS * count // COUNT, 5)):
        one()
    started = time.process_time()
    for _ in range(count):
        one()
    cpu = (time.process_time() - started) / count * 1e6
    profiler = cProfile.Profile(time.process_time)  # CPU, not waiting for the site
    profiler.enable()
    for _ in range(count):
        one()
    profiler.disable()
    stats = pstats.Stats(profiler)
    layers = {k: v / count for k, v in split(stats.stats, DETAIL).items()}  # type: ignore[attr-defined]
    return layers, cpu, stats.total_calls / count  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    names = argv or ["gateway"]
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-split-"))
    site, port = run.start_site(run_dir)
    try:
        run.flush_redis()
        app, state = inproc.build(True, port)
        server = run.Server(
            "inproc", "redis", site, 8080, port, run_dir, {}, run.storage_for("redis")
        )
        fx = run.Fixtures(server)
        pool = fx.refresh_pool(2 * COUNT + inproc.WARM_REQUESTS)  # a refresh spends one
        makers = inproc.requests(fx.live_token(), iter(pool), fx.live_token())
        for name in names:
            if name in inproc.FLOWS:  # a whole code flow a call, a tenth as many calls
                one = inproc.FlowRunner(app.wsgi_app, openid=name == "flow_openid")
                layers, cpu, calls = profile(one, COUNT // 10)
            else:
                one = functools.partial(inproc.call, app.wsgi_app, makers[name])
                layers, cpu, calls = profile(one, COUNT)
            total = sum(layers.values())
            each = "flow" if name in inproc.FLOWS else "request"
            print(f"{name}: cpu {cpu:.0f} µs/{each} unprofiled, calls {calls:.0f}")
            for layer, seconds in sorted(layers.items(), key=lambda item: -item[1]):
                if not layer.startswith("bench driver"):
                    print(f"  {layer:60s} {seconds / total:6.1%}")
        state.storage.close()
        fx.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
