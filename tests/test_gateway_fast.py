"""The gateway's fast path (``app.gateway.Gateway._fast``): the usual call (a ``GET`` with
a good bearer token that passes every check) is served without Flask's request
machinery, and answers exactly as Flask's path does; every other call is handed to
Flask's path, which answers it as before, with the site called once and the token looked
up once whichever way the call went."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request_started
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from app.adapters import UpstreamUnavailable
from app.adapters.base import UpstreamResponse
from app.lean import LeanApp
from app.oauth2 import accept
from app.observability.requestlog import SAFE_ID
from app.pages import API_CSP
from tests.conftest import bearer, close_app
from tests.factories import make_client, make_token
from tests.oauth2.conftest import make_app
from tests.test_gateway_dispatch import answer, flask_path

#: Beside the demo clients (``test`` among them).
CLIENTS = [
    make_client("listed", api_allowlist=["update_avatar"]),
    make_client("metered", quota={"calls": 100, "per": "day"}),
]


@pytest.fixture
def app(tmp_path, dummy_site) -> Iterator[Flask]:
    # A caller's budget for bad tokens (``api_ip``) no test here reaches: the same call
    # sent both ways one after the other must not meet it between the two.
    app = make_app(tmp_path, dummy_site, CLIENTS, limits={"api_ip": "100000/minute"})
    yield app
    close_app(app)


@pytest.fixture
def gateway(app) -> Flask:
    return app.extensions["oauth2.gateway"]


@pytest.fixture
def state(app) -> Any:
    return app.extensions["oauth2"]


@pytest.fixture
def handed_on(monkeypatch) -> list[str]:
    """The paths of the calls the fast path handed to Flask's path."""
    seen: list[str] = []
    flask_way = LeanApp.wsgi_app

    def spy(self, environ, start_response):
        seen.append(environ["PATH_INFO"])
        return flask_way(self, environ, start_response)

    monkeypatch.setattr(LeanApp, "wsgi_app", spy)
    return seen


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """The bearer tokens looked up in storage, one entry a lookup."""
    seen: list[str] = []
    real = accept.find_bearer

    def counting(server, raw):
        seen.append(raw)
        return real(server, raw)

    monkeypatch.setattr(accept, "find_bearer", counting)
    monkeypatch.setattr("app.views.api.find_bearer", counting)
    return seen


def both_ways(gateway: Flask, path: str, headers: dict[str, str], **extra: Any):
    """The answers of the gateway's own ``wsgi_app`` (fast path first) and of Flask's."""
    headers = {"X-Request-Id": "same-id", **headers}
    fast = Client(gateway).get(path, headers=headers, **extra)
    flask = flask_path(gateway).get(path, headers=headers, **extra)
    return answer(fast), answer(flask)


def test_the_usual_call_takes_the_fast_path(gateway, state, handed_on, site_calls, lookups):
    token = make_token(state)["access_token"]
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert fast[0] == 200
    assert fast == flask
    assert handed_on == []  # the first answer came from the fast path
    assert site_calls == ["profile", "profile"]  # one call each way
    assert lookups == [token, token]


def test_over_https_it_carries_hsts_as_flasks_path_does(gateway, state, handed_on):
    token = make_token(state)["access_token"]
    fast, flask = both_ways(gateway, "/api/profile", bearer(token), base_url="https://localhost")
    assert ("Strict-Transport-Security", "max-age=31536000") in fast[1]
    assert fast == flask
    assert handed_on == []


@pytest.mark.parametrize(
    ("client_id", "scope", "path", "status"),
    [
        ("test", "read-only", "/api/nosuch", 404),
        ("test", "read-only", "/api/update_avatar", 403),  # a read-write function
        ("test", "openid", "/api/profile", 403),  # scope
        ("listed", "read-only", "/api/profile", 403),  # the client's api_allowlist
        ("metered", "read-only", "/api/profile", 200),  # quotas: Flask's path spends them
        ("test", "read-only", "/api/profile?x=1", 200),  # a query: Flask's parsing
    ],
)
def test_what_the_fast_path_does_not_serve_goes_on_with_one_lookup(
    gateway, state, handed_on, lookups, client_id, scope, path, status
):
    token = make_token(state, client_id=client_id, scope=scope)["access_token"]
    fast, flask = both_ways(gateway, path, bearer(token))
    assert fast[0] == status
    assert fast == flask
    assert handed_on == [path.partition("?")[0]]
    if "?" not in path:  # a query is looked at first: no lookup on the fast path
        assert lookups == [token, token]  # one lookup each way: handed on with the call


def test_a_client_token_without_a_user_goes_on(gateway, state, handed_on):
    token = make_token(state, user_id=None)["access_token"]
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert fast[0] == 403
    assert fast == flask


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer nope", "Bearer " + "a" * 43, "Basic dGVzdDpodW50ZXIy", "bearer", "DPoP x"],
)
def test_bad_or_missing_tokens_go_on_and_never_reach_the_site(
    gateway, handed_on, site_calls, authorization
):
    headers = {"Authorization": authorization} if authorization else {}
    fast, flask = both_ways(gateway, "/api/profile", headers)
    assert fast[0] == 401
    assert fast == flask
    assert site_calls == []
    assert len(handed_on) == 1


