"""The gateway's own dispatcher (app.gateway.Gateway): the short way answers exactly as
Flask's own path does, and what it does itself (routing, hooks in order, errors, the
answer on the wire) holds for any path, method and header under ``/api/``."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from flask import Flask, request_finished, request_started
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from app.gateway import PLAIN_NAME
from tests.conftest import bearer, exchange, get_code
from tests.test_errors import assert_clean, boom

SECURITY = ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")
#: Fields whose values count requests (the limiter's budget left): compared by name only.
COUNTING = ("ratelimit",)


@pytest.fixture
def access(client) -> str:
    return exchange(client, get_code(client)).get_json()["access_token"]


@pytest.fixture
def gateway(app) -> Flask:
    return app.extensions["oauth2.gateway"]


def flask_path(gateway: Flask) -> Client:
    """A client of the same gateway app through Flask's own ``wsgi_app``."""
    return Client(lambda environ, start: Flask.wsgi_app(gateway, environ, start))


def answer(response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [
        (name, "" if name.lower().startswith(COUNTING) else value)
        for name, value in response.headers.items()
    ]
    return response.status_code, headers, response.get_data()


CASES = [
    ("GET", "/api/profile", True, {}),
    ("HEAD", "/api/profile", True, {}),
    ("GET", "/api/profile?x=1&y=2", True, {}),
    ("GET", "/api/profile", False, {}),
    ("GET", "/api/profile", False, {"Authorization": "Bearer nope"}),
    ("GET", "/api/nosuch", True, {}),
    ("POST", "/api/profile", True, {"Content-Type": "application/json"}),
    ("DELETE", "/api/update_avatar", True, {}),
    ("OPTIONS", "/api/profile", False, {"Origin": "https://a.example"}),
    (
        "OPTIONS",
        "/api/profile",
        False,
        {"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
    ),
    ("GET", "/api/profile?%ff", True, {}),
    ("GET", "/api//profile", True, {}),
    ("TRACE", "/api/profile", True, {}),
    ("GET", "/api/a/b", True, {}),
    ("GET", "/api/", True, {}),
    # What Flask's URL adapter refuses (400) the short way must not serve.
    ("GET", "/api/profile", True, {"Connection": "Upgrade", "Upgrade": "websocket"}),
    ("GET", "/api/profile", True, {"Host": "a" * 64 + ".example"}),
    ("GET", "/api/profile", True, {"Host": "bücher.example"}),
    ("GET", "/api/profile", True, {"Host": "[::1]:8081"}),
]


@pytest.mark.parametrize(("method", "path", "token", "headers"), CASES)
def test_the_short_way_answers_as_flask_does(gateway, access, method, path, token, headers):
    headers = {**headers, "X-Request-Id": "same-id"}
    if token:
        headers.update(bearer(access))
    lean = Client(gateway).open(path, method=method, headers=headers)
    flask = flask_path(gateway).open(path, method=method, headers=headers)
    assert answer(lean) == answer(flask)


def test_plain_names_skip_the_url_map_and_others_use_it(gateway, client, access, monkeypatch):
    bound = []  # the requests a URL adapter was made for (None: the app context's own)
    real = gateway.create_url_adapter
    monkeypatch.setattr(
        gateway, "create_url_adapter", lambda req: (req and bound.append(req)) or real(req)
    )
    assert client.get("/api/profile", headers=bearer(access)).status_code == 200
    assert bound == []
    assert client.get("/api/a//b", headers=bearer(access)).status_code in (308, 404)
    assert client.open("/api/profile", method="TRACE").status_code == 405
    assert len(bound) == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=12))
def test_a_plain_name_is_what_the_url_map_matches(name):
    app = Flask(__name__)
    app.add_url_rule("/api/<path:name>", "call", lambda name: name)
    if PLAIN_NAME.fullmatch(name):
        rule, args = app.url_map.bind("localhost").match("/api/" + name, return_rule=True)
        assert (rule.rule, args) == ("/api/<path:name>", {"name": name})


