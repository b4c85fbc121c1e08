"""Processes the bench starts: loopback only, each with a bounded lifetime, all stopped at exit.

Every process runs under coreutils ``timeout`` in a process group of its own, so
it ends by itself even if the bench is killed with SIGKILL, and ``stop_all``
(called on exit, on failure and on Ctrl-C) ends the whole group it started, by id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: No process of the bench outlives this many seconds.
MAX_LIFETIME = int(os.environ.get("BENCH_MAX_LIFETIME", "3600"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    extra_ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


_running: list[Proc] = []


def start(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    port: int | None = None,
    ready_path: str | None = None,
    timeout: float = 30.0,
    lifetime: int = MAX_LIFETIME,
) -> Proc:
    """Start ``argv`` under ``timeout`` in its own process group; wait for ``port`` if given."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(  # noqa: S603 - fixed argument lists of our own
        [shutil.which("timeout") or "/usr/bin/timeout", "-k", "10", str(lifetime), *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    log.close()
    proc = Proc(name, process, log_path, port)
    _running.append(proc)
    if port is not None:
        wait_ready(proc, port, ready_path, timeout)
    return proc


def wait_ready(proc: Proc, port: int, path: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.log_tail()}")
        if port_open(port):
            if path is None:
                return
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{proc.name} did not get ready on port {port}:\n{proc.log_tail()}")


def stop(proc: Proc, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc in _running:
        _running.remove(proc)
    pgid = proc.pid  # start_new_session: the group's id is the leader's pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.process.wait(grace)
    # Children (gunicorn workers, the dummy site) may outlive the leader briefly.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.process.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_all() -> None:
    for proc in list(reversed(_running)):
        stop(proc)


def group_pids(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` (from /proc), for profiling and CPU accounting."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return sorted(pids)


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds used so far by ``pids`` (dead ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (Path("/proc") / str(pid) / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks
