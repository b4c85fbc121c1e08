"""Discovery (OpenID Connect Discovery 1.0) and the JWKS: one document with RFC 8414's,
public keys only."""

from __future__ import annotations

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata

from app import paths
from tests.oidc.core_helpers import decode, open_rp_app, tokens_for

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def configuration(client) -> dict:
    response = client.get("/.well-known/openid-configuration")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert "max-age" in response.headers["Cache-Control"]
    return response.get_json()


def test_the_document_is_a_valid_openid_provider_metadata(client):
    doc = configuration(client)
    OpenIDProviderMetadata(doc).validate()
    AuthorizationServerMetadata(doc).validate()


def test_the_document_names_what_relying_parties_need(app, client):
    doc = configuration(client)
    issuer = app.extensions["oauth2"].settings.issuer
    assert doc["issuer"] == issuer == "http://127.0.0.1:8081"
    assert doc["jwks_uri"] == issuer + "/jwks.json"
    assert doc["userinfo_endpoint"] == issuer + "/userinfo"
    assert doc["authorization_endpoint"] == issuer + "/authorize"
    assert doc["token_endpoint"] == issuer + "/token"
    assert doc["subject_types_supported"] == ["public", "pairwise"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["response_types_supported"]) == {"code", "token", "id_token", "id_token token"}
    assert {"openid", "profile", "email", "offline_access"} <= set(doc["scopes_supported"])
    assert {"sub", "auth_time", "nonce", "name", "email", "email_verified", "given_name"} <= set(
        doc["claims_supported"]
    )
    assert sorted(doc["token_endpoint_auth_methods_supported"]) == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    for flag in ("claims_parameter_supported", "request_parameter_supported"):
        assert doc[flag] is False
    assert doc["request_uri_parameter_supported"] is False  # OIDC's default is true


def test_it_agrees_with_the_rfc8414_document(client):
    oidc = configuration(client)
    oauth = client.get("/.well-known/oauth-authorization-server").get_json()
    shared = set(oidc) & set(oauth)
    assert {"issuer", "jwks_uri", "userinfo_endpoint", "scopes_supported"} <= shared
    assert {k: oidc[k] for k in shared} == {k: oauth[k] for k in shared}


def test_only_working_response_types_are_listed(tmp_path, dummy_site):
    over = {"auth_server": {"grant_types": ["authorization_code", "refresh_token"]}}
    with open_rp_app(tmp_path, dummy_site, **over) as app:
        doc = configuration(app.test_client())
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]


def test_an_https_issuer_validates_without_insecure_transport(tmp_path, dummy_site, monkeypatch):
    with open_rp_app(tmp_path, dummy_site, auth_server={"url": "https://id.example.com"}) as app:
        doc = configuration(app.test_client())
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    OpenIDProviderMetadata(doc).validate()
    assert doc["issuer"] == "https://id.example.com"
    assert doc["jwks_uri"] == "https://id.example.com/jwks.json"


def test_the_document_takes_fields_of_endpoints_added_later(tmp_path, dummy_site):
    """``extra_metadata`` is the hook for endpoints registered outside Authlib (logout)."""
    from app.oauth2.rfc8414 import build_metadata

    with open_rp_app(tmp_path, dummy_site) as app:
        server = app.extensions["oauth2"].server
        server.extra_metadata["end_session_endpoint"] = server.issuer + "/logout"
        doc = build_metadata(server, ["name"])
    assert doc["end_session_endpoint"] == "http://127.0.0.1:8081/logout"
    OpenIDProviderMetadata(doc).validate()


def test_any_origin_may_read_discovery_and_keys(client):
    for path in (paths.OIDC_METADATA, paths.JWKS):
        response = client.get(path, headers={"Origin": "https://spa.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "*"


# -- JWKS ------------------------------------------------------------------------------
def test_jwks_holds_public_keys_only_with_cache_headers(app, client):
    response = client.get("/jwks.json")
    assert response.status_code == 200
    assert response.mimetype == "application/jwk-set+json"
    max_age = app.extensions["oauth2"].settings.oidc.jwks_max_age
    assert response.headers["Cache-Control"] == f"public, max-age={max_age}"
    keys = response.get_json()["keys"]
    assert {key["kty"] for key in keys} == {"RSA", "EC"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig" and key["alg"] in ("RS256", "ES256")
        assert not set(PRIVATE_MEMBERS) & set(key), key


def test_every_id_token_names_a_published_key(client):
    kids = {key["kid"] for key in client.get("/jwks.json").get_json()["keys"]}
    for client_id in ("test", "rp-es"):
        token = decode(client, tokens_for(client, client_id=client_id)["id_token"])
        assert token.header["kid"] in kids
