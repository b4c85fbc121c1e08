"""The ID Token signing keys: one ring in the ``keys`` table, shared by every worker.

Each algorithm has one ``active`` key (it signs) and one ``next`` key (published in the
JWKS, not yet signing); ``retired`` keys stay published until every token they signed
has expired. A key's ``kid`` is its RFC 7638 thumbprint. The ring is created on first
use by exactly one process (the others wait for it and read it) and read again at most
every ``CACHE_SECONDS``: a worker that still signs with a key another has just retired
is harmless, because a retired key stays published.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from ..storage import StorageUnavailable, Table

ALGS = ("RS256", "ES256")
RING = "ring"
CLAIM = "ring-claim"
#: How long a worker reuses the ring it read before reading it again.
CACHE_SECONDS = 30.0
#: How long a process waits for another one creating the ring.
CREATE_WAIT = 10.0


def new_key(alg: str):
    """A new private key for ``alg``, its ``kid`` the key's thumbprint."""
    params: Any = {"alg": alg, "use": "sig"}
    key: RSAKey | ECKey
    if alg == "RS256":
        key = RSAKey.generate_key(2048, parameters=params, private=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", parameters=params, private=True)
    else:  # pragma: no cover - the settings allow only ALGS
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    key.ensure_kid()
    return key


def key_entry(alg: str, state: str, now: float) -> dict[str, Any]:
    """A ring entry for a new key of ``alg`` in ``state`` (``active`` or ``next``)."""
    key = new_key(alg)
    entry: dict[str, Any] = {
        "kid": key.kid,
        "alg": alg,
        "state": state,
        "created_at": now,
        "jwk": key.as_dict(private=True),
    }
    if state == "active":
        entry["activated_at"] = now
    return entry


def new_ring(now: float | None = None) -> dict[str, Any]:
    """A first ring: an active and a next key per algorithm, and the pairwise secret."""
    now = time.time() if now is None else now
    keys = [key_entry(alg, state, now) for alg in ALGS for state in ("active", "next")]
    return {
        "version": 1,
        "keys": keys,
        "pairwise_secret": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


class KeyRing:
    """The signing keys as the server uses them: sign, verify, publish."""

    def __init__(self, table: Table, *, retire_after: int) -> None:
        self.table = table
        #: Seconds a retired key stays published (the longest a token it signed lives).
        self.retire_after = retire_after
        self._ring: dict[str, Any] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------
    def ring(self) -> dict[str, Any]:
        """The ring, from this process's cache or storage; created on first use."""
        now = time.monotonic()
        ring = self._ring
        if ring is not None and now - self._read_at < CACHE_SECONDS:
            return ring
        with self._lock:
            if self._ring is not None and now - self._read_at < CACHE_SECONDS:
                return self._ring
            self._ring, self._read_at = self._load_or_create(), time.monotonic()
            return self._ring

    def forget(self) -> None:
        """Read the ring from storage on next use (after a rotation in this process)."""
        self._ring = None

    def _load_or_create(self) -> dict[str, Any]:
        ring = self.table.get(RING)
        if ring is not None:
            return ring
        # One process creates it: the first to claim; the rest wait for its write.
        if self.table.incr(CLAIM, ttl=int(CREATE_WAIT) * 3) == 1:
            ring = new_ring()
            self.table.put(RING, ring)
            return ring
        deadline = time.monotonic() + CREATE_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.05)
            ring = self.table.get(RING)
            if ring is not None:
                return ring
        raise StorageUnavailable("keys: another process is creating the signing keys")

    def entries(self, state: str | None = None) -> list[dict[str, Any]]:
        """The ring's live entries (retired ones only while still published)."""
        now = time.time()
        return [
            entry
            for entry in self.ring()["keys"]
            if (state is None or entry["state"] == state)
            and not (
                entry["state"] == "retired"
                and now >= entry.get("retired_at", 0) + self.retire_after
            )
        ]

    # -- using ------------------------------------------------------------------------
    def signing_key(self, alg: str = "RS256"):
        """The private key that signs with ``alg`` now; its ``kid`` goes in every header."""
        for entry in self.entries("active"):
            if entry["alg"] == alg:
                return _import(entry["jwk"])
        raise LookupError(f"no active {alg} signing key")

    def public_jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The JWKS: the public half of every published key (active, next, retired)."""
        return {"keys": [_public(entry["jwk"]) for entry in self.entries()]}

    def verification_keys(self) -> KeySet:
        """The published keys as a joserfc key set, to verify tokens this server signed."""
        return KeySet.import_key_set(self.public_jwks())  # type: ignore[arg-type]

    def pairwise_secret(self) -> bytes:
        """The secret pairwise subject identifiers are derived with (never rotated)."""
        return base64.urlsafe_b64decode(self.ring()["pairwise_secret"])


_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}


def _import(jwk: dict[str, Any]):
    return (RSAKey if jwk["kty"] == "RSA" else ECKey).import_key(jwk)
