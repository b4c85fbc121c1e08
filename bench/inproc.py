"""The app's own CPU per request, in one process: ``python -m bench.inproc [scenario...]``.

Calls the WSGI app directly (no server, no load generator, single thread) with the
bench's configuration on Redis (``BENCH_REDIS_URL``, flushed) and prints CPU and wall
microseconds per request for each scenario, with limits on and off. ``--profile``
adds the top functions (cProfile, cumulative) of each scenario. It prices the app's
request path alone, so a change to it shows up without the noise of a loaded machine.
``INPROC_LIMITS=on`` (or ``off``) measures one of the two only; ``INPROC_METRICS=on``
turns metrics on (multiprocess files, as ``serve`` keeps them),
``INPROC_REQUEST_LOG=off`` the request line off (``logging.requests``; the line goes to
the handlers configured, none by default) and ``INPROC_TOKEN_CACHE=off`` the per-process
token cache off (on by default, as served; ``bench.roundtrips`` too). Each line also gives the
Python function calls per request (``calls``): an exact count, free of the machine's
noise, that moves with the work a change adds or removes.
"""

from __future__ import annotations

import base64
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench import dpop, flow, procs, run

ROUNDS = 5
SCENARIOS = (
    "client_credentials",
    "refresh",
    "introspect",
    "gateway",
    "gateway_dpop",
    "userinfo",
    "flow",
    "flow_openid",
)
#: Scenarios of whole code flows (a flow per call) rather than single requests.
FLOWS = ("flow", "flow_openid")
BASIC = "Basic " + base64.b64encode(b"test:hunter2").decode()
#: The app's external URL here (``auth_server.url``, the environ's host): DPoP's ``htu``.
ORIGIN = "http://127.0.0.1:8080"
#: Requests of one scenario: warm-up, the rounds, the call count (a proof each for DPoP).
WARM_REQUESTS = 100


def environ(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8080",  # as every HTTP/1.1 client sends it
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_LENGTH": str(len(body)),
    }
    if body:
        env["CONTENT_TYPE"] = run.FORM
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


def call(app: Any, make_env: Callable[[], dict[str, Any]]) -> int:
    status: list[str] = []

    def start_response(s: str, h: Any, exc_info: Any = None) -> None:
        status.append(s)

    body = app(make_env(), start_response)
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()
    return int(status[0].split()[0])


def dpop_token(wsgi: Any, refresh: str, key: Any) -> str:
    """A DPoP-bound access token, bound by the app itself: a refresh with a proof."""
    body = f"grant_type=refresh_token&refresh_token={refresh}".encode()
    proof = dpop.proof(key, "POST", f"{ORIGIN}/token")
    env = environ("POST", "/token", body, authorization=BASIC, dpop=proof)
    status: list[str] = []
    chunks = wsgi(env, lambda s, h, exc_info=None: status.append(s))
    answer = json.loads(b"".join(chunks))
    if hasattr(chunks, "close"):
        chunks.close()
    if answer.get("token_type") != "DPoP":
        raise RuntimeError(f"the app did not bind the token to the DPoP key: {status} {answer}")
    return str(answer["access_token"])


def dpop_gateway(token: str, proofs: Iterator[str]) -> Callable[[], dict[str, Any]]:
    """``/api/profile`` with ``Authorization: DPoP`` and the next unused proof."""
    return lambda: environ("GET", "/api/profile", authorization=f"DPoP {token}", dpop=next(proofs))


def requests(
    access: str, pool: Iterator[str], openid_access: str
) -> dict[str, Callable[[], dict[str, Any]]]:
    """A fresh WSGI environ per call, for each scenario."""
    return {
        "client_credentials": lambda: environ(
            "POST", "/token", b"grant_type=client_credentials", authorization=BASIC
        ),
        "refresh": lambda: environ(
            "POST",
            "/token",
            b"grant_type=refresh_token&refresh_token=" + next(pool).encode(),
            authorization=BASIC,
        ),
        "introspect": lambda: environ(
            "POST",
            "/introspect",
            f"token={access}&token_type_hint=access_token".encode(),
            authorization=BASIC,
        ),
        "gateway": lambda: environ("GET", "/api/profile", authorization=f"Bearer {access}"),
        "userinfo": lambda: environ("GET", "/userinfo", authorization=f"Bearer {openid_access}"),
    }


