"""Passkeys on every backend, verified by the ``webauthn`` package against a software
authenticator: what is stored, single-use challenges bound to their sign-in, the exact
origin and RP ID, the signature counter, another user's credential."""

from __future__ import annotations

import json
import time

import pytest

from app import passkeys as passkeys_module
from app.passkeys import PasskeyError, Passkeys
from tests.conftest import race
from tests.webauthn_soft import SoftAuthenticator, b64url

ISSUER = "https://login.example.com:8443/oauth"
ORIGIN = "https://login.example.com:8443"
RP_ID = "login.example.com"


def store(backend) -> Passkeys:
    return Passkeys(backend.table("factors", None), ISSUER, "Example")


def registered(pk: Passkeys, user: str = "alice", bound: str = "session-1") -> SoftAuthenticator:
    device = SoftAuthenticator(RP_ID, ORIGIN)
    options = pk.registration_options(user, user, bound)
    pk.register(user, "Laptop\x07 key", device.register(options), bound)
    return device


def login_answer(pk: Passkeys, device: SoftAuthenticator, user: str = "alice", **kw) -> str:
    return device.assert_(pk.authentication_options(user, "login", "pending-1"), **kw)


def test_register_keeps_the_credential_and_a_random_user_handle(backend) -> None:
    pk = store(backend)
    assert (pk.origin, pk.rp_id) == (ORIGIN, RP_ID)
    options = json.loads(pk.registration_options("alice", "Alice", "s"))
    assert options["rp"]["id"] == RP_ID
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    handle = options["user"]["id"]
    assert handle != b64url(b"alice") and len(handle) >= 40
    device = SoftAuthenticator(RP_ID, ORIGIN)
    added = pk.register("alice", "Laptop\x07 key", device.register(options), "s")
    assert added.name == "Laptop key" and pk.has("alice") and not pk.has("bob")
    record = backend.table("factors", None).get(added.key)
    assert record["credential_id"] == b64url(device.credential_id)
    assert record["transports"] == ["internal"]  # unknown transports dropped
    assert record["aaguid"] == "00000000-0000-0000-0000-000000000000"
    assert record["sign_count"] == 0 and record["user_verified"] is True
    assert record["backup_eligible"] is False and record["backed_up"] is False
    assert record["created_at"] and record["last_used_at"] is None
    # the next options exclude it; the handle stays the user's
    again = json.loads(pk.registration_options("alice", "Alice", "s"))
    assert again["user"]["id"] == handle
    assert [c["id"] for c in again["excludeCredentials"]] == [b64url(device.credential_id)]


def test_authenticate_updates_the_counter_and_last_use(backend) -> None:
    pk = store(backend)
    device = registered(pk)
    options = json.loads(pk.authentication_options("alice", "login", "pending-1"))
    assert [c["id"] for c in options["allowCredentials"]] == [b64url(device.credential_id)]
    assert options["rpId"] == RP_ID
    assert pk.authenticate("alice", device.assert_(options), "login", "pending-1") is True
    (listed,) = pk.of("alice")
    assert listed.last_used_at is not None and listed.used
    assert backend.table("factors", None).get(listed.key)["sign_count"] == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"origin": "https://login.example.com"}, "invalid"),  # port differs
        ({"origin": "https://evil.example"}, "invalid"),
        ({"rp_id": "example.com"}, "invalid"),
        ({"flags": 0x04}, "invalid"),  # no user presence
    ],
)
def test_wrong_origin_rp_id_or_presence_refused(backend, change, reason) -> None:
    pk = store(backend)
    device = registered(pk)
    with pytest.raises(PasskeyError) as refused:
        pk.authenticate("alice", login_answer(pk, device, **change), "login", "pending-1")
    assert refused.value.reason == reason


def test_registration_from_another_origin_refused(backend) -> None:
    pk = store(backend)
    device = SoftAuthenticator(RP_ID, ORIGIN)
    options = pk.registration_options("alice", "Alice", "s")
    with pytest.raises(PasskeyError, match="invalid"):
        pk.register(
            "alice", "x", device.register(options, origin="http://login.example.com:8443"), "s"
        )
    assert not pk.has("alice")


def test_a_challenge_is_used_once_and_bound_to_its_sign_in(backend) -> None:
    pk = store(backend)
    device = registered(pk)
    answer = login_answer(pk, device)
    assert pk.authenticate("alice", answer, "login", "pending-1")
    with pytest.raises(PasskeyError, match="challenge"):  # replayed
        pk.authenticate("alice", answer, "login", "pending-1")
    for user, purpose, bound in [
        ("alice", "login", "pending-2"),
        ("alice", "confirm", "pending-1"),
    ]:
        with pytest.raises(PasskeyError, match="challenge"):
            pk.authenticate(user, login_answer(pk, device), purpose, bound)


