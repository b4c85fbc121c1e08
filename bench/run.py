"""``python -m bench``: the whole benchmark of issue 5, start to finish.

Starts (on loopback, free ports, bounded lifetimes) the ceiling apps and
``oauth2-server serve`` with 2 workers, first with Redis for every table, then with
Postgres for the token tables; runs each scenario with wrk (or the flow driver)
after a warm-up; grows the token tables; times the review page and a purge; stops
everything; prints one table and writes ``bench/results.json``.

Environment: ``BENCH_SECONDS`` (default 10, per measured run), ``BENCH_WARMUP``
(default 2), ``BENCH_FULL=1`` (add the 1M-token steps and a 1M-row purge),
``BENCH_SERVER`` (``auth_server.server`` of the main runs: ``granian``, the default,
or ``gunicorn``), ``BENCH_SERVERS`` (default ``serve-gunicorn``: also run the Redis
token scenarios with ``oauth2-server serve`` on the other server; ``granian``,
``gunicorn-sync`` and ``gunicorn-gthread`` serve ``wsgi:app`` directly),
``BENCH_LIMITS=off`` (serve with ``limits.enabled: false``),
``BENCH_PEER=off`` (leave out the side-by-side node-oidc-provider, ``bench/nodepeer.py``),
``BENCH_QUIET_WAIT`` (seconds to wait for an idle machine before each run, default 10),
``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/12``, flushed),
``BENCH_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/bench``, created if
missing, its ``public`` schema dropped at start), ``BENCH_THREADS``/``BENCH_CONNECTIONS``
(wrk, default 2/16), ``BENCH_USERS`` (flow driver, default 8), ``BENCH_ONLY`` (comma
list of parts: ceiling, redis, postgres, growth, review, purge, site, partner).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from bench import dpop, loader, nodepeer, procs, wrk

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "results.json"

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "2"))
FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
USERS = int(os.environ.get("BENCH_USERS", "8"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/bench")
SIZES = [0, 100_000, 1_000_000] if FULL else [0, 100_000]
PURGE_ROWS = 1_000_000 if FULL else 100_000
REVIEW_GRANTS = 1000
#: Refresh tokens pre-issued per second of load: above any rate this machine reaches.
REFRESH_RATE_BOUND = int(os.environ.get("BENCH_REFRESH_RATE_BOUND", "4000"))
#: DPoP proofs signed per second of load (the gateway with DPoP): above any rate here.
DPOP_RATE_BOUND = int(os.environ.get("BENCH_DPOP_RATE_BOUND", "3000"))
#: The server's DPoP ``iat`` window in the bench (seconds). Proofs are signed just before
#: each run and carry that moment's ``iat``; the last one is sent after the quiet wait,
#: the warm-up and the run (< 40 s with the defaults), so 300 s (node-oidc-provider's
#: window) is ample. The replay cache keeps each ``jti`` that long (~40k keys a run).
DPOP_WINDOW = 300
SESSION_SECRET = "bench-session-secret-" + "b" * 24
HIGH_LIMIT = "100000000/minute"
#: ``BENCH_LIMITS=off`` serves with ``limits.enabled: false`` (to price the limiter).
LIMITS = os.environ.get("BENCH_LIMITS", "on") != "off"
#: ``BENCH_METRICS=off`` serves without ``/metrics`` (issue 14's targets are with it on).
METRICS = os.environ.get("BENCH_METRICS", "on") != "off"
#: The bearer token the bench scrapes ``/metrics`` with (its hash is in the config).
METRICS_TOKEN = "bench-metrics-" + "m" * 24  # noqa: S105 - a loopback bench's own token
#: ``BENCH_VARIANTS``: Redis scenarios served once more with a setting changed
#: (``no-token-cache``: ``token_cache.enabled`` off, the per-process cache of token checks;
#: ``no-observability``: metrics and the request line off, so the table prices them
#: served, in server CPU per request: issue 14's "cost of metrics and logging").
VARIANTS = [
    v for v in os.environ.get("BENCH_VARIANTS", "no-token-cache,no-observability").split(",") if v
]
#: Variant -> (its config sections, the scenarios it runs again).
VARIANT_CONFIG: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "no-token-cache": (
        {"token_cache": {"enabled": False}},
        ("refresh", "introspect", "gateway", "gateway_dpop", "userinfo"),
    ),
    "no-observability": (
        {"metrics": {"enabled": False}, "logging": {"requests": False}},
        ("client_credentials", "introspect", "gateway", "userinfo"),
    ),
    # Each half of it alone (``bench.served_pair`` arms; not in ``BENCH_VARIANTS``'s default).
    "no-metrics": ({"metrics": {"enabled": False}}, ("client_credentials", "introspect")),
    "no-request-log": ({"logging": {"requests": False}}, ("client_credentials", "introspect")),
}
#: The ``auth_server.server`` of the main runs (the one the bench measured fastest).
SERVER = os.environ.get("BENCH_SERVER", "granian")
#: ``oauth2-server serve``'s workers and request threads per worker in every served run.
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
SERVER_THREADS = int(os.environ.get("BENCH_SERVER_THREADS", "4"))
#: ``BENCH_SERVERS=serve-gunicorn,granian,gunicorn-sync,...``: the token scenarios on those.
SERVERS = [s for s in os.environ.get("BENCH_SERVERS", "serve-gunicorn").split(",") if s]
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "10"))
#: Runs again (at most this often) a run whose connections all went to one worker.
RETRIES = int(os.environ.get("BENCH_RETRIES", "2"))
PARTS = {
    p.strip()
    for p in os.environ.get(
        "BENCH_ONLY", "ceiling,redis,postgres,growth,review,purge,site,partner"
    ).split(",")
}

#: Issue 5 targets, as ratios to the bare-Flask gunicorn-sync figure.
TARGETS = {"gateway": 0.75, "introspect": 0.75, "client_credentials": 0.6, "refresh": 0.4}
FLOW_TARGET = 200.0
LABELS = {
    "client_credentials": "POST /token client_credentials",
    "refresh": "POST /token refresh_token",
    "introspect": "POST /introspect",
    "gateway": "GET /api/profile (gateway)",
    "gateway_dpop": "GET /api/profile (gateway, DPoP)",
    "flow": "code flow (flows/s)",
    "flow_openid": "code flow, OpenID Connect (flows/s)",
    "userinfo": "GET /userinfo (OpenID Connect)",
}
#: The peer's scenarios (``bench/nodepeer.py``), by name.
PEER_LABELS = {
    "client_credentials": "POST /token client_credentials",
    "refresh": "POST /token refresh_token",
    "introspect": "POST /token/introspection",
    "userinfo": "GET /me (UserInfo)",
    "flow": "code flow (flows/s)",
    "flow_openid": "code flow, OpenID Connect (flows/s)",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- machine and CPU accounting -----------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in (
        "flask",
        "werkzeug",
        "authlib",
        "gunicorn",
        "redis",
        "psycopg",
        "psycopg-pool",
        "limits",
        "flask-login",
        "flask-wtf",
        "requests",
        "granian",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    info: dict[str, Any] = {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        info["redis_server"] = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    with contextlib.suppress(Exception), psycopg.connect(PG_URL, connect_timeout=3) as conn:
        info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    with contextlib.suppress(Exception):
        done = subprocess.run(  # noqa: S603
            [wrk.ensure_wrk(), "-v"], capture_output=True, text=True, check=False
        )
        info["wrk"] = (done.stdout + done.stderr).splitlines()[0].split(" Copyright")[0]
    with contextlib.suppress(Exception):
        git = shutil.which("git") or "git"
        head = subprocess.run(  # noqa: S603
            [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            [git, "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        info["commit"] = head + (" (app/ has uncommitted changes)" if dirty else "")
    return info


def _busy_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _named_pids(names: tuple[str, ...]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds of the server's processes, the dummy site, the stores and everything else."""

    def __init__(self, server: procs.Proc | None) -> None:
        self.server = server
        self.groups = self._groups()
        self.start = self._sample()

    def _groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {"server": [], "site": []}
        if self.server is not None:
            # Its whole tree: granian's workers and the bundled site run in groups of
            # their own.
            for pid in sorted({self.server.pid} | procs.descendants(self.server.pid)):
                cmd = procs.cmdline(pid)
                if "dummy_site" in cmd:
                    groups["site"].append(pid)
                elif Path(cmd.split(" ", 1)[0]).name != "timeout":
                    groups["server"].append(pid)
        groups["stores"] = _named_pids(("redis-server", "postgres"))
        return groups

    def _sample(self) -> dict[str, float]:
        sample = {name: procs.cpu_seconds(pids) for name, pids in self.groups.items()}
        for pid in self.groups["server"]:
            sample[f"pid{pid}"] = procs.cpu_seconds([pid])
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        sample["load_generator"] = children.ru_utime + children.ru_stime
        busy, total = _busy_ticks()
        ticks = os.sysconf("SC_CLK_TCK")
        sample["machine_busy"] = busy / ticks
        sample["machine_total"] = total / ticks
        sample["wall"] = time.monotonic()
        return sample

    def stop(self, requests: int) -> dict[str, Any]:
        end = self._sample()
        delta = {k: end[k] - self.start[k] for k in end}
        ours = sum(delta[k] for k in ("server", "site", "stores", "load_generator"))
        out = {
            "server_cpu_s": round(delta["server"], 2),
            "site_cpu_s": round(delta["site"], 2),
            "stores_cpu_s": round(delta["stores"], 2),
            "load_generator_cpu_s": round(delta["load_generator"], 2),
            "other_cpu_s": round(max(0.0, delta["machine_busy"] - ours), 2),
        }
        if requests:
            out["server_cpu_ms_per_req"] = round(delta["server"] / requests * 1000, 3)
        # How the load spread over the server's processes (keep-alive connections stay
        # with the worker that accepted them).
        out["server_cpu_by_process"] = sorted(
            (round(v, 2) for k, v in delta.items() if k.startswith("pid") and v > 0.05),
            reverse=True,
        )
        return out


