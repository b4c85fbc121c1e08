"""Resource-server adapters: the ABC contract, loading, config errors, and live proxying."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, redirect, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers
from werkzeug.serving import make_server

from app.adapters import ResourceServer, adapter_class, load_adapter
from app.adapters.base import ApiRoute, SiteUser, UpstreamResponse, UpstreamUnavailable
from app.adapters.dummy import DummyAdapter
from app.adapters.http import HttpAdapter, SiteResponse, extract
from app.dummy_site import create_dummy_app, user_id
from bench import procs

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class MyAdapter(ResourceServer):
    """A custom adapter, loaded by dotted path."""

    scopes = {"all": "Everything"}
    api = {"ping": ApiRoute(name="ping", scope="all")}

    def login(self, username: str, password: str) -> SiteUser | None:
        return SiteUser(id=username, name=username, site_token="t")

    def call(self, route, site_token, user_id, headers, body, query):  # type: ignore[no-untyped-def]
        return UpstreamResponse(200, b"{}")


class NotAnAdapter:
    """Has the right name shape but not the right base class."""


def http_config(base_url: str = "http://127.0.0.1:9", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "type": "http",
        "base_url": base_url,
        "timeout": 2,
        "user_agent": "adapter-tests/1",
        "scopes": {"read": "Read", "write": "Write"},
        "api": {
            "profile": {"path": "/info", "scope": "read"},
            "update": {"method": "POST", "path": "/echo/update", "scope": "write"},
        },
    }
    return {**config, **overrides}


@contextlib.contextmanager
def serve(app: Flask) -> Iterator[tuple[str, int]]:
    """Serve ``app`` on a free port in a background thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def adapter_for(cls: type[ResourceServer], config: dict[str, Any]) -> Iterator[Any]:
    adapter = cls(config)
    try:
        yield adapter
    finally:
        adapter.close()


def echo_app(seen: list[dict[str, Any]], release: threading.Event) -> Flask:
    """A site that records what it received, plus login variants and a slow route."""
    app = Flask("echo")

    @app.route("/echo/<path:rest>", methods=METHODS)
    def echo(rest: str) -> Any:
        body = request.get_data()
        seen.append(
            {
                "path": request.path,
                "method": request.method,
                "args": request.args.to_dict(),
                "headers": Headers(request.headers),
                "cookies": dict(request.cookies),
                "form": request.form.to_dict(),
                "body": body,
                # The request line's target: absolute ("http://site/...") when proxied.
                "target": request.environ["REQUEST_URI"],
            }
        )
        return jsonify(ok=True, rest=rest)

    @app.post("/login")
    def login() -> Any:
        fields = request.get_json(silent=True) or {}
        if fields.get("pass") != "password":
            return jsonify(error="no"), 403
        user = {"id": 7, "name": fields.get("user")}
        response = jsonify(data={"token": f"tok-{fields.get('user')}", "user": user})
        response.set_cookie("session", "secret-cookie")
        return response

    @app.post("/login-500")
    def login_500() -> Any:
        return "boom", 500

    @app.post("/login-empty")
    def login_empty() -> Any:
        return jsonify(id="1")

    @app.get("/redirect")
    def to_echo() -> Any:
        return redirect("/echo/landed")

    @app.get("/slow")
    def slow() -> Any:
        release.wait(5)
        return jsonify(late=True)

    return app


@pytest.fixture
def dummy_site() -> Iterator[int]:
    with serve(create_dummy_app()) as (_, port):
        yield port


@pytest.fixture
def dummy(dummy_site: int) -> Iterator[DummyAdapter]:
    with adapter_for(DummyAdapter, {"type": "dummy", "port": dummy_site, "timeout": 2}) as adapter:
        yield adapter


@pytest.fixture
def echo() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    release = threading.Event()
    with serve(echo_app(seen, release)) as (url, _):
        try:
            yield url, seen
        finally:
            release.set()


@pytest.fixture
def down_url() -> str:
    """A URL on which nothing listens."""
    return f"http://127.0.0.1:{procs.free_port()}"


