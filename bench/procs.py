"""Real processes for the bench and the tests: loopback only, stopped by the id we started.

The one launcher of servers (``start``), the one free-port helper (``free_port``,
``free_ports``) and the one config of a loopback ``oauth2-server serve``
(``serve_config``), used by ``bench``, ``tests/e2e``, ``tests/scaleout`` and the dummy
site's and Redis Cluster's tests. Every process runs in a process group of its own;
the bench's also run under coreutils ``timeout`` (``lifetime``), so they end by
themselves even if the bench is killed with SIGKILL, and ``stop_all`` (called on
exit, on failure and on Ctrl-C) ends each whole group it started. Tests instead
stop with ``shut_down``, which signals only the server and reports any process
or port that outlived it (the server must stop its own children).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: No process of the bench outlives this many seconds.
MAX_LIFETIME = int(os.environ.get("BENCH_MAX_LIFETIME", "3600"))


def free_ports(count: int, below: int = 65536, beside: int = 0) -> list[int]:
    """``count`` distinct loopback ports nobody listens on now, each under ``below``;
    with ``beside``, each port ``beside`` higher is free too (a Redis Cluster node's bus)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            # Held open until all are found: the kernel cannot hand out one twice.
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port >= below:
                continue
            if beside:
                other = stack.enter_context(socket.socket())
                try:
                    other.bind(("127.0.0.1", port + beside))
                except OSError:
                    continue  # that one is taken: another port
            ports.append(port)
        return ports


def serve_config(
    port: int,
    site_port: int,
    storage: dict[str, Any],
    clients_file: Path,
    session_secret: str,
    workers: int,
    **over: dict[str, Any],
) -> dict[str, Any]:
    """The config of ``oauth2-server serve`` on loopback ``port`` with the dummy site on
    ``site_port``; each ``over`` section updates the section of that name."""
    config: dict[str, Any] = {
        "auth_server": {
            "url": f"http://127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": port,
            "num_workers": workers,
            "session_secret": session_secret,
        },
        "client_credentials": {"file": str(clients_file)},
        "storage": storage,
        "resource_server": {"type": "dummy", "host": "127.0.0.1", "port": site_port},
        "logging": {"level": "notice"},
    }
    for section, values in over.items():
        config.setdefault(section, {}).update(values)
    return config


def free_port() -> int:
    """A loopback port nobody listens on now."""
    return free_ports(1)[0]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_port_free(port: int, timeout: float = 5.0) -> bool:
    """Whether ``port`` stopped answering within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while port_open(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` (``{pid: command line}``), read from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat(entry.name) if entry.name.isdigit() else ["Z"]
            if fields[0] != "Z" and int(fields[1]) == pid:
                found[int(entry.name)] = cmdline(int(entry.name)).strip()
    return found


def descendants(pid: int) -> set[int]:
    """Children, grandchildren, ... of ``pid`` (a server's workers, its dummy site)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    extra_ports: list[int] = field(default_factory=list)
    #: Its descendants once ready: each must be gone after ``shut_down``.
    started: set[int] = field(default_factory=set)

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
    lifetime: int | None = MAX_LIFETIME,
) -> Proc:
    """Start ``argv`` in its own process group, under ``timeout`` unless ``lifetime`` is
    None (then signals sent to ``Proc.pid`` reach the process itself); wait until
    ``port`` answers, and ``ready_path`` there with 200, if given."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    if lifetime is not None:
        argv = [shutil.which("timeout") or "/usr/bin/timeout", "-k", "10", str(lifetime), *argv]
    process = subprocess.Popen(  # noqa: S603 - fixed argument lists of our own
        argv,
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
    proc.started = descendants(proc.pid)
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
    """SIGTERM the process group we started, then SIGKILL it if it lingers, and whatever
    it started in groups of its own (granian's workers, the bundled site) if they outlive
    it."""
    if proc in _running:
        _running.remove(proc)
    tree = _started_at(descendants(proc.pid) | proc.started)
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
    for pid, started_at in tree.items():  # the same process still (not a reused pid)
        if pid_alive(pid) and _started_at({pid}).get(pid) == started_at:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _started_at(pids: set[int]) -> dict[int, str]:
    """Each live pid's start time (clock ticks since boot), to tell it from a reused pid."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            found[pid] = _stat(pid)[19]
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def write_tails() -> None:
    """Each running process's log tail to stderr (a run that failed: what they said)."""
    for proc in list(_running):
        sys.stderr.write(f"--- {proc.name} log tail ---\n{proc.log_tail()}\n")


@contextlib.contextmanager
def stopping_all(*cleanups: Callable[[], object]) -> Iterator[None]:
    """Around a run: ``SIGTERM`` interrupts it as Ctrl-C does; on its way out every
    process is stopped and each cleanup tried; a failure first writes the log tails."""

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception:
        write_tails()
        raise
    finally:
        stop_all()
        for cleanup in cleanups:
            with contextlib.suppress(Exception):
                cleanup()


def stop_all() -> None:
    for proc in list(reversed(_running)):
        stop(proc)


def shut_down(procs: list[Proc], grace: float = 10.0) -> list[str]:
    """SIGTERM each process (not its group) at once and wait; SIGKILL whatever it
    started that outlived it; return what went wrong (each a sentence), for a test."""
    problems: list[str] = []
    known = {proc.name: descendants(proc.pid) | proc.started for proc in procs}
    for proc in procs:
        if proc in _running:
            _running.remove(proc)
        if proc.alive():
            proc.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            problems.append(f"{proc.name} ignored SIGTERM for {grace:.0f} s; killed")
            proc.process.kill()
            proc.process.wait(5)
    problems += _reap(known)
    for proc in procs:
        for port in [proc.port, *proc.extra_ports]:
            if port is not None and not wait_port_free(port):
                problems.append(f"{proc.name}: port {port} still in use after shutdown")
    return problems


def _reap(known: dict[str, set[int]]) -> list[str]:
    """Give ``known`` processes 5 s to end; SIGKILL and name each one left."""
    pids = set().union(*known.values())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    problems = []
    for name, started in known.items():
        for pid in sorted(started):
            if pid_alive(pid):
                problems.append(f"{name}: process {pid} outlived it; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return problems


def group_pids(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` (from /proc), for profiling and CPU accounting."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int(_stat(entry.name)[2]) == pgid:
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
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / ticks
