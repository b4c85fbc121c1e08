"""ID Tokens of the authorization code and refresh grants (OpenID Connect Core §3.1, §12.2)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from authlib.oidc.core import CodeIDToken

from app.oidc import grants as oidc_grants
from tests.conftest import authorize_url, basic, consent, location_params
from tests.factories import REDIRECT, login
from tests.oauth2.conftest import redirect_error, refresh
from tests.oidc.core_helpers import NONCE, decode, half_hash, open_rp_app, tokens_for


def test_id_token_claims_and_signature(app, client):
    tokens = tokens_for(client, scope="openid profile email read-only", nonce=NONCE)
    token = decode(client, tokens["id_token"])
    claims = token.claims
    issuer = app.extensions["oauth2"].settings.issuer
    assert token.header["alg"] == "RS256"
    assert token.header["kid"] in {k["kid"] for k in client.get("/jwks.json").get_json()["keys"]}
    assert claims["iss"] == issuer
    assert claims["aud"] == ["test"]
    assert claims["nonce"] == NONCE
    assert claims["at_hash"] == half_hash(tokens["access_token"])
    assert claims["amr"] == ["pwd"]
    assert claims["sid"]
    assert claims["exp"] - claims["iat"] == app.extensions["oauth2"].settings.oidc.id_token_ttl
    assert claims["sub"] == app.extensions["oauth2"].users.get(claims["sub"]).id
    assert claims["name"] == "alice"
    assert claims["email"].endswith("@users.example.com")
    assert claims["email_verified"] is False
    # Authlib's relying-party checks accept it as a code-flow ID Token.
    params = {"nonce": NONCE, "access_token": tokens["access_token"], "client_id": "test"}
    checked = CodeIDToken(
        claims, token.header, {"iss": {"essential": True, "value": issuer}}, params
    )
    checked.validate(now=int(time.time()))


def test_claims_follow_the_scope(client):
    claims = decode(client, tokens_for(client, scope="openid")["id_token"]).claims
    assert "name" not in claims and "email" not in claims
    claims = decode(client, tokens_for(client, scope="openid email")["id_token"]).claims
    assert "email" in claims and "name" not in claims


def test_without_openid_there_is_no_id_token(client):
    assert "id_token" not in tokens_for(client, scope="read-only")


def test_without_a_nonce_the_token_has_none(client):
    assert "nonce" not in decode(client, tokens_for(client)["id_token"]).claims


def test_auth_time_is_the_sign_in_time_not_the_issue_time(client, monkeypatch):
    login(client)
    signed_in = int(time.time())
    later = SimpleNamespace(time=lambda: time.time() + 600)
    monkeypatch.setattr(oidc_grants, "time", later)  # iat and exp: ten minutes on
    claims = decode(client, tokens_for(client)["id_token"]).claims
    assert claims["iat"] >= signed_in + 600
    assert signed_in - 1 <= claims["auth_time"] <= signed_in + 1


def test_a_new_sign_in_gives_a_new_sid_and_auth_time(client):
    first = decode(client, tokens_for(client)["id_token"]).claims
    time.sleep(1.01)
    login(client)  # signing in again starts a new session
    second = decode(client, tokens_for(client)["id_token"]).claims
    assert second["sid"] != first["sid"]
    assert second["auth_time"] > first["auth_time"]


def test_es256_client(client):
    tokens = tokens_for(client, client_id="rp-es")
    token = decode(client, tokens["id_token"])
    assert token.header["alg"] == "ES256"
    assert token.claims["at_hash"] == half_hash(tokens["access_token"], "ES256")


def test_refresh_returns_a_new_id_token_of_the_same_sign_in(client):
    tokens = tokens_for(client, scope="openid profile", nonce=NONCE)
    first = decode(client, tokens["id_token"]).claims
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 200, response.get_json()
    renewed = response.get_json()
    claims = decode(client, renewed["id_token"]).claims
    for name in ("iss", "sub", "aud", "auth_time", "sid", "amr", "name"):
        assert claims[name] == first[name], name
    assert "nonce" not in claims  # §12.2: no nonce on refresh
    assert claims["at_hash"] == half_hash(renewed["access_token"])
    # and again, from the rotated refresh token
    again = refresh(client, renewed["refresh_token"]).get_json()
    assert decode(client, again["id_token"]).claims["auth_time"] == first["auth_time"]


def test_refresh_narrowed_without_openid_has_no_id_token(client):
    tokens = tokens_for(client, scope="openid read-only")
    response = refresh(client, tokens["refresh_token"], scope="read-only")
    assert response.status_code == 200
    assert "id_token" not in response.get_json()


def test_a_client_without_openid_is_refused_openid(client):
    login(client)
    response = client.get(authorize_url(client_id="no-oidc", scope="openid"))
    assert redirect_error(response) == "invalid_scope"


def test_an_original_format_client_may_use_openid(client):
    """``test`` and ``sp-demo`` come from the original's clients file: no ``scopes``."""
    for client_id in ("test", "sp-demo"):
        claims = decode(client, tokens_for(client, client_id=client_id)["id_token"]).claims
        assert claims["aud"] == [client_id]


