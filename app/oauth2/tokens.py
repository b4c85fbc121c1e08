"""The grant store: codes, access and refresh tokens as hashed records, linked by grant.

Every authorization (one consent, one client-credentials token) gets a ``grant_id``;
tokens rotated from it keep it, so revoking a grant, or a replayed code or refresh
token, removes every token descended from it in two deletes.
"""

from __future__ import annotations

import time
from typing import Any

from ..secrets_hash import new_secret, token_digest
from ..storage import Storage
from .models import AuthorizationCode, StoredToken

#: Tombstones let a replayed code or rotated refresh token be recognised after use.
USED_CODE = "used:"
ROTATED = "rotated:"


def new_grant_id() -> str:
    return new_secret(16)


class GrantStore:
    """Storage verbs for the OAuth objects, in the words of the protocol."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- authorization codes --------------------------------------------------------
    def save_code(self, code: str, record: dict[str, Any]) -> None:
        self.storage.codes.put(token_digest(code), record)

    def find_code(self, code: str) -> AuthorizationCode | None:
        key = token_digest(code)
        record = self.storage.codes.get(key)
        return AuthorizationCode(key, record) if record else None

    def consume_code(self, code: AuthorizationCode) -> bool:
        """Take the code atomically; leave a tombstone so a replay can be recognised."""
        if self.storage.codes.take(code.key) is None:
            return False
        # Unindexed fields: a tombstone is no live grant to list or to revoke.
        tombstone = {"family": code.record["grant_id"], "client": code.record["client_id"]}
        self.storage.codes.put(USED_CODE + code.key, tombstone, ttl=self.storage.tokens.ttl)
        return True

    def replayed_code(self, code: str) -> dict[str, Any] | None:
        return self.storage.codes.get(USED_CODE + token_digest(code))

    # -- tokens ---------------------------------------------------------------------
    def save_token(self, token: dict[str, Any], fields: dict[str, Any]) -> None:
        """Store the access token (and refresh token) of one token response, paired."""
        now = int(time.time())
        access_key = token_digest(token["access_token"])
        refresh = token.get("refresh_token")
        refresh_key = token_digest(refresh) if refresh else None
        base = dict(fields, scope=token.get("scope", ""), issued_at=now)
        if refresh_key:
            self.storage.refresh_tokens.put(refresh_key, dict(base, access_key=access_key))
        self.storage.tokens.put(
            access_key, dict(base, refresh_key=refresh_key), ttl=token.get("expires_in")
        )

    def find_access(self, token: str) -> StoredToken | None:
        key = token_digest(token)
        record = self.storage.tokens.get(key)
        return StoredToken(key, record) if record else None

    def find_refresh(self, token: str) -> StoredToken | None:
        key = token_digest(token)
        record = self.storage.refresh_tokens.get(key)
        return StoredToken(key, record, "refresh_token") if record else None

    def rotate_refresh(self, old: StoredToken) -> bool:
        """Take the refresh token atomically and end its access token; False if lost a race."""
        if self.storage.refresh_tokens.take(old.key) is None:
            return False
        if old.record.get("access_key"):
            self.storage.tokens.discard(old.record["access_key"])
        tombstone = {"family": old.grant_id, "client": old.client_id}
        self.storage.refresh_tokens.put(ROTATED + old.key, tombstone)
        return True

    def rotated_refresh(self, token: str) -> dict[str, Any] | None:
        return self.storage.refresh_tokens.get(ROTATED + token_digest(token))

    def revoke_token(self, token: StoredToken) -> None:
        """Revoke one token and its pair (RFC 7009 §2.1: revoking either ends both)."""
        if token.kind == "refresh_token":
            self.storage.refresh_tokens.discard(token.key)
            pair = token.record.get("access_key")
            if pair:
                self.storage.tokens.discard(pair)
        else:
            self.storage.tokens.discard(token.key)
            pair = token.record.get("refresh_key")
            if pair:
                self.storage.refresh_tokens.discard(pair)

    def revoke_grant(self, grant_id: str) -> int:
        """Delete every code and token of one grant; return how many tokens were live."""
        self.storage.codes.revoke_by_grant(grant_id)
        return self.storage.tokens.revoke_by_grant(
            grant_id
        ) + self.storage.refresh_tokens.revoke_by_grant(grant_id)

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
        return sum(self.revoke_grant(grant_id) for grant_id in grant_ids)
