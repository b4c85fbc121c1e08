"""Scale-out fixtures: Redis and Postgres for every table, real servers, a Redis to kill.

* ``shared_redis``: the test Redis (``REDIS_URL``'s server) in database 14 (9 for the
  second xdist worker), flushed before and after. Database 15 (10) belongs to the
  storage suite, 14 (9) to this folder.
* ``pg_url``: ``DATABASE_URL`` with a schema of this test's own (dropped afterwards).
* ``own_redis``: a ``redis-server`` this test starts on a spare port and may kill.
* ``launch``: ``oauth2-server serve`` from a config folder in ``tmp_path``; every
  process it started is gone after the test, whatever happened.

Without a reachable Redis/Postgres (or ``redis-server`` binary) the tests skip with
one line saying what to start; with ``CI`` set they fail instead (``tests/backends.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import redis
import requests

from app.storage import TABLES
from bench import procs
from tests.backends import (
    database_url,
    postgres_schema,
    redis_db_url,
    require_service,
    with_search_path,
    worker_db,
)
from tests.e2e.conftest import (
    DEMO_CLIENTS,
    Server,
    clean_env,
    hidden_inputs,
    serve,
    shut_down,
    submit_login,
)

#: The Redis database this folder may flush (15 is the storage suite's), as this xdist
#: worker uses it.
REDIS_DB = worker_db(14)
REDIRECT = "http://localhost:8080/"
COOKIE = "oauth2_session"
#: Seconds any one HTTP request of these tests may take.
TIMEOUT = 10
SESSION_SECRET = "scaleout-session-secret-" + "s" * 24
STOP_TIMEOUT = 10.0


def every_table(url: str) -> dict[str, str]:
    """A ``storage`` section naming ``url`` for ``default`` and each table explicitly."""
    return {"default": url, **dict.fromkeys(TABLES, url)}


def flush(url: str) -> None:
    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        client.flushdb()


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def _empty_redis() -> Iterator[str]:
    url = redis_db_url(REDIS_DB)
    require_service("redis", url)
    flush(url)
    yield url
    flush(url)


@contextlib.contextmanager
def _fresh_schema() -> Iterator[str]:
    with postgres_schema(database_url()) as schema:
        yield with_search_path(database_url(), schema)


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """The test Redis, database 14, empty."""
    with _empty_redis() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """``DATABASE_URL`` whose search path is a fresh schema, dropped after the test."""
    with _fresh_schema() as url:
        yield url


@pytest.fixture(scope="module")
def module_redis() -> Iterator[str]:
    """``shared_redis`` for a module whose servers outlive one test: empty at its start,
    flushed at its end (its tests each make their own users' sessions and tokens)."""
    with _empty_redis() as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """``pg_url`` for a module whose servers outlive one test: one schema per module."""
    with _fresh_schema() as url:
        yield url


# -- a redis-server of our own --------------------------------------------------------------
class RedisServer:
    """``redis-server`` on a spare port, keeping nothing on disk; killable and restartable."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not installed; install it (apt-get install redis-server)")
        self.binary = str(binary)
        self.folder = folder
        self.port = procs.free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._logs: list[Any] = []

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self._logs.append(log)
        # fmt: off
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.folder),
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        # fmt: on
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited at start:\n{self.log()}")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not answer on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: the crash case; every connection drops, nothing is kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        assert procs.wait_port_free(self.port), f"port {self.port} still answers after the kill"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "redis.log").read_text(errors="replace")[-3000:]
        return ""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- oauth2-server serve ------------------------------------------------------------------
#: The scale-out tests' name for a running server.
Instance = Server


Launch = Callable[..., Instance]


@contextlib.contextmanager
def launcher(root: Path) -> Iterator[Launch]:
    """Yield ``start(storage, name=..., site_port=..., run_site=True, env=..., **over)``
    starting servers in folders under ``root``; at exit, shut every one down.

    ``config`` replaces the generated config file entirely (``storage`` is then unused).

    At exit every instance gets SIGTERM at once (gunicorn takes a few seconds
    to stop); then the test fails if any process or port outlived them.
    """
    instances: list[Instance] = []

    def start(
        storage: dict[str, Any],
        name: str = "A",
        site_port: int | None = None,
        run_site: bool = True,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        **over: Any,
    ) -> Instance:
        folder = root / f"instance-{name}"
        folder.mkdir(exist_ok=True)  # a test may have put files beside its config
        clients_file = folder / "clients.json"
        clients_file.write_text(DEMO_CLIENTS.read_text())
        if config is None:  # else given whole (the original's file): its ports are the truth
            port, spare = procs.free_ports(2)
            site = site_port or spare
            config = procs.serve_config(
                port, site, storage, clients_file, SESSION_SECRET, 1, **over
            )
        extra = dict(env or {})
        if not run_site:
            extra["OAUTH2_NO_DUMMY_SITE"] = "1"
        environment = clean_env(root, extra)
        instances.append(serve(folder, config, environment, run_site=run_site, name=name))
        return instances[-1]

    try:
        yield start
    finally:
        shut_down(instances)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """``launcher`` for one test: its servers are stopped after it."""
    with launcher(tmp_path) as start:
        yield start


# -- a scripted browser and partner back end (requests) -------------------------------------
@pytest.fixture
def agent() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def backend() -> Iterator[requests.Session]:
    """The partner's back end: no browser cookies."""
    with requests.Session() as session:
        session.auth = ("test", "hunter2")
        yield session


def authorize_path(state: str = "s1") -> str:
    query = {
        "response_type": "code",
        "client_id": "test",
        "redirect_uri": REDIRECT,
        "scope": "read-only",
        "state": state,
    }
    return "/authorize?" + urlencode(query)


def log_in(agent: requests.Session, server: Instance, next_path: str = "") -> None:
    submit_login(agent, f"{server.url}/login", next=next_path)


def consent_page(agent: requests.Session, server: Instance, state: str = "s1") -> dict[str, str]:
    page = agent.get(server.url + authorize_path(state), allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, (page.status_code, page.headers.get("Location"))
    form = hidden_inputs(page.text)
    assert form.get("transaction_id"), page.text
    return form


def allow(agent: requests.Session, server: Instance, form: dict[str, str]) -> str:
    answer = agent.post(
        f"{server.url}/authorize",
        data=form | {"allow": "Allow"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT)
    return parse_qs(urlsplit(location).query)["code"][0]


def redeem(backend: requests.Session, server: Instance, code: str) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    return backend.post(f"{server.url}/token", data=data, timeout=TIMEOUT)


def profile(server: Instance, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(f"{server.url}/api/profile", headers=headers, timeout=TIMEOUT).status_code


def active(backend: requests.Session, server: Instance, token: str) -> bool:
    answer = backend.post(f"{server.url}/introspect", data={"token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()["active"]
