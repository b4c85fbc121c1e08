"""Remembered consent: what a user allowed a client, so a later sign-in need not ask again.

One record per (user, client) in the ``consents`` table: the scopes granted so far,
when, and (``oidc.consent_lifetime``; 0: until revoked at ``/review``) until when.
Only OpenID Connect requests (``scope`` holds ``openid``) are answered from it: a plain
OAuth 2.0 request asks every time, as the original server did and its partners expect.
A client marked ``skip_consent`` (first-party) is never asked; ``prompt=consent`` always
asks (OpenID Connect Core §3.1.2.1).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from ..storage import Table
from .scopes import OIDC_SCOPES

OPENID = "openid"


def describe(scope: str, described: dict[str, str]) -> str:
    """The words the pages use for ``scope``: the adapter's, else the OIDC ones."""
    return described.get(scope) or OIDC_SCOPES.get(scope, scope)


def _key(user_id: str, client_id: str) -> str:
    digest = hashlib.sha256(json.dumps([user_id, client_id]).encode()).hexdigest()
    return "consent:" + digest


class Consents:
    """The ``consents`` table in the words of the consent page and the review page."""

    def __init__(self, table: Table, lifetime: int = 0) -> None:
        self.table = table
        #: Seconds a grant is remembered from its last Allow (0: until revoked).
        self.lifetime = lifetime

    @classmethod
    def of(cls, state: Any) -> Consents:
        """The consents of the process's :class:`~app.State`."""
        return cls(state.storage.consents, state.settings.oidc.consent_lifetime)

    def record(self, user_id: str, client_id: str) -> dict[str, Any] | None:
        """The live remembered consent of ``user_id`` to ``client_id``, or None."""
        return self.table.get(_key(user_id, client_id))

    def granted(self, user_id: str, client_id: str) -> set[str]:
        """The scopes ``user_id`` has allowed ``client_id`` and not revoked since."""
        record = self.record(user_id, client_id)
        return set(record["scopes"]) if record else set()

    def remember(self, user_id: str, client_id: str, scopes: Iterable[str]) -> list[str]:
        """Add ``scopes`` to what is remembered (a new lifetime from now); return the union.

        Two answers for one user and client racing may keep only one answer's new
        scopes: the user is then asked for the others once more, nothing is over-granted.
        """
        old = self.record(user_id, client_id)
        known = list(old["scopes"]) if old else []
        union = known + [s for s in dict.fromkeys(scopes) if s not in known]
        now = time.time()
        record = {
            "user_id": user_id,
            "client_id": client_id,
            "scopes": union,
            "granted_at": old["granted_at"] if old else now,
            "updated_at": now,
        }
        self.table.put(_key(user_id, client_id), record, ttl=self.lifetime or 0)
        return union

    def forget(self, user_id: str, client_id: str) -> bool:
        """Forget the consent; return whether there was one."""
        return self.table.delete(_key(user_id, client_id))

    def of_user(self, user_id: str) -> dict[str, dict[str, Any]]:
        """client_id -> the live remembered consent ``user_id`` gave it."""
        return {record["client_id"]: record for record in self.table.list_by_user(user_id)}


def must_ask(client, requested: list[str], remembered: set[str], prompt_consent: bool) -> bool:
    """Whether the user has to be shown the consent page for this request."""
    if prompt_consent:
        return True
    if client.skip_consent:
        return False
    if OPENID not in requested:
        return True  # plain OAuth 2.0: asked every time
    return not set(requested) <= remembered


def code_scopes(requested: list[str], remembered: set[str], allowed: list[str]) -> list[str]:
    """An OpenID Connect code's scopes: what was asked and is remembered, plus what was
    allowed now (in the order asked)."""
    return [s for s in requested if s in remembered or s in allowed]
