"""OAuth 2.0 Token Revocation (RFC 7009)."""

from __future__ import annotations

import json

import pytest

from app import create_app
from app.secrets_hash import token_digest
from app.storage import StorageUnavailable
from tests.backends import redis_url, require_service
from tests.conftest import base_config, basic, table
from tests.oauth2.conftest import error_of, issue_tokens, profile_status, refresh, unchanged


def revoke(client, token: str, client_id="test", secret="hunter2", **extra):
    data = {"token": token, **extra}
    return client.post("/revoke", data=data, headers=basic(client_id, secret))


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
def test_revoking_the_access_token_ends_it_and_its_refresh_token(client, hint):
    tokens = issue_tokens(client)
    extra = {"token_type_hint": hint} if hint else {}
    response = revoke(client, tokens["access_token"], **extra)
    assert response.status_code == 200
    assert profile_status(client, tokens["access_token"]) == 401
    assert error_of(refresh(client, tokens["refresh_token"])) == "invalid_grant"


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
def test_revoking_the_refresh_token_ends_its_access_token(client, hint):
    tokens = issue_tokens(client)
    extra = {"token_type_hint": hint} if hint else {}
    assert revoke(client, tokens["refresh_token"], **extra).status_code == 200
    assert error_of(refresh(client, tokens["refresh_token"])) == "invalid_grant"
    assert profile_status(client, tokens["access_token"]) == 401


def test_revoking_leaves_other_grants_alone(client):
    kept, gone = issue_tokens(client), issue_tokens(client)
    revoke(client, gone["access_token"])
    assert profile_status(client, kept["access_token"]) == 200


def test_client_may_authenticate_in_the_body(client):
    tokens = issue_tokens(client)
    response = client.post(
        "/revoke",
        data={"token": tokens["access_token"], "client_id": "test", "client_secret": "hunter2"},
    )
    assert response.status_code == 200
    assert profile_status(client, tokens["access_token"]) == 401


def test_unknown_token_answers_200_and_changes_nothing(client, state):
    issue_tokens(client)
    with unchanged(state):
        response = revoke(client, "not-a-token")
    assert response.status_code == 200


def test_another_clients_token_is_not_revoked(client, state):
    tokens = issue_tokens(client)
    with unchanged(state):
        response = revoke(client, tokens["access_token"], client_id="sp-demo")
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"
    assert profile_status(client, tokens["access_token"]) == 200


BAD_REVOCATIONS = [
    # (id, client_id, secret, fields over the access token's (None removes), status, error)
    ("wrong-secret", "test", "wrong", {}, 401, "invalid_client"),
    ("unknown-client", "nope", "hunter2", {}, 401, "invalid_client"),
    ("no-client-auth", None, None, {}, 401, "invalid_client"),
    ("missing-token", "test", "hunter2", {"token": None}, 400, "invalid_request"),
    ("bad-hint", "test", "hunter2", {"token_type_hint": "id_token"}, 400, "unsupported_token_type"),
]


@pytest.mark.parametrize(("client_id", "secret", "form", "status", "error"), table(BAD_REVOCATIONS))
def test_bad_revocation_request_changes_nothing(
    client, state, client_id, secret, form, status, error
):
    tokens = issue_tokens(client)
    data = {k: v for k, v in {"token": tokens["access_token"], **form}.items() if v is not None}
    headers = basic(client_id, secret) if client_id else {}
    with unchanged(state):
        response = client.post("/revoke", data=data, headers=headers)
    assert response.status_code == status
    assert error_of(response) == error
    assert profile_status(client, tokens["access_token"]) == 200


@pytest.mark.redis
@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_with_the_token_cache_a_retry_after_a_failed_publish_announces_again(
    tmp_path, dummy_site, closing, which
):
    """Review M3: the first revocation writes, its announcement fails (a 5xx, after
    three tries); the retry finds the token gone, answers 200 and announces it again."""
    require_service("redis", redis_url())
    config = base_config(tmp_path, dummy_site, token_cache={"enabled": True})
    config["storage"] = {"default": config["storage"]["default"], "tokens": redis_url()}
    config["storage"]["refresh_tokens"] = redis_url()
    app = closing(create_app(config))
    client = app.test_client()
    cache = app.extensions["oauth2"].grants.cache
    assert cache is not None
    tokens = issue_tokens(client)
    published: list[str] = []
    tries = {"left": 3}

    def publish(payload: str) -> None:
        if tries["left"]:
            tries["left"] -= 1
            raise StorageUnavailable("redis: down")
        published.append(payload)

    cache.channel.publish = publish
    assert revoke(client, tokens[which]).status_code >= 500
    assert published == [] and tries["left"] == 0
    assert revoke(client, tokens[which]).status_code == 200
    assert len(published) == 1
    assert token_digest(tokens["access_token"]) in json.loads(published[0])["k"]
    assert profile_status(client, tokens["access_token"]) == 401
    cache.close()
