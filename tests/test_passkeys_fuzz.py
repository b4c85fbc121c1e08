"""Hypothesis over passkey answers: arbitrary JSON, and a genuine answer with one field
replaced, are refused with :class:`PasskeyError` (a page, never a 500), and a refused
answer leaves the stored credential as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.passkeys import PasskeyError, Passkeys
from app.storage.sqlite import SQLiteBackend
from tests.webauthn_soft import SoftAuthenticator, b64url

ORIGIN = "https://login.example.com"
FIELDS = ["id", "rawId", "type", "clientDataJSON", "authenticatorData", "signature", "userHandle"]


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)


#: Any JSON value (a named ``extend``: Hypothesis reads a lambda's source to check it).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    _containers,
    max_leaves=16,
)
CHECKS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def enrolled(tmp_path) -> Iterator[tuple[Passkeys, SoftAuthenticator, SQLiteBackend]]:
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/fuzz.db")
    backend.migrate()
    store = Passkeys(backend.table("factors", None), ORIGIN, "Example")
    device = SoftAuthenticator(store.rp_id, ORIGIN)
    store.register(
        "alice", "key", device.register(store.registration_options("alice", "a", "s")), "s"
    )
    yield store, device, backend
    backend.close()


def _stored(backend: SQLiteBackend) -> list[dict]:
    rows = backend.table("factors", None).list_by_user("alice")
    return [r for r in rows if r["key"].startswith("passkey:")]


@CHECKS
@given(answer=st.one_of(st.text(max_size=300), JSON.map(json.dumps)))
def test_any_json_is_refused(enrolled, answer) -> None:
    store, _, backend = enrolled
    before = _stored(backend)
    for purpose in ("login", "confirm"):
        with pytest.raises(PasskeyError):
            store.authenticate("alice", answer, purpose, "p")
    with pytest.raises(PasskeyError):
        store.register("alice", "x", answer, "s")
    assert _stored(backend) == before


@CHECKS
@given(
    name=st.sampled_from(FIELDS),
    value=st.one_of(
        JSON,
        st.binary(max_size=80).map(b64url),
        st.builds(lambda d: b64url(json.dumps(d).encode()), JSON),
    ),
)
def test_a_genuine_answer_with_one_field_replaced_is_refused(enrolled, name, value) -> None:
    store, device, backend = enrolled
    genuine = json.loads(device.assert_(store.authentication_options("alice", "login", "p")))
    where = genuine if name in ("id", "rawId", "type") else genuine["response"]
    if where.get(name) == value or (name == "userHandle" and value is None):
        return  # unchanged, or the optional user handle left out
    where[name] = value
    before = _stored(backend)
    with pytest.raises(PasskeyError):
        store.authenticate("alice", json.dumps(genuine), "login", "p")
    assert _stored(backend) == before