def test_an_unexpected_error_is_the_json_500_and_a_logged_trace(client, state, monkeypatch, caplog):
    token = exchange(client, get_code(client)).get_json()["access_token"]
    monkeypatch.setattr(state.adapter, "call", boom)
    with caplog.at_level(logging.ERROR, logger="oauth2"):
        response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 500
    assert response.get_json() == {"error": "server_error", "error_description": "Internal error."}
    assert_clean(response)
    assert response.headers["X-Request-Id"] and response.headers["Cache-Control"] == "no-store"
    assert all(response.headers[name] for name in SECURITY)
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "unhandled error on GET /api/profile"
    assert isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "body"),
    [
        ("TRACE", "/api/profile", "", 405, {"success": 0, "error": "method not allowed"}),
        ("GET", "/api/", "", 404, {"success": 0, "error": "not found"}),
        ("GET", "/api/profile", "\xff", 400, {"success": 0, "error": "bad request"}),
        ("GET", "/api/profile", "", 401, {"success": 0, "error": "missing token"}),
        ("HEAD", "/api/profile", "", 401, None),
    ],
)
def test_error_shapes_carry_the_id_and_the_security_headers(
    client, method, path, query, status, body
):
    response = client.open(
        path,
        method=method,
        headers={"X-Request-Id": "err-1"},
        environ_overrides={"QUERY_STRING": query},
    )
    assert response.status_code == status
    assert response.get_json() == body if body else response.get_data() == b""
    assert response.headers["X-Request-Id"] == "err-1"
    assert all(response.headers[name] for name in SECURITY)
    if status == 405:
        assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST", "OPTIONS"}


def test_a_merged_slash_is_redirected_with_its_id(client):
    response = client.get("/api//profile", headers={"X-Request-Id": "r-1"})
    assert response.status_code == 308 and response.location.endswith("/api/profile")
    assert response.headers["X-Request-Id"] == "r-1"


@pytest.mark.parametrize("path", ["/api/profile", "/api/nosuch", "/api/a/b"])
def test_the_request_line_names_the_route(client, access, caplog, path):
    with caplog.at_level(logging.INFO, logger="oauth2.request"):
        client.get(path, headers=bearer(access))
    (record,) = [r for r in caplog.records if r.name == "oauth2.request"]
    assert record.fields["route"] == "/api/<path:name>"
    assert record.fields["path"] == path


def test_hooks_run_in_flasks_order(gateway, client, access):
    seen = []

    @gateway.after_request
    def newest(response):  # registered last: runs first among after_request hooks
        seen.append(
            (
                response.headers.get("Access-Control-Allow-Origin"),  # after_this_request: ran
                response.headers.get("X-Request-Id"),  # the request line's hook: not yet
                response.headers.get("X-Frame-Options"),  # the security headers: not yet
            )
        )
        return response

    assert client.get("/api/profile", headers=bearer(access)).status_code == 200
    assert seen == [("*", None, None)]


def test_signals_are_sent_when_someone_listens(gateway, client, access):
    started, finished = [], []

    def on_started(sender, **extra):
        started.append(sender)

    def on_finished(sender, response, **extra):
        finished.append(response.status_code)

    with (
        request_started.connected_to(on_started, gateway),
        request_finished.connected_to(on_finished, gateway),
    ):
        client.get("/api/profile", headers=bearer(access))
    assert started == [gateway] and finished == [200]


def test_teardown_hooks_see_the_error(gateway, client, state, access, monkeypatch):
    seen = []
    gateway.teardown_request(seen.append)
    monkeypatch.setattr(state.adapter, "call", boom)
    client.get("/api/profile", headers=bearer(access))
    monkeypatch.undo()
    client.get("/api/profile", headers=bearer(access))
    assert [type(exc) for exc in seen] == [type(None), type(None)]  # handled: as Flask


