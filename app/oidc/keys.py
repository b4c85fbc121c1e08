"""The ID Token signing keys: one ring in the ``keys`` table, shared by every worker.

Each algorithm has one ``active`` key (it signs) and one ``next`` key (published in the
JWKS, not yet signing); ``retired`` keys stay published until every token they signed
has expired. A key's ``kid`` is its RFC 7638 thumbprint. The ring is created at start
(``serve``, ``db upgrade``, ``check``; on first use otherwise) by exactly one process
(the others wait for it and read it) and read again at most every ``CACHE_SECONDS``: a
worker that still signs with a key another has just retired is harmless, because a
retired key stays published for ``id_token_ttl + jwks_max_age + CACHE_SECONDS``.

``oauth2-server keys rotate`` moves each algorithm's ``next`` key to ``active`` and its
``active`` key to ``retired``, and adds a new ``next`` key; it refuses while the ``next``
key has been published for less than ``jwks_max_age + CACHE_SECONDS`` (relying parties
may hold a JWKS without it that long), unless forced. Every write of the ring (rotation,
reset, sealing) first claims the version it read (:meth:`Table.incr`), so of two
concurrent rotations one wins and the other is refused, never both half-applied.

Private members are encrypted at rest with :class:`~app.oidc.sealing.Sealer` when a
secret is configured; the record names the secret's key id (``sealed_by``), and a ring
sealed with another secret stops the server at start with :class:`KeysSecretMismatch`.
The pairwise-subject secret is kept in the clear beside the keys (see SECURITY.md).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from ..config_model import ConfigError
from ..storage import StorageUnavailable, Table
from .sealing import ALG as SEAL_ALG
from .sealing import Sealer, SealError

log = logging.getLogger("oauth2")

ALGS = ("RS256", "ES256")
RING = "ring"
CLAIM = "ring-claim"
#: A write of the ring that was read at version ``N`` first claims ``ring-write:N``.
WRITE_CLAIM = "ring-write:"
WRITE_CLAIM_TTL = 300


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


#: How long a worker reuses the ring it read before reading it again
#: (``OAUTH2_KEYS_CACHE_SECONDS`` overrides it; tests shorten it).
CACHE_SECONDS = _env_seconds("OAUTH2_KEYS_CACHE_SECONDS", 30.0)
#: A token naming an unknown ``kid`` makes a worker re-read the ring at most this often.
MISS_INTERVAL = 1.0
#: How long a process waits for another one creating the ring.
CREATE_WAIT = 10.0

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class KeyRingError(ConfigError):
    """The ring in storage cannot be used with this configuration (the message says why)."""


class KeysSecretMismatch(KeyRingError):
    """The ring was encrypted with another secret than the one configured."""


class RotationRefused(Exception):
    """A rotation (or reset) that would be unsafe now, or that another process is doing."""


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


def new_ring(now: float | None = None, pairwise_secret: str | None = None) -> dict[str, Any]:
    """A first ring: an active and a next key per algorithm, and the pairwise secret."""
    now = time.time() if now is None else now
    keys = [key_entry(alg, state, now) for alg in ALGS for state in ("active", "next")]
    secret = pairwise_secret or base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return {"version": 1, "keys": keys, "pairwise_secret": secret}


@dataclass
class Rotation:
    """What one rotation did, by ``kid`` (public identifiers only)."""

    activated: dict[str, str] = field(default_factory=dict)
    retired: dict[str, str] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    forced: bool = False


class KeyRing:
    """The signing keys as the server uses them: sign, verify, publish, rotate."""

    def __init__(
        self,
        table: Table,
        *,
        retire_after: int,
        publish_wait: float = 0,
        sealer: Sealer | None = None,
    ) -> None:
        self.table = table
        #: Seconds a retired key stays published (the longest a token it signed lives).
        self.retire_after = retire_after
        #: Seconds a ``next`` key must have been published before a rotation makes it sign.
        self.publish_wait = publish_wait
        self.sealer = sealer
        self._ring: dict[str, Any] | None = None
        self._read_at = 0.0
        self._imported: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, table: Table, settings) -> KeyRing:
        """The ring as ``settings`` (``oidc`` section, keys secret) configure it."""
        oidc, secret = settings.oidc, settings.keys_secret
        return cls(
            table,
            retire_after=oidc.id_token_ttl + oidc.jwks_max_age + int(CACHE_SECONDS),
            publish_wait=oidc.jwks_max_age + CACHE_SECONDS,
            sealer=Sealer(secret) if secret else None,
        )

    def __repr__(self) -> str:
        return f"KeyRing(table={self.table.name!r}, sealer={self.sealer!r})"

    # -- reading ----------------------------------------------------------------------
    def ring(self) -> dict[str, Any]:
        """The ring (private keys in the clear, in memory only), from this process's
        cache or storage; created on first use."""
        now = time.monotonic()
        ring = self._ring
        if ring is not None and now - self._read_at < CACHE_SECONDS:
            return ring
        with self._lock:
            if self._ring is not None and now - self._read_at < CACHE_SECONDS:
                return self._ring
            self._ring, self._read_at = self._load_or_create(), time.monotonic()
            self._imported = {}
            return self._ring

    def forget(self) -> None:
        """Read the ring from storage on next use (after a rotation in this process)."""
        self._ring = None

    def _load_or_create(self) -> dict[str, Any]:
        raw = self.table.get(RING)
        if raw is not None:
            return self._open(raw)
        # One process creates it: the first to claim; the rest wait for its write.
        if self.table.incr(CLAIM, ttl=int(CREATE_WAIT) * 3) == 1:
            ring = new_ring()
            self.table.put(RING, self._sealed(ring))
            return ring
        deadline = time.monotonic() + CREATE_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.05)
            raw = self.table.get(RING)
            if raw is not None:
                return self._open(raw)
        raise StorageUnavailable("keys: another process is creating the signing keys")

    def entries(self, state: str | None = None) -> list[dict[str, Any]]:
        """The ring's live entries (retired ones only while still published)."""
        return self._live(self.ring()["keys"], state, time.time())

    def _live(self, keys: list[dict[str, Any]], state: str | None, now: float):
        return [
            entry
            for entry in keys
            if (state is None or entry["state"] == state) and not self._expired(entry, now)
        ]

    def _expired(self, entry: dict[str, Any], now: float) -> bool:
        return entry["state"] == "retired" and now >= self.published_until(entry)

    def published_until(self, entry: dict[str, Any]) -> float:
        """When a retired key leaves the JWKS (``inf`` for the others)."""
        if entry["state"] != "retired":
            return float("inf")
        return float(entry.get("retired_at", 0)) + self.retire_after

    # -- at rest ------------------------------------------------------------------------
    def _sealed(self, ring: dict[str, Any]) -> dict[str, Any]:
        """The record to store: each private half encrypted when a secret is configured."""
        record = {k: v for k, v in ring.items() if k not in ("key", "expires_at", "sealed_by")}
        if self.sealer is None:
            return record
        keys = []
        for entry in ring["keys"]:
            jwk, private = _public(entry["jwk"]), _private(entry["jwk"])
            sealed = {k: v for k, v in entry.items() if k not in ("jwk", "sealed")}
            sealed["jwk"] = jwk
            if private:  # a key kept only to verify (``keys reset --keep-published``) has none
                sealed["sealed"] = self.sealer.seal(private, entry["kid"])
            keys.append(sealed)
        record["keys"] = keys
        record["sealed_by"] = {"alg": SEAL_ALG, "key_id": self.sealer.key_id}
        return record

    def _open(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The stored record with every private half decrypted (in memory only)."""
        ring = {k: v for k, v in raw.items() if k not in ("key", "expires_at")}
        sealed_by = ring.pop("sealed_by", None)
        if not sealed_by:
            return ring
        if self.sealer is None or sealed_by.get("key_id") != self.sealer.key_id:
            raise KeysSecretMismatch(self._mismatch(sealed_by.get("key_id")))
        keys = []
        for entry in ring["keys"]:
            opened = {k: v for k, v in entry.items() if k != "sealed"}
            if "sealed" in entry:
                try:
                    private = self.sealer.open(entry["sealed"], entry["kid"])
                except SealError as exc:
                    raise KeyRingError(
                        f"oidc keys: {exc}, though the ring names this secret: the record "
                        "was altered; run `oauth2-server keys reset` to make new keys"
                    ) from None
                opened["jwk"] = {**entry["jwk"], **private}
            keys.append(opened)
        ring["keys"] = keys
        return ring

    def _mismatch(self, stored: str | None) -> str:
        have = f"key id {self.sealer.key_id}" if self.sealer else "no secret"
        return (
            f"oidc.keys_secret: the signing keys in storage were encrypted with another "
            f"secret (key id {stored}; this configuration has {have}). Set oidc.keys_secret "
            "(OAUTH2_KEYS_SECRET) to the secret they were encrypted with (the previous "
            "auth_server.session_secret if that was changed and oidc.keys_secret is unset), "
            "or run `oauth2-server keys reset` to make new keys (ID Tokens signed before "
            "then stop validating)"
        )

    # -- using ------------------------------------------------------------------------
    def signing_key(self, alg: str = "RS256"):
        """The private key that signs with ``alg`` now; its ``kid`` goes in every header."""
        for entry in self.entries("active"):
            if entry["alg"] == alg:
                return self._imported_key(entry)
        raise LookupError(f"no active {alg} signing key")

    def _imported_key(self, entry: dict[str, Any]):
        key = self._imported.get(entry["kid"])
        if key is None:  # importing a private RSA key costs milliseconds: once per read
            key = self._imported[entry["kid"]] = _import(entry["jwk"])
        return key

    def public_jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The JWKS: the public half of every published key (active, next, retired)."""
        return {"keys": [_public(entry["jwk"]) for entry in self.entries()]}

    def verification_keys(self, kid: str | None = None) -> KeySet:
        """The published keys as a joserfc key set, to verify tokens this server signed.

        With ``kid`` (a token's header) that this worker has not seen, the ring is read
        again first (at most every ``MISS_INTERVAL``): another instance may have rotated.
        """
        if kid is not None and not self._knows(kid):
            self._reread_after_miss()
        return KeySet.import_key_set(self.public_jwks())  # type: ignore[arg-type]

    def public_key(self, kid: str):
        """The published public key ``kid`` (read again once if unknown), or ``None``."""
        keys = self.verification_keys(kid)
        return next((key for key in keys.keys if key.kid == kid), None)

    def verify(self, token: str | bytes, algorithms: Collection[str] = ALGS) -> jwt.Token:
        """Decode a JWT this server signed (signature only; the caller checks claims).

        Raises a joserfc error for a bad token, an unknown ``kid`` or another algorithm.
        """

        def resolve(guest):
            kid = guest.headers().get("kid")
            key = self.public_key(kid) if isinstance(kid, str) else None
            if key is None:
                from joserfc.errors import InvalidKeyIdError

                raise InvalidKeyIdError()
            return key

        return jwt.decode(token, resolve, algorithms=list(algorithms))

    def _knows(self, kid: str) -> bool:
        return any(entry["kid"] == kid for entry in self.entries())

    def _reread_after_miss(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at >= MISS_INTERVAL:
                self._ring = None

    def pairwise_secret(self) -> bytes:
        """The secret pairwise subject identifiers are derived with (never rotated)."""
        return base64.urlsafe_b64decode(self.ring()["pairwise_secret"])

    # -- managing (the CLI) -------------------------------------------------------------
    def ensure(self) -> dict[str, Any]:
        """At start: the ring exists (made now if not) and opens with this configuration's
        secret; a ring stored in the clear is encrypted once a secret is configured."""
        self.forget()
        ring = self.ring()
        raw = self.table.get(RING)
        if self.sealer is not None and raw is not None and not raw.get("sealed_by"):
            try:
                self._write(raw, ring)
                log.log(25, "oidc keys: encrypted the signing keys in storage")
            except RotationRefused:
                pass  # another process is writing it; it seals with the same secret
            ring = self.ring()
        return ring

    def stored(self) -> dict[str, Any] | None:
        """The record as stored (private halves sealed, or in the clear without a secret)."""
        return self.table.get(RING)

    def rotate(
        self,
        algs: Collection[str] = ALGS,
        *,
        force: bool = False,
        now: float | None = None,
    ) -> Rotation:
        """Rotate ``algs``: next -> active, active -> retired, a new next; prune the
        retired keys no token needs any more. :class:`RotationRefused` when a ``next`` key
        is too new (unless ``force``) or another process rotates at the same time."""
        now = time.time() if now is None else now
        raw = self.table.get(RING)
        if raw is None:
            self.ensure()
            raw = self.table.get(RING)
            assert raw is not None
        ring = self._open(raw)
        keys = [dict(entry) for entry in ring["keys"]]
        done = Rotation(forced=force)
        for alg in algs:
            upcoming = _one(keys, alg, "next")
            if upcoming is None:
                raise RotationRefused(f"{alg}: the ring has no next key; run `keys reset`")
            ready_at = float(upcoming["created_at"]) + self.publish_wait
            if now < ready_at and not force:
                raise RotationRefused(
                    f"{alg}: the next key {upcoming['kid']} has been published for "
                    f"{max(0, now - upcoming['created_at']):.0f} s; relying parties may keep "
                    f"a JWKS without it for oidc.jwks_max_age plus the servers' "
                    f"{CACHE_SECONDS:.0f} s re-read ({self.publish_wait:.0f} s). Rotate in "
                    f"{ready_at - now:.0f} s, or with --force (tokens it signs before they "
                    "fetch the JWKS again fail to validate there)"
                )
        for alg in algs:
            current, upcoming = _one(keys, alg, "active"), _one(keys, alg, "next")
            assert upcoming is not None
            if current is not None:
                current.update(state="retired", retired_at=now)
                done.retired[alg] = current["kid"]
            upcoming.update(state="active", activated_at=now)
            done.activated[alg] = upcoming["kid"]
            fresh = key_entry(alg, "next", now)
            keys.append(fresh)
            done.created[alg] = fresh["kid"]
        done.pruned = [entry["kid"] for entry in keys if self._expired(entry, now)]
        ring["keys"] = [entry for entry in keys if not self._expired(entry, now)]
        self._write(raw, ring)
        return done

    def reset(self, *, keep_published: bool = False, now: float | None = None) -> list[str]:
        """Replace every key by new ones (the ring need not open with this secret).

        ``keep_published`` keeps the public halves of the keys published now as retired
        (tokens they signed keep validating until they expire) — never after a
        compromise. The pairwise secret is kept, so pairwise ``sub`` values stay. Returns
        the kids of the new keys.
        """
        now = time.time() if now is None else now
        raw = self.table.get(RING)
        fresh = new_ring(now, raw.get("pairwise_secret") if raw else None)
        if raw is None:
            if self.table.incr(CLAIM, ttl=int(CREATE_WAIT) * 3) != 1:
                raise RotationRefused("another process is creating the signing keys")
            self.table.put(RING, self._sealed(fresh))
            self.forget()
            return [entry["kid"] for entry in fresh["keys"]]
        if keep_published:
            for entry in self._live(raw.get("keys", []), None, now):
                if entry["state"] == "next":
                    continue  # it never signed
                kept = {k: v for k, v in entry.items() if k not in ("jwk", "sealed")}
                kept.update(state="retired", jwk=_public(entry["jwk"]))
                kept.setdefault("retired_at", now)
                fresh["keys"].append(kept)
        self._write(raw, fresh)
        return [entry["kid"] for entry in fresh["keys"] if entry["state"] != "retired"]

    def _write(self, raw: dict[str, Any], ring: dict[str, Any]) -> None:
        """Store ``ring`` as the version after ``raw``'s, if nobody else wrote first."""
        version = int(raw.get("version", 1))
        busy = "another process changed the signing keys at the same time; run it again"
        if self.table.incr(f"{WRITE_CLAIM}{version}", ttl=WRITE_CLAIM_TTL) != 1:
            raise RotationRefused(busy)
        current = self.table.get(RING)
        if current is None or current.get("version") != raw.get("version"):
            raise RotationRefused(busy)
        self.table.put(RING, self._sealed({**ring, "version": version + 1}))
        self.forget()


def describe(ring: KeyRing) -> dict[str, Any]:
    """The ring's state for ``check`` and logs: kids, states, encryption; nothing private."""
    entries = ring.entries()
    state: dict[str, Any] = {
        "encrypted": ring.sealer is not None,
        "active": {e["alg"]: e["kid"] for e in entries if e["state"] == "active"},
        "next": {e["alg"]: e["kid"] for e in entries if e["state"] == "next"},
        "retired": len([e for e in entries if e["state"] == "retired"]),
    }
    if ring.sealer is not None:
        state["secret_key_id"] = ring.sealer.key_id
    return state


def prepare(settings, storage=None) -> dict[str, Any]:
    """At start (``serve``'s main process, ``db upgrade``, ``check``): make the ring if
    there is none, refuse one sealed with another secret (:class:`KeysSecretMismatch`),
    and say once when the keys are stored unencrypted (no secret: development)."""
    from ..storage import Storage

    own = storage is None
    storage = Storage(settings.storage_specs) if storage is None else storage
    try:
        ring = KeyRing.from_settings(storage.keys, settings)
        ring.ensure()
        if ring.sealer is None:
            log.warning(
                "oidc keys: no oidc.keys_secret and no auth_server.session_secret, so the "
                "signing keys are stored unencrypted (development only; production "
                "encrypts them with its session secret)"
            )
        return describe(ring)
    finally:
        if own:
            storage.close()


def _one(keys: list[dict[str, Any]], alg: str, state: str) -> dict[str, Any] | None:
    return next((e for e in keys if e["alg"] == alg and e["state"] == state), None)


def _public(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name not in _PRIVATE_MEMBERS}


def _private(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name in _PRIVATE_MEMBERS}


def _import(jwk: dict[str, Any]):
    return (RSAKey if jwk["kty"] == "RSA" else ECKey).import_key(jwk)