def test_a_revoked_token_is_refused_on_the_fast_path_too(gateway, state, handed_on):
    token = make_token(state)["access_token"]
    assert Client(gateway).get("/api/profile", headers=bearer(token)).status_code == 200
    state.grants.revoke_token(state.grants.find_access(token))
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert fast[0] == 401
    assert fast == flask


@pytest.mark.parametrize(
    "outcome",
    [
        UpstreamResponse(404, b'{"error":"no"}', "application/json"),
        UpstreamResponse(201, b"{}", "application/json"),
        UpstreamResponse(500, b"boom", "text/plain"),
        UpstreamResponse(200, b"{}", "application/json\x01"),
        UpstreamUnavailable("down"),
        UpstreamUnavailable("slow", timeout=True),
        RuntimeError("the adapter broke"),
        UpstreamResponse(200, b"{}", None),  # type: ignore[arg-type] - an adapter's slip
        UpstreamResponse(200, bytearray(b"{}"), "application/json"),  # type: ignore[arg-type]
        object(),  # not an answer at all
    ],
    ids=["404", "201", "500", "odd-type", "down", "timeout", "error", "no-type", "bytes", "odd"],
)
def test_the_sites_other_answers_are_rendered_by_flasks_path_after_one_call(
    gateway, state, monkeypatch, handed_on, outcome
):
    token = make_token(state)["access_token"]
    calls: list[int] = []

    def site(route, *args, **kwargs):
        calls.append(1)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(state.adapter, "call", site)
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert calls == [1, 1]  # once each way: the fast path's answer was handed on
    assert fast == flask
    assert fast[0] < 500 or fast[0] in (500, 502, 504)
    assert handed_on == ["/api/profile"]


@pytest.mark.parametrize(
    "kind",
    ["text/html; charset=utf-8", "TEXT/HTML", "image/svg+xml", "application/xhtml+xml"],
)
def test_whatever_the_site_answers_runs_nothing_on_our_origin(
    gateway, state, monkeypatch, handed_on, kind
):
    """A page-like answer is the site's data: sandboxed, no script, no referrer."""
    token = make_token(state)["access_token"]
    monkeypatch.setattr(
        state.adapter, "call", lambda *a, **k: UpstreamResponse(200, b"<svg/>", kind)
    )
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert fast == flask
    assert handed_on == []
    fields = dict(fast[1])
    assert fields["Content-Security-Policy"] == API_CSP
    assert fields["Referrer-Policy"] == "no-referrer"
    assert fields["Content-Type"] == kind


def test_a_hook_or_a_signal_receiver_sends_every_call_flasks_way(gateway, state, handed_on):
    token = make_token(state)["access_token"]
    seen: list[str] = []
    gateway.before_request_funcs.setdefault(None, []).append(lambda: seen.append("hook"))
    assert Client(gateway).get("/api/profile", headers=bearer(token)).status_code == 200
    assert seen == ["hook"]
    assert len(handed_on) == 1
    gateway.before_request_funcs[None].pop()

    def receiver(sender, **extra):
        if sender is gateway:  # (the bundled site, a Flask app, sends its own)
            seen.append("signal")

    request_started.connect(receiver)
    try:
        assert Client(gateway).get("/api/profile", headers=bearer(token)).status_code == 200
    finally:
        request_started.disconnect(receiver)
    assert seen == ["hook", "signal"]
    assert len(handed_on) == 2
    assert Client(gateway).get("/api/profile", headers=bearer(token)).status_code == 200
    assert len(handed_on) == 2  # back on the fast path


