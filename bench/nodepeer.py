"""The side-by-side peer of ``make bench`` (issue 14): panva's node-oidc-provider.

``bench/peer/`` holds a small Node program (``serve.js``: oidc-provider on loopback, two
``node:cluster`` workers, ``NODE_ENV=production``, a Redis adapter after the library's
example) and its exact npm lock; ``bench/peer/peer.json`` is the one description of what
it is configured like (the bench's client, scopes and lifetimes) and of which of its
scenarios each of ours is compared with. ``bench.run`` starts it beside our server in
the Redis run and measures each counterpart right after our scenario (same wrk, same
duration and connections), so both see the same machine in the same minutes.

``BENCH_PEER=off`` leaves it out. When it is on and ``npm ci --prefix bench/peer`` has
not been run (``make bench`` runs it), the bench stops at once and says so.
``BENCH_PEER_REDIS_URL`` (default: the bench's Redis, the next database number) is the
peer's store, flushed at start and end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import procs, wrk

DIR = Path(__file__).resolve().parent / "peer"
CONFIG: dict[str, Any] = json.loads((DIR / "peer.json").read_text())
ENABLED = os.environ.get("BENCH_PEER", "on") not in ("off", "0", "")
WORKERS = 2
NAME = "node-oidc-provider"
#: Our scenario -> the peer's scenario it is compared with (the gateway with UserInfo:
#: the peer has no gateway; both are a bearer check and the user's data).
COUNTERPARTS: dict[str, str] = CONFIG["counterparts"]
#: Scenarios of ours with no peer counterpart yet, and why (reported without a ratio).
WITHOUT_COUNTERPART: dict[str, str] = CONFIG["without_counterpart"]
SCENARIOS = ("client_credentials", "refresh", "introspect", "userinfo", "flow", "flow_openid")
#: Driven by ``bench.flow --peer`` (the rest by wrk).
FLOWS = ("flow", "flow_openid")
FORM = "application/x-www-form-urlencoded"


def redis_url(bench_url: str) -> str:
    """``BENCH_PEER_REDIS_URL``, else the bench's Redis URL with the next database."""
    if os.environ.get("BENCH_PEER_REDIS_URL"):
        return os.environ["BENCH_PEER_REDIS_URL"]
    parts = urlsplit(bench_url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db + 1}"))


def pinned_versions() -> dict[str, str]:
    """The exact versions ``bench/peer/package.json`` asks for."""
    return dict(json.loads((DIR / "package.json").read_text())["dependencies"])


def check_installed() -> dict[str, str]:
    """Node and the locked npm packages, or a loud stop naming the fix."""
    fix = (
        "run `make bench` (it runs `npm ci --prefix bench/peer`), or set BENCH_PEER=off "
        "to leave the node-oidc-provider peer out"
    )
    found: dict[str, str] = {}
    for name, version in pinned_versions().items():
        manifest = DIR / "node_modules" / name / "package.json"
        if not manifest.exists():
            raise SystemExit(f"bench peer: {manifest} is missing; {fix}")
        installed = json.loads(manifest.read_text())["version"]
        if installed != version:
            raise SystemExit(
                f"bench peer: {name} {installed} is installed, package.json pins {version}; {fix}"
            )
        found[name] = installed
    node = shutil.which("node")
    if node is None:
        raise SystemExit(f"bench peer: `node` is not on PATH; {fix}")
    found["node"] = subprocess.run(  # noqa: S603
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return found


def basic() -> str:
    client = CONFIG["client"]
    return wrk.basic(client["client_id"], client["client_secret"])


@dataclass
class Peer:
    """The running peer, its fixtures and what was measured on it."""

    proc: procs.Proc
    port: int
    redis_url: str
    versions: dict[str, str]
    access: str = ""
    userinfo_access: str = ""
    refresh_file: Path | None = None
    refresh_warm_file: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return peer_env(self.port, self.redis_url)

    def mint(self, run_dir: Path, warm_n: int, run_n: int) -> float:
        """The fixtures, through oidc-provider's own models; return the seconds it took."""
        t0 = time.monotonic()
        pool = run_dir / "peer-refresh.txt"
        done = subprocess.run(  # noqa: S603
            [shutil.which("node") or "node", "mint.js", str(warm_n + run_n), str(pool)],
            cwd=DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"peer mint.js failed: {done.stderr[-2000:]}")
        made = json.loads(done.stdout.strip().splitlines()[-1])
        self.access, self.userinfo_access = made["access"], made["userinfo_access"]
        tokens = pool.read_text().split()
        if len(tokens) != warm_n + run_n:
            raise RuntimeError(
                f"peer mint.js wrote {len(tokens)} refresh tokens, not {warm_n + run_n}"
            )
        self.refresh_warm_file = run_dir / "peer-refresh-warm.txt"
        self.refresh_file = run_dir / "peer-refresh-run.txt"
        self.refresh_warm_file.write_text("\n".join(tokens[:warm_n]) + "\n")
        self.refresh_file.write_text("\n".join(tokens[warm_n:]) + "\n")
        return time.monotonic() - t0

    def loads(self, scenario: str) -> tuple[wrk.Load, wrk.Load | None]:
        """The wrk load of one of the peer's scenarios (and its warm-up load, if other)."""
        paths = CONFIG["paths"]
        auth = {"Authorization": basic(), "Content-Type": FORM}
        if scenario == "client_credentials":
            return wrk.Load(paths["token"], "POST", "grant_type=client_credentials", auth), None
        if scenario == "introspect":
            body = f"token={self.access}&token_type_hint=access_token"
            return wrk.Load(paths["introspection"], "POST", body, auth), None
        if scenario == "userinfo":
            bearer = {"Authorization": f"Bearer {self.userinfo_access}"}
            return wrk.Load(paths["userinfo"], "GET", None, bearer), None
        if scenario == "refresh":
            if paths["token"] != "/token":  # noqa: S105 - a path: refresh.lua posts to /token
                raise RuntimeError("peer.json: refresh.lua posts to /token only")
            headers = {"Authorization": basic()}
            return (
                wrk.Load(paths["token"], headers=headers, tokens_file=self.refresh_file),
                wrk.Load(paths["token"], headers=headers, tokens_file=self.refresh_warm_file),
            )
        raise KeyError(scenario)


def peer_env(port: int, redis: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH2_", "PG", "NODE_"))}
    env.update(
        NODE_ENV="production",
        PEER_PORT=str(port),
        PEER_REDIS_URL=redis,
        PEER_WORKERS=str(WORKERS),
    )
    return env


def flush(url: str) -> None:
    import redis

    with redis.Redis.from_url(url, socket_timeout=300) as client:
        client.flushdb()


def start(run_dir: Path, bench_redis_url: str, versions: dict[str, str]) -> Peer:
    """Start the peer on a free loopback port; return once both workers listen."""
    url = redis_url(bench_redis_url)
    flush(url)
    port = procs.free_port()
    argv = [shutil.which("node") or "node", "serve.js"]
    proc = procs.start(
        "peer",
        argv,
        run_dir,
        env=peer_env(port, url),
        cwd=str(DIR),
        port=port,
        ready_path="/.well-known/openid-configuration",
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while proc.log_tail(100_000).count(" listening on ") < WORKERS:
        if time.monotonic() > deadline or not proc.alive():
            procs.stop(proc)
            raise RuntimeError(f"peer workers did not all start:\n{proc.log_tail()}")
        time.sleep(0.1)
    return Peer(proc, port, url, versions)
