"""Start ``oauth2-server serve`` for real: a config folder in ``tmp_path``, free ports, a
bounded wait until it answers, and a teardown that checks every process it started is gone
(the processes themselves are ``bench/procs.py``'s, the one launcher; scale-out uses
``serve`` and ``shut_down`` too).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bench import procs
from bench.procs import Proc, children

ROOT = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(sys.executable).parent / "oauth2-server"
DEMO_CLIENTS = ROOT / "clients.json.example"
SESSION_SECRET = "e2e-session-secret-" + "s" * 24
START_TIMEOUT = 20.0
#: Seconds any one HTTP request of these tests may take.
HTTP_TIMEOUT = 10
STOP_TIMEOUT = 10.0


@dataclass
class Server:
    """One running ``oauth2-server serve`` (the e2e and scale-out tests' handle on it)."""

    proc: Proc
    config_dir: Path

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.proc.process

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    @property
    def port(self) -> int:
        assert self.proc.port is not None
        return self.proc.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ports(self) -> list[int]:
        """Its own port, then the dummy site's if it runs one."""
        return [self.port, *self.proc.extra_ports]

    @property
    def site_port(self) -> int:
        return self.proc.extra_ports[0]

    def log(self) -> str:
        return self.proc.log_tail(6000)

    def workers(self) -> dict[int, str]:
        """The HTTP server's workers: the server's children other than the dummy site."""
        found = children(self.process.pid).items()
        return {pid: cmd for pid, cmd in found if "app.dummy_site" not in cmd}

    def dummy_site(self) -> dict[int, str]:
        found = children(self.process.pid).items()
        return {pid: cmd for pid, cmd in found if "app.dummy_site" in cmd}


def clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without our config variables (nor libpq's), in the test env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAUTH2_", "PG"))}
    env.update(OAUTH2_ENV="development", PYTHONUNBUFFERED="1", HOME=str(home))
    env.update(extra or {})
    return env


def serve(
    folder: Path,
    config: dict[str, Any],
    env: dict[str, str],
    ready_path: str = "/healthz",
    run_site: bool = True,
    name: str | None = None,
) -> Server:
    """Write ``config`` into ``folder/config``, start ``serve`` on it, wait until it answers."""
    config_dir = folder / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "default.json").write_text(json.dumps(config, indent=2))
    proc = procs.start(
        name or folder.name,
        [str(SERVER_BIN), "--config-dir", str(config_dir), "serve"],
        folder,
        env=env,
        cwd=str(ROOT),
        port=int(config["auth_server"]["port"]),
        ready_path=ready_path,
        timeout=START_TIMEOUT,
        lifetime=None,  # signals (SIGHUP, SIGTERM) go to the server itself
    )
    if run_site:
        proc.extra_ports.append(int(config["resource_server"]["port"]))
    workers_started(proc)
    return Server(proc, config_dir)


#: ``serve``'s line naming its server and workers, and granian's as each worker is up.
_SERVING = re.compile(r"serving \S+ with granian, (\d+) workers?")
_STARTED = "Started worker-"


def workers_started(proc: Proc, timeout: float = START_TIMEOUT) -> None:
    """Wait (bounded) until every granian worker has started, not just the first to
    answer: granian, told to stop while a worker is still booting, waited out the
    10 s grace on a slow machine (and the test's teardown failed on it)."""
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace")
        serving = _SERVING.search(text)
        if serving is None and "serving " in text:
            return  # another server (gunicorn): nothing to wait for
        if serving is not None and text.count(_STARTED) >= int(serving.group(1)):
            return
        time.sleep(0.05)


def shut_down(servers: list[Server]) -> None:
    """Stop them all; fail the test if any process or port outlived its server."""
    problems = procs.shut_down([server.proc for server in servers], STOP_TIMEOUT)
    if problems:
        logs = "\n".join(f"--- {server.name}\n{server.log()}" for server in servers)
        pytest.fail("server shutdown: " + "; ".join(problems) + "\n" + logs)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Return a function that starts ``oauth2-server serve`` with the given clients.

    ``clients`` is a list of clients-file entries; the demo clients of
    ``clients.json.example`` (``test`` / ``hunter2`` and ``sp-demo``) always come first.
    """
    servers: list[Server] = []

    def start(
        clients: list[dict] | None = None, workers: int = 2, config: dict | None = None
    ) -> Server:
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        clients_file = folder / "clients.json"
        demo = json.loads(DEMO_CLIENTS.read_text())
        clients_file.write_text(json.dumps(demo + list(clients or []), indent=2))
        port, site_port = procs.free_ports(2)
        storage = {"default": f"sqlite:///{folder}/oauth2.db"}
        config_data = procs.serve_config(
            port, site_port, storage, clients_file, SESSION_SECRET, workers, **(config or {})
        )
        ready = "/.well-known/oauth-authorization-server"
        servers.append(serve(folder, config_data, clean_env(tmp_path), ready))
        return servers[-1]

    yield start
    shut_down(servers)


# -- front-channel helpers (a scripted user agent with requests) ---------------------------
def submit_login(
    agent: requests.Session, login_url: str, username: str = "alice", **fields: str
) -> requests.Response:
    """Open the login page and send its form (hidden fields kept, ``fields`` added) as
    ``username`` with the dummy site's password; return the 302 that answers it."""
    page = agent.get(login_url, timeout=HTTP_TIMEOUT)
    assert page.status_code == 200, page.text
    form = hidden_inputs(page.text)
    assert form.get("csrf_token"), "login form has no CSRF token"
    form |= {"username": username, "password": "password", **fields}
    answer = agent.post(login_url, data=form, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert answer.status_code == 302, answer.text
    return answer


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
