"""Shared fixtures: the dummy site on a free port, an app per test, helpers for flows;
and the backend markers (``pytest -m redis`` runs the tests that need a Redis)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from werkzeug.routing.rules import Rule
from werkzeug.serving import make_server

from app import create_app
from app.dummy_site import create_dummy_app
from app.observability import direct
from tests.factories import REDIRECT, csrf_from, login  # also imported from here by tests

T = TypeVar("T")

#: One marker per storage backend (registered in pyproject.toml).
BACKEND_MARKS = ("sqlite", "redis", "postgres", "redis_cluster")
#: Fixtures that bring a backend's server into a test, directly or through others. A
#: test module may add its own in a module-level ``BACKEND_FIXTURES`` dict.
BACKEND_FIXTURES = {
    "redis_backend": "redis",
    "shared_redis": "redis",
    "module_redis": "redis",
    "own_redis": "redis",
    "postgres_backend": "postgres",
    "pg_schema": "postgres",
    "pg_url": "postgres",
    "module_pg_url": "postgres",
    "redis_cluster_backend": "redis_cluster",
}
#: Fixtures parametrised over backends by name (the storage contract suite, flows).
BACKEND_PARAMS = ("backend", "kind")

VERIFIER = "v" * 43 + "-verifier_with.chars~"
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)


def _compile_url_builders_once() -> None:
    """Compile each route's URL builders once per test run, not once per app.

    Nearly every test makes an app, and werkzeug compiles two builder functions per route
    (Python source, through ``ast`` and ``compile``) for each: about 70 % of
    ``create_app``. A builder depends only on the rule, its trace and its defaults' names
    (it reaches the converters through the rule it is bound to), so the same rule gets the
    same function; rules with a default inside the path (resolved into the code) compile
    as before.
    """
    original = Rule._compile_builder
    builders: dict[tuple, Callable[..., tuple[str, str]]] = {}

    def compile_builder(self: Rule, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        defaults = self.defaults or {}
        if any(dynamic and part in defaults for dynamic, part in self._trace):
            return original(self, append_unknown)
        key = (self.rule, tuple(self._trace), tuple(defaults), append_unknown)
        if key not in builders:
            builders[key] = original(self, append_unknown)
        return builders[key]

    Rule._compile_builder = compile_builder  # type: ignore[method-assign]


_compile_url_builders_once()


def backends_of(item: pytest.Item) -> set[str]:
    """The backends a collected test runs on, from its fixtures and parameters."""
    fixtures = {
        **BACKEND_FIXTURES,
        **getattr(getattr(item, "module", None), "BACKEND_FIXTURES", {}),
    }
    found = {fixtures[name] for name in getattr(item, "fixturenames", ()) if name in fixtures}
    params = getattr(getattr(item, "callspec", None), "params", {})
    found.update(params[name] for name in BACKEND_PARAMS if params.get(name) in BACKEND_MARKS)
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for backend in sorted(backends_of(item)):
            item.add_marker(backend)


#: The root logger's handlers and level before a test (:func:`pytest_runtest_protocol`).
_ROOT_LOGGING = pytest.StashKey[tuple[list[logging.Handler], int]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test's logging set-up does not outlive it: the CLI's ``main`` (run in process by
    the CLI tests) sets the root logger up as a server's, writing to the ``sys.stderr`` of
    that moment (a test's capture, closed as the test ends); the root's handlers and level
    are put back once the test is done."""
    root = logging.getLogger()
    item.stash[_ROOT_LOGGING] = (list(root.handlers), root.level)
    yield
    handlers, level = item.stash[_ROOT_LOGGING]
    if root.handlers != handlers or root.level != level:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Request lines held for a stream are written as the test's call ends (innermost:
    before pytest's capture of ``sys.stderr``, which such a stream may be, is closed),
    not later by the holder's thread."""
    yield
    direct.HOLDER.flush()