def test_an_expired_challenge_is_refused(backend, monkeypatch) -> None:
    monkeypatch.setattr(passkeys_module, "CHALLENGE_TTL", 1)
    pk = store(backend)
    device = registered(pk)
    answer = login_answer(pk, device)
    time.sleep(1.2)
    with pytest.raises(PasskeyError, match="challenge"):
        pk.authenticate("alice", answer, "login", "pending-1")


def test_a_signature_counter_that_does_not_grow_is_refused(backend) -> None:
    pk = store(backend)
    device = registered(pk)
    assert pk.authenticate("alice", login_answer(pk, device, count=5), "login", "pending-1")
    with pytest.raises(PasskeyError, match="invalid"):  # a clone, or a replay
        pk.authenticate("alice", login_answer(pk, device, count=5), "login", "pending-1")
    with pytest.raises(PasskeyError, match="invalid"):
        pk.authenticate("alice", login_answer(pk, device, count=3), "login", "pending-1")


def test_another_users_passkey_is_not_theirs(backend) -> None:
    pk = store(backend)
    bobs = registered(pk, "bob")
    registered(pk, "alice")
    with pytest.raises(PasskeyError, match="unknown_credential"):
        pk.authenticate("alice", login_answer(pk, bobs, "alice"), "login", "pending-1")
    (bob_key,) = pk.of("bob")
    assert not pk.remove("alice", bob_key.key) and pk.has("bob")
    assert pk.remove("bob", bob_key.key) and not pk.has("bob")
    with pytest.raises(PasskeyError, match="unknown_credential"):  # removed
        pk.authenticate("bob", login_answer(pk, bobs, "bob"), "login", "pending-1")


def test_one_answer_raced_signs_in_once(backend) -> None:
    pk = store(backend)
    device = registered(pk)
    answer = login_answer(pk, device)

    def attempt(go):
        go()
        try:
            return pk.authenticate("alice", answer, "login", "pending-1")
        except PasskeyError:
            return False

    assert sorted(race(6, attempt)) == [False] * 5 + [True]


def test_a_cloned_key_raced_with_the_same_counter_wins_once(backend) -> None:
    pk = store(backend)
    device = registered(pk)
    answers = [login_answer(pk, device, count=7) for _ in range(6)]  # one count, six challenges

    def attempt(go, answer):
        go()
        try:
            return pk.authenticate("alice", answer, "login", "pending-1")
        except PasskeyError:
            return False

    results = race(6, lambda go: attempt(go, answers.pop()))
    assert sorted(results) == [False] * 5 + [True]


def test_two_genuine_answers_raced_never_move_the_counter_back(backend, monkeypatch) -> None:
    pk = store(backend)
    device = registered(pk)
    seven, eight = (login_answer(pk, device, count=n) for n in (7, 8))
    verify = passkeys_module.webauthn.verify_authentication_response
    calls = []

    def interleaved(**kw):
        if not calls:  # answer 7 was read against count 0: answer 8 lands meanwhile
            calls.append(1)
            assert pk.authenticate("alice", eight, "login", "pending-1")
        return verify(**kw)

    monkeypatch.setattr(passkeys_module.webauthn, "verify_authentication_response", interleaved)
    with pytest.raises(PasskeyError, match="invalid"):
        pk.authenticate("alice", seven, "login", "pending-1")
    monkeypatch.setattr(passkeys_module.webauthn, "verify_authentication_response", verify)
    (key,) = pk.of("alice")
    assert backend.table("factors", None).get(key.key)["sign_count"] == 8
    backend.table("factors", None).discard(f"count:{key.key}:8")  # old markers expire
    with pytest.raises(PasskeyError, match="invalid"):  # a clone at 8 is refused for good
        pk.authenticate("alice", login_answer(pk, device, count=8), "login", "pending-1")
    assert pk.authenticate("alice", login_answer(pk, device, count=9), "login", "pending-1")


def test_first_registrations_raced_agree_on_one_user_handle(backend, monkeypatch) -> None:
    pk = store(backend)
    table = backend.table("factors", None)
    get = table.get
    go_on = []

    def slow_get(key):  # every racer reads "no handle yet" before any writes one
        found = get(key)
        if key.startswith("passkey-user:") and not go_on:
            time.sleep(0.2)
        return found

    monkeypatch.setattr(table, "get", slow_get)
    pk.table = table
    handles = race(4, lambda go: (go(), pk.handle("carol"))[1])
    go_on.append(1)
    assert len(handles) == 4 and len(set(handles)) == 1
    assert pk.handle("carol") == handles[0]
