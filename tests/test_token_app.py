"""The back channel on its own lean app (app.token_app, app.lean): ``/token``,
``/revoke``, ``/introspect``, UserInfo, the keys and the OpenID Provider metadata answer
exactly as Flask's own path does, read and write no session, and nothing sent to them is
a 500; the token endpoints' form body is read as Werkzeug reads it."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict
from werkzeug.formparser import FormDataParser
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from app.oauth2.requests import form_params, require_utf8
from app.paths import INTROSPECT, JWKS, OIDC_METADATA, REVOKE, TOKEN, USERINFO
from tests.conftest import basic, bearer, exchange, get_code, session_calls

SECURITY = ("X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")
#: Values that differ from one answer to the next (budgets left, fresh tokens).
MASKED_HEADERS = ("ratelimit", "content-length")
MASKED_FIELDS = ("access_token", "refresh_token", "id_token", "exp", "iat", "expires_in")
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def token_app(app) -> Flask:
    return app.extensions["oauth2.token_app"]


@pytest.fixture
def access(client) -> str:
    return exchange(client, get_code(client)).get_json()["access_token"]


def flask_path(lean: Flask) -> Client:
    """A client of the same lean app through Flask's own ``wsgi_app``."""
    return Client(lambda environ, start: Flask.wsgi_app(lean, environ, start))


def answer(response) -> tuple[int, list[tuple[str, str]], object]:
    headers = [
        (name, "" if name.lower().startswith(MASKED_HEADERS) else value)
        for name, value in response.headers.items()
    ]
    body: object = response.get_data()
    if response.is_json and body:
        body = response.get_json()
        if isinstance(body, dict):
            body = {k: ("?" if k in MASKED_FIELDS else v) for k, v in body.items()}
    return response.status_code, headers, body