# -- the stores -----------------------------------------------------------------------------
def _db_url(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def prepare_postgres() -> None:
    """Create the ``bench`` database if missing; empty its ``public`` schema."""
    name = urlsplit(PG_URL).path.lstrip("/")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        for admin in ("postgres", "test", "template1"):
            with contextlib.suppress(psycopg.OperationalError):
                with psycopg.connect(_db_url(PG_URL, admin), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                break
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        conn.execute("CREATE TABLE bench_ceiling (k TEXT PRIMARY KEY, v INTEGER)")


def flush_redis() -> None:
    # Millions of keys take seconds to free: wait for it, so no later run pays for it.
    with redis.Redis.from_url(REDIS_URL, socket_timeout=300) as client:
        client.flushdb()


def truncate_pg(tables: tuple[str, ...] = ("tokens", "refresh_tokens")) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        names = ", ".join(f"oauth2_{t}" for t in tables)
        conn.execute(f"TRUNCATE {names}")


def analyze_pg() -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE oauth2_tokens")
        conn.execute("VACUUM ANALYZE oauth2_refresh_tokens")


# -- the server -----------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    backend: str  # "redis" or "postgres"
    proc: procs.Proc
    port: int
    site_port: int
    config_dir: Path
    env: dict[str, str]
    storage_section: dict[str, Any]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH2_", "PG"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def server_config(
    port: int,
    site_port: int,
    storage: dict[str, Any],
    limits: bool = True,
    http_server: str = SERVER,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from app.settings import DEFAULTS

    clients_file = ROOT / "clients.json.example"
    storage = dict(storage, purge_interval=0)
    server = {"server": http_server, "threads": SERVER_THREADS}
    config = procs.serve_config(
        port, site_port, storage, clients_file, SESSION_SECRET, WORKERS, auth_server=server
    )
    if "limits" in DEFAULTS:
        # Limits stay on (their cost is part of the hot path), set above any bench rate.
        # Every rate limit (any key whose default reads like "600/minute").
        config["limits"] = {
            k: HIGH_LIMIT
            for k, v in DEFAULTS["limits"].items()
            if isinstance(v, str) and re.match(r"^\s*\d+\s*(/|per\b)", v)
        }
        if not limits:
            config["limits"]["enabled"] = False
    if "dpop" in DEFAULTS:
        config["dpop"] = {"iat_window": DPOP_WINDOW}
    if METRICS and "metrics" in DEFAULTS:
        digest = hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()
        config["metrics"] = {"enabled": True, "token_hash": f"sha256${digest}"}
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


def storage_for(backend: str) -> dict[str, Any]:
    if backend == "redis":
        return {"default": REDIS_URL}
    return {"default": REDIS_URL, "tokens": PG_URL, "refresh_tokens": PG_URL}


#: Other ways to serve ``wsgi:app`` (the server-choice experiment); the dummy site is
#: started by the bench for these, as ``wsgi:app`` does not start it.
ALT_SERVERS = {
    "granian": ["granian", "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
                "--port", "{port}", "--log-level", "warning", "wsgi:app"],
    "gunicorn-sync": ["gunicorn", "--workers", "2", "--worker-class", "sync",
                      "--bind", "127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"],
    "gunicorn-gthread": ["gunicorn", "--workers", "2", "--worker-class", "gthread",
                         "--threads", "4", "--keep-alive", "30",
                         "--bind", "127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"],
}  # fmt: skip


def start_site(run_dir: Path) -> tuple[procs.Proc, int]:
    """The dummy site alone, on a free port (for the in-process and micro benchmarks)."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "app.dummy_site", "--host", "127.0.0.1", "--port", str(port)]
    site = procs.start("site", argv, run_dir, env=clean_env(), cwd=str(ROOT), port=port)
    return site, port


def start_reference(run_dir: Path) -> procs.Proc:
    """The reference (bare Flask on gunicorn sync, as the ``bare`` ceiling) kept running,
    so each target scenario's ratio can be taken against it measured right after."""
    port = procs.free_port()
    template = ALT_SERVERS["gunicorn-sync"]
    argv = [str(BIN / template[0])] + [a.format(port=port) for a in template[1:-1]]
    argv.append("bench.ceiling:bare")
    return procs.start("reference", argv, run_dir, clean_env(), str(ROOT), port, "/")


def start_server(
    run_dir: Path,
    backend: str,
    command: str = "serve",
    limits: bool = LIMITS,
    variant: str | None = None,
) -> Server:
    """``command``: ``serve`` (with ``SERVER``), ``serve-<server>``, or an ``ALT_SERVERS`` key;
    ``variant``: a :data:`VARIANT_CONFIG` key."""
    port, site_port = procs.free_port(), procs.free_port()
    name = f"{backend}-{command}{'' if limits else '-nolimits'}{f'-{variant}' if variant else ''}"
    config_dir = run_dir / f"config-{name}"
    config_dir.mkdir()
    storage = storage_for(backend)
    http_server = command.removeprefix("serve-") if command.startswith("serve-") else SERVER
    extra = VARIANT_CONFIG[variant][0] if variant else None
    config = server_config(port, site_port, storage, limits, http_server, extra)
    (config_dir / "default.json").write_text(json.dumps(config, indent=2))
    env = clean_env({"OAUTH2_CONFIG_DIR": str(config_dir), "OAUTH2_ENV": "development"})
    if command.startswith("serve"):
        argv = [str(BIN / "oauth2-server"), "serve"]
    else:
        site = [sys.executable, "-m", "app.dummy_site", "--host", "127.0.0.1"]
        site += ["--port", str(site_port)]
        procs.start(f"site-{name}", site, run_dir, env=env, cwd=str(ROOT), port=site_port)
        template = ALT_SERVERS[command]
        argv = [str(BIN / template[0])] + [a.format(port=port) for a in template[1:]]
    log(f"starting {command} ({backend} storage) on :{port}, dummy site :{site_port}")
    proc = procs.start(
        f"server-{name}",
        argv,
        run_dir,
        env=env,
        cwd=str(ROOT),
        port=port,
        ready_path="/healthz",
        timeout=60,
    )
    procs.wait_ready(proc, site_port, None, 30)
    return Server(name, backend, proc, port, site_port, config_dir, env, storage)


# -- fixtures -------------------------------------------------------------------------------
class Fixtures:
    """The app's own storage objects (for checks and single records) plus the bulk writers."""

    def __init__(self, server: Server) -> None:
        from app.oauth2.grant_store import GrantStore
        from app.storage import Storage, parse_storage_config
        from app.users import UserStore

        self.server = server
        self.storage = Storage(parse_storage_config(dict(server.storage_section)))
        self.store = GrantStore(self.storage)
        self.users = UserStore(self.storage.users)

    def close(self) -> None:
        self.storage.close()

    def reset(self) -> None:
        flush_redis()
        if self.server.backend == "postgres":
            truncate_pg()

    def user(self, name: str) -> tuple[str, str, str]:
        from app.adapters.base import SiteUser

        uid, display, site_token = loader.site_user(name)
        self.users.remember(SiteUser(id=uid, name=display, site_token=site_token))
        return uid, display, site_token

    def live_token(self, scope: str = loader.SCOPE) -> str:
        """One user token through the app's own ``GrantStore.save_token``."""
        from app.secrets_hash import new_secret

        uid, name, site_token = self.user("bench")
        token = {
            "token_type": "Bearer",
            "access_token": new_secret(32),
            "expires_in": 7200,
            "scope": scope,
            "refresh_token": new_secret(32),
        }
        fields = {
            "client_id": "test",
            "grant_id": new_secret(16),
            "user_id": uid,
            "user_name": name,
            "site_token": site_token,
        }
        self.store.save_token(token, fields)
        return token["access_token"]

    def write_pairs(self, pairs: list[loader.Pair]) -> None:
        if self.server.backend == "redis":
            writer = loader.RedisWriter(REDIS_URL)
            writer.put_pairs(pairs)
            writer.close()
        else:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                loader.pg_copy_pairs(conn, pairs)

    def refresh_pool(self, count: int, name: str = "bench") -> list[str]:
        uid, display, site_token = self.user(name)
        tokens, pairs = loader.known_pairs(count, uid, display, site_token)
        self.write_pairs(pairs)
        # Read samples back through the app's own code: a layout drift fails here.
        for i in (0, count // 2, count - 1):
            found = self.store.find_refresh(tokens[i])
            if found is None or found.user_id != uid:
                raise RuntimeError("bulk-loaded refresh token not found by GrantStore")
        return tokens

    def fill(self, count: int, tag: str, expired: bool = False, tables=None) -> float:
        """Bulk-load ``count`` filler grants; return the seconds it took."""
        t0 = time.monotonic()
        if count:
            if self.server.backend == "redis":
                writer = loader.RedisWriter(REDIS_URL)
                writer.put_pairs(loader.filler_pairs(count, tag, expired=expired))
                writer.close()
                loader.settle(REDIS_URL)  # measure the steady state, not a rehash
                probe = loader.filler_pairs(1, tag)
                first = next(probe)
                if self.storage.tokens.get(first.access_key) is None:
                    raise RuntimeError("bulk-loaded filler token not readable by the app")
            else:
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    loader.pg_fill(
                        conn,
                        count,
                        tag,
                        expired=expired,
                        tables=tables or ("tokens", "refresh_tokens"),
                    )
                if (
                    not expired
                    and self.storage.tokens.get(next(loader.filler_pairs(1, tag)).access_key)
                    is None
                ):
                    raise RuntimeError("generated filler token not readable by the app")
                analyze_pg()
        return time.monotonic() - t0


# -- measuring ------------------------------------------------------------------------------
def wait_quiet() -> dict[str, float]:
    """Wait (at most ``BENCH_QUIET_WAIT`` s) until other work on the machine calms down.

    Between runs the bench's own processes idle, so what keeps the CPUs busy is
    someone else (tests, builds) or the stores' background work.
    """
    t0 = time.monotonic()
    busy = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    while True:
        b0, _ = _busy_ticks()
        time.sleep(0.5)
        b1, _ = _busy_ticks()
        busy = (b1 - b0) / ticks / 0.5  # cores busy
        if busy < 0.25 or time.monotonic() - t0 >= QUIET_WAIT:
            break
    return {"busy_cores_before": round(busy, 2), "waited_s": round(time.monotonic() - t0, 1)}


def measure(
    port: int,
    load: wrk.Load,
    server: procs.Proc | None = None,
    warm: wrk.Load | None = None,
    seconds: float = SECONDS,
) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    for _ in range(1 + (RETRIES if server is not None else 0)):
        quiet = wait_quiet()
        if WARMUP > 0:
            wrk.run(port, warm or load, WARMUP)
        meter = CpuMeter(server)
        result = wrk.run(port, load, seconds)
        result.update(meter.stop(result["requests"]))
        result.update(quiet)
        result["one_worker"] = one_worker(result)
        attempts.append(result)
        if not result["one_worker"] or load.single_use:
            break  # (a refresh pool or a file of DPoP proofs is used up by one run)
        log(f"  all connections stuck to one worker ({result['server_cpu_by_process']}): again")
    best = attempts[-1]
    if len(attempts) > 1:
        best["imbalanced_attempts"] = [
            {k: a[k] for k in ("rps", "p50_ms", "p99_ms", "server_cpu_by_process")}
            for a in attempts[:-1]
        ]
    return best


def one_worker(result: dict[str, Any]) -> bool:
    """Whether one server process did (nearly) all the work: wrk's keep-alive connections
    all went to the worker that accepted them first, and the other worker idled."""
    by_process = result.get("server_cpu_by_process") or []
    total = sum(by_process)
    return len(by_process) >= 1 and total > 1 and by_process[0] / total > 0.85


def run_flow(
    server: Server | nodepeer.Peer, openid: bool = False, peer: bool = False
) -> dict[str, Any]:
    quiet = wait_quiet()
    meter = CpuMeter(server.proc)
    argv = [
        sys.executable,
        "-m",
        "bench.flow",
        "--port",
        str(server.port),
        "--users",
        str(USERS),
        "--seconds",
        str(SECONDS),
        "--warmup",
        str(WARMUP),
        *(["--openid"] if openid else []),
        *(["--peer"] if peer else []),
    ]
    done = subprocess.run(  # noqa: S603
        argv,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=SECONDS + WARMUP + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flow driver failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The meter ran through the warm-up too: price it by every flow the driver finished.
    done_flows = result.get("flows_all", result["flows"])
    result.update(meter.stop(done_flows * result["requests_per_flow"]))
    result.update(quiet)
    result["one_worker"] = one_worker(result)
    return result


def basic_test() -> str:
    return wrk.basic("test", "hunter2")


FORM = "application/x-www-form-urlencoded"
#: The scope of the token the UserInfo scenario presents.
USERINFO_SCOPE = "openid profile email"


def cc_load() -> wrk.Load:
    return wrk.Load(
        "/token",
        "POST",
        "grant_type=client_credentials",
        {"Authorization": basic_test(), "Content-Type": FORM},
    )


def introspect_load(token: str) -> wrk.Load:
    return wrk.Load(
        "/introspect",
        "POST",
        f"token={token}&token_type_hint=access_token",
        {"Authorization": basic_test(), "Content-Type": FORM},
    )


def gateway_load(token: str) -> wrk.Load:
    return wrk.Load("/api/profile", "GET", None, {"Authorization": f"Bearer {token}"})


def dpop_token(port: int, fx: Fixtures, key: Any) -> str:
    """A DPoP-bound access token of the bench user, bound by the server itself: a
    refresh (of a pre-issued refresh token) with a proof of ``key``."""
    from urllib.request import Request, urlopen

    refresh = fx.refresh_pool(1)[0]
    url = f"http://127.0.0.1:{port}/token"
    request = Request(  # noqa: S310 - loopback, our own server
        url,
        data=f"grant_type=refresh_token&refresh_token={refresh}".encode(),
        headers={
            "Authorization": basic_test(),
            "Content-Type": FORM,
            "DPoP": dpop.proof(key, "POST", url),
        },
    )
    with urlopen(request, timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
    if body.get("token_type") != "DPoP":
        raise RuntimeError(f"the server did not bind the token to the DPoP key: {body}")
    return str(body["access_token"])


def gateway_dpop_load(server: Server, fx: Fixtures, run_dir: Path, label: str) -> dict[str, Any]:
    """The gateway with ``Authorization: DPoP`` and a fresh proof per request; returns
    the measure's result (a bound token, proofs signed for warm-up and run apart)."""
    key = dpop.new_key()
    token = dpop_token(server.port, fx, key)
    url = f"http://127.0.0.1:{server.port}/api/profile"
    warm_n = int(DPOP_RATE_BOUND * max(WARMUP, 1))
    run_n = int(DPOP_RATE_BOUND * SECONDS * 1.2)
    t0 = time.monotonic()
    signed = dpop.proofs(key, "GET", url, warm_n + run_n, token)
    log(f"  {label}: {warm_n + run_n} DPoP proofs signed in {time.monotonic() - t0:.1f}s")
    files = [
        dpop.write_proofs(run_dir / f"dpop-{label}-{part}.txt", items)
        for part, items in (("warm", signed[:warm_n]), ("run", signed[warm_n:]))
    ]
    headers = {"Authorization": f"DPoP {token}"}
    warm = wrk.Load("/api/profile", headers=headers, proofs_file=files[0])
    load = wrk.Load("/api/profile", headers=headers, proofs_file=files[1])
    return measure(server.port, load, server.proc, warm)


def userinfo_load(token: str) -> wrk.Load:
    """UserInfo: the token check, then the user's claims from the site (the dummy site)."""
    return wrk.Load("/userinfo", "GET", None, {"Authorization": f"Bearer {token}"})


def refresh_pool_sizes(seconds: float = SECONDS) -> tuple[int, int]:
    """Refresh tokens for a warm-up and for a run of ``seconds`` (each is sent once)."""
    return int(REFRESH_RATE_BOUND * max(WARMUP, 1)), int(REFRESH_RATE_BOUND * seconds * 1.2)


def refresh_loads(
    fx: Fixtures, run_dir: Path, label: str, seconds: float = SECONDS
) -> tuple[wrk.Load, wrk.Load]:
    """The refresh grant's warm-up and run loads: a fresh pool, its two parts in files."""
    warm_n, run_n = refresh_pool_sizes(seconds)
    t0 = time.monotonic()
    tokens = fx.refresh_pool(warm_n + run_n)
    log(f"  {label}: {warm_n + run_n} refresh tokens pre-issued in {time.monotonic() - t0:.1f}s")
    headers = {"Authorization": basic_test()}
    warm, load = (
        wrk.Load("/token", headers=headers, tokens_file=loader.write_tokens(path, items))
        for path, items in (
            (run_dir / f"refresh-{label}-warm.txt", tokens[:warm_n]),
            (run_dir / f"refresh-{label}-run.txt", tokens[warm_n:]),
        )
    )
    return warm, load


def token_scenarios(
    server: Server,
    fx: Fixtures,
    run_dir: Path,
    label: str,
    with_flow: bool,
    results: dict[str, Any] | None = None,
    peer: nodepeer.Peer | None = None,
    only: tuple[str, ...] | None = None,
    reference: procs.Proc | None = None,
) -> dict[str, dict[str, Any]]:
    """client credentials, refresh, introspection, gateway (and the code flow) on one store;
    with ``peer``, each scenario's counterpart on the peer right after it; with
    ``reference`` (:func:`start_reference`), each target scenario's reference run right
    before and after it (``ratio_adjacent``); ``only``: just those scenarios."""
    out: dict[str, dict[str, Any]] = {}
    failures = results if results is not None else {}
    access = fx.live_token()
    # The refresh pool: every token is presented once; warm-up and run use separate tokens.
    warm_n, run_n = refresh_pool_sizes()
    refresh_warm, refresh = refresh_loads(fx, run_dir, label)
    if peer is not None:
        # The same pool sizes, through oidc-provider's own models (mint.js).
        minted = attempt(failures, "peer fixtures", lambda: peer.mint(run_dir, warm_n, run_n))
        if minted is None:
            peer = None
        else:
            log(f"  peer: {warm_n + run_n} refresh tokens minted in {minted:.1f}s")
    plan = [
        ("client_credentials", lambda: measure(server.port, cc_load(), server.proc)),
        ("refresh", lambda: measure(server.port, refresh, server.proc, refresh_warm)),
        ("introspect", lambda: measure(server.port, introspect_load(access), server.proc)),
        ("gateway", lambda: measure(server.port, gateway_load(access), server.proc)),
    ]
    if with_flow:
        plan.append(("gateway_dpop", lambda: gateway_dpop_load(server, fx, run_dir, label)))
        openid_access = fx.live_token(USERINFO_SCOPE)
        plan += [
            ("userinfo", lambda: measure(server.port, userinfo_load(openid_access), server.proc)),
            ("flow", lambda: run_flow(server)),
            ("flow_openid", lambda: run_flow(server, openid=True)),
        ]
    if only is not None:
        plan = [step for step in plan if step[0] in only]
    for name, fn in plan:
        around = reference if name in TARGETS else None
        before = None
        if around is not None:
            before = reference_run(around, failures, f"reference before {label} {name}")
        result = attempt(failures, f"{label} {name}", fn)
        if result is not None:
            out[name] = result
            rate = result.get("flows_per_s", result["rps"])
            log(
                f"  {label} {name}: {rate:,.0f}/s p50 {result['p50_ms']:.1f} ms "
                f"p99 {result['p99_ms']:.1f} ms errors {result['errors']}"
            )
        if around is not None and result is not None:
            after = reference_run(around, failures, f"reference after {label} {name}")
            adjacent(result, [before, after])
        counterpart = nodepeer.COUNTERPARTS.get(name)
        if peer is not None and counterpart and counterpart not in peer.results:
            # Interleaved: the peer's counterpart in the same minute as ours.
            found = attempt(
                failures, f"peer {counterpart}", lambda c=counterpart: peer_run(peer, c)
            )
            if found is not None:
                peer.results[counterpart] = found
                rate = found.get("flows_per_s", found["rps"])
                log(
                    f"  peer {counterpart}: {rate:,.0f}/s p50 {found['p50_ms']:.1f} ms "
                    f"p99 {found['p99_ms']:.1f} ms errors {found['errors']}"
                )
    return out


def reference_run(
    reference: procs.Proc, failures: dict[str, Any], step: str
) -> dict[str, Any] | None:
    """One run of the reference (bare Flask on gunicorn sync), or None if it failed."""
    assert reference.port is not None
    port = reference.port
    found = attempt(failures, step, lambda: measure(port, wrk.Load("/"), reference))
    if found is None or not found.get("rps"):
        return None
    keep = ("rps", "p99_ms", "server_cpu_ms_per_req", "errors", "busy_cores_before", "waited_s")
    return {k: found[k] for k in keep if k in found}


def adjacent(result: dict[str, Any], runs: list[dict[str, Any] | None]) -> None:
    """A scenario's ratio to the reference measured right before and right after it (the
    mean of those that ran). The VM's speed drifts by 20-40% over the minutes between
    the ceilings at the start and a scenario; a reference seconds away on both sides
    sees the same machine, and what a scenario leaves behind (the store's background
    work, a flush) lands on the run after it as much as the one before it helped."""
    found = [r for r in runs if r is not None]
    if not found or not result.get("rps"):
        return
    rps = sum(r["rps"] for r in found) / len(found)
    result["reference_adjacent"] = {"rps": round(rps, 1), "runs": found}
    result["ratio_adjacent"] = round(result["rps"] / rps, 3)
    log(f"  reference around it: {rps:,.0f}/s, ratio {result['ratio_adjacent']:.2f}")


def peer_run(peer: nodepeer.Peer, scenario: str) -> dict[str, Any]:
    if scenario in nodepeer.FLOWS:
        return run_flow(peer, openid=scenario == "flow_openid", peer=True)
    load, warm = peer.loads(scenario)
    return measure(peer.port, load, peer.proc, warm)


def review_page(server: Server, fx: Fixtures) -> dict[str, Any]:
    """Median server time of GET /review for a user holding 1,000 grants (idle server)."""
    import requests

    from app.dummy_site import DEV_KEY, make_token

    uid, name, _ = loader.site_user("review-user")
    now = time.time()
    pairs = []
    for i in range(REVIEW_GRANTS):
        client = "test" if i % 2 else "sp-demo"
        pairs.append(
            loader.pair(
                os.urandom(16).hex(),
                os.urandom(16).hex(),
                client,
                uid,
                name,
                make_token(DEV_KEY, name),
                os.urandom(8).hex(),
                now,
            )
        )
    fx.write_pairs(pairs)
    if fx.server.backend == "postgres":
        analyze_pg()
    base = f"http://127.0.0.1:{server.port}"
    with requests.Session() as agent:
        page = agent.get(f"{base}/login", timeout=10).text
        from bench.flow import hidden_inputs

        form = hidden_inputs(page)
        form.update(username=name, password="password")  # noqa: S106
        answer = agent.post(f"{base}/login", data=form, allow_redirects=False, timeout=10)
        if answer.status_code != 302:
            raise RuntimeError(f"review: login answered {answer.status_code}")
        times, statuses, size = [], set(), 0
        for i in range(25):
            t0 = time.perf_counter()
            response = agent.get(f"{base}/review", timeout=30)
            elapsed = time.perf_counter() - t0
            statuses.add(response.status_code)
            size = len(response.content)
            if i >= 5:
                times.append(elapsed * 1000)
    shown = response.text.count('class="grant"')
    return {
        "grants": REVIEW_GRANTS,
        "records": 2 * REVIEW_GRANTS,
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(sorted(times)[int(0.9 * len(times))], 2),
        "min_ms": round(min(times), 2),
        "samples": len(times),
        "statuses": sorted(statuses),
        "errors": sum(1 for s in statuses if s != 200),
        "bytes": size,
        "clients_listed": shown,
    }


def purge_under_load(server: Server, fx: Fixtures, run_dir: Path) -> dict[str, Any]:
    """``oauth2-server purge`` of expired rows while the gateway scenario runs (Postgres)."""
    fx.reset()
    access = fx.live_token()
    load_s = fx.fill(PURGE_ROWS, "expired", expired=True, tables=("tokens",))
    log(f"  purge: {PURGE_ROWS:,} expired rows generated in {load_s:.1f}s")
    load = gateway_load(access)
    wrk.run(server.port, load, WARMUP or 1)
    baseline = [wrk.run(server.port, load, 1, quantiles=True) for _ in range(int(SECONDS))]
    argv = [str(BIN / "oauth2-server"), "purge"]
    t0 = time.monotonic()
    purge = subprocess.Popen(  # noqa: S603
        argv,
        env=server.env,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    during = []
    try:
        while purge.poll() is None and time.monotonic() - t0 < 600:
            during.append(wrk.run(server.port, load, 1, quantiles=True))
    finally:
        if purge.poll() is None:
            os.killpg(purge.pid, signal.SIGTERM)
        output = purge.communicate(timeout=30)[0]
    purge_s = time.monotonic() - t0
    with psycopg.connect(PG_URL) as conn:
        left = conn.execute("SELECT count(*) FROM oauth2_tokens").fetchone()[0]

    def summary(slices: list[dict[str, Any]]) -> dict[str, Any]:
        requests = sum(s["requests"] for s in slices)
        secs = sum(s["seconds"] for s in slices)
        return {
            "requests": requests,
            "rps": requests / secs if secs else 0.0,
            "p99_ms": round(wrk.merged_quantile(slices, 99.0), 2),
            "p50_ms": round(wrk.merged_quantile(slices, 50.0), 2),
            "errors": sum(s["errors"] for s in slices),
            "slices": len(slices),
        }

    before, while_purging = summary(baseline), summary(during)
    ratio = while_purging["p99_ms"] / before["p99_ms"] if before["p99_ms"] else None
    return {
        "rows": PURGE_ROWS,
        "purge_seconds": round(purge_s, 2),
        "purge_exit": purge.returncode,
        "purge_output": output.strip().splitlines()[-6:],
        "rows_left_in_tokens": left,
        "gateway_without": before,
        "gateway_during": while_purging,
        "p99_ratio": round(ratio, 2) if ratio else None,
    }


# -- the run --------------------------------------------------------------------------------
def ceilings(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    env = clean_env({"BENCH_REDIS_URL": REDIS_URL, "BENCH_PG_URL": PG_URL})
    apps = [
        ("bare", "bench.ceiling:bare"),
        ("redis", "bench.ceiling:redis_app"),
        ("postgres", "bench.ceiling:postgres_app"),
    ]
    runs = [(name, "gunicorn-sync", target) for name, target in apps]
    # On granian (the server of the main runs), not the reference: the bare app, and the
    # same plus one Redis GET (the least a token check costs: the token scenarios' floor).
    runs += [
        ("bare_granian", "granian", "bench.ceiling:bare"),
        ("redis_get_granian", "granian", "bench.ceiling:redis_get_app"),
    ]
    # The least a gateway call costs on this box: a Flask view fetching the dummy site's
    # ``/info`` (what ``/api/profile`` calls) through the gateway's libcurl client, served
    # as ``serve`` serves (granian, its workers x threads), the site beside it sharing the cores.
    site, site_port = start_site(run_dir)
    _, _, site_token = loader.site_user("bench")
    proxy_env = {**env, "BENCH_SITE_URL": f"http://127.0.0.1:{site_port}/info?token={site_token}"}
    threads = ["--blocking-threads", str(SERVER_THREADS)]
    runs.append(("proxy_granian", "granian", "bench.ceiling:proxy_app"))
    try:
        for name, server, target in runs:
            port = procs.free_port()
            template = ALT_SERVERS[server]
            argv = [str(BIN / template[0])] + [a.format(port=port) for a in template[1:-1]]
            argv += threads if name == "proxy_granian" else []
            proc_env = proxy_env if name == "proxy_granian" else env
            proc = procs.start(
                f"ceiling-{name}", argv + [target], run_dir, proc_env, str(ROOT), port, "/"
            )
            try:
                out[name] = measure(port, wrk.Load("/"), proc)
            finally:
                procs.stop(proc)
            r = out[name]
            log(
                f"ceiling {name}: {r['rps']:,.0f} req/s p99 {r['p99_ms']:.1f} ms"
                f" errors {r['errors']}"
            )
    finally:
        procs.stop(site)
    return out


#: What ``oauth2-server serve`` can run (``auth_server.server``).
SERVES = ("gunicorn", "granian")


def alt_server_runs(run_dir: Path, results: dict[str, Any]) -> None:
    """The server-choice experiment: the Redis token scenarios on other WSGI servers."""
    known = [f"serve-{s}" for s in SERVES] + list(ALT_SERVERS)
    for command in SERVERS:
        if command not in known or command == f"serve-{SERVER}":
            log(f"skipping {command!r} in BENCH_SERVERS (known: {', '.join(known)}; not SERVER)")
            continue
        server = start_server(run_dir, "redis", command)
        fx = Fixtures(server)
        try:
            fx.reset()
            scenarios = token_scenarios(server, fx, run_dir, f"redis-{command}", False, results)
            results.setdefault("servers", {})[command] = scenarios
        finally:
            fx.close()
            procs.stop_all()


def variant_runs(run_dir: Path, results: dict[str, Any]) -> None:
    """The Redis scenarios a setting changes, served again with it (``BENCH_VARIANTS``)."""
    for variant in VARIANTS:
        if variant not in VARIANT_CONFIG:
            log(f"skipping {variant!r} in BENCH_VARIANTS (known: {', '.join(VARIANT_CONFIG)})")
            continue
        server = start_server(run_dir, "redis", variant=variant)
        fx = Fixtures(server)
        try:
            fx.reset()
            label = f"redis-{variant}"
            only = VARIANT_CONFIG[variant][1]
            reference = attempt(results, "reference", lambda: start_reference(run_dir))
            scenarios = token_scenarios(
                server, fx, run_dir, label, True, results, only=only, reference=reference
            )
            results.setdefault("variants", {})[variant] = scenarios
            results.setdefault("server_log", {})[label] = server_log_summary(server.proc)
        finally:
            fx.close()
            procs.stop_all()


def scrape_metrics(server: Server) -> dict[str, Any]:
    """Scrape ``/metrics`` once (with the bench's token): the metrics were on and counted."""
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        text = answer.read().decode()
    samples = [x for x in text.splitlines() if x and not x.startswith("#")]
    counted = sum(
        float(x.rsplit(" ", 1)[1]) for x in samples if x.startswith("oauth2_http_requests_total{")
    )
    return {"status": 200, "samples": len(samples), "requests_counted": int(counted)}


def run(run_dir: Path) -> dict[str, Any]:
    wrk.ensure_wrk()
    prepare_postgres()
    flush_redis()
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "seconds": SECONDS,
            "warmup": WARMUP,
            "full": FULL,
            "wrk_threads": wrk.THREADS,
            "wrk_connections": wrk.CONNECTIONS,
            "flow_users": USERS,
            "sizes": SIZES,
            "purge_rows": PURGE_ROWS,
            "server": f"oauth2-server serve ({SERVER}, 2 workers)",
            "limits": f"enabled, every limit {HIGH_LIMIT}" if LIMITS else "disabled",
            "metrics": "enabled (scraped with a token)" if METRICS else "disabled",
            "request_log": "one line per request, text, to the server's log file",
            "variants": VARIANTS,
        },
        "ceiling": {},
        "scenarios": {},
        "growth": {},
    }
    if nodepeer.ENABLED and "redis" in PARTS:
        # Before anything runs: missing npm packages stop the bench here, loudly.
        results["settings"]["peer"] = {
            "name": nodepeer.NAME,
            "versions": nodepeer.check_installed(),
            "workers": nodepeer.WORKERS,
            "storage": nodepeer.redis_url(REDIS_URL),
            "compared": nodepeer.COUNTERPARTS,
        }
    started = time.monotonic()
    if "ceiling" in PARTS:
        results["ceiling"] = attempt(results, "ceilings", lambda: ceilings(run_dir)) or {}
    for backend in ("redis", "postgres"):
        if backend in PARTS:
            run_backend(backend, run_dir, results)
    if VARIANTS and "redis" in PARTS:
        attempt(results, "variants", lambda: variant_runs(run_dir, results))
    if SERVERS:
        attempt(results, "other servers", lambda: alt_server_runs(run_dir, results))
    if "partner" in PARTS:
        from bench import partner  # imports this module: only once it is loaded

        results["partner"] = attempt(results, "busy partner", lambda: partner.measure(run_dir))
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    add_ratios(results)
    add_peer_ratios(results)
    return results


def server_log_summary(proc: procs.Proc) -> dict[str, Any]:
    text = proc.log_tail(2_000_000)
    lines = text.splitlines()
    bad = [
        x
        for x in lines
        if "Traceback" in x
        or " ERROR " in x
        or "[ERROR]" in x
        or "CRITICAL" in x
        or "WORKER TIMEOUT" in x
    ]
    return {"lines": len(lines), "error_lines": len(bad), "first_errors": bad[:5]}


def run_backend(backend: str, run_dir: Path, results: dict[str, Any]) -> None:
    """Every scenario, growth step, the review page and the purge on one storage layout."""
    server = start_server(run_dir, backend)
    fx = Fixtures(server)
    peer = None
    reference = None
    if backend == "redis":
        reference = attempt(results, "reference", lambda: start_reference(run_dir))
    if backend == "redis" and nodepeer.ENABLED:
        versions = results["settings"]["peer"]["versions"]
        peer = attempt(results, "peer start", lambda: nodepeer.start(run_dir, REDIS_URL, versions))
        if peer is not None:
            log(f"peer {nodepeer.NAME} {versions['oidc-provider']} on :{peer.port}")
    try:
        growth: dict[str, Any] = {}
        for size in SIZES if "growth" in PARTS else [0]:

            def stage(size: int = size) -> None:
                fx.reset()
                load_s = fx.fill(size, f"live{size}")
                if size:
                    log(f"{backend}: {size:,} live token pairs bulk-loaded in {load_s:.1f}s")
                label = f"{backend}-{size}"
                scenarios = token_scenarios(
                    server,
                    fx,
                    run_dir,
                    label,
                    size == 0,
                    results,
                    peer if size == 0 else None,
                    reference=reference if size == 0 else None,
                )
                growth[str(size)] = {"load_seconds": round(load_s, 1), **scenarios}
                if size == 0:
                    results["scenarios"][backend] = scenarios

            attempt(results, f"{backend} with {size} tokens", stage)
        results["growth"][backend] = growth
        if peer is not None:
            results["peer"] = {
                **results["settings"]["peer"],
                "scenarios": peer.results,
                "server_log": server_log_summary(peer.proc),
            }
            procs.stop(peer.proc)
            with contextlib.suppress(Exception):
                nodepeer.flush(peer.redis_url)
        if "site" in PARTS and backend == "redis":
            _, _, site_token = loader.site_user("bench")
            site = wrk.Load(f"/info?token={site_token}")
            found = attempt(
                results, "dummy site", lambda: measure(server.site_port, site, server.proc)
            )
            if found:
                results["dummy_site"] = found
                log(f"dummy site alone: {found['rps']:,.0f} req/s")
        if "review" in PARTS:

            def review() -> None:
                fx.reset()
                results.setdefault("review", {})[backend] = review_page(server, fx)
                log(
                    f"review page, {REVIEW_GRANTS} grants ({backend}): "
                    f"{results['review'][backend]['median_ms']} ms median"
                )

            attempt(results, f"review page ({backend})", review)
        if "purge" in PARTS and backend == "postgres":

            def purge() -> None:
                results["purge"] = purge_under_load(server, fx, run_dir)
                p = results["purge"]
                log(
                    f"purge {PURGE_ROWS:,} rows: {p['purge_seconds']}s, gateway p99 "
                    f"{p['gateway_without']['p99_ms']} -> {p['gateway_during']['p99_ms']} ms"
                )

            attempt(results, "purge under load", purge)
        if METRICS:
            found = attempt(results, f"metrics ({backend})", lambda: scrape_metrics(server))
            if found:
                results.setdefault("metrics", {})[backend] = found
        results.setdefault("server_log", {})[backend] = server_log_summary(server.proc)
    finally:
        fx.close()
        procs.stop_all()


def attempt(results: dict[str, Any], step: str, fn: Callable[[], Any]) -> Any:
    """Run one step; on failure record it and go on (the run still ends with a table)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - any failure of one step is reported, not fatal
        log(f"FAILED {step}: {exc!r}")
        results.setdefault("failures", []).append({"step": step, "error": repr(exc)[:2000]})
        return None


def add_ratios(results: dict[str, Any]) -> None:
    bare = results.get("ceiling", {}).get("bare", {}).get("rps")
    if not bare:
        return

    def tag(row: dict[str, Any]) -> None:
        row["ratio"] = round(row["rps"] / bare, 3)

    for row in results["ceiling"].values():
        tag(row)
    for group in ("scenarios", "servers", "variants"):
        for scenarios in (results.get(group) or {}).values():
            if isinstance(scenarios, dict) and "rps" in scenarios:
                tag(scenarios)
                continue
            for row in scenarios.values():
                tag(row)
    for sizes in results.get("growth", {}).values():
        for scenarios in sizes.values():
            for row in scenarios.values():
                if isinstance(row, dict) and "rps" in row:
                    tag(row)
    if "dummy_site" in results:
        tag(results["dummy_site"])
    for row in (results.get("peer") or {}).get("scenarios", {}).values():
        tag(row)


def add_peer_ratios(results: dict[str, Any]) -> None:
    """Each Redis scenario's req/s over its counterpart's on the peer, same window."""
    peer = (results.get("peer") or {}).get("scenarios") or {}
    rows = list((results.get("scenarios", {}).get("redis") or {}).items())
    for scenarios in (results.get("variants") or {}).values():
        rows += list(scenarios.items())
    for name, row in rows:
        other = peer.get(nodepeer.COUNTERPARTS.get(name, ""))
        if other and other.get("flows_per_s", other.get("rps")):
            # Flows: flows/s (the peer's flow takes 8 requests, ours 6).
            ours, theirs = (r.get("flows_per_s", r["rps"]) for r in (row, other))
            row["peer_ratio"] = round(ours / theirs, 3)
            row["peer_scenario"] = nodepeer.COUNTERPARTS[name]


# -- the table ------------------------------------------------------------------------------
def fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    widths = [64, 10, 9, 9, 7, 7, 9, 8, 8, 9]
    head = [
        "scenario", "req/s", "p50 ms", "p99 ms", "errors", "ratio", "ratio adj", "vs peer",
        "target", "cpu ms/r",
    ]  # fmt: skip
    lines.append(fmt_row(head, widths))
    lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))

    notes: list[str] = []
    notes_balance: list[str] = []

    def row(name: str, r: dict[str, Any], target: str = "") -> None:
        rate = r.get("flows_per_s", r.get("rps", 0.0))
        if r.get("one_worker") or r.get("imbalanced_attempts"):
            tries = [round(a["rps"]) for a in r.get("imbalanced_attempts", [])]
            notes_balance.append(
                f"  {name}: {'still ' if r.get('one_worker') else ''}one worker took all "
                f"connections; {'single-worker runs' if tries else 'run'}: "
                f"{tries or round(rate)} req/s"
            )
            name = name + (" *" if r.get("one_worker") else " +")
        if r.get("errors"):
            detail = r.get("statuses") or r.get("errors_by_step") or r.get("socket_errors")
            sample = r.get("first_error") or (r.get("error_samples") or [""])[0]
            notes.append(f"  {name}: {r['errors']} errors {detail} {sample[:120]!r}")
        lines.append(
            fmt_row(
                [
                    name,
                    f"{rate:,.0f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    str(r["errors"]),
                    f"{r['ratio']:.2f}" if "ratio" in r else "-",
                    f"{r['ratio_adjacent']:.2f}" if "ratio_adjacent" in r else "-",
                    f"{r['peer_ratio']:.2f}" if "peer_ratio" in r else "-",
                    target,
                    f"{r['server_cpu_ms_per_req']:.2f}" if "server_cpu_ms_per_req" in r else "-",
                ],
                widths,
            )
        )

    names = {
        "bare": "ceiling: bare Flask, gunicorn sync",
        "redis": "ceiling: + Redis GET+SETEX",
        "postgres": "ceiling: + 1 Postgres write",
        "bare_granian": "ceiling: bare Flask, granian",
        "redis_get_granian": "ceiling: + 1 Redis GET, granian",
        "proxy_granian": "ceiling: the site's answer proxied, granian",
    }
    for key, r in results.get("ceiling", {}).items():
        row(names.get(key, key), r, "1.00" if key == "bare" else "")
    for backend, scenarios in results.get("scenarios", {}).items():
        for key, r in scenarios.items():
            target = (
                f">={FLOW_TARGET:.0f}/s"
                if key == "flow"
                else (f">={TARGETS[key]:.2f}" if key in TARGETS else "")
            )
            row(f"[{backend}, {SERVER}] {LABELS[key]}", r, target)
    peer = results.get("peer") or {}
    for key, r in (peer.get("scenarios") or {}).items():
        row(f"[peer, redis, node] {PEER_LABELS[key]}", r)
    for variant, scenarios in (results.get("variants") or {}).items():
        for key, r in scenarios.items():
            target = f">={TARGETS[key]:.2f}" if key in TARGETS else ""
            row(f"[redis, {SERVER}, {variant}] {LABELS[key]}", r, target)
    for command, scenarios in (results.get("servers") or {}).items():
        for key, r in scenarios.items():
            row(f"[redis, {command}] {LABELS[key]}", r, f">={TARGETS.get(key, 0):.2f}")
    if "dummy_site" in results:
        row("dummy site /info alone (1 process)", results["dummy_site"])
    if peer:
        versions = peer["versions"]
        others = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "oidc-provider")
        lines += [
            "",
            f"Peer: {peer['name']} {versions.get('oidc-provider')} ({others}), "
            f"{peer['workers']} workers of node:cluster, Redis {peer['storage']}, each run right "
            "after ours; vs peer = our req/s / its req/s (flows/s for the flows; the gateway "
            "and UserInfo against its UserInfo).",
        ]
    if any(
        "ratio_adjacent" in r
        for g in ("scenarios", "variants")
        for sc in (results.get(g) or {}).values()
        for r in sc.values()
    ):
        lines += [
            "",
            "ratio: req/s / the bare reference at the start of the run; ratio adj: / the same "
            "reference measured right before and after the scenario (the VM's speed drifts).",
        ]
    if notes:
        lines += ["", "Errors (non-2xx answers and failed flows):", *notes]
    if notes_balance:
        lines += [
            "",
            "Worker imbalance (+: measured again after a run where one gunicorn worker held all "
            "16 keep-alive connections; *: every try was so):",
            *notes_balance,
        ]
    if results.get("growth"):
        lines.append("")
        lines.append(
            "Growth: req/s by live token pairs in the store (change vs empty; target within 10%)"
        )
        for backend, sizes in results["growth"].items():
            keys = list(sizes)
            for name in ("client_credentials", "refresh", "introspect", "gateway"):
                if not keys or name not in sizes[keys[0]]:
                    continue
                base = sizes[keys[0]][name]["rps"]
                cells = []
                for k in keys:
                    r = sizes[k].get(name)
                    if r is None:
                        cells.append(f"{int(k):>9,}: failed")
                        continue
                    if r.get("errors") and k != keys[0]:
                        lines.append(
                            f"  ! [{backend}] {name} at {k}: {r['errors']} errors "
                            f"{r.get('statuses')} {r.get('first_error', '')[:100]!r}"
                        )
                    change = "" if k == keys[0] else f" ({(r['rps'] / base - 1) * 100:+.0f}%)"
                    mark = (
                        "*" if r.get("one_worker") else "+" if r.get("imbalanced_attempts") else ""
                    )
                    cells.append(
                        f"{int(k):>9,}: {r['rps']:,.0f}{mark}{change} p99 {r['p99_ms']:.1f}"
                    )
                lines.append(f"  [{backend}] {LABELS[name]:<32} " + " | ".join(cells))
    for failure in results.get("failures", []):
        lines.append(f"FAILED {failure['step']}: {failure['error'][:300]}")
    for backend, r in (results.get("review") or {}).items():
        lines.append(
            f"Review page, {r['grants']} grants [{backend}]: median {r['median_ms']} ms, "
            f"p90 {r['p90_ms']} ms (target < 50 ms), statuses {r['statuses']}"
        )
    if results.get("partner"):
        from bench import partner

        lines.append(partner.line(results["partner"]))
    if "purge" in results:
        p = results["purge"]
        lines.append(
            f"Purge of {p['rows']:,} expired rows [postgres]: {p['purge_seconds']} s; "
            f"gateway p99 {p['gateway_without']['p99_ms']} ms without, "
            f"{p['gateway_during']['p99_ms']} ms during "
            f"(x{p['p99_ratio']}, target < 2), req/s {p['gateway_without']['rps']:,.0f} -> "
            f"{p['gateway_during']['rps']:,.0f}, errors {p['gateway_during']['errors']}"
        )
    flow = results.get("scenarios", {}).get("redis", {}).get("flow")
    if flow:
        lines.append(
            f"Flow driver: {flow['driver_cpu_s']} CPU s over {flow['seconds']} s "
            f"({flow['driver_cpu_share'] * 100:.0f}% of one core, "
            f"{flow['driver_cpu_ms_per_flow']} ms per flow); step p50 ms {flow['step_p50_ms']}"
        )
    bare = (results.get("variants") or {}).get("no-observability") or {}
    cells = []
    for key, r in bare.items():
        main = (results.get("scenarios", {}).get("redis") or {}).get(key) or {}
        on, off = main.get("server_cpu_ms_per_req"), r.get("server_cpu_ms_per_req")
        if on and off:
            cells.append(f"{key} {on:.3f}/{off:.3f} ms ({(on / off - 1) * 100:+.0f}%)")
    if cells:
        lines.append(
            "Metrics + request line, server CPU per request on/off (target <= +5%): "
            + "; ".join(cells)
        )
    for backend, m in (results.get("metrics") or {}).items():
        lines.append(
            f"Metrics [{backend}]: /metrics answered {m['status']} at the end, {m['samples']} "
            f"samples, {m['requests_counted']:,} requests counted"
        )
    for backend, summary in (results.get("server_log") or {}).items():
        if summary["error_lines"]:
            lines.append(
                f"Server log [{backend}]: {summary['error_lines']} error lines, e.g. "
                f"{summary['first_errors'][:2]}"
            )
    return "\n".join(lines)


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-bench-"))

    log(
        f"logs in {run_dir}; {SECONDS:g}s per run after {WARMUP:g}s warm-up; "
        f"sizes {SIZES}{' (BENCH_FULL)' if FULL else ''}"
    )
    cleanups: list[Callable[[], object]] = [flush_redis, truncate_pg]
    if nodepeer.ENABLED:
        cleanups.append(lambda: nodepeer.flush(nodepeer.redis_url(REDIS_URL)))
    try:
        with procs.stopping_all(*cleanups):
            results = run(run_dir)
    except KeyboardInterrupt:
        log("interrupted: everything stopped")
        return 130
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    print(f"\nwritten: {RESULTS} ({results['elapsed_seconds']} s)")
    return 0
