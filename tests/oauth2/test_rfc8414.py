"""OAuth 2.0 Authorization Server Metadata (RFC 8414)."""

from __future__ import annotations

import pytest

from tests.oauth2.conftest import open_app

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def metadata(client) -> dict:
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_metadata_lists_every_endpoint(client, state):
    doc = metadata(client)
    issuer = state.server.issuer
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == f"{issuer}/authorize"
    assert doc["token_endpoint"] == f"{issuer}/token"
    assert doc["revocation_endpoint"] == f"{issuer}/revoke"
    assert doc["introspection_endpoint"] == f"{issuer}/introspect"


def test_metadata_lists_grants_response_types_and_scopes(client):
    doc = metadata(client)
    assert sorted(doc["grant_types_supported"]) == [
        "authorization_code",
        "client_credentials",
        "implicit",
        "refresh_token",
    ]
    assert sorted(doc["response_types_supported"]) == [
        "code",
        "id_token",
        "id_token token",
        "token",
    ]
    assert doc["scopes_supported"] == [
        "read-only",
        "read-write",
        *("openid", "profile", "email", "address", "phone", "offline_access"),
    ]
    assert sorted(doc["response_modes_supported"]) == ["fragment", "query"]


def test_metadata_lists_auth_methods_pkce_and_iss(client):
    doc = metadata(client)
    for key in (
        "token_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
    ):
        assert sorted(doc[key]) == AUTH_METHODS
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True


def test_issuer_follows_the_configured_url(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, auth_server={"url": "https://auth.example.com"}) as app:
        doc = metadata(app.test_client())
    assert doc["issuer"] == "https://auth.example.com"
    assert doc["token_endpoint"] == "https://auth.example.com/token"


@pytest.fixture
def code_only_app(tmp_path, dummy_site):
    with open_app(
        tmp_path, dummy_site, auth_server={"grant_types": ["authorization_code", "refresh_token"]}
    ) as app:
        yield app


def test_metadata_lists_only_the_grants_switched_on(code_only_app):
    doc = metadata(code_only_app.test_client())
    assert sorted(doc["grant_types_supported"]) == ["authorization_code", "refresh_token"]
    assert doc["response_types_supported"] == ["code"]