CC = "grant_type=client_credentials"
CASES = [
    ("POST", TOKEN, CC, FORM, basic()),
    ("POST", TOKEN, CC, FORM, basic(secret="wrong")),
    ("POST", TOKEN, "grant_type=password", FORM, basic()),
    ("POST", TOKEN, "", FORM, basic()),
    ("POST", TOKEN, CC + "&scope=a&scope=b", FORM, basic()),
    ("POST", TOKEN, "grant_type=%ff", FORM, basic()),
    ("POST", TOKEN, CC, "multipart/form-data; boundary=x", basic()),
    ("POST", TOKEN, json.dumps({"grant_type": "client_credentials"}), "application/json", basic()),
    ("POST", TOKEN + "?grant_type=client_credentials", CC, FORM, basic()),
    ("POST", TOKEN + "?", CC, FORM, basic()),
    ("GET", TOKEN, "", None, basic()),
    ("HEAD", TOKEN, "", None, basic()),
    ("PUT", TOKEN, CC, FORM, basic()),
    ("OPTIONS", TOKEN, "", None, {"Origin": "https://a.example"}),
    (
        "OPTIONS",
        TOKEN,
        "",
        None,
        {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
    ),
    ("POST", REVOKE, "token=nosuch", FORM, basic()),
    ("POST", REVOKE, "", FORM, basic()),
    ("POST", INTROSPECT, "token=nosuch", FORM, basic()),
    ("POST", INTROSPECT, "token=nosuch", FORM, {}),
    ("OPTIONS", INTROSPECT, "", None, {}),
    ("GET", INTROSPECT, "", None, {}),
    ("GET", OIDC_METADATA, "", None, {}),
    ("OPTIONS", OIDC_METADATA, "", None, {"Origin": "https://a.example"}),
    ("GET", JWKS, "", None, {}),
    ("HEAD", JWKS, "", None, {}),
    ("POST", JWKS, "", None, {}),
    ("GET", USERINFO, "", None, {}),
    ("GET", USERINFO, "", None, bearer("nope")),
    ("POST", USERINFO, "access_token=nope", FORM, {}),
    ("DELETE", USERINFO, "", None, {}),
    # What Flask's URL adapter refuses (400) the short way must not serve.
    ("POST", TOKEN, CC, FORM, {**basic(), "Connection": "Upgrade", "Upgrade": "websocket"}),
    ("POST", TOKEN, CC, FORM, {**basic(), "Host": "a" * 64 + ".example"}),
    ("POST", TOKEN, CC, FORM, {**basic(), "Host": "bücher.example"}),
    ("POST", TOKEN, CC, FORM, {**basic(), "Host": "[::1]:8080"}),
]


@pytest.mark.parametrize(("method", "path", "body", "content_type", "headers"), CASES)
def test_the_short_way_answers_as_flask_does(token_app, method, path, body, content_type, headers):
    headers = {**headers, "X-Request-Id": "same-id"}
    kw = {"data": body, "content_type": content_type} if content_type else {}
    lean = Client(token_app).open(path, method=method, headers=headers, **kw)
    flask = flask_path(token_app).open(path, method=method, headers=headers, **kw)
    assert answer(lean) == answer(flask)


def test_live_token_answers_are_as_flasks(client, token_app, access):
    data = {"token": access, "token_type_hint": "access_token"}
    headers = {**basic(), "X-Request-Id": "same-id"}
    lean = Client(token_app).post(INTROSPECT, data=data, headers=headers)
    flask = flask_path(token_app).post(INTROSPECT, data=data, headers=headers)
    assert lean.get_json()["active"] is True
    assert answer(lean) == answer(flask)
    code = get_code(client, scope="openid profile")
    openid = exchange(client, code).get_json()["access_token"]
    headers = {**bearer(openid), "X-Request-Id": "same-id"}
    lean = Client(token_app).get(USERINFO, headers=headers)
    flask = flask_path(token_app).get(USERINFO, headers=headers)
    assert lean.status_code == 200 and lean.get_json()["sub"]
    assert answer(lean) == answer(flask)


def test_the_back_channel_is_served_by_the_token_app(app, client, token_app, access):
    assert token_app is not app and token_app is not app.extensions["oauth2.gateway"]
    assert token_app.paths == set(token_app.routes)
    assert token_app.paths == {TOKEN, REVOKE, INTROSPECT, USERINFO, JWKS, OIDC_METADATA}
    seen: list[str] = []
    token_app.before_request_funcs.setdefault(None, []).append(lambda: seen.append("lean"))
    app.before_request_funcs.setdefault(None, []).append(lambda: seen.append("main"))
    try:
        assert client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=basic())
        assert client.post(INTROSPECT, data={"token": access}, headers=basic()).status_code == 200
        assert client.post(REVOKE, data={"token": "x"}, headers=basic()).status_code == 200
        assert client.get(JWKS).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.post(TOKEN + "/", data={}).status_code == 404  # not the route: main's
        assert client.get("/api/profile", headers=bearer(access)).status_code == 200
    finally:
        token_app.before_request_funcs[None].pop()
        app.before_request_funcs[None].pop()
    assert seen == ["lean", "lean", "lean", "lean", "main", "main"]


def test_the_back_channel_reads_and_writes_no_session(client, state, monkeypatch):
    get_code(client)  # alice signs in: the client holds her session cookie
    assert client.get_cookie("oauth2_session") is not None
    calls = session_calls(state, monkeypatch)
    for path, data in ((TOKEN, {"grant_type": "client_credentials"}), (REVOKE, {"token": "x"})):
        response = client.post(path, data=data, headers=basic())  # the cookie goes too
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
        assert "cookie" not in response.headers.get("Vary", "").lower()
    assert calls == []