class InprocBrowser(flow.Browser):
    """The flow driver's browser, talking to the WSGI app in this process."""

    def __init__(self, app: Any, username: str) -> None:
        super().__init__(0, username)
        self.app = app
        #: Step -> the app's CPU seconds in it (the WSGI call and its body), summed.
        self.cpu: dict[str, float] = dict.fromkeys(self.steps, 0.0)

    def send(self, step: str, method: str, path: str, body: dict | None = None, **headers):
        path, _, query = path.partition("?")
        data = urlencode(body).encode() if body is not None else b""
        env = environ(method, path, data, **{k.replace("-", "_"): v for k, v in headers.items()})
        env["QUERY_STRING"] = query
        if self.cookies:
            env["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        out: dict[str, Any] = {}

        def start_response(status: str, head: list[tuple[str, str]], exc_info: Any = None) -> None:
            out["status"], out["headers"] = int(status.split()[0]), head

        started = time.process_time()
        chunks = self.app(env, start_response)
        payload = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        self.cpu[step] += time.process_time() - started
        location = ""
        for header, value in out["headers"]:
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                if "max-age=0" in value.lower() or "expires=thu, 01 jan 1970" in value.lower():
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = rest.split(";", 1)[0]
            elif header.lower() == "location":
                location = value
        return out["status"], location, payload.decode("utf-8", "replace")


class FlowRunner:
    """One whole code flow per call, by the flow driver's browser (OpenID Connect: with
    ``openid``, so an ID Token is signed at the token step); ``browser.cpu`` sums the
    app's CPU in each step."""

    def __init__(self, wsgi: Any, openid: bool = False) -> None:
        self.browser = InprocBrowser(wsgi, "flow-user")
        self.browser.openid = openid
        self.timings: dict[str, list[float]] = {step: [] for step in flow.STEPS}
        self.flows = 0

    def __call__(self) -> None:
        self.flows += 1
        self.browser.flow(self.timings, self.flows)

    def steps_line(self, since: dict[str, float], flows: int) -> str:
        """The app's CPU µs a flow in each step since ``since`` (a copy of ``cpu``)."""
        cpu = self.browser.cpu
        return "  ".join(
            f"{step} {(cpu[step] - since.get(step, 0.0)) / flows * 1e6:.0f}" for step in cpu
        )


def build(
    limits: bool,
    site_port: int,
    metrics: bool | None = None,
    request_log: bool | None = None,
    storage: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The app and its state on ``storage`` (default: the bench's Redis for every table):
    metrics and the request line as given, else as the ``INPROC_METRICS``/
    ``INPROC_REQUEST_LOG`` switches say."""
    from app import create_app
    from app.reload import settle_heap
    from app.settings import Settings

    if metrics is None:
        metrics = os.environ.get("INPROC_METRICS") == "on"
    if request_log is None:
        request_log = os.environ.get("INPROC_REQUEST_LOG") != "off"
    config = run.server_config(8080, site_port, storage or run.storage_for("redis"), limits)
    config["auth_server"]["url"] = ORIGIN
    if metrics:
        from app.observability.multiproc import prepare_multiprocess_dir
        from app.secrets_hash import hash_random_secret

        prepare_multiprocess_dir()  # before prometheus_client's import, as serve does
        config["metrics"] = {"enabled": True, "token_hash": hash_random_secret("m" * 40)}
    else:  # the served bench's config turns them on
        config["metrics"] = {"enabled": False}
    if not request_log:
        config.setdefault("logging", {})["requests"] = False
    cache = os.environ.get("INPROC_TOKEN_CACHE")  # the per-process token cache (on by default)
    if cache in ("on", "off"):
        config["token_cache"] = {"enabled": cache == "on"}
    settings = Settings.load(config, environ={"OAUTH2_ENV": "bench"})
    app = create_app(settings)
    settle_heap()  # as a served worker does once its app is built
    return app, app.extensions["oauth2"]


def calls_per_request(run_one: Callable[[], object], count: int) -> float:
    """Python function calls per request (cProfile's count; its timings are not used)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        run_one()
    profiler.disable()
    return pstats.Stats(profiler).total_calls / count  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    want_profile = "--profile" in argv
    names = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    n = 2000
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-inproc-"))
    site, port = run.start_site(run_dir)
    try:
        modes = {"on": (True,), "off": (False,)}.get(os.environ.get("INPROC_LIMITS", ""))
        for limits in modes or (True, False):
            run.flush_redis()
            app, state = build(limits, port)
            server = run.Server(
                "inproc", "redis", site, 8080, port, run_dir, {}, run.storage_for("redis")
            )
            fx = run.Fixtures(server)
            access = fx.live_token()
            openid_access = fx.live_token("openid profile email")
            makers = requests(access, iter(fx.refresh_pool(n + 200)), openid_access)
            wsgi = app.wsgi_app
            if "gateway_dpop" in names:
                # A fresh proof per request (the app refuses a replayed ``jti``), all
                # signed now: the client's signing is not the app's CPU. Enough for the
                # warm-up, the rounds and the call count; ``iat`` is now, well inside
                # the window for the seconds this scenario runs.
                key = dpop.new_key()
                bound = dpop_token(wsgi, fx.refresh_pool(1)[0], key)
                signed = iter(
                    dpop.proofs(key, "GET", f"{ORIGIN}/api/profile", WARM_REQUESTS + n + 100, bound)
                )
                makers["gateway_dpop"] = dpop_gateway(bound, signed)
            makers["flow"] = FlowRunner(wsgi)  # type: ignore[assignment]
            makers["flow_openid"] = FlowRunner(wsgi, openid=True)  # type: ignore[assignment]
            for name in names:
                make = makers[name]
                run_one = (lambda make=make: make()) if name in FLOWS else None
                if run_one is not None:
                    for _ in range(20):
                        run_one()
                    code = 200
                else:
                    for _ in range(WARM_REQUESTS):
                        code = call(wsgi, make)
                if code != 200:
                    print(f"{name}: status {code}", file=sys.stderr)
                    return 1
                # The least of ROUNDS rounds: the machine's noise only ever adds.
                count = n // ROUNDS // (10 if run_one else 1)
                best = (float("inf"), float("inf"))
                steps = ""  # a flow's app CPU by step, in the least round
                profiler = cProfile.Profile() if want_profile else None
                for _ in range(ROUNDS):
                    since = dict(make.browser.cpu) if run_one is not None else {}
                    w0, c0 = time.perf_counter(), time.process_time()
                    if profiler:
                        profiler.enable()
                    for _ in range(count):
                        if run_one is not None:
                            run_one()
                        else:
                            call(wsgi, make)
                    if profiler:
                        profiler.disable()
                    cpu = (time.process_time() - c0) / count * 1e6
                    wall = (time.perf_counter() - w0) / count * 1e6
                    if run_one is not None and (cpu, wall) < best:
                        steps = make.steps_line(since, count)
                    best = min(best, (cpu, wall))
                mode = "on " if limits else "off"
                one = run_one or (lambda make=make, wsgi=wsgi: call(wsgi, make))
                calls = calls_per_request(one, 5 if run_one else 50)
                print(
                    f"limits {mode} {name:20s} cpu {best[0]:7.0f} µs  wall {best[1]:7.0f} µs"
                    f"  calls {calls:7.0f}"
                )
                if steps:
                    print(f"    the app's CPU µs a flow by step: {steps}")
                if profiler:
                    out = io.StringIO()
                    out.write(f"cProfile of {name}, limits {mode.strip()}, in process\n")
                    order = os.environ.get("INPROC_SORT", "tottime")
                    stats = pstats.Stats(profiler, stream=out).sort_stats(order)
                    stats.print_stats(30)
                    print(out.getvalue())
                    if limits:
                        path = run.ROOT / "bench" / "profiles" / f"inproc-{name}-{order}.txt"
                        path.write_text(out.getvalue().replace(str(run.ROOT) + "/", ""))
            state.storage.close()
            fx.close()
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
