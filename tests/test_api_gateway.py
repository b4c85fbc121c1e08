"""The /api gateway: bearer checks, scopes, and what reaches the site (and what must not)."""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
from collections.abc import Iterator

import pytest
from flask import Flask, jsonify, request
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from app import create_app
from app.secrets_hash import token_digest
from app.settings import DEFAULTS, Settings, deep_merge
from tests.conftest import basic, bearer, close_app, exchange, get_code, login

SITE_SCOPES = {"read-only": "Read your profile", "read-write": "Change your avatar"}


# -- helpers ------------------------------------------------------------------------------
def token_for(client, scope: str | None = None) -> dict:
    response = exchange(client, get_code(client, scope=scope))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def signed_in(gateway, scope: str | None = None) -> tuple[FlaskClient, str]:
    """A test client of the gateway's app and an access token it holds for ``scope``."""
    app, _ = gateway
    http = app.test_client()
    return http, token_for(http, scope)["access_token"]


def expire(state, access_token: str) -> None:
    """Rewrite the stored token so that its lifetime is over."""
    key = token_digest(access_token)
    record = state.storage.tokens.get(key)
    assert record is not None
    record.pop("key"), record.pop("expires_at")
    state.storage.tokens.put(key, record, ttl=-1)


# -- the capture site ---------------------------------------------------------------------
class Capture:
    """A tiny stand-in site that records what the gateway sends it."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.release = threading.Event()
        self.app = Flask("capture-site")
        self.app.add_url_rule("/login", view_func=self.login, methods=["POST"])
        self.app.add_url_rule("/info", view_func=self.record, methods=["GET"])
        self.app.add_url_rule("/update", view_func=self.record, methods=["POST"], endpoint="u")
        self.app.add_url_rule("/slow", view_func=self.slow, methods=["GET"])
        self.app.add_url_rule("/teapot", view_func=self.teapot, methods=["GET"])

    def login(self):
        if request.form.get("password") != "password":
            return jsonify(error="bad credentials"), 401
        name = request.form["username"]
        return jsonify(id=f"u-{name}", name=name.title(), token=f"site-token-{name}")

    def record(self):
        self.seen.append(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "args": request.args.to_dict(),
                "body": request.get_data(),
                "content_type": request.content_type,
            }
        )
        return jsonify(id="u-alice", seen=len(self.seen))

    def slow(self):
        self.release.wait(5)
        return jsonify(late=True)

    def teapot(self):
        return jsonify(short="and stout"), 418


@contextlib.contextmanager
def served(app: Flask) -> Iterator[int]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def http_resource(base_url: str) -> dict:
    return {
        "type": "http",
        "base_url": base_url,
        "timeout": 0.5,
        "login": {"token_from": "json:token", "id_from": "json:id", "name_from": "json:name"},
        "scopes": SITE_SCOPES,
        "api": {
            "profile": {"path": "/info", "scope": "read-only"},
            "update_avatar": {"method": "POST", "path": "/update", "scope": "read-write"},
            "slow": {"path": "/slow", "scope": "read-only"},
            "teapot": {"path": "/teapot", "scope": "read-only"},
        },
    }


def http_app(tmp_path, base_url: str, resource: dict | None = None):
    # The resource_server section is set whole on purpose: merged over the shipped
    # defaults it would inherit the dummy adapter's host/port (see test_settings).
    data = deep_merge(
        DEFAULTS,
        {
            "auth_server": {"session_secret": "test-secret-" + "x" * 20},
            "storage": {"default": f"sqlite:///{tmp_path}/oauth2.db"},
        },
    )
    data["resource_server"] = resource or http_resource(base_url)
    app = create_app(Settings(copy.deepcopy(data)))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def capture():
    site = Capture()
    with served(site.app) as port:
        yield site, f"http://127.0.0.1:{port}"
        site.release.set()


@pytest.fixture
def gateway(tmp_path, capture):
    site, base_url = capture
    app = http_app(tmp_path, base_url)
    yield app, site
    close_app(app)


# -- bearer checks ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dGVzdDpodW50ZXIy"},
        {"Authorization": ""},
    ],
    ids=["none", "empty-bearer", "blank-bearer", "basic", "empty"],
)
def test_missing_bearer_is_401_without_an_error_code(client, headers):
    response = client.get("/api/profile", headers=headers)
    assert response.status_code == 401
    www = response.headers["WWW-Authenticate"]
    assert www.startswith("Bearer")
    assert "error=" not in www  # RFC 6750 §3.1: no error code without credentials
    assert response.get_json()["success"] == 0


def test_token_in_the_query_string_is_not_accepted(client):
    token = token_for(client)["access_token"]
    response = client.get(f"/api/profile?access_token={token}")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "value",
    ["garbage", "x" * 2000, "a b c", "%00", "Bearer nested"],
)
def test_garbage_bearer_is_invalid_token(client, value):
    response = client.get("/api/profile", headers={"Authorization": f"Bearer {value}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.headers["Cache-Control"] == "no-store"


def test_expired_token_is_invalid_token(client, state):
    token = token_for(client)["access_token"]
    assert client.get("/api/profile", headers=bearer(token)).status_code == 200
    expire(state, token)
    response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_revoked_token_is_invalid_token(client):
    token = token_for(client)["access_token"]
    revoked = client.post("/revoke", data={"token": token}, headers=basic())
    assert revoked.status_code == 200
    response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_refresh_token_is_not_an_access_token(client):
    tokens = token_for(client)
    response = client.get("/api/profile", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_access_token_stops_working_when_its_refresh_token_rotates(client):
    tokens = token_for(client)
    rotated = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(),
    )
    assert rotated.status_code == 200
    old = client.get("/api/profile", headers=bearer(tokens["access_token"]))
    assert old.status_code == 401
    new = client.get("/api/profile", headers=bearer(rotated.get_json()["access_token"]))
    assert new.status_code == 200


def test_bearer_scheme_is_case_insensitive(client):
    token = token_for(client)["access_token"]
    response = client.get("/api/profile", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


# -- scopes and functions (dummy site) ----------------------------------------------------
def test_profile_returns_the_users_data(client):
    from app.dummy_site import user_id

    token = token_for(client)["access_token"]
    response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json()["id"] == user_id("alice")
    assert response.headers["Cache-Control"] == "no-store"


def test_read_only_cannot_update_avatar(client):
    token = token_for(client, scope="read-only")["access_token"]
    response = client.post("/api/update_avatar", headers=bearer(token), data={"avatar": "x"})
    assert response.status_code == 403
    assert response.get_json() == {"success": 0, "error": "insufficient scope"}
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_read_write_can_update_avatar(client):
    token = token_for(client, scope="read-only read-write")["access_token"]
    response = client.post("/api/update_avatar", headers=bearer(token), data={"avatar": "x"})
    assert response.status_code == 200
    assert response.get_json() == {"success": 1}


@pytest.mark.parametrize("name", ["nope", "profile/extra", "..%2finfo", "update_avatar2"])
def test_unknown_function_is_404(client, name):
    token = token_for(client)["access_token"]
    response = client.get(f"/api/{name}", headers=bearer(token))
    assert response.status_code == 404
    assert response.get_json() == {"success": 0, "error": "no such function"}


def test_client_credentials_token_cannot_act_for_a_user(client):
    response = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    token = response.get_json()["access_token"]
    answer = client.get("/api/profile", headers=bearer(token))
    assert answer.status_code == 403
    assert answer.get_json()["success"] == 0


# -- what reaches the site ----------------------------------------------------------------
def test_oauth_headers_reach_the_site(gateway):
    _, site = gateway
    http, token = signed_in(gateway, "read-only read-write")
    response = http.get("/api/profile", headers=bearer(token))
    assert response.status_code == 200
    headers = site.seen[-1]["headers"]
    assert headers["X-Oauth-Client-Id"] == "test"
    assert headers["X-Oauth-User-Id"] == "u-alice"
    assert headers["X-Oauth-Scope"] == "read-only read-write"


def test_the_site_gets_the_users_site_token_never_the_oauth_token(gateway):
    _, site = gateway
    http, token = signed_in(gateway)
    http.get("/api/profile", headers=bearer(token))
    seen = site.seen[-1]
    assert seen["args"]["token"] == "site-token-alice"
    assert token not in repr(seen)
    assert "Authorization" not in seen["headers"]
    assert "oauth2_session" not in seen["headers"].get("Cookie", "")


def test_spoofed_oauth_headers_from_the_caller_are_not_forwarded(gateway):
    _, site = gateway
    http, token = signed_in(gateway, "read-only")
    spoofed = {
        "X-OAuth-Client-Id": "evil-client",
        "X-OAuth-User-Id": "admin",
        "X-OAuth-Scope": "read-write admin",
        "X-OAuth-Extra": "injected",
        "x-oauth-admin": "1",
    }
    response = http.get("/api/profile", headers={**bearer(token), **spoofed})
    assert response.status_code == 200
    headers = site.seen[-1]["headers"]
    assert headers["X-Oauth-Client-Id"] == "test"
    assert headers["X-Oauth-User-Id"] == "u-alice"
    assert headers["X-Oauth-Scope"] == "read-only"
    assert not {k for k in headers if k.lower() in ("x-oauth-extra", "x-oauth-admin")}
    assert "injected" not in repr(headers)
    assert "evil-client" not in repr(headers)


def test_post_body_and_content_type_reach_the_site(gateway):
    _, site = gateway
    http, token = signed_in(gateway, "read-only read-write")
    response = http.post("/api/update_avatar", headers=bearer(token), json={"avatar": "/new.png"})
    assert response.status_code == 200
    seen = site.seen[-1]
    assert seen["method"] == "POST"
    assert seen["content_type"] == "application/json"
    assert seen["body"] == b'{"avatar": "/new.png"}'
    assert seen["headers"]["X-Oauth-User-Id"] == "u-alice"


def test_site_status_and_body_pass_through(gateway):
    http, token = signed_in(gateway)
    response = http.get("/api/teapot", headers=bearer(token))
    assert response.status_code == 418
    assert response.get_json() == {"short": "and stout"}


def test_nothing_reaches_the_site_for_a_bad_token_or_scope(gateway):
    _, site = gateway
    http, token = signed_in(gateway, "read-only")
    http.get("/api/profile", headers={"Authorization": "Bearer garbage"})
    http.post("/api/update_avatar", headers=bearer(token), data=b"x")
    assert site.seen == []


def test_slow_site_is_504_json(gateway):
    http, token = signed_in(gateway)
    response = http.get("/api/slow", headers=bearer(token))
    assert response.status_code == 504
    assert response.get_json()["success"] == 0
    assert "Traceback" not in response.get_data(as_text=True)


def test_site_down_is_502_json(tmp_path, gateway):
    http, token = signed_in(gateway)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # A second worker over the same storage whose site is unreachable.
    down = http_app(tmp_path, closed)
    try:
        response = down.test_client().get("/api/profile", headers=bearer(token))
        assert response.status_code == 502
        body = response.get_json()
        assert body["success"] == 0
        assert "127.0.0.1" not in body["error"]
        assert "site-token" not in response.get_data(as_text=True)
    finally:
        close_app(down)


def test_http_adapter_login_checks_the_password_at_the_site(gateway):
    app, _ = gateway
    http = app.test_client()
    bad = login(http, password="nope")
    assert bad.status_code == 401
    assert "Wrong username or password." in bad.get_data(as_text=True)
    good = login(http)
    assert good.status_code == 302
    assert http.get("/review").status_code == 200


def test_the_wrong_method_is_405_and_reaches_no_site(client):
    code = get_code(client, scope="read-only read-write")
    token = exchange(client, code).get_json()["access_token"]
    response = client.delete("/api/update_avatar", headers=bearer(token))
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, GET"
    assert response.get_json() == {"success": 0, "error": "use POST or GET"}
    assert client.put("/api/profile", headers=bearer(token)).headers["Allow"] == "GET"


# -- methods the original accepted --------------------------------------------------------
def test_update_avatar_on_get_takes_the_avatar_from_the_query_as_the_original(client):
    token = token_for(client, scope="read-write read-only")["access_token"]
    response = client.get("/api/update_avatar?avatar=/me.png", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"success": 1}
    profile = client.get("/api/profile", headers=bearer(token)).get_json()
    assert profile["avatar"] == "/me.png"


def test_update_avatar_on_get_still_needs_read_write(client):
    token = token_for(client, scope="read-only")["access_token"]
    response = client.get("/api/update_avatar?avatar=/me.png", headers=bearer(token))
    assert response.status_code == 403


def test_the_site_is_called_with_the_method_the_partner_used(tmp_path, capture):
    site, base_url = capture
    site.app.add_url_rule("/update", view_func=site.record, methods=["GET"], endpoint="g")
    resource = http_resource(base_url)
    resource["api"]["update_avatar"]["method"] = ["POST", "GET"]
    app = http_app(tmp_path, base_url, resource)
    try:
        http = app.test_client()
        token = token_for(http, scope="read-write")["access_token"]
        assert (
            http.get("/api/update_avatar?avatar=/a.png", headers=bearer(token)).status_code == 200
        )
        http.post("/api/update_avatar", headers=bearer(token), data={"avatar": "/b.png"})
    finally:
        close_app(app)
    assert [(s["method"], s["args"].get("avatar")) for s in site.seen] == [
        ("GET", "/a.png"),
        ("POST", None),
    ]
    assert site.seen[1]["body"] == b"avatar=/b.png"