def test_the_routes_are_settled_and_plain(app, token_app):
    for path, (rule, methods, endpoint, blueprint) in token_app.routes.items():
        assert rule.rule == path and blueprint in ("token", "oidc")
        assert token_app.view_functions[endpoint]
        assert ("POST" if path != JWKS and path != OIDC_METADATA else "GET") in methods
    assert "OPTIONS" in token_app.routes[TOKEN][1]  # the CORS view answers its preflight
    assert "OPTIONS" not in token_app.routes[INTROSPECT][1]  # Flask answers this one
    token_app.add_url_rule("/token/<part>", "extra", lambda part: part)
    with pytest.raises(RuntimeError, match="not a plain path"):
        token_app.settle()


def test_the_short_way_binds_no_url_adapter(token_app, client):
    bound = []
    real = token_app.create_url_adapter
    token_app.create_url_adapter = lambda req: bound.append(req) or real(req)
    try:
        assert client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=basic())
        assert bound == [None] or bound == []  # the app context's own, never the request's
        assert client.get(TOKEN).status_code == 405  # Flask's path: routed by the URL map
    finally:
        del token_app.create_url_adapter
    assert len([req for req in bound if req is not None]) == 1


@pytest.mark.parametrize("path", [TOKEN, REVOKE, INTROSPECT])
def test_the_request_line_names_the_route(client, caplog, path):
    with caplog.at_level(logging.INFO, logger="oauth2.request"):
        client.post(path, data={"token": "x", "grant_type": "client_credentials"}, headers=basic())
    (record,) = [r for r in caplog.records if r.name == "oauth2.request"]
    assert record.fields["route"] == path and record.fields["path"] == path
    assert record.fields["client_id"] == "test"


def test_a_405_is_json_with_allow_and_the_security_headers(client):
    response = client.get(TOKEN, headers={"X-Request-Id": "r-405"})
    assert response.status_code == 405
    assert response.get_json()["error"] == "invalid_request"
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert response.headers["X-Request-Id"] == "r-405"
    assert all(response.headers[name] for name in SECURITY)


METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "post"])
LATIN1 = st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n"), max_size=40)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=METHODS,
    path=st.sampled_from([TOKEN, REVOKE, INTROSPECT, USERINFO, JWKS, OIDC_METADATA]),
    body=st.one_of(st.binary(max_size=60), st.just(b"grant_type=client_credentials")),
    query=st.binary(max_size=12),
    authorization=st.one_of(LATIN1, st.just("good")),
    content_type=st.one_of(LATIN1, st.just(FORM), st.just("application/json")),
    offered_id=LATIN1,
)
def test_anything_at_the_back_channel_is_never_a_500(
    app, method, path, body, query, authorization, content_type, offered_id
):
    environ = EnvironBuilder(path=path, method=method, data=body).get_environ()
    environ["QUERY_STRING"] = quote(query.decode("latin-1"), safe="=&%")
    environ["HTTP_AUTHORIZATION"] = (
        basic()["Authorization"] if authorization == "good" else authorization
    )
    environ["CONTENT_TYPE"] = content_type
    environ["HTTP_X_REQUEST_ID"] = offered_id
    out, status, headers = run_wsgi_app(app, environ, buffered=True)
    names = {name.lower() for name, _ in headers}
    assert int(status.split()[0]) < 500, (status, b"".join(out))
    assert "x-request-id" in names and "x-content-type-options" in names


def werkzeug_form(raw: bytes) -> MultiDict:
    _, form, _ = FormDataParser().parse(
        __import__("io").BytesIO(raw), FORM, content_length=len(raw)
    )
    return form


FORM_BYTES = st.one_of(
    st.binary(max_size=40),
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "grant_type", "", "a b", "%41", "é", "%C3%A9", "%ff"]),
            st.sampled_from(["", "x", "x+y", "%2B", "%26", "é", "%C3", "%C3%A9", "="]),
        ),
        max_size=5,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode()),
)


