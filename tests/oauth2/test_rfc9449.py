"""DPoP (RFC 9449) end to end: tokens bound at /token, proofs checked at /api and UserInfo."""

from __future__ import annotations

import pytest

from tests.conftest import CHALLENGE, REDIRECT, VERIFIER, basic, bearer, get_code
from tests.factories import make_client
from tests.oauth2.conftest import EXTRA_CLIENTS, error_of, open_app, redeem, unchanged
from tests.oauth2.dpop_helpers import Prover


def client_credentials(http, prover: Prover | None, **headers):
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    if prover is not None:
        headers.update(prover.headers())
    return http.post("/token", data=data, headers={**basic(), **headers})


def public_code(http, **authorize) -> str:
    return get_code(
        http, client_id="spa", code_challenge=CHALLENGE, code_challenge_method="S256", **authorize
    )


def public_token(http, code: str, prover: Prover | None, **extra):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "spa",
        "code_verifier": VERIFIER,
        **extra,
    }
    return http.post("/token", data=data, headers=prover.headers() if prover else {})


def public_refresh(http, refresh_token: str, prover: Prover | None):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "spa"}
    return http.post("/token", data=data, headers=prover.headers() if prover else {})


def introspect(http, token: str) -> dict:
    return http.post("/introspect", data={"token": token}, headers=basic()).get_json()


def test_client_credentials_with_a_proof_issue_a_dpop_token(client) -> None:
    prover = Prover()
    answer = client_credentials(client, prover)
    assert answer.status_code == 200, answer.get_json()
    token = answer.get_json()
    assert token["token_type"] == "DPoP"
    facts = introspect(client, token["access_token"])
    assert facts["active"] is True
    assert facts["token_type"] == "DPoP"
    assert facts["cnf"] == {"jkt": prover.jkt}


def test_without_a_proof_tokens_stay_bearer(client) -> None:
    token = client_credentials(client, None).get_json()
    assert token["token_type"] == "Bearer"
    facts = introspect(client, token["access_token"])
    assert "cnf" not in facts and facts["token_type"] == "Bearer"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "PS256", "RS256", "EdDSA", "Ed25519"])
def test_every_allowed_algorithm_binds(tmp_path, dummy_site, alg) -> None:
    algorithms = ["ES256", "ES384", "PS256", "RS256", "EdDSA", "Ed25519"]
    with open_app(tmp_path, dummy_site, dpop={"algorithms": algorithms}) as app:
        prover = Prover.of(alg)
        answer = client_credentials(app.test_client(), prover)
        assert answer.status_code == 200, answer.get_json()
        assert introspect(app.test_client(), answer.get_json()["access_token"])["cnf"] == {
            "jkt": prover.jkt
        }


def test_code_flow_token_works_at_api_and_userinfo_with_proofs_only(client) -> None:
    prover = Prover()
    code = get_code(client, scope="openid read-only")
    answer = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic(), **prover.headers()},
    )
    assert answer.status_code == 200, answer.get_json()
    token = answer.get_json()
    assert token["token_type"] == "DPoP" and "id_token" in token
    access = token["access_token"]

    profile = client.get("/api/profile", headers=prover.headers("GET", "/api/profile", access))
    assert profile.status_code == 200, profile.get_json()
    assert "id" in profile.get_json()
    claims = client.get("/userinfo", headers=prover.headers("GET", "/userinfo", access))
    assert claims.status_code == 200, claims.get_json()
    assert claims.get_json()["sub"]
    posted = client.post("/userinfo", headers=prover.headers("POST", "/userinfo", access))
    assert posted.status_code == 200, posted.get_json()

    # RFC 9449 §7.2: the bound token is no bearer token, anywhere.
    as_bearer = client.get("/api/profile", headers=bearer(access))
    assert as_bearer.status_code == 401
    assert 'error="invalid_token"' in as_bearer.headers["WWW-Authenticate"]
    assert client.get("/userinfo", headers=bearer(access)).status_code == 401
    # Nor with a good proof beside the Bearer scheme.
    mixed = {**bearer(access), "DPoP": prover.proof("GET", "/api/profile", access)}
    assert client.get("/api/profile", headers=mixed).status_code == 401