def call(adapter: Any, name: str, token: str = "tok", **kwargs: Any) -> UpstreamResponse:
    args = {"user_id": "u1", "headers": {}, "body": None, "query": {}, **kwargs}
    return adapter.call(adapter.api[name], token, **args)  # type: ignore[no-any-return]


def assert_unreachable(adapter: HttpAdapter, username: str, password: str, route: str) -> None:
    """A login and a call both raise :class:`UpstreamUnavailable`, the login's no timeout."""
    with pytest.raises(UpstreamUnavailable) as error:
        adapter.login(username, password)
    assert error.value.timeout is False
    with pytest.raises(UpstreamUnavailable):
        call(adapter, route)


# --- the contract -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "config"),
    [(DummyAdapter, {"type": "dummy"}), (HttpAdapter, http_config()), (MyAdapter, {})],
)
def test_adapter_conforms_to_resource_server(cls: type[ResourceServer], config: dict) -> None:
    assert issubclass(cls, ResourceServer)
    assert not getattr(cls, "__abstractmethods__", None)
    with adapter_for(cls, config) as adapter:
        assert adapter.scopes and all(isinstance(t, str) for t in adapter.scopes.values())
        for name, route in adapter.api.items():
            assert route.name == name
            assert route.scope in adapter.scopes


def test_dummy_scopes_and_routes() -> None:
    with adapter_for(DummyAdapter, {"host": "10.0.0.1", "port": 9999}) as adapter:
        assert list(adapter.scopes) == ["read-only", "read-write"]
        assert adapter.api["profile"].scope == "read-only"
        assert adapter.api["update_avatar"].method == "POST"
        assert adapter.api["update_avatar"].allowed == ("POST", "GET")
        assert adapter.api["profile"].allowed == ("GET",)
        assert adapter.api["update_avatar"].scope == "read-write"
        assert adapter.bundled_site == ("10.0.0.1", 9999)
    assert HttpAdapter.bundled_site is None


# --- loading ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "cls"),
    [({"type": "dummy"}, DummyAdapter), ({}, DummyAdapter), (http_config(), HttpAdapter)],
)
def test_load_by_short_name(config: dict, cls: type) -> None:
    adapter = load_adapter(config)
    try:
        assert type(adapter) is cls
    finally:
        adapter.close()


