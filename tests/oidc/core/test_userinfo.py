"""The UserInfo Endpoint (OpenID Connect Core §5.3): claims by scope, RFC 6750 refusals."""

from __future__ import annotations

import copy

import pytest

from app import create_app
from app.adapters import UpstreamUnavailable
from app.settings import DEFAULTS, Settings, deep_merge
from tests.conftest import basic, bearer, close_app, table
from tests.factories import make_token
from tests.oidc.core_helpers import tokens_for


def userinfo(client, token: str, method: str = "GET"):
    return client.open("/userinfo", method=method, headers=bearer(token))


@pytest.mark.parametrize(
    ("scope", "claims"),
    table(
        [
            ("openid", "openid", {"sub"}),
            ("profile", "openid profile", {"sub", "name", "given_name"}),
            ("email", "openid email", {"sub", "email", "email_verified"}),
            (
                "all",
                "openid profile email address phone",
                {"sub", "name", "given_name", "email", "email_verified"},
            ),
        ]
    ),
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_claims_by_scope(client, scope, claims, method):
    token = tokens_for(client, scope=scope)["access_token"]
    response = userinfo(client, token, method)
    assert response.status_code == 200, response.get_json()
    assert set(response.get_json()) == claims
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"


def test_claims_of_an_address_username(client):
    token = tokens_for(client, scope="openid profile email", username="bob@mail.example")
    token = token["access_token"]
    body = userinfo(client, token).get_json()
    assert body["email"] == "bob@mail.example" and body["email_verified"] is True
    assert body["name"] == "bob@mail.example" and body["given_name"] == "bob"


def test_the_token_may_come_in_a_post_body(client):
    token = tokens_for(client)["access_token"]
    response = client.post("/userinfo", data={"access_token": token})
    assert response.status_code == 200 and "sub" in response.get_json()


def test_a_token_two_ways_is_invalid_request(client):
    token = tokens_for(client)["access_token"]
    response = client.post("/userinfo", data={"access_token": token}, headers=bearer(token))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_no_token_is_401_without_an_error_code(client):
    response = client.get("/userinfo")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="userinfo"'


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer ", "Basic dGVzdDpodW50ZXIy", "Bearer a b", "Bearer \u00e9"],
)
def test_a_bad_token_is_invalid_token(client, header):
    response = client.get("/userinfo", headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["error"] == "invalid_token"


def test_a_token_without_openid_is_insufficient_scope(client):
    token = tokens_for(client, scope="read-only")["access_token"]
    response = userinfo(client, token)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="openid"' in response.headers["WWW-Authenticate"]


def test_a_revoked_token_is_invalid_token(client):
    tokens = tokens_for(client)
    assert userinfo(client, tokens["access_token"]).status_code == 200
    revoked = client.post("/revoke", data={"token": tokens["access_token"]}, headers=basic())
    assert revoked.status_code == 200
    assert userinfo(client, tokens["access_token"]).status_code == 401


def test_an_expired_token_is_invalid_token(app, client):
    token = make_token(app.extensions["oauth2"], scope="openid", expires_in=-5)
    response = userinfo(client, token["access_token"])
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_refreshed_away_token_is_invalid_token(client):
    tokens = tokens_for(client)
    from tests.oauth2.conftest import refresh

    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert userinfo(client, tokens["access_token"]).status_code == 401


def test_any_origin_may_call_it(client):
    token = tokens_for(client)["access_token"]
    response = client.get("/userinfo", headers={**bearer(token), "Origin": "https://rp.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    preflight = client.options(
        "/userinfo",
        headers={"Origin": "https://rp.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize(("timeout", "status"), [(False, 502), (True, 504)])
def test_a_site_failure_is_a_json_5xx_never_500(app, client, monkeypatch, timeout, status):
    token = tokens_for(client)["access_token"]

    def down(*args):
        raise UpstreamUnavailable("site down", timeout=timeout)

    monkeypatch.setattr(app.extensions["oauth2"].adapter, "claims", down)
    response = userinfo(client, token)
    assert response.status_code == status
    assert response.get_json()["error"] == "temporarily_unavailable"


# -- the http adapter's claims: from the login answer and from a site endpoint -----------
def http_site_app(tmp_path, dummy_site, claims: dict):
    host, port = dummy_site
    data = deep_merge(
        DEFAULTS,
        {
            "auth_server": {"session_secret": "test-secret-" + "x" * 20},
            "storage": {"default": f"sqlite:///{tmp_path}/oauth2.db"},
        },
    )
    data["resource_server"] = {
        "type": "http",
        "base_url": f"http://{host}:{port}",
        "login": {"token_from": "cookie:dummy-server-token"},
        "scopes": {"read-only": "Read your profile"},
        "api": {"profile": {"path": "/info", "scope": "read-only"}},
        "claims": claims,
    }
    app = create_app(Settings(copy.deepcopy(data)))
    app.config["TESTING"] = True
    return app


def test_http_adapter_claims_from_the_login_answer(tmp_path, dummy_site):
    app = http_site_app(tmp_path, dummy_site, {"from_login": {"email": "json:email"}})
    try:
        client = app.test_client()
        tokens = tokens_for(client, scope="openid email profile", username="carol@mail.example")
        body = userinfo(client, tokens["access_token"])
        assert body.get_json()["email"] == "carol@mail.example"
        assert body.get_json()["name"] == "carol@mail.example"  # the login's name_from
        assert (
            "email"
            in app.test_client()
            .get("/.well-known/openid-configuration")
            .get_json()["claims_supported"]
        )
    finally:
        close_app(app)


def test_http_adapter_claims_from_a_site_endpoint(tmp_path, dummy_site):
    endpoint = {
        "path": "/claims",
        "fields": {"given_name": "json:given_name", "email_verified": "json:email_verified"},
    }
    app = http_site_app(tmp_path, dummy_site, {"endpoint": endpoint})
    try:
        client = app.test_client()
        tokens = tokens_for(client, scope="openid email profile", username="dave@mail.example")
        body = userinfo(client, tokens["access_token"])
        assert body.get_json()["given_name"] == "dave"
        assert body.get_json()["email_verified"] is True
        assert "email" not in body.get_json()  # neither the login nor the endpoint maps it
    finally:
        close_app(app)


def test_http_adapter_site_endpoint_failing_is_502(tmp_path, dummy_site):
    endpoint = {"path": "/no-such-endpoint", "fields": {"email": "json:email"}}
    app = http_site_app(tmp_path, dummy_site, {"endpoint": endpoint})
    try:
        client = app.test_client()
        token = tokens_for(client, scope="openid email")["access_token"]
        response = userinfo(client, token)
        assert response.status_code == 502
        assert response.headers["Cache-Control"] == "no-store"
    finally:
        close_app(app)


@pytest.mark.parametrize(
    ("claims", "problem"),
    table(
        [
            ("unknown claim", {"from_login": {"shoe_size": "json:shoe"}}, "shoe_size"),
            ("not json", {"from_login": {"email": "header:X-Email"}}, "json:<field>"),
            ("endpoint without fields", {"endpoint": {"path": "/me"}}, "fields"),
            ("bad path", {"endpoint": {"path": "me", "fields": {"email": "json:e"}}}, "'/'"),
        ]
    ),
)
def test_http_adapter_claims_config_errors_are_named(tmp_path, dummy_site, claims, problem):
    from app.settings import ConfigError

    with pytest.raises(ConfigError) as error:
        http_site_app(tmp_path, dummy_site, claims)
    assert "resource_server.claims" in str(error.value)
    assert problem in str(error.value)
