"""Two instances with the token cache on: what ends on A is refused by B at once.

The issue's test: instance B (two workers) is hammered by several threads with one
access token, so its caches hold it; instance A ends it (``/revoke``, a refresh that
rotates it away, the admin API deleting its client, or revocation while every cache
subscriber's connection was just cut); no request to B *sent after* A's answer
arrived may get a 200. On Redis, Postgres and a Redis Cluster, every table there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
import requests
from redis.cluster import RedisCluster

from app.oauth2.token_cache import APPLICATION_NAME
from tests.e2e.conftest import hidden_inputs
from tests.redis_cluster import redis_cluster

from .conftest import (
    REDIRECT,
    TIMEOUT,
    Instance,
    allow,
    consent_page,
    every_table,
    launcher,
    log_in,
    redeem,
)

pytestmark = pytest.mark.e2e

THREADS = 4
CACHE = {"enabled": True, "max_staleness_ms": 50}


# The pair of servers (and the Redis Cluster) are the module's, per storage: started once
# for the four tests on it (pytest runs a storage's tests together), not once per test.
# Each test signs in and gets tokens of its own, so what one ends cannot reach another.
@pytest.fixture(scope="module", params=["redis", "postgres", "redis_cluster"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "redis_cluster":
        with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
            yield url
        return
    yield request.getfixturevalue("module_redis" if request.param == "redis" else "module_pg_url")


@pytest.fixture(scope="module")
def pair(
    storage_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Instance, Instance]]:
    storage = every_table(storage_url)
    with launcher(tmp_path_factory.mktemp("pair")) as launch:
        # No limits: the hammer is one IP far above the /api per-IP rate.
        a = launch(storage, name="A", token_cache=CACHE, limits={"enabled": False})
        b = launch(
            storage,
            name="B",
            site_port=a.ports[1],
            run_site=False,
            token_cache=CACHE,
            limits={"enabled": False},
            auth_server={"num_workers": 2},
        )
        yield a, b


class Hammer:
    """Threads sending ``GET /api/profile`` with one token to one server, timing each."""

    def __init__(self, server: Instance, token: str) -> None:
        self.url = f"{server.url}/api/profile"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.results: list[tuple[float, int]] = []  # (monotonic time sent, status)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(THREADS)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                sent = time.monotonic()
                status = session.get(self.url, headers=self.headers, timeout=TIMEOUT).status_code
                self.results.append((sent, status))

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 10
        while sum(1 for _, s in self.results if s == 200) < 100:  # the caches are warm
            assert time.monotonic() < deadline, self.statuses()
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 1)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for _, status in self.results:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def after(self, moment: float, seconds: float = 0.5) -> list[int]:
        """Keep going ``seconds``; the statuses of the requests sent after ``moment``."""
        time.sleep(seconds)
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 1)
        late = [status for sent, status in self.results if sent > moment]
        assert len(late) >= 10, self.statuses()
        return late


def subscribers(url: str) -> int:
    """How many token-cache subscriber connections the storage's database has (another
    xdist worker's, on a database of its own, are not counted)."""
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchone()
        return int(row[0]) if row else 0
    with _nodes(url) as (nodes, db):
        return sum(len(_ours(node, db)) for node in nodes)


def cut_subscribers(url: str) -> None:
    """Kill every token-cache subscriber connection of the storage's database."""
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            )
        return
    with _nodes(url) as (nodes, db):
        for node in nodes:
            for entry in _ours(node, db):
                node.client_kill_filter(_id=entry["id"])


@contextlib.contextmanager
def _nodes(url: str) -> Iterator[tuple[list[redis.Redis], str]]:
    """The Redis servers of ``url`` (a Cluster's primaries) and its database number."""
    if url.startswith("redis+cluster://"):
        with RedisCluster.from_url("redis://" + url.split("://", 1)[1]) as cluster:
            yield [node.redis_connection for node in cluster.get_primaries()], "0"
        return
    with redis.Redis.from_url(url) as client:
        yield [client], str(client.get_connection_kwargs().get("db", 0))


def _ours(node: redis.Redis, db: str) -> list[dict]:
    return [c for c in node.client_list() if (c.get("name"), c.get("db")) == (APPLICATION_NAME, db)]


def user_tokens(agent: requests.Session, backend: requests.Session, a: Instance) -> dict:
    log_in(agent, a)
    tokens = redeem(backend, a, allow(agent, a, consent_page(agent, a)))
    assert tokens.status_code == 200, tokens.text
    return tokens.json()


def wait_subscribed(url: str, at_least: int = 2) -> None:
    """A's worker and (at least) one of B's subscribe on their first token check."""
    deadline = time.monotonic() + 10
    while subscribers(url) < at_least:
        assert time.monotonic() < deadline, f"only {subscribers(url)} cache subscribers"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["revoke", "cut-then-revoke", "rotate"])
def test_ended_on_a_while_b_is_hammered_no_200_after_the_answer(
    pair: tuple[Instance, Instance],
    storage_url: str,
    agent: requests.Session,
    backend: requests.Session,
    how: str,
) -> None:
    a, b = pair
    tokens = user_tokens(agent, backend, a)
    access = tokens["access_token"]
    with Hammer(b, access) as hammer:
        requests.get(f"{a.url}/api/profile", headers=hammer.headers, timeout=TIMEOUT)
        wait_subscribed(storage_url)
        if how == "cut-then-revoke":
            cut_subscribers(storage_url)
        if how == "rotate":
            data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
            answer = backend.post(f"{a.url}/token", data=data, timeout=TIMEOUT)
        else:
            answer = backend.post(f"{a.url}/revoke", data={"token": access}, timeout=TIMEOUT)
        answered = time.monotonic()
        assert answer.status_code == 200, answer.text
        late = hammer.after(answered)
    assert set(late) == {401}, hammer.statuses()
    assert hammer.statuses().get(200, 0) >= 100


def test_client_deleted_on_a_while_b_is_hammered_no_200_after_the_answer(
    pair: tuple[Instance, Instance], storage_url: str, agent: requests.Session
) -> None:
    a, b = pair
    admin = requests.Session()
    grant = {"grant_type": "client_credentials", "scope": "admin"}
    issued = admin.post(f"{a.url}/token", data=grant, auth=("admin", "hunter2"), timeout=TIMEOUT)
    admin.headers["Authorization"] = f"Bearer {issued.json()['access_token']}"
    metadata = {"redirect_uris": [REDIRECT], "scope": "read-only"}
    made = admin.post(f"{a.url}/admin/clients", json=metadata, timeout=TIMEOUT)
    assert made.status_code == 201, made.text
    client_id, secret = made.json()["client_id"], made.json()["client_secret"]
    log_in(agent, a)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT}
    page = agent.get(f"{a.url}/authorize", params=query, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    code = allow(agent, a, hidden_inputs(page.text))
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    tokens = requests.post(f"{a.url}/token", data=data, auth=(client_id, secret), timeout=TIMEOUT)
    assert tokens.status_code == 200, tokens.text
    with Hammer(b, tokens.json()["access_token"]) as hammer:
        wait_subscribed(storage_url, at_least=2)
        answer = admin.delete(f"{a.url}/admin/clients/{client_id}", timeout=TIMEOUT)
        answered = time.monotonic()
        assert answer.status_code == 204, answer.text
        late = hammer.after(answered)
    admin.close()
    assert set(late) == {401}, hammer.statuses()
