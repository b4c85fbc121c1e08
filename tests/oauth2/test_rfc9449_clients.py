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


IMPLICIT = {
    "client_name": "Front channel",
    "grant_types": ["authorization_code", "implicit"],
    "redirect_uris": ["https://app.example/cb"],
    "scope": "read-only",
    "dpop_bound_access_tokens": True,
}


def test_the_admin_api_refuses_a_bound_client_of_the_implicit_grant(client) -> None:
    """RFC 9449 §5.2 binds each of its access tokens; the implicit grant's leaves through
    the front channel bound to nothing: such a client is refused when made or changed."""
    from tests.oauth2.conftest import snapshot

    state = client.application.extensions["oauth2"]
    headers = bearer(admin_token(client))
    before = snapshot(state)
    refused = client.post(ADMIN, json=IMPLICIT, headers=headers)
    assert refused.status_code == 400, refused.get_json()
    assert refused.get_json()["error"] == "invalid_client_metadata"
    assert "dpop_bound_access_tokens" in refused.get_json()["error_description"]
    assert "client 'checked'" not in refused.get_json()["error_description"]
    assert snapshot(state) == before
    loose = client.post(
        ADMIN, json={**IMPLICIT, "dpop_bound_access_tokens": False}, headers=headers
    )
    assert loose.status_code == 201
    made = loose.get_json()["client_id"]
    changed = client.put(f"{ADMIN}/{made}", json=IMPLICIT, headers=headers)
    assert changed.status_code == 400
    assert changed.get_json()["error"] == "invalid_client_metadata"
    shown = client.get(f"{ADMIN}/{made}", headers=headers).get_json()
    assert shown["dpop_bound_access_tokens"] is False
    code_only = {**IMPLICIT, "grant_types": ["authorization_code"]}
    assert client.put(f"{ADMIN}/{made}", json=code_only, headers=headers).status_code == 200


def test_the_clients_file_refuses_a_bound_client_of_the_implicit_grant(tmp_path) -> None:
    from app.clients import ClientFileError, load_clients_file

    entry = {
        "client_id": "front",
        "client_secret_hash": "sha256$" + "0" * 64,
        "redirect_uris": ["https://app.example/cb"],
        "grant_types": ["implicit"],
        "dpop_bound_access_tokens": True,
    }
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ClientFileError, match="'front'.dpop_bound_access_tokens"):
        load_clients_file(path, ["read-only"])
    path.write_text(json.dumps([{**entry, "grant_types": ["authorization_code"]}]))
    assert load_clients_file(path, ["read-only"])["front"].dpop_bound_access_tokens


def test_clients_add_refuses_a_bound_client_of_the_implicit_grant(
    tmp_path,
    config_dir,  # noqa: F811
    capsys,
) -> None:
    clients = tmp_path / "clients.json"
    extra = ("--grant-type", "implicit", "--dpop-bound-access-tokens")
    assert add(config_dir, clients, *extra) == 2
    assert "dpop_bound_access_tokens" in capsys.readouterr().err
    assert not clients.exists() or json.loads(clients.read_text()) == []


def test_a_code_and_id_token_client_may_be_bound(client) -> None:
    """Registered ``response_types`` limit the client (RFC 7591 §2): with no access
    token from the authorization endpoint, the implicit grant's ``id_token`` is fine."""
    headers = bearer(admin_token(client))
    body = {**IMPLICIT, "response_types": ["code", "id_token"], "scope": "openid read-only"}
    made = client.post(ADMIN, json=body, headers=headers)
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["response_types"] == ["code", "id_token"]
    state = client.application.extensions["oauth2"]
    assert state.clients.get(made.get_json()["client_id"]).response_types == ["code", "id_token"]


def test_a_record_from_before_the_rule_can_still_be_switched_off(client, monkeypatch) -> None:
    """Incident response: ``PATCH {"disabled": true}`` on a record stored before the
    rule existed changes the switch, not the metadata, so no newer rule stands in it."""
    from app import client_store

    state = client.application.extensions["oauth2"]
    with monkeypatch.context() as before_the_rule:
        before_the_rule.setattr(client_store, "front_channel_dpop_problem", lambda _: None)
        record, _ = state.clients.store.create(IMPLICIT)
    made = record["client_id"]
    headers = bearer(admin_token(client))
    off = client.patch(f"{ADMIN}/{made}", json={"disabled": True}, headers=headers)
    assert off.status_code == 200, off.get_json()
    assert off.get_json()["disabled"] is True
    assert state.clients.get(made) is None  # disabled: it acts no more
    renamed = client.patch(f"{ADMIN}/{made}", json={"client_name": "Still bound"}, headers=headers)
    assert renamed.status_code == 400  # a change to its metadata meets the rule