def test_a_confidential_clients_refresh_token_is_not_bound(client) -> None:
    prover = Prover()
    code = get_code(client, scope="read-only")
    token = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic(), **prover.headers()},
    ).get_json()
    assert "cnf" not in introspect(client, token["refresh_token"])
    # Its refresh without a proof gets a bearer token; with another key, one bound to it.
    other = Prover()
    again = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        headers={**basic(), **other.headers()},
    ).get_json()
    assert again["token_type"] == "DPoP"
    assert introspect(client, again["access_token"])["cnf"] == {"jkt": other.jkt}


def test_a_public_clients_refresh_token_is_bound_to_the_key(client, state) -> None:
    prover = Prover()
    token = public_token(client, public_code(client), prover).get_json()
    assert token["token_type"] == "DPoP"
    record = state.grants.find_refresh(token["refresh_token"]).record
    assert record["jkt"] == prover.jkt

    with unchanged(state):
        missing = public_refresh(client, token["refresh_token"], None)
        assert missing.status_code == 400 and error_of(missing) == "invalid_dpop_proof"
        swapped = public_refresh(client, token["refresh_token"], Prover())
        assert swapped.status_code == 400 and error_of(swapped) == "invalid_grant"

    renewed = public_refresh(client, token["refresh_token"], prover)
    assert renewed.status_code == 200, renewed.get_json()
    fresh = renewed.get_json()
    assert fresh["token_type"] == "DPoP"
    assert state.grants.find_refresh(fresh["refresh_token"]).record["jkt"] == prover.jkt
    access = fresh["access_token"]
    profile = client.get("/api/profile", headers=prover.headers("GET", "/api/profile", access))
    assert profile.status_code == 200


def test_dpop_jkt_at_authorize_binds_the_code(client, state) -> None:
    prover = Prover()
    code = public_code(client, dpop_jkt=prover.jkt)
    with unchanged(state):
        assert error_of(public_token(client, code, None)) == "invalid_dpop_proof"
        assert error_of(public_token(client, code, Prover())) == "invalid_grant"
    answer = public_token(client, code, prover)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["token_type"] == "DPoP"


@pytest.fixture
def strict(tmp_path, dummy_site):
    clients = [*EXTRA_CLIENTS, make_client("bound", dpop_bound_access_tokens=True)]
    with open_app(tmp_path, dummy_site, clients=clients) as app:
        yield app


def test_a_client_that_requires_dpop_gets_no_token_without_a_proof(strict) -> None:
    http = strict.test_client()
    state = strict.extensions["oauth2"]
    assert state.clients.get("bound").dpop_bound_access_tokens
    code = get_code(http, client_id="bound")
    with unchanged(state):
        refused = redeem(http, code, "bound")
    assert refused.status_code == 400 and error_of(refused) == "invalid_dpop_proof"
    assert refused.headers["WWW-Authenticate"].startswith("DPoP ")
    answer = http.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic("bound"), **Prover().headers()},
    )
    assert answer.status_code == 200 and answer.get_json()["token_type"] == "DPoP"


def test_the_server_may_require_dpop_of_every_client(tmp_path, dummy_site) -> None:
    with open_app(tmp_path, dummy_site, dpop={"required": True}) as app:
        http = app.test_client()
        refused = client_credentials(http, None)
        assert refused.status_code == 400 and error_of(refused) == "invalid_dpop_proof"
        assert client_credentials(http, Prover()).status_code == 200


def test_dpop_switched_off_ignores_proofs_and_refuses_the_scheme(tmp_path, dummy_site) -> None:
    with open_app(tmp_path, dummy_site, dpop={"enabled": False}) as app:
        http = app.test_client()
        prover = Prover()
        token = client_credentials(http, prover).get_json()
        assert token["token_type"] == "Bearer"
        meta = http.get("/.well-known/oauth-authorization-server").get_json()
        assert "dpop_signing_alg_values_supported" not in meta
        access = token["access_token"]
        dpop = http.get("/api/profile", headers=prover.headers("GET", "/api/profile", access))
        assert dpop.status_code == 401


