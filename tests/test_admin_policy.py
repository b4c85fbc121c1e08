"""The admin API carries the per-client policy: same names as the clients file."""

from __future__ import annotations

import pytest

from tests.conftest import basic, bearer, table
from tests.factories import REDIRECT, make_token
from tests.test_admin_api import ADMIN, admin, code_flow_token, stored_ids  # noqa: F401

POLICY = {
    "client_name": "Limited partner",
    "redirect_uris": [REDIRECT],
    "scope": "read-only read-write",
    "api_allowlist": ["profile"],
    "access_token_lifetime": 300,
    "refresh_token_lifetime": 3600,
    "logo_uri": "https://partner.example/logo.png",
    "policy_uri": "https://partner.example/privacy",
}


def test_policy_is_kept_shown_and_enforced(client, state, admin):  # noqa: F811
    made = admin("POST", json=POLICY)
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    for name in ("api_allowlist", "access_token_lifetime", "refresh_token_lifetime", "policy_uri"):
        assert body[name] == POLICY[name]
    shown = admin("GET", f"{ADMIN}/{body['client_id']}").get_json()
    assert shown["api_allowlist"] == ["profile"]
    token = make_token(state, body["client_id"], scope="read-only read-write")["access_token"]
    assert client.get("/api/profile", headers=bearer(token)).status_code == 200
    refused = client.post("/api/update_avatar", headers=bearer(token))
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "function not allowed"
    patched = admin("PATCH", f"{ADMIN}/{body['client_id']}", json={"api_allowlist": None})
    assert "api_allowlist" not in patched.get_json()
    assert client.post("/api/update_avatar", headers=bearer(token)).status_code == 200


def test_lifetime_from_the_admin_api_counts_at_token(client, admin):  # noqa: F811
    made = admin("POST", json=POLICY).get_json()
    machine = {**POLICY, "grant_types": ["client_credentials"], "redirect_uris": None}
    made = admin("POST", json=machine).get_json()
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    secret = basic(made["client_id"], made["client_secret"])
    assert client.post("/token", data=data, headers=secret).get_json()["expires_in"] == 300


@pytest.mark.parametrize(
    "field,value",
    table(
        [
            ("lifetime-too-short", "access_token_lifetime", 1),
            ("lifetime-text", "refresh_token_lifetime", "1h"),
            ("allowlist-object", "api_allowlist", {"profile": True}),
            ("allowlist-bad-name", "api_allowlist", ["pro file"]),
        ]
    ),
)
def test_bad_policy_is_invalid_client_metadata(admin, state, field, value):  # noqa: F811
    response = admin("POST", json={**POLICY, field: value})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert field in response.get_json()["error_description"]
    assert stored_ids(state) == []
