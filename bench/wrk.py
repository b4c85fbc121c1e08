"""Running ``wrk`` with the bench's Lua scripts and reading back its JSON line."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "lua"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))


def ensure_wrk() -> str:
    """Return the ``wrk`` binary, installing the Debian package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing it with apt-get (Debian package wrk)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, check=False).returncode != 0:  # noqa: S603
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True)  # noqa: S603
        subprocess.run(install, env=env, check=True)  # noqa: S603
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed; install it (apt-get install wrk)")
    return found


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Load:
    """One wrk request shape."""

    path: str
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tokens_file: Path | None = None  # refresh grant: one token a line, each used once
    proofs_file: Path | None = None  # DPoP: one proof a line, each sent once (lua/dpop.lua)

    def env(self) -> dict[str, str]:
        env = {
            "BENCH_LUA_DIR": str(LUA),
            "BENCH_METHOD": self.method,
            "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in self.headers.items()),
        }
        if self.body is not None:
            env["BENCH_BODY"] = self.body
        if self.tokens_file is not None:
            env["BENCH_TOKENS"] = str(self.tokens_file)
        if self.proofs_file is not None:
            env["BENCH_PROOFS"] = str(self.proofs_file)
        return env

    @property
    def single_use(self) -> bool:
        """Whether each request sends a line of a file once (a run uses the file up)."""
        return self.tokens_file is not None or self.proofs_file is not None

    @property
    def script(self) -> Path:
        if self.proofs_file:
            return LUA / "dpop.lua"
        return LUA / ("refresh.lua" if self.tokens_file else "request.lua")


def run(
    port: int,
    load: Load,
    seconds: float,
    threads: int = THREADS,
    connections: int = CONNECTIONS,
    quantiles: bool = False,
) -> dict[str, Any]:
    """Run wrk once; return its numbers (latencies in ms, errors summed)."""
    env = {**os.environ, **load.env(), "BENCH_THREADS": str(threads)}
    if quantiles:
        env["BENCH_QUANTILES"] = "1"
    argv = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(load.script),
        f"http://127.0.0.1:{port}{load.path}",
    ]
    done = subprocess.run(  # noqa: S603
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    seconds_run = raw["duration_us"] / 1e6
    errors = (
        sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors"))
        + raw["timeouts"]
    )
    result = {
        "requests": raw["requests"],
        "seconds": round(seconds_run, 2),
        "rps": raw["requests"] / seconds_run if seconds_run else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "non_2xx": raw["status_errors"],
        "socket_errors": {
            k: raw[k]
            for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
            if raw[k]
        },
    }
    if raw.get("statuses"):
        result["statuses"] = raw["statuses"]
        result["first_error"] = raw.get("first_error", "")
    if "exhausted" in raw:
        result["pool_exhausted"] = raw["exhausted"]
    if quantiles:
        result["quantiles"] = raw["quantiles"]
    return result


def merged_quantile(slices: list[dict[str, Any]], q: float = 99.0) -> float:
    """The ``q`` percentile (ms) of several wrk runs taken together, from their quantiles.

    Each run's latency CDF is interpolated from its sampled quantiles and weighted
    by its request count; the merged CDF is inverted by bisection.
    """
    runs = [(s["requests"], s["quantiles"]) for s in slices if s["requests"] and s["quantiles"]]
    if not runs:
        return 0.0
    total = sum(n for n, _ in runs)

    def cdf_at(x: float) -> float:
        acc = 0.0
        for n, points in runs:
            below = 0.0
            for p, v in points:
                if v <= x:
                    below = p
                else:
                    break
            acc += n * below / 100
        return acc / total

    values = sorted({v for _, points in runs for _, v in points})
    for v in values:
        if cdf_at(v) >= q / 100:
            return v / 1000
    return values[-1] / 1000