def test_the_request_line_and_counts_match_flasks_path(gateway, state, caplog):
    token = make_token(state)["access_token"]
    headers = {**bearer(token), "X-Request-Id": "line-id"}
    with caplog.at_level(logging.INFO, logger="oauth2.request"):
        Client(gateway).get("/api/profile", headers=headers)
        flask_path(gateway).get("/api/profile", headers=headers)
    lines = [dict(r.fields) for r in caplog.records if r.name == "oauth2.request"]
    assert len(lines) == 2
    for line in lines:
        assert line.pop("duration_ms") >= 0
    assert lines[0] == lines[1]
    assert lines[0]["client_id"] == "test" and lines[0]["user"]
    assert lines[0]["route"] == "/api/<path:name>" and lines[0]["request_id"] == "line-id"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(["profile", "update_avatar", "nosuch", "pro.file"]),
    authorization=st.one_of(
        st.none(),
        st.sampled_from(["good", "Bearer", "Bearer x"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    ),
    request_id=st.one_of(st.none(), st.text(max_size=20), st.from_regex(SAFE_ID, fullmatch=True)),
    content_type=st.one_of(st.none(), st.sampled_from(["application/json", "text/plain"])),
)
def test_any_get_answers_as_flasks_path_does(
    gateway, state, name, authorization, request_id, content_type
):
    """Whatever a ``GET`` carries, the gateway answers as Flask's path (never a 500)."""
    token = make_token(state)["access_token"]
    headers: dict[str, str] = {}
    if authorization == "good":
        headers["Authorization"] = "Bearer " + token
    elif authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    # An id the gateway takes as it is (any other is replaced by a random one each way).
    headers["X-Request-Id"] = request_id if request_id and SAFE_ID.fullmatch(request_id) else "id"
    fast = Client(gateway).get(f"/api/{name}", headers=headers)
    flask = flask_path(gateway).get(f"/api/{name}", headers=headers)
    assert answer(fast) == answer(flask), (name, authorization, headers)
    assert fast.status_code < 500


# -- what the review of the fast path asked for -------------------------------------------
@pytest.mark.parametrize("budget", ["api", "api_ip"])
def test_a_refusal_met_on_the_fast_path_is_audited_once(tmp_path, dummy_site, budget):
    app = make_app(tmp_path, dummy_site, CLIENTS, limits={budget: "2/hour"})
    try:
        state = app.extensions["oauth2"]
        token = make_token(state)["access_token"]
        http = Client(app.extensions["oauth2.gateway"])
        headers = bearer(token if budget == "api" else "not-a-token")
        answers = [http.get("/api/profile", headers=headers).status_code for _ in range(5)]
        assert answers == [200 if budget == "api" else 401] * 2 + [429] * 3
        events = [r["event"] for r in state.storage.audit.recent(50)]
        assert events.count("rate_limited") == 1  # as Flask's path alone: once a window
    finally:
        close_app(app)


def test_a_failing_request_line_does_not_fail_the_answered_call(gateway, state, monkeypatch):
    token = make_token(state)["access_token"]

    def broken(*args, **kwargs):
        raise RuntimeError("the log is gone")

    monkeypatch.setattr(gateway.request_line, "done", broken)
    answer_ = Client(gateway).get("/api/profile", headers=bearer(token))
    assert answer_.status_code == 200
    assert answer_.get_json()["firstName"]


def test_a_body_sent_without_a_length_goes_on_put_back_whole(gateway, state, handed_on):
    token = make_token(state)["access_token"]
    read: list[bytes] = []
    gateway.before_request_funcs[None].append(lambda: read.append(request_body()) and None)
    gateway.fast_hooks = gateway._hooks_now()  # the extra hook stands for Flask's path's
    body = b"line one\nline two"
    environ = {"wsgi.input_terminated": True, "wsgi.input": io.BytesIO(body)}
    response = Client(gateway).get("/api/profile", headers=bearer(token), environ_overrides=environ)
    assert response.status_code == 200
    assert handed_on == ["/api/profile"]
    assert read == [body]  # the byte read to look is back in front


def request_body() -> bytes:
    from flask import request

    return request.get_data()


@pytest.mark.parametrize("fields", [{"expires_in": -1}, {"jkt": "bound-to-a-key"}])
def test_expired_and_dpop_bound_tokens_are_refused_both_ways(gateway, state, handed_on, fields):
    token = make_token(state, **fields)["access_token"]
    fast, flask = both_ways(gateway, "/api/profile", bearer(token))
    assert fast[0] == 401
    assert fast == flask
    assert handed_on == ["/api/profile"]


def test_nothing_of_a_fast_call_stays_in_the_thread(gateway, state):
    from app.client_store import _REQUEST_MEMO
    from app.logconfig import REQUEST_ID

    token = make_token(state)["access_token"]
    assert Client(gateway).get("/api/profile", headers=bearer(token)).status_code == 200
    assert REQUEST_ID.get() is None
    assert _REQUEST_MEMO.get() is None


class Granian(io.BytesIO):
    """A server body as granian's is: ``readline`` takes no negative size."""

    def readline(self, size: int | None = None) -> bytes:  # type: ignore[override]
        if size is not None and size < 0:
            raise OverflowError("can't convert negative int to unsigned")
        return super().readline(size)


@pytest.mark.parametrize("body", [b"a", b"\n", b"ab\ncd\n", b"one\ntwo\nthree", b"x" * 200_000])
def test_a_body_put_back_reads_as_it_was_sent(body):
    from app.gateway import _no_body

    for read in (
        lambda s: s.read(),
        lambda s: s.read(-1),
        lambda s: b"".join(iter(lambda: s.read(7), b"")),
        lambda s: b"".join(s.readlines()),
        lambda s: b"".join(s),
        lambda s: s.readline() + s.read(),
        lambda s: s.readline(1) + s.readline(2) + s.read(),
    ):
        environ = {"wsgi.input_terminated": True, "wsgi.input": Granian(body)}
        assert _no_body(environ) is False
        assert read(environ["wsgi.input"]) == body


def test_an_empty_or_unreadable_body_is_looked_at_safely():
    from app.gateway import _no_body

    assert _no_body({"wsgi.input_terminated": True, "wsgi.input": io.BytesIO(b"")})
    assert _no_body({"wsgi.input": io.BytesIO(b"never read")})  # not server-ended: no body

    class Broken:
        def read(self, size: int = -1) -> bytes:
            raise OSError("the connection went")

    assert _no_body({"wsgi.input_terminated": True, "wsgi.input": Broken()}) is False
