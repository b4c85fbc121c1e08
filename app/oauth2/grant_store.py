"""The grant store: codes, access and refresh tokens as hashed records, linked by grant.

Every authorization (one consent, one client-credentials token) gets a ``grant_id``;
tokens rotated from it keep it, so revoking a grant, or a replayed code or refresh
token, removes every token descended from it in two deletes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..secrets_hash import new_secret, token_digest
from ..storage import Probe, Put, Record, Storage, StorageUnavailable, Table
from .models import AuthorizationCode, StoredToken

if TYPE_CHECKING:
    from .token_cache import TokenCache

#: Tombstones let a replayed code or rotated refresh token be recognised after use.
USED_CODE = "used:"
ROTATED = "rotated:"
#: With the token cache on, a revoked refresh token's tombstone names its access token,
#: so a retried revocation (the first one's announcement failed) can name it again.
REVOKED = "revoked:"
#: An access token some process may keep in its token cache: ``held:<digest>`` in the
#: ``tokens`` table (``app.oauth2.token_cache``, point 5).
HELD = "held:"
#: How many rotated refresh tokens of one family keep a tombstone (the newest ones).
ROTATIONS_REMEMBERED = 16


def new_grant_id() -> str:
    return new_secret(16)


class GrantStore:
    """Storage verbs for the OAuth objects, in the words of the protocol.

    ``grace`` is the refresh grace period and ``family_lifetime`` the refresh-token
    family's absolute lifetime, both in seconds (0: none). ``cache``: the per-process
    access-token cache (:mod:`.token_cache`); every method that ends an access token
    tells it, after the storage write, so that no process serves the token again.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        grace: int = 0,
        family_lifetime: int = 0,
        cache: TokenCache | None = None,
    ) -> None:
        self.storage = storage
        self.grace = grace
        self.family_lifetime = family_lifetime
        self.cache = cache
        if cache is not None:
            # A batch holds its writes until it ends: announce after them, once.
            storage.batch_wrappers.append(cache.ending)

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """Announce the tokens ended inside once, at the end (many grants, one wait)."""
        if self.cache is None:
            yield
            return
        with self.cache.ending():
            yield

    def _ended(self, keys: list[str] = (), grants: list[str] = ()) -> None:  # type: ignore[assignment]
        if self.cache is not None:
            self.cache.ended(keys, grants)

    # -- authorization codes --------------------------------------------------------
    def save_code(self, code: str, record: dict[str, Any]) -> None:
        self.storage.codes.put(token_digest(code), record)

    def find_code(self, code: str) -> AuthorizationCode | None:
        """The code's record, and its user's read with it where that is one round trip
        (one Redis); elsewhere the user is read when the grant asks for it, as before."""
        key = token_digest(code)
        record, owner = self._with_owner(self.storage.codes, key)
        return AuthorizationCode(key, record, owner) if record else None

    def _with_owner(self, table: Table, key: str) -> tuple[Record | None, Record | None]:
        users = self.storage.users
        if table.joins(users):
            return table.get_with(key, "user_id", users)
        return table.get(key), None

    def redeem_code(
        self,
        code: AuthorizationCode,
        token: dict[str, Any],
        fields: dict[str, Any],
        refresh_lifetime: int | None = None,
        entry: dict[str, Any] | None = None,
    ) -> bool:
        """Take the code and store its tokens and tombstone together; False if it was gone.

        ``entry``: an audit record (``token_issued``) written with them, or not at all.
        """
        now = time.time()
        family = {"family_start": now, "grant_scope": token.get("scope", "")}
        puts = self._pair(token, fields, family, now, refresh_lifetime)
        # The tombstone guards what the code bought: it lives as long as the longest of it.
        lifetimes = [(put.table.ttl if put.ttl is None else put.ttl) or 0 for put in puts]
        guarded = 0 if 0 in lifetimes else max(lifetimes)  # 0: one of them never expires
        tombstone = {
            "family": code.record["grant_id"],
            "client": code.record["client_id"],
            "code_challenge": code.record.get("code_challenge"),
            "code_challenge_method": code.record.get("code_challenge_method"),
        }
        puts.append(Put(self.storage.codes, USED_CODE + code.key, tombstone, guarded))
        puts += self._entry(entry)
        return self.storage.exchange((self.storage.codes, code.key), puts) is not None

    def replayed_code(self, code: str) -> dict[str, Any] | None:
        return self.storage.codes.get(USED_CODE + token_digest(code))

    # -- tokens ---------------------------------------------------------------------
    def save_token(
        self, token: dict[str, Any], fields: dict[str, Any], refresh_lifetime: int | None = None
    ) -> None:
        """Store the access token (and refresh token) of one token response, paired."""
        now = time.time()
        family = {"family_start": now, "grant_scope": token.get("scope", "")}
        for put in self._pair(token, fields, family, now, refresh_lifetime):
            put.table.put(put.key, put.record, put.ttl)

    def _pair(
        self,
        token: dict[str, Any],
        fields: dict[str, Any],
        family: dict[str, Any],
        now: float,
        lifetime: int | None = None,
    ) -> list[Put]:
        """The writes of one token response: the refresh token (if any), then the access token.

        ``lifetime``: the client's own refresh-token lifetime (None: the table's).
        """
        access_key = token_digest(token["access_token"])
        refresh = token.get("refresh_token")
        refresh_key = token_digest(refresh) if refresh else None
        base = dict(fields, scope=token.get("scope", ""), issued_at=int(now))
        # A DPoP key binds the access token; the refresh token only if ``refresh_jkt`` says.
        refresh_jkt = base.pop("refresh_jkt", None)
        access_record = dict(base, refresh_key=refresh_key)
        access = Put(self.storage.tokens, access_key, access_record, token.get("expires_in"))
        if not refresh_key:
            return [access]
        record = dict(base, access_key=access_key, **family)
        record.pop("jkt", None)
        if refresh_jkt:
            record["jkt"] = refresh_jkt
        ttl = self._refresh_ttl(family["family_start"], now, lifetime)
        return [Put(self.storage.refresh_tokens, refresh_key, record, ttl), access]

    def _refresh_ttl(
        self, family_start: float, now: float, lifetime: int | None = None
    ) -> int | None:
        """A refresh token's lifetime: the client's or the table's, cut at its family's
        absolute end (None: the table's)."""
        limits = [lifetime] if lifetime else []
        if self.family_lifetime:
            limits.append(math.ceil(family_start + self.family_lifetime - now))
        if not limits:
            return None
        table = self.storage.refresh_tokens.ttl
        return min(*limits, table) if table else min(limits)

    def find_access(self, token: str) -> StoredToken | None:
        key = token_digest(token)
        cache = self.cache
        if cache is None:
            record = self.storage.tokens.get(key)
            return StoredToken(key, record) if record else None
        record = cache.get(key)
        if record is not None:
            return StoredToken(key, record)
        generation = cache.generation()  # before the read: see token_cache, point 4
        record = self.storage.tokens.get(key)
        if not record or not cache.will_keep(generation):
            return StoredToken(key, record) if record else None
        if not cache.holds(key):  # not kept yet: mark it held, then read it again (point 5)
            lifetime = cache.mark_lifetime(record)
            try:
                with self.storage.tokens.backend.unbatched():  # type: ignore[attr-defined]
                    self.storage.tokens.put(HELD + key, {"held": True}, lifetime)
                record = self.storage.tokens.get(key)
            except StorageUnavailable:
                return StoredToken(key, record)  # served from the first read, not kept
            if not record:
                return None
        cache.put(key, record, generation)
        return StoredToken(key, dict(record))

    def _held(self, probe: Probe) -> bool:
        """Whether a process may keep the access token its held mark ``probe`` names
        (token_cache, point 5): as the exchange found it, else read now; unsure
        (storage failed): yes."""
        if probe.found is not None:
            return probe.found
        try:
            return probe.table.get(probe.key) is not None
        except StorageUnavailable:
            return True

    def find_refresh(self, token: str, with_owner: bool = False) -> StoredToken | None:
        """The refresh token's record; ``with_owner``: its user's too where that costs no
        round trip more (see :meth:`find_code`), for a refresh that issues tokens."""
        key = token_digest(token)
        table = self.storage.refresh_tokens
        if with_owner:
            record, owner = self._with_owner(table, key)
        else:
            record, owner = table.get(key), None
        return StoredToken(key, record, "refresh_token", owner) if record else None

    def rotate_refresh(
        self,
        old: StoredToken,
        token: dict[str, Any],
        fields: dict[str, Any],
        refresh_lifetime: int | None = None,
        entry: dict[str, Any] | None = None,
    ) -> bool:
        """Take the refresh token, end its access token, store the new pair and a tombstone
        (and ``entry``, an audit record: ``token_refreshed``).

        All together, or nothing (False: the token was gone, or its family is over).
        The family keeps its start, its original scope and tombstones of its
        :data:`ROTATIONS_REMEMBERED` newest rotations; older tombstones are deleted.
        """
        now = time.time()
        start = old.record.get("family_start", old.record.get("issued_at", now))
        ttl = self._refresh_ttl(start, now)
        if ttl is not None and ttl <= 0:
            return False
        rotated = [*old.record.get("rotated", []), ROTATED + old.key]
        family = {
            "family_start": start,
            "grant_scope": old.grant_scope,
            "rotated": rotated[-ROTATIONS_REMEMBERED:],
        }
        puts = self._pair(token, fields, family, now, refresh_lifetime)
        discards = [(self.storage.refresh_tokens, key) for key in rotated[:-ROTATIONS_REMEMBERED]]
        pair: str = old.record.get("access_key") or ""
        if pair:
            discards.append((self.storage.tokens, pair))
        puts.append(self._tombstone(old, puts[0].key, now))
        puts += self._entry(entry)
        # Whether some process may keep the old access token (token_cache, point 5): read
        # within the exchange where storage can, else after it.
        probe = Probe(self.storage.tokens, HELD + pair) if pair and self.cache is not None else None
        taken, failed = None, True
        try:
            taken = self.storage.exchange(
                (self.storage.refresh_tokens, old.key), puts, discards, probe
            )
            failed = False
        finally:  # a failure part-way may have ended the old access token already
            # Nobody holds it: nothing to announce, nor wait for. A failure announces. An
            # exchange that took nothing may still have ended it (a script whose reply was
            # lost, sent again by the driver's retry): the mark decides then too.
            if probe is not None and (failed or self._held(probe)):
                self._ended([pair])
        return taken is not None

    def _tombstone(self, old: StoredToken, child: str, now: float) -> Put:
        """A rotated token's tombstone: it lives no longer than the token would have."""
        expires_at = old.record.get("expires_at")
        ttl = max(1, math.ceil(expires_at - now)) if expires_at else 0
        record: dict[str, Any] = {"family": old.grant_id, "client": old.client_id}
        record.update(rotated_at=now, child=child)
        return Put(self.storage.refresh_tokens, ROTATED + old.key, record, ttl)

    def _entry(self, record: dict[str, Any] | None) -> list[Put]:
        """The audit table's write of ``record`` (as its ``append``), if there is one.

        In the exchange: on the token tables' backend it lands in their script or
        statement; elsewhere :meth:`Storage.exchange` writes it once the take won.
        """
        return [self.storage.audit.entry(record)] if record is not None else []

    def rotated_refresh(self, token: str) -> dict[str, Any] | None:
        return self.storage.refresh_tokens.get(ROTATED + token_digest(token))

    def within_grace(self, tombstone: dict[str, Any]) -> bool:
        """Whether a rotated token is the family's newest and was rotated within the grace."""
        if time.time() - tombstone.get("rotated_at", 0) >= self.grace:
            return False
        return self.storage.refresh_tokens.get(tombstone.get("child", "")) is not None

    def revoke_token(self, token: StoredToken) -> None:
        """Revoke one token and its pair (RFC 7009 §2.1: revoking either ends both)."""
        if token.kind == "refresh_token":
            pair = token.record.get("access_key")
            if pair and self.cache is not None:  # before the discard: see revoke_unknown
                tombstone = {"access_key": pair}
                ttl = math.ceil(self.cache.max_age)  # no cache entry outlives max_age
                self.storage.refresh_tokens.put(REVOKED + token.key, tombstone, ttl)
            self.storage.refresh_tokens.discard(token.key)
            if pair:
                self.storage.tokens.discard(pair)
                self._ended([pair])
        else:
            self.storage.tokens.discard(token.key)
            pair = token.record.get("refresh_key")
            if pair:
                self.storage.refresh_tokens.discard(pair)
            self._ended([token.key])

    def revoke_unknown(self, token: str) -> None:
        """RFC 7009 found nothing under ``token``: announce it anyway (token cache on).

        A revocation whose announcement failed answered 5xx after its writes; the
        client's retry lands here, and names again what the first one ended: the
        presented token, and a revoked refresh token's access token (its tombstone).
        """
        if self.cache is None:
            return
        key = token_digest(token)
        tombstone = self.storage.refresh_tokens.get(REVOKED + key)
        pair = tombstone.get("access_key") if tombstone else None
        self._ended([key, pair] if pair else [key])

    def revoke_grant(self, grant_id: str) -> int:
        """Delete every code and token of one grant; return how many tokens were live."""
        self.storage.codes.revoke_by_grant(grant_id)
        try:
            return self.storage.tokens.revoke_by_grant(
                grant_id
            ) + self.storage.refresh_tokens.revoke_by_grant(grant_id)
        finally:  # also after a partial failure: some may be gone
            self._ended(grants=[grant_id])

    # -- per user -------------------------------------------------------------------
    def grants_of_user(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """Return client_id -> the live grants (one summary per grant_id) the user gave."""
        by_grant: dict[str, dict[str, Any]] = {}
        for table in (self.storage.tokens, self.storage.refresh_tokens):
            for record in table.list_by_user(user_id):
                entry = by_grant.setdefault(record["grant_id"], dict(record))
                entry["issued_at"] = min(entry["issued_at"], record["issued_at"])
        clients: dict[str, list[dict[str, Any]]] = {}
        for grant in by_grant.values():
            clients.setdefault(grant["client_id"], []).append(grant)
        return clients

    def revoke_client_for_user(self, user_id: str, client_id: str) -> int:
        """Revoke every grant ``user_id`` gave ``client_id``, pending codes included."""
        grant_ids = {
            record["grant_id"]
            for table in (self.storage.tokens, self.storage.refresh_tokens, self.storage.codes)
            for record in table.list_by_user(user_id)
            if record.get("client_id") == client_id
        }
        with self.ending():
            return sum(self.revoke_grant(grant_id) for grant_id in grant_ids)

    def ended_unknown(self) -> None:
        """Tokens ended that can no longer be named (a retry finds them gone): with the
        token cache on, flush every process's cache (inside :meth:`ending`: at its end)."""
        if self.cache is not None:
            self.cache.ended_unknown()
