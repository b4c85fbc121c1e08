"""Dynamic client registration (RFC 7591) and management (RFC 7592) at /register."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import authorize_url, basic, bearer, close_app, login, table
from tests.factories import REDIRECT
from tests.oauth2.conftest import make_app
from tests.test_admin_fuzz import bodies, rows

OPERATOR_TOKEN = "operator-initial-token-0123456789"
REGISTRATION = {
    "enabled": True,
    "initial_access_token_hash": "sha256$" + hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(),
}
MACHINE = {"client_name": "Job", "grant_types": ["client_credentials"], "scope": "read-only"}
WEB = {"client_name": "Web", "redirect_uris": ["https://web.example/cb"], "scope": "read-only"}
IAT = bearer(OPERATOR_TOKEN)


@pytest.fixture
def app(tmp_path, dummy_site):
    app = make_app(
        tmp_path,
        dummy_site,
        registration=REGISTRATION,
        client_credentials={"allow_wildcard_redirects": True},
    )
    yield app
    close_app(app)


@pytest.fixture
def state(app):
    return app.extensions["oauth2"]


def register(client, body, headers=IAT):
    return client.post("/register", json=body, headers=headers)


def admin_iat(client, **body) -> str:
    data = {"grant_type": "client_credentials", "scope": "admin"}
    admin = client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    made = client.post("/admin/registration-tokens", json=body, headers=bearer(admin))
    assert made.status_code == 201, made.get_json()
    return made.get_json()["initial_access_token"]


def test_off_by_default(tmp_path, dummy_site):
    app = make_app(tmp_path, dummy_site)
    try:
        http = app.test_client()
        assert register(http, MACHINE).status_code == 404
        assert (
            "registration_endpoint" not in http.get("/.well-known/openid-configuration").get_json()
        )
    finally:
        close_app(app)


def test_discovery_names_the_endpoint(client):
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        assert (
            client.get(path).get_json()["registration_endpoint"] == "http://127.0.0.1:8081/register"
        )


@pytest.mark.parametrize(
    "headers", table([("none", {}), ("wrong", bearer("nope")), ("basic", basic("admin"))])
)
def test_without_a_good_initial_token_401_and_nothing_stored(client, state, headers):
    response = register(client, MACHINE, headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert state.clients.store.records() == []


def test_a_confidential_client_gets_a_hashed_secret_and_works_at_once(client, state):
    response = register(client, MACHINE)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["source"] == "registration" and body["client_secret_expires_at"] == 0
    assert body["registration_client_uri"].endswith("/register/" + body["client_id"])
    data = {"grant_type": "client_credentials"}
    token = client.post(
        "/token", data=data, headers=basic(body["client_id"], body["client_secret"])
    )
    assert token.status_code == 200
    stored = str(rows(state))
    for secret in (body["client_secret"], body["registration_access_token"]):
        assert secret not in stored


def test_a_public_client_gets_no_secret(client):
    body = register(client, {**WEB, "token_endpoint_auth_method": "none"}).get_json()
    assert "client_secret" not in body and "client_secret_expires_at" not in body
    assert body["public"] is True


@pytest.mark.parametrize(
    "change,error",
    table(
        [
            ("skip-consent", {"skip_consent": True}, "invalid_client_metadata"),
            ("api-allowlist", {"api_allowlist": []}, "invalid_client_metadata"),
            ("rate-limit", {"rate_limit": "1/second"}, "invalid_client_metadata"),
            ("admin-scope", {"scope": "admin"}, "invalid_client_metadata"),
            (
                "sector",
                {"sector_identifier_uri": "https://web.example/s"},
                "invalid_client_metadata",
            ),
            ("long-lifetime", {"access_token_lifetime": 86400}, "invalid_client_metadata"),
            ("wildcard", {"redirect_uris": ["*"]}, "invalid_client_metadata"),
            (
                "bad-redirect",
                {"redirect_uris": ["https://web.example/cb#frag"]},
                "invalid_redirect_uri",
            ),
            ("no-redirect", {"redirect_uris": []}, "invalid_redirect_uri"),
            ("disabled", {"disabled": True}, "invalid_client_metadata"),
            (
                # RFC 9449 §5.2: the implicit grant's tokens would be bound to no key.
                "dpop-implicit",
                {
                    "grant_types": ["authorization_code", "implicit"],
                    "dpop_bound_access_tokens": True,
                },
                "invalid_client_metadata",
            ),
        ]
    ),
)
def test_refused_metadata_changes_nothing(client, state, change, error):
    iat = admin_iat(client)
    before = rows(state)
    response = register(client, {**WEB, **change}, bearer(iat))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == error
    assert rows(state) == before  # the single-use token was not spent either
    assert register(client, WEB, bearer(iat)).status_code == 201


def test_a_shorter_lifetime_may_be_asked(client):
    body = register(client, {**MACHINE, "access_token_lifetime": 600}).get_json()
    assert body["access_token_lifetime"] == 600


def test_an_admin_issued_token_is_single_use(client):
    iat = admin_iat(client, expires_in=600)
    assert register(client, MACHINE, bearer(iat)).status_code == 201
    again = register(client, MACHINE, bearer(iat))
    assert again.status_code == 401


def test_the_operator_token_is_reusable(client):
    assert register(client, MACHINE).status_code == 201
    assert register(client, MACHINE).status_code == 201


# -- RFC 7592 ---------------------------------------------------------------------------
def manage(client, made, method, token=None, **kw):
    token = token or made["registration_access_token"]
    return client.open(f"/register/{made['client_id']}", method=method, headers=bearer(token), **kw)


def test_read_with_the_registration_token(client):
    made = register(client, {**WEB, "client_uri": "https://web.example/"}).get_json()
    read = manage(client, made, "GET")
    assert read.status_code == 200
    assert read.get_json()["client_uri"] == "https://web.example/"
    assert (
        "client_secret" not in read.get_json()
        and "registration_access_token" not in read.get_json()
    )


def test_put_replaces_and_rotates_the_token(client, state):
    made = register(client, {**WEB, "client_uri": "https://web.example/"}).get_json()
    body = {
        "client_id": made["client_id"],
        "client_name": "Renamed",
        "redirect_uris": ["https://web.example/two"],
    }
    put = manage(client, made, "PUT", json=body)
    assert put.status_code == 200, put.get_json()
    answer = put.get_json()
    assert answer["client_name"] == "Renamed" and "client_uri" not in answer  # replaced, not merged
    assert answer["registration_access_token"] != made["registration_access_token"]
    assert manage(client, made, "GET").status_code == 401  # the old token stopped
    assert manage(client, made, "GET", answer["registration_access_token"]).status_code == 200


SELF = "<its own id>"


@pytest.mark.parametrize(
    "body",
    table(
        [
            ("no-client-id", {"client_name": "X", "redirect_uris": [REDIRECT]}),
            ("other-client-id", {"client_id": "test", "redirect_uris": [REDIRECT]}),
            (
                "wrong-secret",
                {"client_id": SELF, "client_secret": "no", "redirect_uris": [REDIRECT]},
            ),
            ("admin-field", {"client_id": SELF, "skip_consent": True, "redirect_uris": [REDIRECT]}),
            ("token-field", {"client_id": SELF, "registration_access_token": "x"}),
            ("bad-redirect", {"client_id": SELF, "redirect_uris": ["ftp://x/"]}),
        ]
    ),
)
def test_a_refused_put_changes_nothing(client, state, body):
    made = register(client, WEB).get_json()
    body = {k: made["client_id"] if v == SELF else v for k, v in body.items()}
    before = rows(state)
    response = manage(client, made, "PUT", json=body)
    assert response.status_code == 400, response.get_json()
    assert rows(state) == before


def test_delete_ends_the_client(client, state):
    made = register(client, MACHINE).get_json()
    creds = basic(made["client_id"], made["client_secret"])
    assert (
        client.post("/token", data={"grant_type": "client_credentials"}, headers=creds).status_code
        == 200
    )
    assert manage(client, made, "DELETE").status_code == 204
    assert (
        client.post("/token", data={"grant_type": "client_credentials"}, headers=creds).status_code
        == 401
    )
    assert manage(client, made, "GET").status_code == 401


def test_a_token_works_only_for_its_own_client(client):
    one, two = register(client, WEB).get_json(), register(client, WEB).get_json()
    assert manage(client, one, "GET", two["registration_access_token"]).status_code == 401
    assert (
        client.get("/register/test", headers=bearer(one["registration_access_token"])).status_code
        == 401
    )


def test_a_registered_clients_logo_is_not_loaded(client):
    made = register(
        client, {**WEB, "redirect_uris": [REDIRECT], "logo_uri": "https://evil.example/l.png"}
    ).get_json()
    login(client)
    page = client.get(authorize_url(client_id=made["client_id"], scope="read-only"))
    assert page.status_code == 200
    assert "evil.example" not in page.get_data(as_text=True)
    assert "evil.example" not in page.headers["Content-Security-Policy"]


@given(body=bodies, method=st.sampled_from(["POST", "PUT"]))
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_json_body_is_never_a_5xx_and_a_refusal_changes_nothing(client, state, body, method):
    existing = [r for r in state.clients.store.records() if r.get("source") == "registration"]
    if not existing:
        register(client, WEB)
        existing = [r for r in state.clients.store.records() if r.get("source") == "registration"]
    before = rows(state)
    if method == "POST":
        response = register(client, body)
    else:
        # a token of this client is unknown here (it is hashed): use a fresh registration
        made = register(client, WEB).get_json()
        before = rows(state)
        if isinstance(body, dict) and "client_id" in body:
            body = {**body, "client_id": made["client_id"]}
        response = manage(client, made, "PUT", json=body)
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    if response.status_code >= 400:
        assert response.get_json()["error"]
        assert rows(state) == before


@pytest.mark.parametrize("body", [{"expires_in": 1}, {"expires_in": "600"}, {"uses": 2}, [1]])
def test_admin_token_issue_refuses_bad_bodies(client, state, body):
    data = {"grant_type": "client_credentials", "scope": "admin"}
    admin = client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    before = rows(state)
    response = client.post("/admin/registration-tokens", json=body, headers=bearer(admin))
    assert response.status_code == 400
    assert rows(state) == before


def test_admin_token_issue_needs_the_admin_token(client, state):
    response = client.post("/admin/registration-tokens", json={})
    assert response.status_code == 401
    assert state.clients.store.table.list_by_user("@clients") == []
