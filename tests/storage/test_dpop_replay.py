"""The DPoP replay cache (RFC 9449 §11.1) on every backend: one proof is used once.

Many callers presenting the same proof at once (two workers, two instances) get one
acceptance; the entry lives as long as the proof could still pass its ``iat`` check.
"""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import pytest

from app.oauth2.rfc9449 import REPLAY_PREFIX, DPoP, DPoPError, Proof
from app.storage.base import Backend
from tests.storage.test_concurrency import at_once

CONFIG = SimpleNamespace(
    algorithms=["ES256"], iat_window=300, required=False, nonce=False, nonce_step=60
)


def cache(backend: Backend) -> DPoP:
    return DPoP(CONFIG, backend.table("codes", 60), "secret", "http://127.0.0.1:8081")


def accepted(dpop: DPoP, proof: Proof) -> bool:
    try:
        dpop.remember(proof)
    except DPoPError:
        return False
    return True


def test_a_proof_is_accepted_once(backend: Backend) -> None:
    dpop = cache(backend)
    proof = Proof("jkt-a", "jti-1", int(time.time()))
    assert accepted(dpop, proof)
    assert not accepted(dpop, proof)
    # The same jti of another key, and another jti of the same key, are other proofs.
    assert accepted(dpop, Proof("jkt-b", "jti-1", proof.iat))
    assert accepted(dpop, Proof("jkt-a", "jti-2", proof.iat))


def test_twenty_parallel_presentations_of_one_proof_win_once(backend: Backend) -> None:
    dpop = cache(backend)
    proof = Proof("jkt-a", "jti-race", int(time.time()))
    assert sum(at_once(20, lambda _: accepted(dpop, proof))) == 1


@pytest.mark.parametrize("age", [0, 200, -200])
def test_the_entry_lives_until_the_proof_would_be_stale(backend: Backend, age: int) -> None:
    dpop = cache(backend)
    now = time.time()
    proof = Proof("jkt-a", f"jti-{age}", int(now) - age)
    assert accepted(dpop, proof)
    entry = backend.table("codes", 60).get(REPLAY_PREFIX + _digest(proof))
    assert entry is not None
    expected = proof.iat + CONFIG.iat_window
    assert expected - 2 <= entry["expires_at"] <= expected + 3


def _digest(proof: Proof) -> str:
    return hashlib.sha256(f"{proof.jkt}\n{proof.jti}".encode()).hexdigest()
