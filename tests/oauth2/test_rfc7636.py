"""Proof Key for Code Exchange (RFC 7636): the verifier binds the code to its requester."""

from __future__ import annotations

import pytest

from tests.conftest import (
    CHALLENGE,
    REDIRECT,
    VERIFIER,
    authorize_url,
    consent,
    get_code,
    location_params,
    login,
    table,
)
from tests.oauth2.conftest import (
    error_of,
    open_app,
    profile_status,
    redeem,
    redirect_error,
    refresh,
    unchanged,
)


def public_redeem(client, code: str, **extra):
    """Redeem as the public client ``spa``: client_id in the body, no secret."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "spa",
        **extra,
    }
    return client.post("/token", data=data)


def test_matching_s256_verifier_redeems_the_code(client):
    code = get_code(client, code_challenge=CHALLENGE, code_challenge_method="S256")
    response = redeem(client, code, code_verifier=VERIFIER)
    assert response.status_code == 200, response.get_json()
    assert profile_status(client, response.get_json()["access_token"]) == 200


@pytest.mark.parametrize(
    "pkce",
    [{"code_challenge": VERIFIER, "code_challenge_method": "plain"}, {"code_challenge": VERIFIER}],
    ids=["plain", "default-plain"],
)
def test_plain_is_refused_unless_allowed(client, state, pkce):
    login(client)
    with unchanged(state):
        response = client.get(authorize_url(**pkce))
    assert response.status_code == 302
    assert location_params(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("challenge", "method"),
    [(VERIFIER, "plain"), (VERIFIER, None)],
    ids=["plain", "default-plain"],
)
def test_matching_plain_verifier_redeems_the_code_when_allowed(
    tmp_path, dummy_site, challenge, method
):
    with open_app(tmp_path, dummy_site, auth_server={"allow_plain_pkce": True}) as app:
        client = app.test_client()
        extra = {"code_challenge": challenge}
        if method:
            extra["code_challenge_method"] = method
        code = get_code(client, **extra)
        response = redeem(client, code, code_verifier=VERIFIER)
        assert response.status_code == 200, response.get_json()
        assert profile_status(client, response.get_json()["access_token"]) == 200


BAD_VERIFIERS = [
    # (id, code_challenge at /authorize (None: none), code_verifier at /token (None: none))
    ("wrong-verifier", CHALLENGE, "w" * 43),
    ("challenge-without-verifier", CHALLENGE, None),
    ("verifier-without-challenge", None, VERIFIER),
    ("malformed-verifier", CHALLENGE, "short"),
    ("challenge-as-verifier", CHALLENGE, CHALLENGE),
]


@pytest.mark.parametrize(("challenge", "verifier"), table(BAD_VERIFIERS))
def test_verifier_mismatch_is_invalid_grant_and_leaves_the_code(client, state, challenge, verifier):
    pkce = {"code_challenge": challenge, "code_challenge_method": "S256"} if challenge else {}
    code = get_code(client, **pkce)
    with unchanged(state):
        response = redeem(client, code, **({"code_verifier": verifier} if verifier else {}))
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"
    good = {"code_verifier": VERIFIER} if challenge else {}
    assert redeem(client, code, **good).status_code == 200


# -- public clients ---------------------------------------------------------------------
def test_public_client_must_send_a_challenge(client, state):
    login(client)
    with unchanged(state):
        response = client.get(authorize_url(client_id="spa"))
    assert redirect_error(response) == "invalid_request"
    assert location_params(response)["state"] == "xyz"


def test_public_client_redeems_with_the_verifier_and_no_secret(client):
    code = get_code(client, client_id="spa", code_challenge=CHALLENGE, code_challenge_method="S256")
    response = public_redeem(client, code, code_verifier=VERIFIER)
    assert response.status_code == 200, response.get_json()
    tokens = response.get_json()
    assert profile_status(client, tokens["access_token"]) == 200
    renewed = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "spa",
        },
    )
    assert renewed.status_code == 200, renewed.get_json()


@pytest.mark.parametrize(
    ("extra", "status", "error"),
    [
        ({}, 400, "invalid_grant"),
        ({"code_verifier": "w" * 43}, 400, "invalid_grant"),
        ({"code_verifier": VERIFIER, "client_secret": "anything"}, 401, "invalid_client"),
        ({"code_verifier": VERIFIER, "client_id": "test"}, 401, "invalid_client"),
    ],
    ids=["no-verifier", "wrong-verifier", "with-a-secret", "as-another-client"],
)
def test_public_client_without_proof_gets_nothing(client, state, extra, status, error):
    code = get_code(client, client_id="spa", code_challenge=CHALLENGE, code_challenge_method="S256")
    with unchanged(state):
        response = public_redeem(client, code, **extra)
    assert response.status_code == status
    assert error_of(response) == error
    assert public_redeem(client, code, code_verifier=VERIFIER).status_code == 200


# -- configuration ----------------------------------------------------------------------
@pytest.fixture
def strict_app(tmp_path, dummy_site):
    with open_app(
        tmp_path, dummy_site, auth_server={"require_pkce": True, "allow_plain_pkce": False}
    ) as app:
        yield app


@pytest.mark.parametrize(
    "pkce",
    [
        {},
        {"code_challenge": VERIFIER, "code_challenge_method": "plain"},
        {"code_challenge": VERIFIER},
    ],
    ids=["no-challenge", "plain", "default-plain"],
)
def test_strict_config_requires_s256_of_every_client(strict_app, pkce):
    client = strict_app.test_client()
    login(client)
    response = client.get(authorize_url(**pkce))
    assert redirect_error(response) == "invalid_request"


def test_strict_config_accepts_s256_and_advertises_only_it(strict_app):
    client = strict_app.test_client()
    login(client)
    response = consent(
        client, authorize_url(code_challenge=CHALLENGE, code_challenge_method="S256")
    )
    code = location_params(response)["code"]
    assert redeem(client, code, code_verifier=VERIFIER).status_code == 200
    metadata = client.get("/.well-known/oauth-authorization-server").get_json()
    assert metadata["code_challenge_methods_supported"] == ["S256"]


def test_refresh_of_a_pkce_grant_needs_no_verifier(client):
    code = get_code(client, code_challenge=CHALLENGE, code_challenge_method="S256")
    tokens = redeem(client, code, code_verifier=VERIFIER).get_json()
    assert refresh(client, tokens["refresh_token"]).status_code == 200
