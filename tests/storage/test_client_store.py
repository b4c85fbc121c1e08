"""The client store (``app.client_store``) on every backend: records, secrets, removal."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from app.client_metadata import ClientMetadataError
from app.client_store import CLAIM, ORIGIN_LISTED, ClientConflict, ClientStore, describe
from app.storage.base import Backend

SCOPES = ["read-only", "read-write"]
MACHINE = {"client_name": "Batch job", "grant_types": ["client_credentials"], "scope": "read-only"}
WEB = {"client_name": "Web", "redirect_uris": ["https://web.example/cb"]}


@pytest.fixture
def store(backend: Backend) -> ClientStore:
    return ClientStore(backend.table("clients", None), SCOPES, overlap=60)


def test_a_created_client_is_found_with_its_secret_and_listed(store: ClientStore) -> None:
    record, secret = store.create(MACHINE)
    assert secret
    client = store.find(record["client_id"])
    assert client is not None
    assert client.check_client_secret(secret)
    assert not client.check_client_secret(secret + "x")
    assert client.scopes == ["read-only"]
    assert client.grant_types == ["client_credentials"]
    assert [r["client_id"] for r in store.records()] == [record["client_id"]]
    stored = store.record(record["client_id"])
    assert stored is not None
    assert secret not in repr(stored)  # only its hash is kept


def test_a_public_client_has_no_secret(store: ClientStore) -> None:
    record, secret = store.create({**WEB, "token_endpoint_auth_method": "none"})
    assert secret is None
    client = store.find(record["client_id"])
    assert client is not None and client.public
    assert record["secrets"] == []
    with pytest.raises(ClientMetadataError):
        store.rotate(record)


def test_a_chosen_client_id_is_claimed_once(store: ClientStore) -> None:
    store.create(MACHINE, client_id="batch-1")
    with pytest.raises(ClientConflict):
        store.create(MACHINE, client_id="batch-1")
    assert [r["client_id"] for r in store.records()] == ["batch-1"]


def test_bad_metadata_writes_nothing(store: ClientStore) -> None:
    with pytest.raises(ClientMetadataError) as caught:
        store.create({**WEB, "redirect_uris": ["https://web.example/cb#frag"]}, client_id="x1")
    assert caught.value.error == "invalid_redirect_uri"
    assert store.records() == []
    assert store.table.get(CLAIM + "x1") is None


def test_list_is_sorted_and_holds_only_clients(store: ClientStore) -> None:
    for client_id in ("c", "a", "b"):
        store.create(MACHINE, client_id=client_id)
    assert [r["client_id"] for r in store.records()] == ["a", "b", "c"]


def test_update_replaces_the_metadata_and_a_change_is_seen_at_once(
    store: ClientStore, backend: Backend
) -> None:
    record, _ = store.create(MACHINE, client_id="m1")
    other = ClientStore(backend.table("clients", None), SCOPES)  # another instance
    assert scopes_of(other, "m1") == ["read-only"]
    record = store.update(record, {**MACHINE, "scope": "read-only read-write"})
    assert scopes_of(other, "m1") == ["read-only", "read-write"]
    replaced = store.update(record, {"grant_types": ["client_credentials"]})
    assert "client_name" not in replaced["metadata"]  # replaced, not merged
    assert scopes_of(other, "m1") == SCOPES  # the default: every scope of the adapter


def scopes_of(store: ClientStore, client_id: str) -> list[str]:
    client = store.find(client_id)
    assert client is not None
    return client.scopes


def test_a_disabled_client_is_not_active_and_comes_back(store: ClientStore) -> None:
    record, secret = store.create(MACHINE, client_id="m1")
    store.set_disabled(record, True)
    assert store.active("m1") is None
    found = store.find("m1")
    assert found is not None and found.disabled
    store.set_disabled({**record, "disabled": True}, False)
    client = store.active("m1")
    assert client is not None and client.check_client_secret(secret)


def test_rotation_keeps_the_old_secret_for_the_overlap_only(
    store: ClientStore, monkeypatch
) -> None:
    record, old = store.create(MACHINE, client_id="m1")
    record, new = store.rotate(record)  # overlap 60 s
    client = store.find("m1")
    assert client is not None
    assert client.check_client_secret(new) and client.check_client_secret(old)
    assert describe(record)["previous_secret_expires_at"] == pytest.approx(time.time() + 60, abs=2)
    later = time.time() + 61
    monkeypatch.setattr("app.client_store.time", SimpleNamespace(time=lambda: later))
    assert client.check_client_secret(new)
    assert not client.check_client_secret(old)


def test_rotation_without_overlap_ends_the_old_secret_at_once(store: ClientStore) -> None:
    record, old = store.create(MACHINE, client_id="m1")
    record, new = store.rotate(record, overlap=0)
    client = store.find("m1")
    assert client is not None
    assert client.check_client_secret(new) and not client.check_client_secret(old)
    assert len(record["secrets"]) == 1


def test_rotations_keep_a_bounded_number_of_secrets(store: ClientStore) -> None:
    record, first = store.create(MACHINE, client_id="m1")
    for _ in range(8):
        record, last = store.rotate(record)
    assert len(record["secrets"]) == 5
    client = store.find("m1")
    assert client is not None and client.check_client_secret(last)
    assert not client.check_client_secret(first)


def test_remove_revokes_tokens_codes_and_consents_of_that_client_only(
    store: ClientStore, backend: Backend
) -> None:
    tables = {name: backend.table(name, None) for name in ("tokens", "refresh_tokens", "codes")}
    tables["consents"] = backend.table("consents", None)
    storage = SimpleNamespace(**tables)
    store.create(MACHINE, client_id="gone")
    for owner in ("gone", "kept"):
        for name in ("tokens", "refresh_tokens", "codes"):
            tables[name].put(f"{name}-{owner}", {"client_id": owner, "grant_id": f"g-{owner}"})
        tables["consents"].put(f"alice:{owner}", {"client_id": owner, "user_id": "alice"})

    def revoke_grant(grant_id: str) -> int:
        return sum(
            tables[n].revoke_by_grant(grant_id) for n in ("tokens", "refresh_tokens", "codes")
        )

    assert store.remove("gone", storage, revoke_grant) == 3
    assert store.find("gone") is None and store.records() == []
    for name in ("tokens", "refresh_tokens", "codes"):
        assert tables[name].get(f"{name}-gone") is None
        assert tables[name].get(f"{name}-kept") is not None
    assert tables["consents"].get("alice:gone") is None
    assert tables["consents"].get("alice:kept") is not None
    assert store.remove("gone", storage, revoke_grant) is None
    store.create(MACHINE, client_id="gone")  # the id is free again


def test_ids_no_stored_client_can_have_cost_no_read(store: ClientStore, monkeypatch) -> None:
    monkeypatch.setattr(store.table, "get", lambda key: pytest.fail(f"read {key!r}"))
    assert store.find("claim:x") is None
    assert store.find("a b") is None


# -- allowed_origins: the origin index a preflight reads ------------------------------------
APP = "https://app.example.com"
DEV = "http://localhost:3000"
SPA = {**WEB, "token_endpoint_auth_method": "none", "allowed_origins": [APP, DEV]}


def origin_index(store: ClientStore, origin: str) -> list[str]:
    return sorted(r["origin_client"] for r in store.table.list_by_user(ORIGIN_LISTED + origin))


def nothing_kept(backend: Backend) -> SimpleNamespace:
    names = ("tokens", "refresh_tokens", "codes", "consents")
    return SimpleNamespace(**{name: backend.table(name, None) for name in names})


def test_a_public_clients_origins_are_found_by_another_instance_at_once(
    store: ClientStore, backend: Backend
) -> None:
    other = ClientStore(backend.table("clients", None), SCOPES)  # another instance
    assert not other.public_origin(APP)
    record, _ = store.create(SPA, client_id="spa")
    assert other.public_origin(APP) and other.public_origin(DEV)
    assert not other.public_origin("https://evil.example")
    assert not other.public_origin(APP + "/")  # not an origin: not looked up
    client = other.find("spa")
    assert client is not None and client.allowed_origins == [APP, DEV]
    assert [r["client_id"] for r in store.records()] == ["spa"]  # the index is not listed

    record = store.update(record, {**SPA, "allowed_origins": [DEV]})
    assert not other.public_origin(APP) and other.public_origin(DEV)
    assert origin_index(store, APP) == [] and origin_index(store, DEV) == ["spa"]

    record = store.set_disabled(record, True)
    assert not other.public_origin(DEV)
    store.set_disabled(record, False)
    assert other.public_origin(DEV)

    store.remove("spa", nothing_kept(backend), lambda grant_id: 0)
    assert not other.public_origin(DEV)
    assert origin_index(store, DEV) == []


def test_two_clients_may_list_one_origin(store: ClientStore, backend: Backend) -> None:
    store.create(SPA, client_id="spa1")
    store.create({**SPA, "allowed_origins": [APP]}, client_id="spa2")
    assert origin_index(store, APP) == ["spa1", "spa2"]
    store.remove("spa1", nothing_kept(backend), lambda grant_id: 0)
    assert store.public_origin(APP) and not store.public_origin(DEV)
    assert origin_index(store, APP) == ["spa2"]


def test_a_stale_index_entry_answers_nothing(store: ClientStore) -> None:
    """The index may say more than the records (a write cut short): each is checked."""
    store.create(SPA, client_id="spa")
    store.table.delete("spa")  # the record gone, its index entries left
    assert origin_index(store, APP) == ["spa"]
    assert not store.public_origin(APP)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({**WEB, "allowed_origins": [APP]}, "only a public client"),  # confidential
        ({**SPA, "allowed_origins": [APP + "/"]}, "is not an origin"),
        ({**SPA, "allowed_origins": ["https://APP.example.com"]}, "is not an origin"),
        ({**SPA, "allowed_origins": ["https://app.example.com:443"]}, "is not an origin"),
        ({**SPA, "allowed_origins": "https://app.example.com"}, "expected a list"),
    ],
)
def test_bad_origins_are_refused_and_write_nothing(
    store: ClientStore, fields: dict, problem: str
) -> None:
    with pytest.raises(ClientMetadataError, match=problem) as caught:
        store.create(fields, client_id="x1")
    assert caught.value.error == "invalid_client_metadata"
    assert store.records() == [] and origin_index(store, APP) == []
    assert store.table.get(CLAIM + "x1") is None


def test_a_failed_update_keeps_the_origins(store: ClientStore) -> None:
    record, _ = store.create(SPA, client_id="spa")
    with pytest.raises(ClientMetadataError):
        store.update(record, {**SPA, "allowed_origins": ["https://new.example", "nope"]})
    assert origin_index(store, "https://new.example") == []
    assert store.public_origin(APP) and not store.public_origin("https://new.example")
