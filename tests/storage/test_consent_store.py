"""Remembered consent over the ``consents`` table, on every backend."""

from __future__ import annotations

import time

import pytest

from app.clients import Client
from app.oidc.consent import Consents, must_ask
from app.storage.base import Backend
from tests.factories import REDIRECT


@pytest.fixture
def consents(backend: Backend) -> Consents:
    return Consents(backend.table("consents", None))


def test_remembers_the_union_of_granted_scopes(consents: Consents) -> None:
    assert consents.granted("u1", "c1") == set()
    assert consents.remember("u1", "c1", ["openid", "read-only"]) == ["openid", "read-only"]
    assert consents.remember("u1", "c1", ["read-write", "openid"]) == [
        "openid",
        "read-only",
        "read-write",
    ]
    assert consents.granted("u1", "c1") == {"openid", "read-only", "read-write"}
    record = consents.record("u1", "c1")
    assert record is not None and record["expires_at"] is None  # lifetime 0: until revoked
    assert record["granted_at"] <= record["updated_at"]


def test_per_user_and_client_listed_by_user_and_forgotten(consents: Consents) -> None:
    consents.remember("u1", "c1", ["openid"])
    consents.remember("u1", "c2", ["openid", "email"])
    consents.remember("u2", "c1", ["openid"])
    assert set(consents.of_user("u1")) == {"c1", "c2"}
    assert consents.of_user("u1")["c2"]["scopes"] == ["openid", "email"]
    assert consents.forget("u1", "c1") is True
    assert consents.forget("u1", "c1") is False
    assert set(consents.of_user("u1")) == {"c2"}
    assert consents.granted("u2", "c1") == {"openid"}


def test_ids_that_look_alike_do_not_collide(consents: Consents) -> None:
    consents.remember("a:b", "c", ["openid"])
    assert consents.granted("a", "b:c") == set()


def test_a_lifetime_sets_the_expiry(backend: Backend) -> None:
    consents = Consents(backend.table("consents", None), lifetime=600)
    consents.remember("u1", "c1", ["openid"])
    record = consents.record("u1", "c1")
    assert record is not None
    assert 590 < record["expires_at"] - time.time() <= 600


def test_must_ask_the_user() -> None:
    plain = Client("c", "Partner", [REDIRECT], ["authorization_code"], ["openid", "a", "b"])
    first = Client("f", "First", [REDIRECT], ["authorization_code"], ["a"], skip_consent=True)
    assert must_ask(plain, ["openid", "a"], {"openid", "a", "b"}, False) is False
    assert must_ask(plain, ["openid", "c"], {"openid", "a"}, False) is True
    assert must_ask(plain, ["openid"], {"openid"}, True) is True  # prompt=consent
    assert must_ask(plain, ["a"], {"openid", "a"}, False) is True  # plain OAuth 2.0
    assert must_ask(first, ["a"], set(), False) is False
    assert must_ask(first, ["openid"], set(), True) is True