def test_a_too_long_nonce_is_invalid_request(client):
    login(client)
    response = client.get(authorize_url(scope="openid", nonce="n" * 513))
    assert redirect_error(response) == "invalid_request"


def test_a_nonce_may_be_used_again(client):
    """The server does nothing else with a nonce (§3.1.2.2): the relying party checks it."""
    for _ in range(2):
        assert decode(client, tokens_for(client, nonce=NONCE)["id_token"]).claims["nonce"] == NONCE


def test_the_code_is_useless_once_redeemed_even_with_openid(client):
    login(client)
    response = consent(client, authorize_url(scope="openid"))
    code = location_params(response)["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    assert client.post("/token", data=data, headers=basic()).status_code == 200
    again = client.post("/token", data=data, headers=basic())
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_a_storage_outage_at_signing_keeps_the_code(app, client, monkeypatch):
    """The signing key is read before the code is spent: a failure leaves it usable."""
    from app.storage import StorageUnavailable

    login(client)
    code = location_params(consent(client, authorize_url(scope="openid")))["code"]
    keys = app.extensions["oauth2"].keys

    def down(alg="RS256"):
        raise StorageUnavailable("keys down")

    monkeypatch.setattr(keys, "signing_key", down)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    assert client.post("/token", data=data, headers=basic()).status_code == 503
    monkeypatch.undo()
    response = client.post("/token", data=data, headers=basic())
    assert response.status_code == 200 and "id_token" in response.get_json()


def test_a_refresh_reads_the_signing_key_first_only_when_it_may_sign(app, client, monkeypatch):
    """With ``openid`` a refresh reads the key before the token is spent (an outage leaves
    it usable); without, it reads no key at all."""
    from app.storage import StorageUnavailable

    keys = app.extensions["oauth2"].keys
    with_openid = tokens_for(client, scope="openid")["refresh_token"]
    plain = tokens_for(client, scope="read-only")["refresh_token"]

    def down(alg="RS256"):
        raise StorageUnavailable("keys down")

    monkeypatch.setattr(keys, "signing_key", down)
    assert refresh(client, with_openid).status_code == 503
    assert refresh(client, plain).status_code == 200
    monkeypatch.undo()
    response = refresh(client, with_openid)
    assert response.status_code == 200 and "id_token" in response.get_json()


def test_the_consent_page_describes_the_oidc_scopes(client):
    login(client)
    page = client.get(authorize_url(scope="openid email read-only")).get_data(as_text=True)
    assert "Sign you in with your account" in page
    assert "See your email address" in page
    assert "Read your profile" in page  # the adapter's own wording


def test_the_signing_key_is_imported_once(app, client, monkeypatch):
    """Importing a private RSA key costs milliseconds: it is done once per key."""
    from app.oidc import keys as ring

    imported = []
    real = ring._import

    def counting(jwk):
        imported.append(jwk["alg"])
        return real(jwk)

    monkeypatch.setattr(ring, "_import", counting)
    app.extensions["oauth2"].keys._imported.clear()  # as a fresh process
    for _ in range(3):
        decode(client, tokens_for(client)["id_token"])
    assert imported == ["RS256"]


def test_authlib_never_logs_at_debug(tmp_path, dummy_site):
    """Authlib's grants log whole tokens at DEBUG (LIBRARIES.md §1, pitfall 6)."""
    import logging

    with open_rp_app(tmp_path, dummy_site, logging={"level": "DEBUG"}):
        assert not logging.getLogger("authlib.oidc.core.grants.code").isEnabledFor(logging.DEBUG)
