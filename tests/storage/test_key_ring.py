"""The signing key ring: created once, shared through storage, public keys only in the JWKS."""

from __future__ import annotations

import threading

from joserfc import jwt

from app.oidc.keys import KeyRing
from app.storage import Table


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
