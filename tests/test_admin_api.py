"""The admin API for clients (``/admin/clients``): who may call it, and what each call does."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from tests.conftest import authorize_url, basic, bearer, get_code, location_params, login, table
from tests.factories import REDIRECT, make_token

ADMIN = "/admin/clients"
MACHINE = {"client_name": "Batch job", "grant_types": ["client_credentials"], "scope": "read-only"}
WEB = {"client_name": "Partner web", "redirect_uris": [REDIRECT], "scope": "read-only"}


def admin_token(http, client_id="admin", secret="hunter2", scope="admin") -> str:
    data = {"grant_type": "client_credentials", "scope": scope}
    response = http.post("/token", data=data, headers=basic(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


@pytest.fixture
def admin(client):
    """The test client with the demo admin's bearer token on every call."""
    headers = bearer(admin_token(client))

    def call(method: str, path: str = ADMIN, **kw):
        return client.open(path, method=method, headers=headers, **kw)

    return call


def stored_ids(state) -> list[str]:
    return [r["client_id"] for r in state.clients.store.records()]


def client_token(http, client_id: str, secret: str):
    data = {"grant_type": "client_credentials"}
    return http.post("/token", data=data, headers=basic(client_id, secret))


def code_flow_token(http, client_id: str, secret: str) -> str:
    code = get_code(http, client_id=client_id, scope="read-only")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    response = http.post("/token", data=data, headers=basic(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def profile(http, token: str) -> int:
    return http.get("/api/profile", headers=bearer(token)).status_code


# -- who may call it ---------------------------------------------------------------------
def test_without_a_token_401_with_a_bare_challenge(client, state):
    response = client.post(ADMIN, json=MACHINE)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="admin"'
    assert response.headers["Cache-Control"] == "no-store"
    assert stored_ids(state) == []


@pytest.mark.parametrize(
    ("header", "error"),
    table(
        [
            ("unknown-token", "Bearer no-such-token", "invalid_token"),
            ("malformed-token", "Bearer a b", "invalid_token"),
        ]
    ),
)
def test_a_bad_token_is_401_invalid_token(client, state, header, error):
    response = client.post(ADMIN, json=MACHINE, headers={"Authorization": header})
    assert response.status_code == 401
    assert f'error="{error}"' in response.headers["WWW-Authenticate"]
    assert stored_ids(state) == []


def test_an_expired_admin_token_is_401(client, state):
    token = make_token(state, client_id="admin", scope="admin", expires_in=-1, user_id=None)
    response = client.post(ADMIN, json=MACHINE, headers=bearer(token["access_token"]))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"
    assert stored_ids(state) == []


def test_a_revoked_admin_token_is_401(client, state):
    token = admin_token(client)
    assert client.post("/revoke", data={"token": token}, headers=basic("admin")).status_code == 200
    response = client.post(ADMIN, json=MACHINE, headers=bearer(token))
    assert response.status_code == 401
    assert stored_ids(state) == []


def test_a_users_token_is_403_insufficient_scope(client, state):
    token = make_token(state, scope="read-only read-write")["access_token"]
    response = client.post(ADMIN, json=MACHINE, headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json()["error"] == "insufficient_scope"
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="admin"' in challenge
    assert stored_ids(state) == []


def test_a_user_token_that_claims_admin_is_still_403(client, state):
    token = make_token(state, client_id="admin", scope="admin")["access_token"]  # has a user
    assert client.get(ADMIN, headers=bearer(token)).status_code == 403


def test_a_client_token_without_admin_is_403(client, state):
    token = client_token(client, "test", "hunter2").get_json()["access_token"]
    response = client.get(ADMIN, headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json()["error"] == "insufficient_scope"


@pytest.mark.parametrize("client_id", ["test", "sp-demo"])
def test_the_demo_clients_cannot_get_admin(client, client_id):
    data = {"grant_type": "client_credentials", "scope": "admin"}
    response = client.post("/token", data=data, headers=basic(client_id))
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] in ("invalid_scope", "unauthorized_client")
    default = client_token(client, "test", "hunter2").get_json()
    assert "admin" not in default["scope"].split()


def test_admin_without_asking_gets_no_admin_scope(client):
    data = {"grant_type": "client_credentials"}
    token = client.post("/token", data=data, headers=basic("admin")).get_json()
    assert token["scope"] == ""
    assert client.get(ADMIN, headers=bearer(token["access_token"])).status_code == 403


def test_admin_is_refused_at_authorize_for_every_client(client, admin):
    login(client)
    made = admin("POST", json={**WEB, "scope": "read-only"}).get_json()
    for client_id in ("test", made["client_id"]):
        response = client.get(authorize_url(client_id=client_id, scope="admin"))
        assert response.status_code == 302
        assert location_params(response)["error"] == "invalid_scope"


# -- what each call does -------------------------------------------------------------------
def test_create_gives_a_secret_once_usable_at_token_at_once(client, admin, state):
    response = admin("POST", json=MACHINE)
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert response.headers["Location"] == f"{ADMIN}/{client_id}"
    assert body["source"] == "api" and body["read_only"] is False
    assert body["scope"] == "read-only" and body["client_secret_expires_at"] == 0
    token = client_token(client, client_id, secret)
    assert token.status_code == 200, token.get_json()
    assert token.get_json()["scope"] == "read-only"
    shown = admin("GET", f"{ADMIN}/{client_id}")
    listed = admin("GET")
    for answer in (shown, listed):
        text = answer.get_data(as_text=True)
        assert secret not in text and "sha256$" not in text and "hash" not in text
    assert client_id in stored_ids(state)


def test_getalby_spellings_are_accepted(admin):
    body = {
        "name": "Alby app",
        "url": "https://alby.example",
        "imageUrl": "https://alby.example/logo.png",
        "domain": "https://alby.example/callback",
        "public": True,
    }
    response = admin("POST", json=body)
    assert response.status_code == 201, response.get_json()
    made = response.get_json()
    assert "client_secret" not in made
    assert made["client_name"] == made["name"] == "Alby app"
    assert made["logo_uri"] == made["imageUrl"] == body["imageUrl"]
    assert made["client_uri"] == body["url"]
    assert made["redirect_uris"] == [body["domain"]]
    assert made["token_endpoint_auth_method"] == "none" and made["public"] is True


BAD_METADATA = [
    ("not-an-object", [1, 2], "invalid_client_metadata"),
    ("unknown-field", {**MACHINE, "colour": "red"}, "invalid_client_metadata"),
    ("a-secret", {**MACHINE, "client_secret": "mine"}, "invalid_client_metadata"),
    ("bad-grant", {**MACHINE, "grant_types": ["password"]}, "invalid_client_metadata"),
    ("grants-not-a-list", {**MACHINE, "grant_types": "client_credentials"}, None),
    ("unknown-scope", {**MACHINE, "scope": "read-only root"}, "invalid_client_metadata"),
    ("scope-as-list", {**MACHINE, "scope": ["read-only"]}, "invalid_client_metadata"),
    ("no-redirect", {"grant_types": ["authorization_code"]}, "invalid_redirect_uri"),
    ("bad-redirect", {**WEB, "redirect_uris": ["not a url"]}, "invalid_redirect_uri"),
    ("fragment", {**WEB, "redirect_uris": [REDIRECT + "#x"]}, "invalid_redirect_uri"),
    ("wildcard", {**WEB, "redirect_uris": ["*"]}, "invalid_redirect_uri"),
    ("bad-logo", {**MACHINE, "logo_uri": "javascript:alert(1)"}, "invalid_client_metadata"),
    ("control-char", {**MACHINE, "client_name": "a\nb"}, "invalid_client_metadata"),
    ("admin-on-code", {**WEB, "scope": "admin"}, "invalid_client_metadata"),
    ("public-machine", {**MACHINE, "public": True}, "invalid_client_metadata"),
    ("rt-mismatch", {**WEB, "response_types": ["token"]}, "invalid_client_metadata"),
    ("bad-method", {**MACHINE, "token_endpoint_auth_method": "x"}, "invalid_client_metadata"),
    (
        "public-vs-method",
        {**WEB, "public": True, "token_endpoint_auth_method": "client_secret_post"},
        None,
    ),
    ("bad-client-id", {**MACHINE, "client_id": "has space"}, "invalid_client_metadata"),
    ("file-client-id", {**MACHINE, "client_id": "test"}, "conflict"),
    ("bad-ip", {**MACHINE, "ip_allowlist": ["nope"]}, "invalid_client_metadata"),
]


@pytest.mark.parametrize(("body", "error"), table(BAD_METADATA))
def test_bad_metadata_is_400_and_stores_nothing(admin, state, body, error):
    response = admin("POST", json=body)
    assert 400 <= response.status_code < 500
    answer = response.get_json()
    assert answer["error"] == (error or "invalid_client_metadata")
    assert answer["error_description"]
    assert stored_ids(state) == []


def test_a_body_that_is_not_json_is_400(admin, state):
    response = admin("POST", data="client_name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    response = admin("POST", data="{nope", content_type="application/json")
    assert response.status_code == 400
    assert stored_ids(state) == []


def test_get_an_unknown_client_is_404(admin):
    response = admin("GET", f"{ADMIN}/nope")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_put_replaces_and_patch_merges(admin):
    made = admin("POST", json={**WEB, "logo_uri": "https://p.example/l.png"}).get_json()
    path = f"{ADMIN}/{made['client_id']}"
    patched = admin("PATCH", path, json={"client_name": "Renamed", "logo_uri": None}).get_json()
    assert patched["client_name"] == "Renamed"
    assert "logo_uri" not in patched
    assert patched["redirect_uris"] == [REDIRECT]
    replaced = admin("PUT", path, json={"redirect_uris": ["https://new.example/cb"]}).get_json()
    assert "client_name" not in replaced  # replaced, not merged
    assert replaced["redirect_uris"] == ["https://new.example/cb"]
    # The default again: every user scope, the adapter's then OpenID Connect's (as the file's).
    assert replaced["scope"].split()[:3] == ["read-only", "read-write", "openid"]
    assert admin("GET", path).get_json() == replaced


def test_a_get_body_can_be_put_back(admin):
    made = admin("POST", json=WEB).get_json()
    path = f"{ADMIN}/{made['client_id']}"
    shown = admin("GET", path).get_json()
    again = admin("PUT", path, json=shown)
    assert again.status_code == 200, again.get_json()
    assert {k: v for k, v in again.get_json().items() if k != "updated_at"} == {
        k: v for k, v in shown.items() if k != "updated_at"
    }


def test_a_failed_update_changes_nothing(admin):
    made = admin("POST", json=WEB).get_json()
    path = f"{ADMIN}/{made['client_id']}"
    before = admin("GET", path).get_json()
    for method, body in (
        ("PATCH", {"redirect_uris": ["nope"]}),
        ("PUT", {"grant_types": ["authorization_code"]}),
        ("PATCH", {"client_id": "other"}),
        ("PATCH", {"public": True}),  # confidential -> public: make a new client
    ):
        response = admin(method, path, json=body)
        assert response.status_code == 400, (method, body)
    assert admin("GET", path).get_json() == before


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("PUT", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/secret")],
)
def test_file_clients_are_read_only(client, admin, method, suffix):
    response = admin(method, f"{ADMIN}/test{suffix}", json={"client_name": "x"})
    assert response.status_code == 409
    assert "clients file" in response.get_json()["error_description"]
    assert client_token(client, "test", "hunter2").status_code == 200  # untouched
    shown = admin("GET", f"{ADMIN}/test").get_json()
    assert shown["source"] == "file" and shown["read_only"] is True


def test_rotation_keeps_the_old_secret_for_the_overlap(client, admin, monkeypatch):
    made = admin("POST", json=MACHINE).get_json()
    client_id, old = made["client_id"], made["client_secret"]
    rotated = admin("POST", f"{ADMIN}/{client_id}/secret")
    assert rotated.status_code == 200
    new = rotated.get_json()["client_secret"]
    assert new != old
    until = rotated.get_json()["previous_secret_expires_at"]
    assert until == pytest.approx(time.time() + 86400, abs=5)  # admin.secret_overlap
    assert client_token(client, client_id, old).status_code == 200
    assert client_token(client, client_id, new).status_code == 200
    later = time.time() + 86401
    monkeypatch.setattr("app.client_store.time", SimpleNamespace(time=lambda: later))
    assert client_token(client, client_id, old).status_code == 401
    assert client_token(client, client_id, new).status_code == 200


def test_rotation_with_no_overlap_ends_the_old_secret_now(client, admin):
    made = admin("POST", json=MACHINE).get_json()
    client_id, old = made["client_id"], made["client_secret"]
    new = admin("POST", f"{ADMIN}/{client_id}/secret", json={"overlap": 0}).get_json()
    assert client_token(client, client_id, old).status_code == 401
    assert client_token(client, client_id, new["client_secret"]).status_code == 200
    bad = admin("POST", f"{ADMIN}/{client_id}/secret", json={"overlap": -1})
    assert bad.status_code == 400


def test_disable_stops_its_tokens_and_enable_brings_them_back(client, admin):
    made = admin("POST", json=WEB).get_json()
    client_id, secret = made["client_id"], made["client_secret"]
    token = code_flow_token(client, client_id, secret)
    path = f"{ADMIN}/{client_id}"
    assert profile(client, token) == 200
    assert admin("PATCH", path, json={"disabled": True}).get_json()["disabled"] is True
    assert profile(client, token) == 401
    introspected = client.post("/introspect", data={"token": token}, headers=basic())
    assert introspected.get_json() == {"active": False}
    assert client_token(client, client_id, secret).status_code == 401
    page = client.get(authorize_url(client_id=client_id))
    assert page.status_code == 400 and "text/html" in page.content_type
    admin("PATCH", path, json={"disabled": False})
    assert profile(client, token) == 200


def test_delete_revokes_its_tokens_and_consents_and_is_404_after(client, admin, state):
    made = admin("POST", json=WEB).get_json()
    client_id, secret = made["client_id"], made["client_secret"]
    token = code_flow_token(client, client_id, secret)
    state.storage.consents.put(f"u:{client_id}", {"client_id": client_id, "user_id": "u"})
    kept = make_token(state)["access_token"]
    assert admin("DELETE", f"{ADMIN}/{client_id}").status_code == 204
    assert profile(client, token) == 401
    assert state.grants.find_access(token) is None  # gone from storage, not just refused
    assert state.storage.consents.list_by_client(client_id) == []
    assert profile(client, kept) == 200
    assert admin("GET", f"{ADMIN}/{client_id}").status_code == 404
    assert admin("DELETE", f"{ADMIN}/{client_id}").status_code == 404


def test_list_pages_through_file_and_stored_clients(admin):
    made = {admin("POST", json=MACHINE).get_json()["client_id"] for _ in range(3)}
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = admin("GET", query_string=query).get_json()
        seen += page["clients"]
        cursor, pages = page["next_cursor"], pages + 1
        if cursor is None:
            break
    ids = [c["client_id"] for c in seen]
    assert len(ids) == len(set(ids)) == 6 and pages == 3
    assert set(ids) == made | {"admin", "sp-demo", "test"}
    assert {c["client_id"] for c in seen if c["read_only"]} == {"admin", "sp-demo", "test"}


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"cursor": "%%%"}, {"cursor": "_w"}]
)
def test_bad_paging_is_400(admin, query):
    response = admin("GET", query_string=query)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_every_call_is_audited_with_the_acting_client(admin, state):
    made = admin("POST", json=MACHINE).get_json()
    admin("GET", f"{ADMIN}/{made['client_id']}")
    admin("POST", f"{ADMIN}/{made['client_id']}/secret")
    admin("DELETE", f"{ADMIN}/{made['client_id']}")
    events = [r for r in state.storage.audit.recent(20) if r["event"].startswith("admin_")]
    assert [e["event"] for e in reversed(events)] == [
        "admin_client_created",
        "admin_client_read",
        "admin_secret_rotated",
        "admin_client_deleted",
    ]
    assert {e["actor"] for e in events} == {"admin"}
    assert all(made["client_secret"] not in json.dumps(e) for e in events)


def test_a_client_made_through_the_api_may_use_openid_connect(admin):
    """Clients as data share the file's scopes: the adapter's, then OpenID Connect's."""
    made = admin(
        "POST",
        json={
            "client_name": "OIDC partner",
            "redirect_uris": ["https://rp.example/cb"],
            "scope": "openid profile email",
        },
    )
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["scope"] == "openid profile email"
