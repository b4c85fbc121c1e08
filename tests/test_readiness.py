"""``/readyz`` checks every storage backend and the site; ``/healthz`` is liveness only."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest

from app import create_app
from tests.backends import (
    database_url,
    postgres_schema,
    redis_url,
    require_service,
    with_search_path,
)
from tests.conftest import base_config, close_app
from tests.storage.proxy import Proxy


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    auth, at, _ = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{auth}{at}127.0.0.1:{port}").geturl()


@pytest.fixture(params=["redis", "postgres"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def proxied(kind: str) -> Iterator[tuple[str, Proxy]]:
    """(a storage URL through a stoppable proxy, the proxy) for ``kind``."""
    with ExitStack() as stack:
        url = redis_url() if kind == "redis" else database_url()
        require_service(kind, url)
        if kind == "postgres":
            schema = stack.enter_context(postgres_schema(url))
        parts = urlsplit(url)
        proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 0)
        proxy.start()
        stack.callback(proxy.stop)
        routed = via(url, proxy.port)
        if kind == "postgres":
            routed = with_search_path(routed, schema)
        yield routed, proxy


def test_a_stopped_backend_is_named_then_ready_again(tmp_path, dummy_site, kind, proxied):
    url, proxy = proxied
    config = base_config(tmp_path, dummy_site)
    default = {"url": url, "options": {"timeout": 1}} if kind == "postgres" else url
    config["storage"] = {"default": default, "audit": f"sqlite:///{tmp_path}/audit.db"}
    app = create_app(config)
    try:
        client = app.test_client()
        up = client.get("/readyz")
        assert up.status_code == 200, up.get_json()
        body = up.get_json()
        assert body["status"] == "ready"
        assert set(body["checks"]) == {f"storage.{kind}", "storage.sqlite", "site"}
        assert body["checks"]["storage.sqlite"]["tables"] == ["audit"]
        assert all(check["status"] == "up" for check in body["checks"].values())
        assert "127.0.0.1" not in up.get_data(as_text=True)  # never a URL

        proxy.stop()
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "5"
        checks = down.get_json()["checks"]
        assert checks[f"storage.{kind}"]["status"] == "down"
        assert checks[f"storage.{kind}"]["error"]
        assert checks["storage.sqlite"]["status"] == "up"
        assert checks["site"]["status"] == "up"
        # Liveness does not depend on storage: the process still answers.
        assert client.get("/healthz").status_code == 200

        proxy.start()
        again = client.get("/readyz")
        assert again.status_code == 200, again.get_json()
    finally:
        close_app(app)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_site_is_named(tmp_path, dummy_site, closing):
    config = base_config(tmp_path, dummy_site)
    config["resource_server"]["port"] = closed_port()
    client = closing(create_app(config)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["site"] == {
        "status": "down",
        "ms": body["checks"]["site"]["ms"],
        "error": "UpstreamUnavailable",
    }
    assert body["checks"]["storage.sqlite"]["status"] == "up"


def test_a_hung_check_fails_within_the_timeout(app, monkeypatch):
    import threading

    from app.observability.readiness import readiness

    state = app.extensions["oauth2"]
    release = threading.Event()
    monkeypatch.setattr(state.adapter, "ready", lambda timeout: release.wait(10))
    try:
        ok, checks = readiness(state, timeout=0.2)
    finally:
        release.set()
    assert not ok
    assert checks["site"]["status"] == "down"
    assert checks["site"]["error"] == "no answer in 0.2s"
    assert checks["storage.sqlite"]["status"] == "up"


def probe_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if t.name.startswith("oauth2-readyz")}


def test_probes_reuse_their_threads_and_handles(app):
    """A probe used to start a thread per part; each left the site's libcurl handle (and
    its kept-alive connection) and a SQLite connection behind. Now each part has one
    thread for the process, whose handles every later probe reuses."""
    from app.observability.readiness import PROBER

    state = app.extensions["oauth2"]
    client = app.test_client()
    sqlite = next(iter(state.storage.backends.values()))
    assert client.get("/readyz").status_code == 200
    handles, connections = len(state.adapter._client._handles), len(sqlite._all)
    threads = probe_threads()
    for _ in range(25):
        assert client.get("/readyz").status_code == 200
    assert len(state.adapter._client._handles) == handles == 1
    assert len(sqlite._all) == connections
    assert probe_threads() == threads
    names = {thread.name for thread in PROBER.threads()}
    assert {"oauth2-readyz site", "oauth2-readyz storage.sqlite"} <= names


def test_a_hung_check_is_joined_not_started_again(app, monkeypatch):
    """Probes during a hang wait on the check already running: the hung backend is asked
    once, and no thread piles up per probe. Once it answers, the next probe asks anew."""
    import threading

    from app.observability.readiness import PROBER, readiness

    state = app.extensions["oauth2"]
    release = threading.Event()
    calls = []

    def hanging(timeout: float) -> None:
        calls.append(timeout)
        release.wait(10)

    monkeypatch.setattr(state.adapter, "ready", hanging)
    try:
        for probe in range(5):
            ok, checks = readiness(state, timeout=0.05)
            assert not ok
            assert checks["site"]["error"] == "no answer in 0.05s"
            assert checks["storage.sqlite"]["status"] == "up"
            if probe == 0:
                threads = probe_threads()  # this app's two parts' threads, made now
        assert len(calls) == 1
        assert probe_threads() == threads
    finally:
        release.set()
    hung = PROBER.running("site", state.adapter)
    assert hung is not None and hung.result(5)[0] is None  # it answered, late
    ok, checks = readiness(state, timeout=2)
    assert ok, checks
    assert len(calls) == 2


def test_a_hung_check_of_one_app_does_not_hold_anothers(
    app, tmp_path, dummy_site, closing, monkeypatch
):
    """Each backend or adapter has its own thread: another app's site (a reload, an
    embedder's second app) is asked at once while the first one's check hangs."""
    import threading

    from app import create_app
    from app.observability.readiness import readiness

    first = app.extensions["oauth2"]
    second = closing(create_app(base_config(tmp_path / "second", dummy_site))).extensions["oauth2"]
    release = threading.Event()
    monkeypatch.setattr(first.adapter, "ready", lambda timeout: release.wait(10))
    try:
        assert not readiness(first, timeout=0.05)[0]
        ok, checks = readiness(second, timeout=2)
        assert ok, checks
    finally:
        release.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_check_thread_that_ended_is_made_again(app, monkeypatch):
    from app.observability.readiness import readiness

    state = app.extensions["oauth2"]

    def ending(timeout: float) -> None:
        raise SystemExit  # ends the thread it runs on (not an Exception)

    monkeypatch.setattr(state.adapter, "ready", ending)
    ok, checks = readiness(state, timeout=2)
    assert not ok and checks["site"]["error"] == "SystemExit"
    monkeypatch.undo()
    ok, checks = readiness(state, timeout=2)
    assert ok, checks
