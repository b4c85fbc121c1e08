"""Start ``oauth2-server serve`` for real: a config folder in ``tmp_path``, free ports, a
bounded wait until it answers, and a teardown that checks every process it started is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(sys.executable).parent / "oauth2-server"
DEMO_CLIENTS = ROOT / "clients.json.example"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return True
        return False


def wait_port_free(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_is_free(port):
            return True
        time.sleep(0.1)
    return False


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` (``{pid: command line}``), read from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def descendants(pid: int) -> set[int]:
    """Children, grandchildren, ... of ``pid`` (the dummy site runs its own worker)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def secret_hash(secret: str) -> str:
    """The clients file's ``sha256$<hex>`` scheme."""
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def client_entry(
    client_id: str, redirect_uris: list[str], secret: str | None = None, name: str | None = None
) -> dict:
    """A client in the new clients-file format (public when ``secret`` is None)."""
    entry: dict = {
        "client_id": client_id,
        "name": name or client_id,
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
    }
    if secret is None:
        entry["public"] = True
    else:
        entry["client_secret_hash"] = secret_hash(secret)
    return entry


@dataclass
class RunningServer:
    url: str
    port: int
    site_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    config_dir: Path
    started: list[int] = field(default_factory=list)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def workers(self) -> dict[int, str]:
        """gunicorn's workers: the server's children other than the dummy site."""
        return {
            pid: cmd
            for pid, cmd in children(self.process.pid).items()
            if "app.dummy_site" not in cmd
        }

    def dummy_site(self) -> dict[int, str]:
        return {
            pid: cmd for pid, cmd in children(self.process.pid).items() if "app.dummy_site" in cmd
        }


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH2_")}
    env["OAUTH2_ENV"] = "development"  # no test.json: an unknown env is an error
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(tmp_path)
    return env


def wait_serving(
    process: subprocess.Popen[bytes],
    url: str,
    log: Callable[[], str],
    name: str = "oauth2-server",
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll ``url`` until it answers 200; fail with the log if the process dies or stalls."""
    deadline = time.monotonic() + timeout
    last: object = None
    with requests.Session() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} at start:\n{log()}")
            try:
                answer = http.get(url, timeout=1)
                if answer.status_code == 200:
                    return
                last = f"status {answer.status_code}"
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.1)
    pytest.fail(f"{name} did not answer within {timeout:.0f} s ({last}):\n{log()}")


def _stop(server: RunningServer) -> list[str]:
    """SIGTERM the server, wait (kill after a while); return what went wrong, if anything."""
    problems: list[str] = []
    known = descendants(server.process.pid) | set(server.started)
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"the server ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed")
            server.process.kill()
            server.process.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in known):
        time.sleep(0.1)
    for pid in sorted(known):
        if pid_alive(pid):
            problems.append(f"process {pid} (started by the server) outlived it; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name, port in (("server", server.port), ("dummy site", server.site_port)):
        if not wait_port_free(port):
            problems.append(f"the {name} port {port} is still in use after shutdown")
    return problems


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Return a function that starts ``oauth2-server serve`` with the given clients.

    ``clients`` is a list of clients-file entries; the demo clients of
    ``clients.json.example`` (``test`` / ``hunter2`` and ``sp-demo``) always come first.
    """
    servers: list[RunningServer] = []
    handles = []

    def start(
        clients: list[dict] | None = None, workers: int = 2, config: dict | None = None
    ) -> RunningServer:
        folder = tmp_path / f"server{len(servers)}"
        config_dir = folder / "config"
        config_dir.mkdir(parents=True)
        clients_file = folder / "clients.json"
        demo = json.loads(DEMO_CLIENTS.read_text())
        clients_file.write_text(json.dumps(demo + list(clients or []), indent=2))
        port, site_port = free_port(), free_port()
        while site_port == port:
            site_port = free_port()
        config_data = {
            "auth_server": {
                "url": f"http://127.0.0.1:{port}",
                "host": "127.0.0.1",
                "port": port,
                "num_workers": workers,
                "session_secret": "e2e-session-secret-" + "s" * 24,
            },
            "client_credentials": {"file": str(clients_file)},
            "storage": {"default": f"sqlite:///{folder}/oauth2.db"},
            "resource_server": {"type": "dummy", "host": "127.0.0.1", "port": site_port},
            "logging": {"level": "notice"},
        }
        for section, values in (config or {}).items():
            config_data.setdefault(section, {}).update(values)
        (config_dir / "default.json").write_text(json.dumps(config_data, indent=2))
        log_path = folder / "server.log"
        log = log_path.open("wb")
        handles.append(log)
        process = subprocess.Popen(
            [str(SERVER_BIN), "--config-dir", str(config_dir), "serve"],
            cwd=ROOT,
            env=_clean_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        server = RunningServer(
            f"http://127.0.0.1:{port}", port, site_port, process, log_path, config_dir
        )
        servers.append(server)
        wait_serving(process, f"{server.url}/.well-known/oauth-authorization-server", server.log)
        server.started = sorted(descendants(process.pid))
        return server

    yield start

    problems: list[str] = []
    for server in servers:
        problems += _stop(server)
    for handle in handles:
        handle.close()
    if problems:
        logs = "\n".join(s.log() for s in servers)
        pytest.fail("server shutdown: " + "; ".join(problems) + "\n" + logs)


# -- front-channel helpers (a scripted user agent with requests) ---------------------------
def hidden_inputs(page: str) -> dict[str, str]:
    """Every ``<input type="hidden" name=... value=...>`` of a page."""
    found = {}
    for tag in re.findall(r"<input\b[^>]*>", page):
        if 'type="hidden"' not in tag:
            continue
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            found[name.group(1)] = html.unescape(value.group(1) if value else "")
    return found
