"""The signing key ring: created once, shared through storage, public keys only in the JWKS."""

from __future__ import annotations

import json
import threading

import pytest
from joserfc import jwt
from joserfc.errors import JoseError

from app.oidc import keys
from app.oidc.keys import (
    ALGS,
    RING,
    KeyRing,
    KeyRingError,
    KeysSecretMismatch,
    RotationRefused,
)
from app.oidc.sealing import Sealer
from app.storage import Table

PRIVATE = {"d", "p", "q", "dp", "dq", "qi"}


def test_one_ring_for_racing_processes(table: Table) -> None:
    rings = [KeyRing(table, retire_after=60) for _ in range(4)]
    kids: list[str] = []
    threads = [
        threading.Thread(target=lambda r=r: kids.append(r.signing_key("RS256").kid)) for r in rings
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(kids)) == 1 and len(kids) == 4


def test_signs_with_the_active_key_and_publishes_public_halves(table: Table) -> None:
    ring = KeyRing(table, retire_after=60)
    key = ring.signing_key("ES256")
    token = jwt.encode({"alg": "ES256", "kid": key.kid}, {"sub": "alice"}, key)
    assert jwt.decode(token, ring.verification_keys()).claims["sub"] == "alice"
    published = ring.public_jwks()["keys"]
    assert {entry["alg"] for entry in published} == {"RS256", "ES256"}
    assert len(published) == 4  # active and next per algorithm
    assert all("d" not in entry and entry["kid"] for entry in published)
    # A second process reads the same ring from storage.
    assert KeyRing(table, retire_after=60).signing_key("ES256").kid == key.kid