METHODS = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "get"]
)
LATIN1 = st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n"), max_size=40)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=METHODS,
    tail=st.binary(max_size=24),
    query=st.binary(max_size=16),
    authorization=st.one_of(LATIN1, st.just("live")),
    offered_id=LATIN1,
    content_type=LATIN1,
    dpop=LATIN1,
)
def test_anything_under_api_is_never_a_500(
    app, access, method, tail, query, authorization, offered_id, content_type, dpop
):
    environ = EnvironBuilder(method=method, data=b"{}").get_environ()
    environ["PATH_INFO"] = "/api/" + tail.decode("latin-1")
    environ["QUERY_STRING"] = quote(query.decode("latin-1"), safe="=&%")
    environ["HTTP_AUTHORIZATION"] = f"Bearer {access}" if authorization == "live" else authorization
    environ["HTTP_X_REQUEST_ID"] = offered_id
    environ["CONTENT_TYPE"] = content_type
    environ["HTTP_DPOP"] = dpop
    body, status, headers = run_wsgi_app(app, environ, buffered=True)
    names = {name.lower() for name, _ in headers}
    assert int(status.split()[0]) < 500, (status, b"".join(body))
    assert "x-request-id" in names and "x-content-type-options" in names


def test_flask_refusals_at_the_edge_stay_refusals(client, access):
    """A WebSocket upgrade and a host Werkzeug cannot take are Flask's 400, never served."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", **bearer(access)}
    assert client.get("/api/profile", headers=upgrade).status_code == 400
    bad_host = {"Host": "a" * 64 + ".example", **bearer(access)}
    assert client.get("/api/profile", headers=bad_host).status_code == 400
    assert client.get("/api/profile", headers=bearer(access)).status_code == 200


def test_the_route_is_settled_before_any_request(app, gateway):
    """Set once when the app is built (no thread sees part of it); one route only."""
    rule, methods, endpoint, blueprint = gateway.settled
    assert rule.rule == "/api/<path:name>" and {"GET", "POST", "OPTIONS"} <= methods
    assert gateway.view_functions[endpoint] and blueprint == "api"
    gateway.add_url_rule("/api-extra/<name>", "extra", lambda name: name)
    with pytest.raises(RuntimeError, match="2 routes"):
        gateway.settle()


def test_a_session_changed_in_one_request_is_not_seen_by_the_next(app, client, access):
    """Each request has its own null session: nothing one call writes leaks to another."""
    from flask import session

    seen = []

    def meddle(response):
        seen.append(dict(session))
        session.update  # noqa: B018 - the null session refuses update(); |= bypasses it
        session.__ior__({"_user_id": "mallory"})
        return response

    gateway = app.extensions["oauth2.gateway"]
    gateway.after_request_funcs.setdefault(None, []).insert(0, meddle)
    try:
        for _ in range(2):
            response = client.get("/api/profile", headers={**bearer(access), "Cookie": "s=1"})
            assert response.status_code == 200
    finally:
        gateway.after_request_funcs[None].remove(meddle)
    assert seen == [{}, {}]


def test_a_request_started_receiver_error_goes_to_the_error_handlers(app, client, access):
    from werkzeug.exceptions import Forbidden

    def refuse(sender, **_):
        raise Forbidden()

    request_started.connect(refuse)
    try:
        response = client.get("/api/profile", headers=bearer(access))
    finally:
        request_started.disconnect(refuse)
    assert response.status_code == 403
    assert response.headers["X-Request-Id"]


def test_a_request_without_host_takes_the_short_way_by_the_server_name(gateway, access):
    """HTTP/1.0 may omit ``Host``: the server's name stands for it, as Werkzeug takes it."""
    env = EnvironBuilder("/api/profile", headers=bearer(access)).get_environ()
    del env["HTTP_HOST"]
    bound = []
    real = gateway.create_url_adapter
    gateway.create_url_adapter = lambda req: bound.append(req) or real(req)
    try:
        body, status, _ = run_wsgi_app(gateway.wsgi_app, env)
        assert status.startswith("200") and b"".join(body)
    finally:
        del gateway.create_url_adapter
    assert [req for req in bound if req is not None] == []  # no URL adapter for the request
