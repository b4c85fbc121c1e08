"""``dpop_bound_access_tokens`` (RFC 9449 §5.2) wherever a client is described: the
clients file, the admin API's metadata and ``oauth2-server clients add``."""

from __future__ import annotations

import json

import pytest

from tests.conftest import basic, bearer
from tests.oauth2.conftest import error_of
from tests.oauth2.dpop_helpers import Prover
from tests.test_admin_api import ADMIN, admin_token
from tests.test_cli import add, config_dir  # noqa: F401 - the fixture

MACHINE = {"client_name": "Batch job", "grant_types": ["client_credentials"], "scope": "read-only"}


def token(http, client_id: str, secret: str, prover: Prover | None = None):
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    headers = {**basic(client_id, secret), **(prover.headers() if prover else {})}
    return http.post("/token", data=data, headers=headers)


@pytest.mark.parametrize("flag", [True, False])
def test_the_admin_api_keeps_the_flag_and_the_token_endpoint_obeys_it(client, flag) -> None:
    headers = bearer(admin_token(client))
    created = client.post(
        ADMIN, json={**MACHINE, "dpop_bound_access_tokens": flag}, headers=headers
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["dpop_bound_access_tokens"] is flag
    shown = client.get(f"{ADMIN}/{body['client_id']}", headers=headers).get_json()
    assert shown["dpop_bound_access_tokens"] is flag
    plain = token(client, body["client_id"], body["client_secret"])
    if flag:
        assert plain.status_code == 400 and error_of(plain) == "invalid_dpop_proof"
    else:
        assert plain.status_code == 200 and plain.get_json()["token_type"] == "Bearer"
    bound = token(client, body["client_id"], body["client_secret"], Prover())
    assert bound.status_code == 200 and bound.get_json()["token_type"] == "DPoP"


def test_the_admin_api_refuses_a_flag_that_is_not_a_boolean(client) -> None:
    headers = bearer(admin_token(client))
    refused = client.post(
        ADMIN, json={**MACHINE, "dpop_bound_access_tokens": "yes"}, headers=headers
    )
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_client_metadata"


def test_clients_add_sets_the_flag(tmp_path, config_dir) -> None:  # noqa: F811
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients, "--dpop-bound-access-tokens") == 0
    [entry] = json.loads(clients.read_text())
    assert entry["dpop_bound_access_tokens"] is True