# -- rotation ---------------------------------------------------------------------------
def states(ring: KeyRing, alg: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in ring.ring()["keys"]:
        if entry["alg"] == alg:
            found.setdefault(entry["state"], []).append(entry["kid"])
    return found


def test_rotation_moves_next_to_active_and_active_to_retired(table: Table) -> None:
    ring = KeyRing(table, retire_after=60)
    before = {alg: states(ring, alg) for alg in ALGS}
    old_key = ring.signing_key("RS256")
    token = jwt.encode({"alg": "RS256", "kid": old_key.kid}, {"sub": "alice"}, old_key)

    done = ring.rotate()

    version = ring.stored()["version"]  # type: ignore[index]
    assert version == 2
    for alg in ALGS:
        after = states(ring, alg)
        assert after["active"] == before[alg]["next"] == [done.activated[alg]]
        assert after["retired"] == before[alg]["active"] == [done.retired[alg]]
        assert after["next"] == [done.created[alg]]
        assert done.created[alg] not in before[alg]["next"] + before[alg]["active"]
    assert ring.signing_key("RS256").kid == done.activated["RS256"]
    # The retired key is still published: what it signed still validates.
    published = {entry["kid"] for entry in ring.public_jwks()["keys"]}
    assert done.retired["RS256"] in published and done.created["RS256"] in published
    assert jwt.decode(token, ring.verification_keys()).claims["sub"] == "alice"
    # Another process reading storage sees the same ring.
    assert KeyRing(table, retire_after=60).signing_key("ES256").kid == done.activated["ES256"]


def test_rotating_one_algorithm_leaves_the_other(table: Table) -> None:
    ring = KeyRing(table, retire_after=60)
    es256 = states(ring, "ES256")
    done = ring.rotate(["RS256"])
    assert set(done.activated) == {"RS256"}
    assert states(ring, "ES256") == es256


def test_a_next_key_published_too_briefly_is_not_used_unless_forced(table: Table) -> None:
    ring = KeyRing(table, retire_after=60, publish_wait=600)
    created = ring.ring()["keys"][0]["created_at"]
    active = ring.signing_key("RS256").kid
    with pytest.raises(RotationRefused, match=r"RS256: the next key .* --force"):
        ring.rotate(now=created + 599)
    assert ring.stored()["version"] == 1  # type: ignore[index]
    ring.forget()
    assert ring.signing_key("RS256").kid == active

    assert ring.rotate(now=created + 600).activated
    # The key it just made is new again: the next rotation waits, unless forced.
    with pytest.raises(RotationRefused):
        ring.rotate(now=created + 601)
    done = ring.rotate(now=created + 601, force=True)
    assert done.forced and ring.stored()["version"] == 3  # type: ignore[index]


def test_rotation_prunes_retired_keys_no_token_needs(table: Table) -> None:
    ring = KeyRing(table, retire_after=100)
    now = ring.ring()["keys"][0]["created_at"]
    first = ring.rotate(now=now)
    second = ring.rotate(now=now + 50)
    assert second.pruned == []
    kids = {entry["kid"] for entry in ring.ring()["keys"]}
    assert first.retired["RS256"] in kids and second.retired["RS256"] in kids
    # 100 s after the first rotation its retired keys go; the second's stay.
    third = ring.rotate(now=now + 100)
    assert sorted(third.pruned) == sorted(first.retired.values())
    stored = {entry["kid"] for entry in ring.stored()["keys"]}  # type: ignore[index]
    assert not stored & set(first.retired.values())
    assert set(second.retired.values()) <= stored
    assert len(stored) == 2 * 4  # per algorithm: next, active, two retired


def test_a_retired_key_leaves_the_jwks_once_its_tokens_expired(
    table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = KeyRing(table, retire_after=100)
    now = ring.ring()["keys"][0]["created_at"]
    retired = ring.rotate(now=now).retired["ES256"]
    assert retired in {key["kid"] for key in ring.public_jwks()["keys"]}
    monkeypatch.setattr(keys.time, "time", lambda: now + 100)
    assert retired not in {key["kid"] for key in ring.public_jwks()["keys"]}


def test_of_two_concurrent_rotations_one_is_refused(table: Table) -> None:
    first, second = KeyRing(table, retire_after=60), KeyRing(table, retire_after=60)
    second.ring()
    stale = second.stored()
    assert stale is not None
    first.rotate()
    # The second read the ring before the first wrote: its write is refused, not applied.
    with pytest.raises(RotationRefused, match="at the same time"):
        second._write(stale, second._open(stale))
    assert second.stored()["version"] == 2  # type: ignore[index]


def test_racing_rotations_never_lose_or_duplicate_a_key(table: Table) -> None:
    rings = [KeyRing(table, retire_after=600) for _ in range(4)]
    rings[0].ring()  # created once, before the race
    results: list[str] = []

    def rotate(ring: KeyRing) -> None:
        try:
            ring.rotate(force=True)
            results.append("rotated")
        except RotationRefused:
            results.append("refused")

    threads = [threading.Thread(target=rotate, args=(ring,)) for ring in rings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rotated = results.count("rotated")
    assert len(results) == 4 and rotated >= 1
    ring = KeyRing(table, retire_after=600)
    assert ring.stored()["version"] == 1 + rotated  # type: ignore[index]
    for alg in ALGS:
        found = states(ring, alg)
        assert len(found["active"]) == len(found["next"]) == 1
        assert len(found["retired"]) == rotated


# -- at rest ----------------------------------------------------------------------------
SECRET = "a-keys-secret-for-the-tests-" + "k" * 8


def test_private_halves_are_encrypted_at_rest(table: Table) -> None:
    ring = KeyRing(table, retire_after=60, sealer=Sealer(SECRET))
    key = ring.signing_key("RS256")
    raw = ring.stored()
    assert raw is not None
    assert raw["sealed_by"]["key_id"] == Sealer(SECRET).key_id
    text = json.dumps(raw)
    assert SECRET not in text
    for entry in raw["keys"]:
        assert set(entry["jwk"]) & PRIVATE == set(), entry["jwk"]
        assert entry["sealed"]
    assert key.as_dict(private=True)["d"] not in text
    # A second process with the same secret signs with the same key.
    other = KeyRing(table, retire_after=60, sealer=Sealer(SECRET))
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, {"sub": "a"}, other.signing_key())
    assert jwt.decode(token, ring.verification_keys()).claims["sub"] == "a"
    # Rotation keeps them sealed.
    ring.rotate()
    assert all("d" not in entry["jwk"] for entry in ring.stored()["keys"])  # type: ignore[index]


def test_another_secret_or_none_is_a_clear_error(table: Table) -> None:
    KeyRing(table, retire_after=60, sealer=Sealer(SECRET)).ring()
    for sealer in (Sealer("another-secret-entirely-0123456789"), None):
        with pytest.raises(KeysSecretMismatch) as caught:
            KeyRing(table, retire_after=60, sealer=sealer).signing_key()
        message = str(caught.value)
        assert message.startswith("oidc.keys_secret: ")
        assert "keys reset" in message and Sealer(SECRET).key_id in message
        assert SECRET not in message


def test_a_tampered_sealed_key_is_refused(table: Table) -> None:
    ring = KeyRing(table, retire_after=60, sealer=Sealer(SECRET))
    ring.ring()
    raw = ring.stored()
    assert raw is not None
    first, second = raw["keys"][0], raw["keys"][1]
    first["sealed"], second["sealed"] = second["sealed"], first["sealed"]  # moved blobs
    table.put(RING, {k: v for k, v in raw.items() if k not in ("key", "expires_at")})
    with pytest.raises(KeyRingError, match="does not decrypt"):
        KeyRing(table, retire_after=60, sealer=Sealer(SECRET)).signing_key()


def test_a_ring_stored_in_the_clear_is_sealed_at_start_once_a_secret_is_set(
    table: Table,
) -> None:
    plain = KeyRing(table, retire_after=60)
    kid = plain.signing_key().kid
    assert "d" in plain.stored()["keys"][0]["jwk"]  # type: ignore[index]
    sealed = KeyRing(table, retire_after=60, sealer=Sealer(SECRET))
    sealed.ensure()
    raw = sealed.stored()
    assert raw is not None and raw["sealed_by"]
    assert all(set(entry["jwk"]) & PRIVATE == set() for entry in raw["keys"])
    assert sealed.signing_key().kid == kid


def test_reset_makes_new_keys_and_keeps_the_pairwise_secret(table: Table) -> None:
    old = KeyRing(table, retire_after=600, sealer=Sealer(SECRET))
    pairwise, old_key = old.pairwise_secret(), old.signing_key()
    token = jwt.encode({"alg": "RS256", "kid": old_key.kid}, {"sub": "a"}, old_key)
    # The secret is lost: the ring no longer opens, but can be reset.
    new = KeyRing(table, retire_after=600, sealer=Sealer("the-new-secret-" + "n" * 20))
    kids = new.reset()
    assert new.signing_key().kid in kids and old_key.kid not in kids
    assert new.pairwise_secret() == pairwise
    assert new.public_key(old_key.kid) is None  # old tokens no longer validate
    with pytest.raises(JoseError):
        new.verify(token)


def test_reset_keep_published_keeps_old_tokens_valid(table: Table) -> None:
    old = KeyRing(table, retire_after=600, sealer=Sealer(SECRET))
    old_key = old.signing_key()
    next_kid = old.entries("next")[0]["kid"]
    token = jwt.encode({"alg": "RS256", "kid": old_key.kid}, {"sub": "a"}, old_key)
    new = KeyRing(table, retire_after=600, sealer=Sealer("the-new-secret-" + "n" * 20))
    new.reset(keep_published=True)
    assert new.verify(token).claims["sub"] == "a"
    assert new.signing_key().kid != old_key.kid
    published = {key["kid"] for key in new.public_jwks()["keys"]}
    assert old_key.kid in published and next_kid not in published  # a next key never signed
    assert all(set(e["jwk"]) & PRIVATE == set() for e in new.stored()["keys"])  # type: ignore[index]


# -- workers ----------------------------------------------------------------------------
def test_an_unknown_kid_reads_the_ring_again_once(
    table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "MISS_INTERVAL", 0.0)
    rotator, worker = KeyRing(table, retire_after=600), KeyRing(table, retire_after=600)
    worker.public_jwks()  # cached: it would not read storage again for CACHE_SECONDS
    rotator.rotate()
    done = rotator.rotate(force=True)  # the active key now is one the worker never saw
    new_key = rotator.signing_key("ES256")
    assert new_key.kid == done.activated["ES256"]
    assert new_key.kid not in {key["kid"] for key in worker.public_jwks()["keys"]}
    token = jwt.encode({"alg": "ES256", "kid": new_key.kid}, {"sub": "b"}, new_key)
    # Signed by a key this worker has not seen: it reads the ring again instead of failing.
    assert worker.verify(token).claims["sub"] == "b"
    assert done.created["ES256"] in {key["kid"] for key in worker.public_jwks()["keys"]}
    # A published kid with a signature by another key is still refused.
    forged = jwt.encode({"alg": "ES256", "kid": done.created["ES256"]}, {"sub": "c"}, new_key)
    with pytest.raises(JoseError):
        worker.verify(forged)
    with pytest.raises(JoseError):  # and a kid nobody published
        worker.verify(jwt.encode({"alg": "ES256", "kid": "nope"}, {"sub": "d"}, new_key))


def test_unknown_kids_do_not_make_every_request_read_storage(table: Table) -> None:
    ring = KeyRing(table, retire_after=600)
    ring.public_jwks()
    read_at = ring._read_at
    assert ring.public_key("no-such-kid") is None
    assert ring.public_key("nor-this-one") is None
    assert ring._read_at == read_at  # read just now: a miss does not read again