@pytest.fixture(scope="session")
def dummy_site() -> Iterator[tuple[str, int]]:
    """The bundled stand-in site, served in a thread on a free port."""
    server = make_server("127.0.0.1", 0, create_dummy_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_port
    server.shutdown()
    server.server_close()
    thread.join(5)


#: The repository (its ``clients.json.example`` is the config folders' clients file).
ROOT = Path(__file__).resolve().parents[1]


def config_folder(tmp_path, dummy_site, name: str, **sections: dict) -> tuple[Path, dict]:
    """A config folder (``tmp_path/config``) whose ``default.json`` serves the dummy site
    from SQLite (``tmp_path/<name>.db``), the demo clients, and ``sections`` over that
    (each replaces its section's keys); the folder and what its file holds."""
    folder = tmp_path / "config"
    folder.mkdir()
    host, port = dummy_site
    config = {
        "auth_server": {"session_secret": f"{name}-test-secret-" + "x" * 20},
        "storage": {"default": f"sqlite:///{tmp_path}/{name}.db"},
        "resource_server": {"type": "dummy", "host": host, "port": port},
        "client_credentials": {"file": str(ROOT / "clients.json.example")},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    (folder / "default.json").write_text(json.dumps(config))
    return folder, config


def base_config(tmp_path, dummy_site, **over) -> dict:
    host, port = dummy_site
    config = {
        "auth_server": {"session_secret": "test-secret-" + "x" * 20},
        "storage": {"default": f"sqlite:///{tmp_path}/oauth2.db"},
        "resource_server": {"type": "dummy", "host": host, "port": port},
    }
    for section, values in over.items():
        config.setdefault(section, {}).update(values)
    return config


def close_app(app: Flask) -> None:
    """Release what the app holds open: its token cache's subscriber, its storage and
    limiter connections and the adapter's pool."""
    state = app.extensions["oauth2"]
    if state.grants.cache is not None:
        state.grants.cache.close()
    state.storage.close()
    state.limits.rates.close()
    state.adapter.close()


@pytest.fixture
def closing() -> Iterator[Callable[[Flask], Flask]]:
    """Return ``keep(app)``: it returns ``app``, which is closed after the test."""
    apps: list[Flask] = []

    def keep(app: Flask) -> Flask:
        apps.append(app)
        return app

    yield keep
    for app in apps:
        close_app(app)


@pytest.fixture
def app(tmp_path, dummy_site):
    app = create_app(base_config(tmp_path, dummy_site))
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def state(app):
    return app.extensions["oauth2"]


@pytest.fixture
def site_calls(state, monkeypatch) -> list[str]:
    """The functions the gateway asked the site for, in order (one entry a call)."""
    seen: list[str] = []
    real = state.adapter.call

    def counting(route, *args, **kwargs):
        seen.append(route.name)
        return real(route, *args, **kwargs)

    monkeypatch.setattr(state.adapter, "call", counting)
    return seen


# -- helpers ----------------------------------------------------------------------------
def hidden(html: str, name: str) -> str | None:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    return match.group(1) if match else None


def authorize_url(
    client_id="test", response_type="code", scope=None, state="xyz", redirect_uri=REDIRECT, **extra
) -> str:
    from urllib.parse import urlencode

    params = {"response_type": response_type, "client_id": client_id, "redirect_uri": redirect_uri}
    if state is not None:
        params["state"] = state
    if scope is not None:
        params["scope"] = scope
    params.update(extra)
    return "/authorize?" + urlencode(params)


def consent(client, url: str, allow: bool = True):
    """Open the consent page for ``url`` and answer it; return the response.

    An OpenID Connect request the user consented to before answers at once (remembered
    consent): that answer is returned when ``allow``.
    """
    page = client.get(url)
    remembered = page.status_code == 302 and "scope=openid" in url.replace("%20", "+")
    if allow and remembered and not page.headers["Location"].startswith("/login"):
        return page
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    form = {
        "csrf_token": csrf_from(html),
        "transaction_id": hidden(html, "transaction_id"),
        "scope": hidden(html, "scope"),
    }
    form["allow" if allow else "cancel"] = "Allow" if allow else "Deny"
    return client.post("/authorize", data=form)


def location_params(response, fragment=False) -> dict[str, str]:
    parts = urlsplit(response.headers["Location"])
    return {k: v[0] for k, v in parse_qs(parts.fragment if fragment else parts.query).items()}


def get_code(client, **kw) -> str:
    login(client)
    response = consent(client, authorize_url(**kw))
    assert response.status_code == 302, response.get_data(as_text=True)
    return location_params(response)["code"]


def basic(client_id="test", secret="hunter2") -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def exchange(client, code, **extra):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    return client.post("/token", data=data, headers=basic())


def session_calls(state, monkeypatch) -> list[str]:
    """The session store's reads and writes from now on (``get``/``put``/``delete``)."""
    calls: list[str] = []
    for verb in ("get", "put", "delete"):
        real = getattr(state.storage.session, verb)
        monkeypatch.setattr(
            state.storage.session,
            verb,
            lambda *a, _v=verb, _r=real, **k: calls.append(_v) or _r(*a, **k),
        )
    return calls


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def table(rows: Iterable[Sequence]) -> list:
    """A parametrize table from rows ``(id, *values)``: each row's values, named by its id."""
    return [pytest.param(*row[1:], id=row[0]) for row in rows]


def race(count: int, attempt: Callable[[Callable[[], object]], T], timeout=30.0) -> list[T]:
    """Run ``attempt(go)`` in ``count`` threads; each calls ``go()`` when ready, and all go
    on together. Return what the attempts returned (a failed attempt returns nothing)."""
    barrier = threading.Barrier(count)
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        result = attempt(lambda: barrier.wait(timeout))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results