@settings(max_examples=500, deadline=None)
@given(raw=FORM_BYTES)
def test_the_body_is_read_as_werkzeug_reads_it_or_refused_as_before(raw):
    """``form_params`` refuses exactly what ``require_utf8`` refused, and otherwise holds
    what Werkzeug's form parser gives, each name's values in order."""
    try:
        require_utf8(raw)
        refused_before = False
    except Exception:
        refused_before = True
    try:
        params = form_params(raw)
    except Exception:
        assert refused_before
        return
    assert not refused_before
    form = werkzeug_form(raw)
    assert params == {key: form.getlist(key) for key in form}


@pytest.mark.parametrize(
    ("path", "lean"),
    [
        ("//token", "oauth2.token_app"),
        ("///introspect", "oauth2.token_app"),
        ("//userinfo", "oauth2.token_app"),
        ("//api/profile", "oauth2.gateway"),
    ],
)
def test_repeated_slashes_reach_the_lean_app_never_the_main_one(app, path, lean):
    """Werkzeug's URL map merges slashes: ``//token`` is the token route's, so it goes to
    the back channel's app (whose own Flask path answers it as the URL map says: served,
    as ``/token`` was before the split); the main app routes none of it."""
    seen: list[str] = []
    apps = {"main": app, "lean": app.extensions[lean]}
    hooks = {name: (lambda name=name: seen.append(name)) for name in apps}
    for name, served in apps.items():
        served.before_request_funcs.setdefault(None, []).append(hooks[name])
    try:
        environ = EnvironBuilder(
            path="/x", method="POST", data={"grant_type": "client_credentials"}, headers=basic()
        ).get_environ()
        environ["PATH_INFO"] = path  # as a server passes ``POST //token HTTP/1.1``
        _, status, _ = run_wsgi_app(app, environ, buffered=True)
    finally:
        for name, served in apps.items():
            served.before_request_funcs[None].remove(hooks[name])
    assert int(status.split()[0]) < 500
    assert seen == ["lean"]
    assert not any(
        rule.endpoint.startswith(("token.", "oidc.", "api.")) for rule in app.url_map.iter_rules()
    )


def test_the_body_is_read_once_per_request(client, monkeypatch):
    """The limiter (no Basic header: the body names the client), CORS (an ``Origin``) and
    the view all ask for the parameters; the body is read once, a refusal the same."""
    from app.oauth2 import server

    reads = []
    real = server._body_params
    monkeypatch.setattr(server, "_body_params", lambda req: reads.append(1) or real(req))
    data = {"grant_type": "client_credentials", "client_id": "test", "client_secret": "hunter2"}
    headers = {"Origin": "https://a.example"}
    assert client.post(TOKEN, data=data, headers=headers).status_code == 200
    assert reads == [1]
    repeated = "grant_type=client_credentials&client_id=test&client_id=test&client_secret=x"
    response = client.post(TOKEN, data=repeated, content_type=FORM, headers=headers)
    assert response.status_code == 400 and "repeated" in response.get_json()["error_description"]
    assert reads == [1, 1]


@pytest.mark.parametrize("path", [TOKEN, REVOKE, INTROSPECT])
@pytest.mark.parametrize("limits_on", [True, False])
def test_deeply_nested_json_is_refused_not_a_500(state, client, path, limits_on):
    """``get_json(silent=True)`` lets a ``RecursionError`` through (review rev2, M1)."""
    state.limits.enabled = limits_on
    body = b"[" * 50000
    response = client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize("path", ["token", "jwks.json", "api/profile"])
def test_a_path_without_its_leading_slash_reaches_its_lean_app(app, path):
    """Werkzeug matches ``token`` as ``/token``: it goes where ``/token`` goes."""
    environ = EnvironBuilder(path="/x", method="GET").get_environ()
    environ["PATH_INFO"] = path
    _, status, headers = run_wsgi_app(app, environ, buffered=True)
    expected = {"token": 405, "jwks.json": 200, "api/profile": 401}[path]
    assert int(status.split()[0]) == expected
