"""``/api/*`` on its own lean app (app.gateway): no sessions, no page hooks, the same
answers; what sits in front of the dispatcher (ProxyFix) still applies."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app import create_app
from app.logconfig import JsonFormatter
from app.pages import API_CSP
from tests.conftest import base_config, bearer, exchange, get_code, session_calls


@pytest.fixture
def access(client) -> str:
    return exchange(client, get_code(client)).get_json()["access_token"]


def test_api_is_served_by_the_gateway_app(app, client, access):
    gateway = app.extensions["oauth2.gateway"]
    assert gateway is not app
    assert list(gateway.url_map.iter_rules(endpoint="api.call"))
    seen = []
    gateway.before_request_funcs.setdefault(None, []).append(lambda: seen.append(1))
    assert client.get("/api/profile", headers=bearer(access)).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert seen == [1]  # the gateway answered /api, and only /api


def test_api_reads_and_writes_no_session(client, state, access, monkeypatch):
    cookie = client.get_cookie("oauth2_session")  # alice signed in to get the token
    assert cookie is not None
    calls = session_calls(state, monkeypatch)
    response = client.get("/api/profile", headers=bearer(access))  # the cookie goes too
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers and "Vary" not in response.headers
    assert calls == []


def test_api_answers_carry_the_security_headers_and_no_store(client, access):
    for response in (
        client.get("/api/profile", headers=bearer(access)),
        client.get("/api/profile"),
        client.get("/api/nosuch", headers=bearer(access)),
        client.get("/api/"),
    ):
        assert response.is_json
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Security-Policy"] == API_CSP
        assert response.headers["X-Request-Id"]
    assert client.get("/api/").get_json() == {"success": 0, "error": "not found"}


def test_proxy_fix_and_the_request_line_apply_to_the_gateway(tmp_path, dummy_site, closing):
    config = base_config(tmp_path, dummy_site, auth_server={"trusted_proxies": 1})
    client = closing(create_app(config)).test_client()
    token = exchange(client, get_code(client)).get_json()["access_token"]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("oauth2.request")
    logger.addHandler(handler)
    try:
        response = client.get(
            "/api/profile",
            headers={**bearer(token), "X-Forwarded-For": "203.0.113.9", "X-Request-Id": "gw-1"},
        )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "gw-1"
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["ip"] == "203.0.113.9" and line["route"] == "/api/<path:name>"
    assert line["client_id"] == "test" and line["status"] == 200 and len(line["user"]) == 16


def test_the_apps_remember_plain_functions_and_ask_flask_of_coroutines(monkeypatch):
    """``SyncedFlask.ensure_sync``: a plain function is handed back as it is and its code
    remembered (functions made anew from one line share it, up to the bound); a
    coroutine function, a marked one or a bound method always goes Flask's way."""
    from flask import Flask

    from app.lean import SyncedFlask

    app = SyncedFlask(__name__)

    def plain() -> None:
        return None

    async def coroutine() -> None:
        return None

    assert app.ensure_sync(plain) is plain
    assert app._plain_codes == {plain.__code__}
    made = [lambda: None for _ in range(5)]  # as ``after_this_request`` gets, per request
    assert all(app.ensure_sync(each) is each for each in made)
    assert len(app._plain_codes) == 2  # one for the line, not one a function
    for _ in range(2):  # Flask's own answer each time (here: asgiref is not installed)
        with pytest.raises(RuntimeError) as ours:
            app.ensure_sync(coroutine)
        with pytest.raises(RuntimeError) as flasks:
            Flask.ensure_sync(app, coroutine)
        assert str(ours.value) == str(flasks.value)
    assert coroutine.__code__ not in app._plain_codes

    def marked() -> None:  # what ``inspect.markcoroutinefunction`` does (Python 3.12+)
        return None

    marked._is_coroutine_marker = object()  # type: ignore[attr-defined]
    asked = []
    flasks_own = Flask.ensure_sync
    monkeypatch.setattr(
        Flask, "ensure_sync", lambda self, func: asked.append(func) or flasks_own(self, func)
    )
    bound = app.make_response
    for func in (plain, marked, marked, bound, bound):
        app.ensure_sync(func)
    assert asked == [marked, marked, bound, bound]  # the plain one was remembered
    assert marked.__code__ not in app._plain_codes
    app._plain_codes = {compile(str(n), "<n>", "eval") for n in range(app.PLAIN_MOST)}
    other = lambda: None  # noqa: E731
    assert app.ensure_sync(other) is other
    assert other.__code__ not in app._plain_codes
