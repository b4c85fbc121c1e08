"""Profile the hot paths with py-spy: ``python -m bench.profile [scenario ...]``.

Starts ``oauth2-server serve`` (Redis for every table, the bench's config), drives
one scenario with wrk while ``py-spy record --subprocesses`` samples the gunicorn
workers, and writes ``bench/profiles/<scenario>.txt``: where the workers' time goes
by area (Flask-Limiter, Authlib, redis-py, the upstream proxy, ...; library time
is charged to its caller, e.g. "redis-py <- rate limits") and the top functions
by own and by inclusive time. Only threads holding the GIL are sampled (``--gil``):
this is where the workers' Python CPU goes, not where requests wait. Scenarios:
``gateway``, ``client_credentials`` (default both), ``introspect``, ``refresh``.

py-spy is not a dependency of the project: ``pip install py-spy`` into the venv first.
Needs ptrace (root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loader, procs, run, wrk

OUT = Path(__file__).resolve().parent / "profiles"
SECONDS = float(os.environ.get("BENCH_PROFILE_SECONDS", "15"))

#: (area, substrings of a frame's file path or function), first match wins, leaf first.
AREAS = [
    ("rate limits", ("app/limits/", "/limits/")),
    ("session interface", ("app/sessions.py", "flask/sessions.py", "flask_login")),
    ("templates (jinja2)", ("jinja2",)),
    ("logging", ("logging/__init__.py",)),
    # The adapter's libcurl call is native: its Python frame, SiteClient.request, stands for it.
    (
        "upstream proxy (libcurl/urllib3)",
        ("requests/", "urllib3/", "http/client.py", "request (app/adapters/http.py"),
    ),
    ("redis-py", ("redis/",)),
    ("psycopg", ("psycopg",)),
    ("json", ("json/",)),
    ("authlib", ("authlib/",)),
    ("app code", ("/app/",)),
    ("werkzeug", ("werkzeug/",)),
    ("flask", ("flask/",)),
    ("gunicorn", ("gunicorn/",)),
]


#: Callers that own the library time below them (redis-py under the limiter, ...).
OWNERS = [
    ("rate limits", ("app/limits/", "/limits/")),
    ("audit", ("app/audit.py",)),
    ("session", ("app/sessions.py", "flask_login")),
    ("storage", ("app/storage/",)),
    ("adapter", ("app/adapters/",)),
    ("authlib", ("authlib/",)),
]


def _match(frame: str, table: list[tuple[str, tuple[str, ...]]]) -> str | None:
    for area, needles in table:
        if any(n in frame for n in needles):
            return area
    return None


def area_of(stack: list[str]) -> str:
    """The innermost known area of a sample, with the caller that owns it for libraries."""
    for i in range(len(stack) - 1, -1, -1):
        area = _match(stack[i], AREAS)
        if area is None:
            continue
        if area in ("redis-py", "json", "psycopg", "logging", "upstream proxy (libcurl/urllib3)"):
            for frame in reversed(stack[:i]):
                owner = _match(frame, OWNERS)
                if owner:
                    return f"{area} <- {owner}"
        return area
    return "other (stdlib, interpreter)"


def summarise(raw: Path, requests: int, seconds: float) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        # py-spy raw: "process (pid);thread;frame;frame...": drop the non-frame prefix.
        stack = [f for f in stack_text.split(";") if "(" in f and ".py" in f]
        if not stack:
            continue
        total += count
        own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
        areas[area_of(stack)] += count
    lines = [
        f"samples: {total} over {seconds:.0f} s of load, {requests} requests "
        f"({requests / seconds:,.0f} req/s while sampled)",
        "",
        "Where the workers' CPU goes, by area (innermost known frame, exclusive):",
    ]
    for area, count in areas.most_common():
        lines.append(f"  {count / total * 100:5.1f}%  {area}")
    lines += ["", "Top 30 functions by own time:"]
    for frame, count in own.most_common(30):
        lines.append(f"  {count / total * 100:5.1f}%  {frame}")
    lines += ["", "Top 40 functions by inclusive time:"]
    for frame, count in inclusive.most_common(40):
        lines.append(f"  {count / total * 100:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


def workers(server: run.Server) -> list[int]:
    """The gunicorn workers: children of the master, not the dummy site."""
    pids = sorted(procs.descendants(server.proc.pid))
    master = next((p for p in pids if _ppid(p) == server.proc.pid), None)
    return [p for p in pids if _ppid(p) == master and "dummy_site" not in procs.cmdline(p)]


def _ppid(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def main(argv: list[str]) -> int:
    spy = shutil.which("py-spy", path=str(run.BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is missing: pip install py-spy (into the venv)")
    names = argv or ["gateway", "client_credentials"]
    OUT.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-profile-"))
    run.flush_redis()
    server = run.start_server(run_dir, "redis")
    fx = run.Fixtures(server)
    try:
        fx.reset()
        access = fx.live_token()
        for name in names:
            if name == "refresh":
                tokens = fx.refresh_pool(int(run.REFRESH_RATE_BOUND * (SECONDS + 5)))
                load = wrk.Load(
                    "/token",
                    headers={"Authorization": run.basic_test()},
                    tokens_file=loader.write_tokens(run_dir / "refresh.txt", tokens),
                )
            else:
                load = {
                    "gateway": run.gateway_load(access),
                    "client_credentials": run.cc_load(),
                    "introspect": run.introspect_load(access),
                }[name]
            if name != "refresh":
                wrk.run(server.port, load, 3)
            raws, spies = [], []
            for pid in workers(server):
                raw = run_dir / f"{name}-{pid}.raw.txt"
                raws.append(raw)
                spies.append(
                    subprocess.Popen(  # noqa: S603
                        [
                            spy,
                            "record",
                            "--pid",
                            str(pid),
                            "--nonblocking",
                            "--rate",
                            "200",
                            "--format",
                            "raw",
                            "--duration",
                            str(int(SECONDS) + 1),
                            "--output",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                )
            time.sleep(1.0)
            result = wrk.run(server.port, load, SECONDS)
            for spy_proc in spies:
                spy_proc.wait(SECONDS + 60)
            raw = run_dir / f"{name}.raw.txt"
            raw.write_text("".join(r.read_text() for r in raws if r.exists()))
            text = summarise(raw, result["requests"], result["seconds"])
            header = (
                f"py-spy profile of the server workers ({run.SERVER}), scenario {name} "
                f"({run.LABELS[name]}), Redis storage, 2 workers, wrk -t{wrk.THREADS} "
                f"-c{wrk.CONNECTIONS}; errors {result['errors']}, "
                f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms\n"
            )
            (OUT / f"{name}.txt").write_text(header + text)
            print(header + text)
    finally:
        fx.close()
        procs.stop_all()
        run.flush_redis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