def test_metadata_lists_the_proof_algorithms(client) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        meta = client.get(path).get_json()
        assert meta["dpop_signing_alg_values_supported"] == [
            "ES256",
            "EdDSA",
            "Ed25519",
            "PS256",
            "RS256",
        ]


@pytest.mark.parametrize(
    "dpop",
    [
        {"algorithms": ["HS256"]},
        {"algorithms": ["none"]},
        {"algorithms": []},
        {"iat_window": 0},
        {"nonce": "yes"},
        {"nonce_step": 1},
        {"unknown": True},
    ],
)
def test_bad_dpop_settings_are_named(dpop) -> None:
    from app.settings import ConfigError, Settings

    with pytest.raises(ConfigError, match="dpop"):
        Settings.load({"dpop": dpop}, environ={})


def test_a_bound_admin_token_is_refused_as_a_bearer_token(client, state) -> None:
    """RFC 9449 §7.2: a DPoP-bound token presented as Bearer is invalid at /admin too."""
    prover = Prover()
    data = {"grant_type": "client_credentials", "scope": "admin"}
    answer = client.post("/token", data=data, headers={**basic("admin"), **prover.headers()})
    assert answer.get_json()["token_type"] == "DPoP", answer.get_json()
    token = answer.get_json()["access_token"]
    with unchanged(state):
        refused = client.get("/admin/clients", headers=bearer(token))
    assert refused.status_code == 401, refused.get_json()
    assert refused.get_json()["error"] == "invalid_token"
    plain = client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    assert client.get("/admin/clients", headers=bearer(plain)).status_code == 200


def test_no_implicit_access_token_for_a_client_that_requires_dpop(
    tmp_path, dummy_site, monkeypatch
) -> None:
    """An implicit grant's token leaves unbound through the front channel: refused. Such
    a client can no longer be made; one stored before that rule still loads, and the
    authorization endpoint refuses it."""
    from app import client_store
    from tests.conftest import authorize_url, login
    from tests.oauth2.conftest import redirect_error, snapshot

    grant_types = ["authorization_code", "implicit"]
    clients = [*EXTRA_CLIENTS, make_client("loose", grant_types=grant_types)]
    with open_app(tmp_path, dummy_site, clients=clients) as app:
        http, state = app.test_client(), app.extensions["oauth2"]
        with monkeypatch.context() as before_the_rule:
            before_the_rule.setattr(client_store, "front_channel_dpop_problem", lambda _: None)
            record, _ = state.clients.store.create(
                {
                    "client_name": "Bound",
                    "grant_types": grant_types,
                    "redirect_uris": [REDIRECT],
                    "scope": "openid read-only",
                    "dpop_bound_access_tokens": True,
                },
                client_id="bound",
            )
        assert state.clients.get("bound").dpop_bound_access_tokens
        login(http)
        before = snapshot(state)
        for response_type in ("token", "id_token token"):
            url = authorize_url(
                client_id="bound", response_type=response_type, scope="openid", nonce="n"
            )
            assert redirect_error(http.get(url), fragment=True) == "unauthorized_client"
        assert snapshot(state) == before
        loose = http.get(authorize_url(client_id="loose", response_type="token"))
        assert loose.status_code == 200  # the consent page: implicit stays for the others


def test_no_implicit_access_token_when_the_server_requires_dpop(tmp_path, dummy_site) -> None:
    from tests.conftest import authorize_url, login
    from tests.oauth2.conftest import redirect_error

    with open_app(tmp_path, dummy_site, dpop={"required": True}) as app:
        http = app.test_client()
        login(http)
        refused = http.get(authorize_url(response_type="token"))
        assert redirect_error(refused, fragment=True) == "unsupported_response_type"
