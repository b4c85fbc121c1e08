"""CORS: bearer endpoints answer any origin; /token and /revoke a public client's own
registered origins; introspection and pages never answer CORS."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CHALLENGE, VERIFIER, basic, bearer, get_code
from tests.oauth2.conftest import EXTRA_CLIENTS, REDIRECT, issue_tokens, open_app, unchanged

APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "http://localhost:3000"
EVIL = "https://evil.example"
SPA = {
    "client_id": "spa",
    "name": "Single-page app",
    "public": True,
    "grant_types": ["authorization_code", "refresh_token"],
    "redirect_uris": [REDIRECT],
    "allowed_origins": [APP_ORIGIN],
}
SPA2 = dict(SPA, client_id="spa2", allowed_origins=[OTHER_ORIGIN])
CLIENTS = [SPA, SPA2, *(c for c in EXTRA_CLIENTS if c["client_id"] != "spa")]


def preflight(origin: str, method: str = "POST", headers: str = "authorization") -> dict:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, clients=CLIENTS) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


def spa_code(client, client_id: str = "spa") -> str:
    return get_code(
        client, client_id=client_id, code_challenge=CHALLENGE, code_challenge_method="S256"
    )


def spa_exchange(client, code: str, origin: str, client_id: str = "spa"):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
        "code_verifier": VERIFIER,
    }
    return client.post("/token", data=data, headers={"Origin": origin})


# -- bearer endpoints: any origin -----------------------------------------------------------
def test_api_answers_any_origin_without_credentials(client):
    token = issue_tokens(client, scope="read-only")["access_token"]
    response = client.get("/api/profile", headers={**bearer(token), "Origin": EVIL})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    exposed = response.headers["Access-Control-Expose-Headers"]
    assert {"WWW-Authenticate", "Retry-After", "RateLimit", "RateLimit-Policy", "DPoP-Nonce"} <= {
        name.strip() for name in exposed.split(",")
    }


def test_api_refusals_carry_cors_so_scripts_can_read_them(client):
    response = client.get("/api/profile", headers={**bearer("wrong"), "Origin": EVIL})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]


def test_api_preflight_names_methods_headers_and_max_age(client, app):
    with unchanged(app.extensions["oauth2"]):
        response = client.options("/api/update_avatar", headers=preflight(EVIL, "GET"))
    assert response.status_code == 204
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "DELETE, GET, PATCH, POST, PUT",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, DPoP",
        "Access-Control-Max-Age": "7200",
    }


def test_api_429_carries_cors_and_retry_after(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, clients=CLIENTS, limits={"api_ip": "1/minute"}) as app:
        http = app.test_client()
        http.get("/api/profile", headers=bearer("x"))
        response = http.get("/api/profile", headers={**bearer("x"), "Origin": EVIL})
    assert response.status_code == 429
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Retry-After"]


# -- the token endpoints: a public client's registered origins --------------------------------
def test_token_answers_the_public_clients_registered_origin(client):
    response = spa_exchange(client, spa_code(client), APP_ORIGIN)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_token_errors_reach_the_registered_origin_too(client):
    data = {"grant_type": "authorization_code", "code": "nope", "client_id": "spa"}
    response = client.post("/token", data=data, headers={"Origin": APP_ORIGIN})
    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    "origin",
    [EVIL, OTHER_ORIGIN, APP_ORIGIN + "/", APP_ORIGIN.upper(), "null", "*"],
    ids=["stranger", "another-clients", "with-path", "upper-case", "null", "star"],
)
def test_token_gives_other_origins_no_cors(client, origin):
    response = spa_exchange(client, spa_code(client), origin)
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert "Origin" in response.headers["Vary"]


def test_token_gives_a_confidential_client_no_cors(client):
    code = get_code(client)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    response = client.post("/token", data=data, headers={**basic(), "Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert cors_headers(response) == {}


@pytest.mark.parametrize("path", ["/token", "/revoke"])
@pytest.mark.parametrize("origin", [APP_ORIGIN, OTHER_ORIGIN])
def test_token_preflight_answers_any_public_clients_origin(client, path, origin):
    response = client.options(path, headers=preflight(origin, headers="content-type"))
    assert response.status_code == 204
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type, DPoP",
        "Access-Control-Max-Age": "7200",
    }
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize("path", ["/token", "/revoke"])
def test_token_preflight_gives_a_stranger_nothing(client, path):
    response = client.options(path, headers=preflight(EVIL))
    assert response.status_code == 204
    assert cors_headers(response) == {}


def test_revoke_answers_the_public_clients_origin(client):
    tokens = spa_exchange(client, spa_code(client), APP_ORIGIN).get_json()
    data = {"token": tokens["access_token"], "client_id": "spa"}
    response = client.post("/revoke", data=data, headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    wrong = client.post("/revoke", data=data, headers={"Origin": OTHER_ORIGIN})
    assert cors_headers(wrong) == {}


def test_introspection_never_answers_cors(client):
    token = issue_tokens(client)["access_token"]
    headers = {**basic(), "Origin": APP_ORIGIN}
    assert cors_headers(client.post("/introspect", data={"token": token}, headers=headers)) == {}
    assert cors_headers(client.options("/introspect", headers=preflight(APP_ORIGIN))) == {}


# -- pages ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/login", "/review", "/authorize?client_id=test", "/logout"])
def test_pages_never_answer_cors(client, path):
    issue_tokens(client)
    for response in (
        client.get(path, headers={"Origin": APP_ORIGIN}),
        client.options(path, headers=preflight(APP_ORIGIN, "GET")),
    ):
        assert response.status_code < 500
        assert cors_headers(response) == {}


# -- any Origin, any method: no 5xx, nothing stored, CORS only as registered ------------------
#: Header values as a WSGI server passes them: any bytes but line breaks, latin-1 decoded.
header_values = st.binary(max_size=40).map(
    lambda raw: raw.translate(None, b"\r\n\x00").decode("latin-1")
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    origin=header_values | st.sampled_from([APP_ORIGIN, OTHER_ORIGIN, EVIL, "null"]),
    path=st.sampled_from(
        ["/token", "/revoke", "/introspect", "/api/profile", "/api/update_avatar", "/login"]
    ),
    method=st.sampled_from(["OPTIONS", "POST", "GET", "PUT", "DELETE", "HEAD"]),
    client_id=st.sampled_from(["spa", "spa2", "test", "nope", ""]),
    request_method=header_values,
)
def test_any_origin_is_answered_as_registered_and_changes_nothing(
    app, origin, path, method, client_id, request_method
):
    headers = {"Origin": origin, "Access-Control-Request-Method": request_method}
    with unchanged(app.extensions["oauth2"]):
        response = app.test_client().open(
            path, method=method, headers=headers, data={"client_id": client_id, "token": "x"}
        )
    assert response.status_code < 500
    allowed = response.headers.get("Access-Control-Allow-Origin")
    if path.startswith("/api/"):
        preflight_or_call = method != "OPTIONS" or request_method
        assert allowed == ("*" if preflight_or_call else None)
    elif path in ("/token", "/revoke") and allowed is not None:
        assert allowed == origin
        assert origin in (APP_ORIGIN, OTHER_ORIGIN)
        assert method == "OPTIONS" or (client_id, origin) in (
            ("spa", APP_ORIGIN),
            ("spa2", OTHER_ORIGIN),
        )
    else:
        assert allowed is None