def test_load_by_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # so "tests.<module>" imports however pytest ran
    adapter = load_adapter({"type": "tests.test_adapters:MyAdapter"})
    assert type(adapter).__name__ == "MyAdapter"
    assert adapter.login("x", "y") == SiteUser(id="x", name="x", site_token="t")
    assert adapter_class("app.adapters.http:HttpAdapter") is HttpAdapter


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nope", "is not 'dummy', 'http'"),
        ("", "is not 'dummy', 'http'"),
        ("no_such_module_xyz:Adapter", "cannot be imported"),
        ("app.adapters.http:NoSuchClass", "is not a ResourceServer subclass"),
        ("app.adapters.base:SiteUser", "is not a ResourceServer subclass"),
        ("app.adapters.http:log", "is not a ResourceServer subclass"),
        ("tests.test_adapters:NotAnAdapter", "is not a ResourceServer subclass"),
    ],
)
def test_bad_type_names_the_key(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(ValueError, match="resource_server.type") as error:
        load_adapter({"type": value})
    assert repr(value) in str(error.value) and reason in str(error.value)


# --- config validation --------------------------------------------------------------

BAD_HTTP_CONFIGS = [
    ({"base_url": None}, "resource_server.base_url:"),
    ({"base_url": "ftp://x"}, "resource_server.base_url:"),
    ({"timeout": 0}, "resource_server.timeout:"),
    ({"timeout": "5"}, "resource_server.timeout:"),
    ({"colour": "blue"}, "resource_server.colour: unknown key"),
    ({"scopes": {}}, "resource_server.scopes:"),
    ({"api": []}, "resource_server.api:"),
    ({"api": {"p": {"scope": "x"}}}, "resource_server.api.p.scope: unknown scope 'x'"),
    ({"api": {"p": {"scope": "read", "method": "BREW"}}}, "resource_server.api.p.method:"),
    ({"api": {"p": {"scope": "read", "path": "info"}}}, "resource_server.api.p.path:"),
    ({"api": {"p": {"scope": "read", "path": "/{x}"}}}, "resource_server.api.p.path:"),
    ({"api": {"p": {"scope": "read", "token_in": "body:t"}}}, "resource_server.api.p.token_in:"),
    ({"api": {"p": {"scope": "read", "token_in": "form:t"}}}, "resource_server.api.p.token_in:"),
    ({"api": {"p": {"scope": "read", "verb": "GET"}}}, "resource_server.api.p.verb: unknown"),
    ({"api": {"p": {"scope": "read", "method": []}}}, "resource_server.api.p.method: lists no"),
    ({"api": {"p": {"scope": "read", "method": ["GET", 1]}}}, "resource_server.api.p.method:"),
    (
        {"api": {"p": {"scope": "read", "method": ["POST", "GET"], "token_in": "form:t"}}},
        "resource_server.api.p.token_in: 'form:' needs a method with a body, not GET",
    ),
    ({"api": {"a/b": {"scope": "read"}}}, "resource_server.api.a/b:"),
    ({"login": {"format": "xml"}}, "resource_server.login.format:"),
    ({"login": {"token_from": "query:t"}}, "resource_server.login.token_from:"),
    ({"login": {"id_from": "json"}}, "resource_server.login.id_from:"),
    ({"login": {"method": "TRACE"}}, "resource_server.login.method:"),
    ({"login": {"user": "u"}}, "resource_server.login.user: unknown key"),
]


def test_a_route_may_list_several_methods() -> None:
    api = {"p": {"scope": "read", "method": ["get", "POST", "GET"]}}
    with adapter_for(HttpAdapter, http_config(api=api)) as adapter:
        route = adapter.api["p"]
        assert (route.method, route.allowed) == ("GET", ("GET", "POST"))
        assert route.called_with("POST").method == "POST"


@pytest.mark.parametrize(("override", "message"), BAD_HTTP_CONFIGS)
def test_bad_http_config_names_the_key(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("{", r"\{").replace("}", r"\}")):
        HttpAdapter(http_config(**override))


@pytest.mark.parametrize(
    ("config", "message"),
    [({"hots": "x"}, "resource_server.hots: unknown key"), ({"port": "x"}, "resource_server.port")],
)
def test_bad_dummy_config_names_the_key(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DummyAdapter(config)


# --- against the dummy site ---------------------------------------------------------


def test_dummy_login_and_api_calls(dummy: DummyAdapter) -> None:
    user = dummy.login("alice", "password")
    assert user is not None
    assert (user.id, user.name) == (user_id("alice"), "alice")
    profile = call(dummy, "profile", user.site_token)
    assert profile.status == 200 and profile.content_type.startswith("application/json")
    assert json.loads(profile.body)["id"] == user.id
    updated = call(dummy, "update_avatar", user.site_token, body=b"avatar=%2Fme.png")
    assert json.loads(updated.body) == {"success": 1}


def test_dummy_login_bad_password_is_none(dummy: DummyAdapter) -> None:
    assert dummy.login("alice", "wrong") is None


def test_dummy_site_refusal_is_passed_through(dummy: DummyAdapter) -> None:
    response = call(dummy, "profile", "not-a-token")
    assert response.status == 401
    assert json.loads(response.body) == {"error": "invalid token"}


def test_site_down_is_upstream_unavailable(down_url: str) -> None:
    with adapter_for(HttpAdapter, http_config(down_url)) as adapter:
        assert_unreachable(adapter, "alice", "password", "profile")


def test_slow_site_is_upstream_timeout(echo: tuple[str, list]) -> None:
    config = http_config(echo[0], timeout=0.2, api={"slow": {"path": "/slow", "scope": "read"}})
    with adapter_for(HttpAdapter, config) as adapter:
        with pytest.raises(UpstreamUnavailable) as error:
            call(adapter, "slow")
        assert error.value.timeout is True


# --- proxies from the environment (trust_env) -----------------------------------------
# The echo site doubles as a forward proxy: Werkzeug serves an absolute request target
# ("GET http://site/path"), which it records, so a call that reached it through the
# proxy names the real site (one where nothing listens) in ``target``.

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Clear the proxy variables; return a setter for the test's own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return setenv


def via_proxy_config(site: str) -> dict[str, Any]:
    api = {"get": {"path": "/echo/get", "scope": "read"}}
    return http_config(site, trust_env=True, api=api, login={"path": "/echo/login"})


def test_trust_env_sends_login_and_calls_through_the_proxy(
    echo: tuple[str, list], down_url: str, proxy_env: Callable[..., None]
) -> None:
    proxy, seen = echo
    proxy_env(HTTP_PROXY=proxy)
    with adapter_for(HttpAdapter, via_proxy_config(down_url)) as adapter:
        assert adapter.login("ann", "pw") is None  # the echo answers no token
        assert seen[-1]["target"] == f"{down_url}/echo/login"
        assert call(adapter, "get").status == 200
    assert seen[-1]["target"] == f"{down_url}/echo/get?token=tok"
    assert "Proxy-Authorization" not in seen[-1]["headers"]


@pytest.mark.parametrize(
    ("trust_env", "no_proxy"),
    [(False, None), (True, "127.0.0.1"), (True, "*")],
    ids=["trust_env-off", "no_proxy-host", "no_proxy-all"],
)
def test_proxy_not_used_without_trust_env_or_for_no_proxy_hosts(
    echo: tuple[str, list],
    down_url: str,
    proxy_env: Callable[..., None],
    trust_env: bool,
    no_proxy: str | None,
) -> None:
    proxy, seen = echo
    proxy_env(HTTP_PROXY=proxy, **({"NO_PROXY": no_proxy} if no_proxy else {}))
    config = {**via_proxy_config(down_url), "trust_env": trust_env}
    with adapter_for(HttpAdapter, config) as adapter, pytest.raises(UpstreamUnavailable):
        call(adapter, "get")  # straight to the site, where nothing listens
    assert seen == []


def test_proxy_credentials_in_the_url_are_sent_to_the_proxy(
    echo: tuple[str, list], down_url: str, proxy_env: Callable[..., None]
) -> None:
    proxy, seen = echo
    proxy_env(ALL_PROXY=proxy.replace("http://", "http://pat:p%40ss@"))
    with adapter_for(HttpAdapter, via_proxy_config(down_url)) as adapter:
        assert call(adapter, "get").status == 200
    expected = "Basic " + base64.b64encode(b"pat:p@ss").decode()
    assert seen[-1]["headers"]["Proxy-Authorization"] == expected


def test_proxy_down_is_upstream_unavailable(
    echo: tuple[str, list], down_url: str, proxy_env: Callable[..., None]
) -> None:
    site, seen = echo
    proxy_env(HTTP_PROXY=down_url)
    with adapter_for(HttpAdapter, via_proxy_config(site)) as adapter:
        assert_unreachable(adapter, "ann", "pw", "get")
    assert seen == []


def test_non_http_proxy_is_a_config_error(proxy_env: Callable[..., None]) -> None:
    proxy_env(ALL_PROXY="socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match="^resource_server.trust_env: .* must be http"):
        HttpAdapter(via_proxy_config("http://127.0.0.1:9"))
    HttpAdapter(http_config()).close()  # without trust_env the variable is never read


# --- any token and query: what the site receives is what was sent -------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def test_any_token_and_query_reach_the_site_as_given() -> None:
    seen: list[dict[str, Any]] = []
    api = {"get": {"path": "/echo/get", "scope": "read", "token_in": "query:t"}}
    queries = st.dictionaries(TEXT.filter(bool), TEXT, max_size=4)
    with (
        serve(echo_app(seen, threading.Event())) as (url, _),
        adapter_for(HttpAdapter, http_config(url, api=api)) as adapter,
    ):

        @settings(max_examples=60, deadline=None)
        @given(token=TEXT.filter(bool), query=queries)
        def reaches(token: str, query: dict[str, str]) -> None:
            assert call(adapter, "get", token, query=query).status == 200
            assert seen[-1]["args"] == {**query, "t": token}

        reaches()


# --- what reaches the site ----------------------------------------------------------


@pytest.mark.parametrize(
    ("token_in", "where"),
    [
        ("query:access", lambda seen: seen["args"]["access"]),
        ("header:X-Site-Token", lambda seen: seen["headers"]["X-Site-Token"]),
        ("cookie:sid", lambda seen: seen["cookies"]["sid"]),
        ("form:site_token", lambda seen: seen["form"]["site_token"]),
    ],
)
def test_token_headers_query_and_body_reach_the_site(
    echo: tuple[str, list], token_in: str, where: Any
) -> None:
    url, seen = echo
    route = {"method": "POST", "path": "/echo/u/{user_id}", "scope": "write", "token_in": token_in}
    oauth_headers = {"X-OAuth-Client-Id": "c1", "X-OAuth-User-Id": "u 1", "X-OAuth-Scope": "write"}
    headers = {**oauth_headers, "Content-Type": "application/x-www-form-urlencoded"}
    config = http_config(url, api={"up": route})
    with adapter_for(HttpAdapter, config) as adapter:
        response = call(
            adapter,
            "up",
            "s3cret",
            user_id="u 1",
            headers=headers,
            body=b"avatar=a.png",
            query={"page": "2"},
        )
    assert response.status == 200
    got = seen[-1]
    assert where(got) == "s3cret"
    assert got["path"] == "/echo/u/u 1"
    assert got["args"]["page"] == "2"
    assert got["form"]["avatar"] == "a.png"
    assert got["headers"]["User-Agent"] == "adapter-tests/1"
    assert {k: got["headers"][k] for k in oauth_headers} == oauth_headers


def test_get_sends_no_body(echo: tuple[str, list]) -> None:
    url, seen = echo
    api = {"get": {"path": "/echo/get", "scope": "read"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        call(adapter, "get", body=b"ignored")
    assert seen[-1]["body"] == b"" and seen[-1]["args"] == {"token": "tok"}


def test_login_json_with_dotted_lookups_keeps_no_cookies(echo: tuple[str, list]) -> None:
    url, seen = echo
    login = {
        "format": "json",
        "username_field": "user",
        "password_field": "pass",
        "token_from": "json:data.token",
        "id_from": "json:data.user.id",
        "name_from": "json:data.user.name",
    }
    api = {"get": {"path": "/echo/get", "scope": "read"}}
    config = http_config(url, login=login, api=api)
    with adapter_for(HttpAdapter, config) as adapter:
        assert adapter.login("ann", "password") == SiteUser(
            id="7", name="ann", site_token="tok-ann"
        )
        assert adapter.login("ann", "nope") is None
        call(adapter, "get")
    assert seen[-1]["cookies"] == {}  # the login cookie must not leak into other calls


@pytest.mark.parametrize(
    ("login", "outcome"),
    [({"path": "/login-500"}, UpstreamUnavailable), ({"path": "/login-empty"}, None)],
)
def test_login_server_error_and_missing_token(
    echo: tuple[str, list], login: dict, outcome: Any
) -> None:
    with adapter_for(HttpAdapter, http_config(echo[0], login=login)) as adapter:
        if outcome is None:
            assert adapter.login("ann", "password") is None
        else:
            with pytest.raises(outcome):
                adapter.login("ann", "password")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(method=json_values | st.lists(st.sampled_from(["GET", "post", "PUT", "BREW"]), max_size=4))
def test_any_method_value_loads_or_names_the_key(method: object) -> None:
    api = {"p": {"scope": "read", "method": method}}
    try:
        adapter = HttpAdapter(http_config(api=api))
    except ValueError as exc:
        assert str(exc).startswith("resource_server.api.p.method:")
        return
    route = adapter.api["p"]
    adapter.close()
    assert route.allowed and set(route.allowed) <= {"GET", "POST", "PUT"}
    assert route.method == route.allowed[0]


# --- the libcurl client: handles reused per thread, nothing carried between calls ----


@contextlib.contextmanager
def keep_alive_echo(
    tls: ssl.SSLContext | None = None,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP/1.1 site that keeps connections open (Werkzeug's closes each one) and
    records each request with the client port it came from: one port, one connection."""
    seen: list[dict[str, Any]] = []

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": self.rfile.read(length),
                    "port": self.client_address[1],
                }
            )
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_post_then_a_get_on_one_handle_carry_nothing_over() -> None:
    api = {
        "up": {"method": "POST", "path": "/up", "scope": "write", "token_in": "cookie:sid"},
        "put": {"method": "PUT", "path": "/put", "scope": "write", "token_in": "header:X-T"},
        "get": {"path": "/get", "scope": "read"},
    }
    with (
        keep_alive_echo() as (url, seen),
        adapter_for(HttpAdapter, http_config(url, api=api)) as adapter,
    ):
        headers = {"X-Once": "1", "Content-Type": "application/octet-stream"}
        assert call(adapter, "get", "first").status == 200
        handle = adapter._client._handle()
        assert call(adapter, "up", "secret", headers=headers, body=b"\x00bin\x00").status == 200
        assert call(adapter, "get", "other").status == 200
        assert call(adapter, "put", "third", body=b"x").status == 200
        assert call(adapter, "get", "fourth").status == 200
        assert adapter._client._handle() is handle  # the same handle on this thread
    first, post, get, put, get2 = seen
    # GETs go on kept-alive connections; a POST or PUT always on a fresh one (libcurl
    # resends a request once on a reused connection that proves closed).
    assert post["port"] != first["port"] and put["port"] not in {r["port"] for r in seen[:3]}
    assert {get["port"], get2["port"]} <= {first["port"], post["port"], put["port"]}
    assert (post["method"], post["body"], post["headers"]["Cookie"]) == (
        "POST",
        b"\x00bin\x00",
        "sid=secret",
    )
    assert post["headers"]["X-Once"] == "1"
    assert post["headers"]["Content-Type"] == "application/octet-stream"
    for got, token in ((get, "other"), (get2, "fourth")):
        assert (got["method"], got["body"], got["path"]) == ("GET", b"", f"/get?token={token}")
        for name in (
            "X-Once",
            "Content-Type",
            "Content-Length",
            "Cookie",
            "Expect",
            "Accept",
            "X-T",
        ):
            assert name not in got["headers"]
    assert (put["method"], put["body"], put["headers"]["X-T"]) == ("PUT", b"x", "third")
    assert "Content-Type" not in put["headers"] and "Cookie" not in put["headers"]


def test_a_head_then_a_get_on_one_handle_get_the_body(dummy: DummyAdapter) -> None:
    dummy.ready(1)
    user = dummy.login("alice", "password")
    assert user is not None
    response = call(dummy, "profile", user.site_token)
    assert json.loads(response.body)["id"] == user.id


def test_many_threads_each_get_their_own_answer(dummy: DummyAdapter) -> None:
    users = [dummy.login(f"user{n}", "password") for n in range(8)]
    assert all(users)
    wrong: list[tuple[str, Any]] = []
    handles: list[Any] = []

    def work(user: SiteUser) -> None:
        handles.append(dummy._client._handle())
        for _ in range(25):
            response = call(dummy, "profile", user.site_token)
            got = json.loads(response.body).get("id") if response.status == 200 else response
            if got != user.id:
                wrong.append((user.id, got))

    threads = [threading.Thread(target=work, args=(user,)) for user in users if user]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []
    assert len(set(handles)) == len(threads)  # one handle per thread


def test_redirects_are_answers_not_followed(echo: tuple[str, list]) -> None:
    url, seen = echo
    api = {"go": {"path": "/redirect", "scope": "read"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        response = call(adapter, "go")
    assert response.status == 302 and seen == []  # /echo/landed never asked


def test_unreachable_and_timeout_messages_name_the_site_not_the_url(
    echo: tuple[str, list], down_url: str
) -> None:
    api = {"get": {"path": "/echo/{token}", "scope": "read"}}
    with adapter_for(HttpAdapter, http_config(down_url, api=api)) as adapter:
        with pytest.raises(UpstreamUnavailable) as error:
            call(adapter, "get", "tok-in-url")
        assert str(error.value) == f"{down_url} is unreachable (E_COULDNT_CONNECT)"
        with pytest.raises(UpstreamUnavailable) as error:
            adapter.ready(1)
        assert (str(error.value), error.value.timeout) == (f"{down_url} is unreachable", False)
    api = {"slow": {"path": "/slow?t={token}", "scope": "read"}}
    config = http_config(echo[0], timeout=0.2, api=api)
    with adapter_for(HttpAdapter, config) as adapter, pytest.raises(UpstreamUnavailable) as error:
        call(adapter, "slow", "tok-in-url")
    assert str(error.value) == f"{echo[0]} gave no answer in 0.2s" and error.value.timeout


def test_a_header_with_a_line_break_is_refused_before_sending(echo: tuple[str, list]) -> None:
    url, seen = echo
    api = {"get": {"path": "/echo/get", "scope": "read"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        with pytest.raises(
            UpstreamUnavailable, match=r"cannot be sent this call \(invalid header 'X-A'\)"
        ):
            call(adapter, "get", headers={"X-A": "1\r\nX-Injected: 1"})
        assert call(adapter, "get", headers={"X-Empty": ""}).status == 200
    assert len(seen) == 1 and seen[0]["headers"]["X-Empty"] == ""


def test_only_the_final_responses_headers_are_read() -> None:
    lines = [
        b"HTTP/1.1 100 Continue\r\n",
        b"Set-Cookie: early=1\r\n",
        b"\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"set-cookie: session=abc; Path=/\r\n",
        b"Set-Cookie: other=2\r\n",
        b"X-Token: t1\r\n",
        b"X-Long: a\r\n",
        b"  b\r\n",
        b"\r\n",
    ]
    response = SiteResponse(200, b"{}", "application/json", lines)
    assert extract("cookie:session", response) == "abc"
    assert extract("cookie:other", response) == "2"
    assert extract("cookie:early", response) is None
    assert extract("header:x-token", response) == "t1"
    assert response.header("X-LONG") == "a b"
    assert response.header("Set-Cookie") == "session=abc; Path=/, other=2"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "site.pem", directory / "site.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_trusts_what_python_trusts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificates come from Python's (OpenSSL's) default places, ``SSL_CERT_FILE``
    included, as with urllib3; an untrusted certificate is refused."""
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    api = {"get": {"path": "/get", "scope": "read"}}
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with keep_alive_echo(tls) as (url, seen):
        with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
            with pytest.raises(UpstreamUnavailable) as error:
                call(adapter, "get")
            assert str(error.value) == f"{url} is unreachable (E_PEER_FAILED_VERIFICATION)"
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
            assert call(adapter, "get", "t1").status == 200
    assert [r["path"] for r in seen] == ["/get?token=t1"]


def test_a_forked_child_opens_its_own_connection() -> None:
    """A handle made before a fork (its connection shared with the parent) is not used
    in the child: the child makes its own, and the parent's keeps working."""
    api = {"get": {"path": "/get", "scope": "read"}}
    with (
        keep_alive_echo() as (url, seen),
        adapter_for(HttpAdapter, http_config(url, api=api)) as adapter,
    ):
        assert call(adapter, "get", "parent").status == 200
        parent_handle = adapter._client._handle()
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if its call came on a handle of its own
            code = 1
            with contextlib.suppress(BaseException):
                fresh = adapter._client._handle() is not parent_handle
                code = 0 if fresh and call(adapter, "get", "child").status == 200 else 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert call(adapter, "get", "parent2").status == 200
    assert [r["path"] for r in seen] == [
        "/get?token=parent",
        "/get?token=child",
        "/get?token=parent2",
    ]
    assert seen[0]["port"] == seen[2]["port"] != seen[1]["port"]


def test_a_path_with_spaces_or_non_ascii_is_percent_encoded(echo: tuple[str, list]) -> None:
    url, seen = echo
    api = {"odd": {"path": "/echo/a b/ä|^x", "scope": "read"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        assert call(adapter, "odd").status == 200
    assert seen[-1]["path"] == "/echo/a b/ä|^x"
    assert seen[-1]["target"] == "/echo/a%20b/%C3%A4%7C%5Ex?token=tok"


@contextlib.contextmanager
def raw_site(answer: Callable[[bytes], bytes | None]) -> Iterator[tuple[str, list[bytes]]]:
    """A site on a bare socket: each request's head is recorded and ``answer(head)`` is
    sent back on the same connection (kept alive), or the connection closes at ``None``."""
    import socket

    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buffer = b""
            while not stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (int(x.split(b":")[1]) for x in head.split(b"\r\n")
                     if x.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                heads.append(head)
                reply = answer(head)
                if reply is None:
                    return
                conn.sendall(reply)

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = listener.accept()
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        stop.set()
        thread.join(5)
        listener.close()


OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_a_post_the_site_dropped_unanswered_is_not_sent_again() -> None:
    """The site read a partner's POST (and may have acted on it), then the connection
    closed without an answer: the call fails (502) and the site saw the POST once. On a
    kept-alive connection libcurl would have sent it again."""
    api = {
        "warm": {"path": "/warm", "scope": "read"},
        "pay": {"method": "POST", "path": "/pay", "scope": "write", "token_in": "form:t"},
    }
    with (
        raw_site(lambda head: None if head.startswith(b"POST") else OK_REPLY) as (url, heads),
        adapter_for(HttpAdapter, http_config(url, api=api)) as adapter,
    ):
        assert call(adapter, "warm").status == 200  # a kept-alive connection now exists
        with pytest.raises(UpstreamUnavailable):
            call(adapter, "pay", body=b"amount=100")
        assert call(adapter, "warm").status == 200
    assert [h.split(b" ")[0] for h in heads] == [b"GET", b"POST", b"GET"]


@pytest.mark.parametrize("with_length", [True, False])
def test_an_answer_over_the_size_limit_is_refused(
    with_length: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.adapters import http as http_adapter

    monkeypatch.setattr(http_adapter, "MAX_RESPONSE_BYTES", 4096)
    body = b"x" * 5000
    length = f"Content-Length: {len(body)}\r\n".encode() if with_length else b""
    big = b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + length + b"\r\n" + body
    small = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"y" * 4096
    api = {"big": {"path": "/big", "scope": "read"}, "small": {"path": "/small", "scope": "read"}}
    with (
        raw_site(lambda head: big if b"/big" in head else small) as (url, _),
        adapter_for(HttpAdapter, http_config(url, api=api)) as adapter,
    ):
        with pytest.raises(UpstreamUnavailable) as error:
            call(adapter, "big")
        assert str(error.value) == f"{url} answered more than 4096 bytes"
        assert call(adapter, "small").body == b"y" * 4096  # the limit itself is allowed


@pytest.mark.parametrize("value", [".", "..", "%2e%2e", "a/../b"])
def test_a_token_in_the_path_stays_one_segment(echo: tuple[str, list], value: str) -> None:
    url, seen = echo
    api = {"get": {"path": "/echo/{token}/x", "scope": "read", "token_in": "header:X-T"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        assert call(adapter, "get", value).status == 200
    expected = {".": "%2E", "..": "%2E%2E", "%2e%2e": "%252e%252e", "a/../b": "a%2F..%2Fb"}
    assert seen[-1]["target"] == f"/echo/{expected[value]}/x"


@pytest.mark.parametrize("token", ["nul\x00byte", "euro\u20ac"])
def test_a_site_token_http_cannot_carry_in_a_header_is_a_502_not_a_crash(
    echo: tuple[str, list], token: str
) -> None:
    url, seen = echo
    api = {"get": {"path": "/echo/get", "scope": "read", "token_in": "header:X-T"}}
    with adapter_for(HttpAdapter, http_config(url, api=api)) as adapter:
        with pytest.raises(UpstreamUnavailable) as error:
            call(adapter, "get", token)
        assert token not in str(error.value)
        assert call(adapter, "get", "fine").status == 200
    assert len(seen) == 1
