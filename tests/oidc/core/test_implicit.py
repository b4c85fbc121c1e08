"""The implicit flow's ID Tokens (OpenID Connect Core §3.2): ``id_token`` and
``id_token token``, for clients allowed implicit; ``nonce`` required."""

from __future__ import annotations

import time

import pytest
from authlib.oidc.core import ImplicitIDToken

from tests.conftest import authorize_url, bearer, consent, location_params, login
from tests.oauth2.conftest import redirect_error, snapshot
from tests.oidc.core_helpers import NONCE, decode, half_hash


def implicit(client, response_type: str, client_id="sp-demo", **params) -> dict[str, str]:
    login(client)
    url = authorize_url(client_id=client_id, response_type=response_type, **params)
    response = consent(client, url)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert "?" not in response.headers["Location"]  # all of it in the fragment
    return location_params(response, fragment=True)


def test_id_token_alone(app, client):
    before = snapshot(app.extensions["oauth2"])["tokens"]
    found = implicit(client, "id_token", scope="openid profile email", nonce=NONCE)
    assert "access_token" not in found and found["state"] == "xyz"
    token = decode(client, found["id_token"])
    claims = token.claims
    assert claims["nonce"] == NONCE and claims["aud"] == ["sp-demo"]
    assert "at_hash" not in claims
    # No access token: the claims go in the ID Token (§5.4).
    assert claims["name"] == "alice" and "email" in claims
    assert claims["auth_time"] <= claims["iat"] and claims["sid"]
    assert snapshot(app.extensions["oauth2"])["tokens"] == before  # nothing stored
    ImplicitIDToken(claims, token.header, None, {"nonce": NONCE}).validate(now=int(time.time()))


@pytest.mark.parametrize("response_type", ["id_token token", "token id_token"])
def test_id_token_and_access_token(client, response_type):
    found = implicit(client, response_type, scope="openid profile read-only", nonce=NONCE)
    claims = decode(client, found["id_token"]).claims
    assert claims["at_hash"] == half_hash(found["access_token"])
    assert claims["nonce"] == NONCE
    assert found["token_type"] == "Bearer"
    info = client.get("/userinfo", headers=bearer(found["access_token"]))
    assert info.status_code == 200 and info.get_json()["sub"] == claims["sub"]
    assert client.get("/api/profile", headers=bearer(found["access_token"])).status_code == 200


def test_a_public_implicit_only_client(client):
    found = implicit(client, "id_token", client_id="old-implicit", scope="openid", nonce=NONCE)
    assert decode(client, found["id_token"]).claims["aud"] == ["old-implicit"]


@pytest.mark.parametrize("response_type", ["id_token", "id_token token"])
def test_nonce_is_required(client, response_type):
    login(client)
    url = authorize_url(client_id="sp-demo", response_type=response_type, scope="openid")
    assert redirect_error(client.get(url), fragment=True) == "invalid_request"


def test_openid_scope_is_required(client):
    login(client)
    url = authorize_url(
        client_id="sp-demo", response_type="id_token", scope="read-only", nonce=NONCE
    )
    assert redirect_error(client.get(url), fragment=True) == "invalid_scope"


def test_a_client_without_implicit_may_not(client):
    login(client)
    url = authorize_url(client_id="rp", response_type="id_token", scope="openid", nonce=NONCE)
    assert redirect_error(client.get(url), fragment=True) == "unauthorized_client"


@pytest.mark.parametrize("response_type", ["code id_token", "code token", "id_token code token"])
def test_hybrid_response_types_are_unsupported(client, response_type):
    login(client)
    url = authorize_url(response_type=response_type, scope="openid", nonce=NONCE)
    assert redirect_error(client.get(url)) == "unsupported_response_type"


def test_deny_sends_access_denied_in_the_fragment(client):
    login(client)
    url = authorize_url(client_id="sp-demo", response_type="id_token", scope="openid", nonce="n")
    response = consent(client, url, allow=False)
    assert location_params(response, fragment=True)["error"] == "access_denied"
