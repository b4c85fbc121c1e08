"""Storage outages against a served instance: 503 (never 500) in bounded time, recovery
without a restart, and nothing revoked is ever accepted again.

* Redis: a ``redis-server`` of the test's own holds ``session``, ``codes``, ``tokens`` and
  ``refresh_tokens`` (Postgres the rest, as in production); the test SIGKILLs it, checks
  every endpoint, then starts it again on the same port, empty.
* Postgres: every table goes through a TCP proxy the test can stop. First the server
  ends the app's connections (``pg_terminate_backend``): requests recover on their own.
  Then the proxy stops (a full outage) and starts again: a token answered 200 before
  is still good, a token revoked before is still refused.

Timings are printed (``-s``) and only loosely bounded (:data:`BOUND`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from tests.backends import database_url, with_search_path
from tests.e2e.conftest import hidden_inputs
from tests.storage.proxy import Proxy

from .conftest import (
    TIMEOUT,
    Instance,
    Launch,
    RedisServer,
    active,
    allow,
    authorize_path,
    consent_page,
    every_table,
    log_in,
    profile,
    redeem,
)

pytestmark = pytest.mark.e2e

#: Seconds within which an answer (503 or, after recovery, 200) must come.
BOUND = 10.0


def timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def client_credentials(server: Instance) -> requests.Response:
    return requests.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials"},
        auth=("test", "hunter2"),
        timeout=TIMEOUT,
    )


class Outage:
    """The requests that must answer 503 while storage is down, and their checks."""

    def __init__(self, server: Instance, agent: requests.Session, backend: requests.Session):
        self.server, self.agent, self.backend = server, agent, backend
        self.timings: dict[str, float] = {}
        self.visitor = requests.Session()

    def prepare(self) -> dict[str, str]:
        """Before the outage: a login form to submit later, with its CSRF token."""
        page = self.visitor.get(f"{self.server.url}/login", timeout=TIMEOUT)
        assert page.status_code == 200
        return hidden_inputs(page.text)

    def requests(self, token: str, refresh: str, login_form: dict[str, str]) -> dict[str, Callable]:
        url, backend, agent = self.server.url, self.backend, self.agent

        def bearer() -> requests.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return requests.get(f"{url}/api/profile", headers=headers, timeout=TIMEOUT)

        return {
            "json:/token client_credentials": lambda: client_credentials(self.server),
            "json:/token refresh_token": lambda: backend.post(
                f"{url}/token",
                data={"grant_type": "refresh_token", "refresh_token": refresh},
                timeout=TIMEOUT,
            ),
            "json:/token authorization_code": lambda: redeem(backend, self.server, "x" * 43),
            "json:/api/profile": bearer,
            "json:/introspect": lambda: backend.post(
                f"{url}/introspect", data={"token": token}, timeout=TIMEOUT
            ),
            "json:/revoke": lambda: backend.post(
                f"{url}/revoke", data={"token": token}, timeout=TIMEOUT
            ),
            "page:POST /login": lambda: self.visitor.post(
                f"{url}/login",
                data=login_form | {"username": "bob", "password": "password"},
                allow_redirects=False,
                timeout=TIMEOUT,
            ),
            "page:GET /authorize": lambda: agent.get(
                url + authorize_path(), allow_redirects=False, timeout=TIMEOUT
            ),
            "page:GET /review": lambda: agent.get(
                f"{url}/review", allow_redirects=False, timeout=TIMEOUT
            ),
        }

    def check(self, token: str, refresh: str, login_form: dict[str, str]) -> None:
        """Every request answers 503 (JSON or the error page) with Retry-After, in time."""
        wrong = {}
        for name, call in self.requests(token, refresh, login_form).items():
            response, seconds = timed(call)
            self.timings[name] = max(seconds, self.timings.get(name, 0.0))
            kind = name.split(":", 1)[0]
            body = response.text
            problem = None
            if response.status_code != 503:
                problem = f"status {response.status_code}"
            elif not response.headers.get("Retry-After"):
                problem = "no Retry-After"
            elif kind == "json" and (
                response.headers.get("Content-Type", "").split(";")[0] != "application/json"
                or response.json().get("error") != "temporarily_unavailable"
            ):
                problem = f"not the JSON error: {response.headers.get('Content-Type')} {body[:80]}"
            elif kind == "page" and not response.headers.get("Content-Type", "").startswith(
                "text/html"
            ):
                problem = f"not the error page: {response.headers.get('Content-Type')} {body[:80]}"
            elif "Traceback" in body or 'File "' in body:
                problem = "a traceback in the body"
            elif seconds > BOUND:
                problem = f"took {seconds:.1f} s"
            if problem:
                wrong[name] = problem
        assert not wrong, wrong
        # A stranger's sign-in page reads and writes no storage (its CSRF secret travels
        # in the signed visitor cookie), so it still answers.
        assert requests.get(f"{self.server.url}/login", timeout=TIMEOUT).status_code == 200

    def close(self) -> None:
        self.visitor.close()

    def ride_out(self, title: str, stop: Callable, start: Callable, live: dict) -> None:
        """Stop storage, check every request (with ``live``'s tokens) twice, start it again
        and report the timings once a token can be issued again."""
        try:
            login_form = self.prepare()
            stop()
            # Twice: the first round meets pooled connections the outage broke, the
            # second connection attempts that are refused.
            for _ in range(2):
                self.check(live["access_token"], live["refresh_token"], login_form)
        finally:
            self.close()
        start()
        report(title, self.timings, wait_recovered(self.server))


def wait_recovered(server: Instance) -> float:
    """Seconds until a token can be issued again (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < BOUND:
        if client_credentials(server).status_code == 200:
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"no recovery within {BOUND} s:\n{server.log()}")


def code_flow(agent: requests.Session, backend: requests.Session, server: Instance) -> dict:
    code = allow(agent, server, consent_page(agent, server))
    answer = redeem(backend, server, code)
    assert answer.status_code == 200, answer.text
    return answer.json()


#: What the log shows when a request failed unhandled: our 500 handler, Flask's own
#: (an error in an after-request hook), gunicorn's (an error outside the app).
UNHANDLED = ("unhandled error on", "Exception on ", "Error handling request")


def assert_nothing_unhandled(server: Instance) -> None:
    log = server.log_path.read_text(errors="replace")
    for marker in UNHANDLED:
        assert marker not in log, log[log.index(marker) - 200 :][:4000]


def report(title: str, timings: dict[str, float], recovery: float) -> None:
    print(f"\n{title}: slowest 503 per request (s):")
    for name, seconds in sorted(timings.items(), key=lambda item: -item[1]):
        print(f"  {seconds:6.3f}  {name}")
    print(f"  recovery (restart -> first token issued): {recovery:.3f} s")


# -- Redis ---------------------------------------------------------------------------------
@pytest.fixture
def redis_instance(launch: Launch, own_redis: RedisServer, pg_url: str) -> Instance:
    url = own_redis.url(1)
    storage = {
        "session": own_redis.url(0),
        "codes": url,
        "tokens": url,
        "refresh_tokens": url,
        "users": pg_url,
        "audit": pg_url,
        "clients": pg_url,
        "default": pg_url,
    }
    return launch(storage, name="redis-faults")


def test_redis_killed_answers_503_then_recovers(
    redis_instance: Instance,
    own_redis: RedisServer,
    agent: requests.Session,
    backend: requests.Session,
) -> None:
    server = redis_instance
    log_in(agent, server)
    live = code_flow(agent, backend, server)
    revoked = code_flow(agent, backend, server)
    assert backend.post(f"{server.url}/revoke", data={"token": revoked["access_token"]}).ok
    assert profile(server, live["access_token"]) == 200
    assert profile(server, revoked["access_token"]) == 401
    outage = Outage(server, agent, backend)
    outage.ride_out("redis outage", own_redis.kill, own_redis.start, live)

    # Redis kept nothing: the old session and every old token are gone, revoked or not.
    for token in (revoked["access_token"], live["access_token"], revoked["refresh_token"]):
        assert profile(server, token) == 401
        assert active(backend, server, token) is False
    again = agent.get(server.url + authorize_path(), allow_redirects=False, timeout=TIMEOUT)
    assert again.status_code == 302
    assert urlsplit(again.headers["Location"]).path == "/login"

    # A new login and code flow work without restarting the server.
    log_in(agent, server)
    fresh = code_flow(agent, backend, server)
    assert profile(server, fresh["access_token"]) == 200
    assert_nothing_unhandled(server)


# -- Postgres ------------------------------------------------------------------------------
@pytest.fixture
def pg_proxy() -> Iterator[Proxy]:
    target = urlsplit(database_url())
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    proxy.start()
    yield proxy
    proxy.stop()


def terminate(app_name: str) -> int:
    """End every server connection of the app (named by ``application_name``)."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    return len(rows)


def test_postgres_outage_answers_503_and_keeps_every_answered_write(
    launch: Launch,
    pg_url: str,
    pg_proxy: Proxy,
    agent: requests.Session,
    backend: requests.Session,
) -> None:
    schema = pg_url.rsplit("search_path%3D", 1)[1]
    app_name = f"oauth2-faults-{secrets.token_hex(4)}"
    parts = urlsplit(database_url())
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{pg_proxy.port}"))
    url = with_search_path(proxied, schema) + f"&application_name={app_name}"
    server = launch(every_table(url), name="postgres-faults")

    log_in(agent, server)
    live = code_flow(agent, backend, server)
    revoked = code_flow(agent, backend, server)
    assert backend.post(f"{server.url}/revoke", data={"token": revoked["refresh_token"]}).ok
    machine = client_credentials(server).json()["access_token"]

    # Connections ended by the server: the next requests reconnect and succeed.
    assert terminate(app_name) >= 1
    assert profile(server, live["access_token"]) == 200
    assert profile(server, revoked["access_token"]) == 401
    assert agent.get(f"{server.url}/review", allow_redirects=False).status_code == 200

    outage = Outage(server, agent, backend)
    outage.ride_out("postgres outage", pg_proxy.stop, pg_proxy.start, live)

    # Every write answered before the outage holds: issued tokens work, revoked stay so.
    assert profile(server, live["access_token"]) == 200
    assert active(backend, server, machine) is True
    for token in (revoked["access_token"], revoked["refresh_token"]):
        assert profile(server, token) == 401
        assert active(backend, server, token) is False
    refreshed = backend.post(
        f"{server.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": live["refresh_token"]},
        timeout=TIMEOUT,
    )
    assert refreshed.status_code == 200, refreshed.text
    # The login session survived too (it is in Postgres): straight to the consent page.
    fresh = code_flow(agent, backend, server)
    assert profile(server, fresh["access_token"]) == 200
    assert_nothing_unhandled(server)
