"""Stored codes and tokens, wrapped for Authlib's model mixins."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, TokenMixin


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    """A code record from the ``codes`` table (stored under the code's SHA-256)."""

    key: str
    record: dict[str, Any]
    #: The ``users`` record of its ``user_id``, read with it (None: not read, or none).
    owner: dict[str, Any] | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:
        # Authlib's PKCE extension reads ``code_challenge`` and ``code_challenge_method``.
        try:
            return self.__dict__["record"].get(name)
        except KeyError:  # pragma: no cover - during dataclass init
            raise AttributeError(name) from None

    def get_redirect_uri(self) -> str | None:
        return self.record.get("redirect_uri")

    def get_scope(self) -> str:
        return self.record.get("scope", "")

    def get_nonce(self) -> str | None:
        return self.record.get("nonce")

    def get_auth_time(self) -> int | None:
        return self.record.get("auth_time")

    def get_acr(self) -> str | None:
        return self.record.get("acr")

    def get_amr(self) -> list[str] | None:
        return self.record.get("amr")


@dataclass
class StoredToken(TokenMixin):
    """An access- or refresh-token record (stored under the token's SHA-256)."""

    key: str
    record: dict[str, Any]
    kind: str = "access_token"
    #: The ``users`` record of its ``user_id``, read with it (None: not read, or none).
    owner: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def client_id(self) -> str:
        return self.record["client_id"]

    @property
    def user_id(self) -> str | None:
        return self.record.get("user_id")

    @property
    def grant_id(self) -> str:
        return self.record["grant_id"]

    @property
    def scope(self) -> str:
        return self.record.get("scope", "")

    @property
    def grant_scope(self) -> str:
        """The scope the user granted, which every refresh of the family may ask for again."""
        return self.record.get("grant_scope", self.scope)

    def check_client(self, client: Any) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        # RFC 6749 §6: a refresh may ask for any part of the original grant's scope,
        # and one without ``scope`` gets all of it, however an earlier one narrowed.
        return self.grant_scope if self.kind == "refresh_token" else self.scope

    def get_expires_in(self) -> int:
        expires_at = self.record.get("expires_at")
        return max(0, int(expires_at - time.time())) if expires_at else 0

    def get_expires_at(self) -> int:
        return int(self.record.get("expires_at") or 0)

    def is_expired(self) -> bool:
        expires_at = self.record.get("expires_at")
        return expires_at is not None and expires_at <= time.time()

    def is_revoked(self) -> bool:
        # Revoked tokens are deleted, so a token read back from storage is never revoked.
        return False

    def get_client_id(self) -> str:
        return self.client_id

    def get_user(self) -> Any:
        return self.user_id
