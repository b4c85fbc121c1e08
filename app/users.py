"""Users of the existing site as this server knows them: the ``users`` table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask_login import UserMixin

from .adapters.base import SiteUser
from .oidc.scopes import USER_CLAIMS
from .storage import Table


@dataclass
class User(UserMixin):
    """A signed-in user: flask-login's user and Authlib's resource owner."""

    id: str
    name: str
    site_token: str
    #: The user's OpenID Connect claims from the site's login answer (``name``, ``email``...).
    claims: dict[str, Any] = field(default_factory=dict)

    def get_id(self) -> str:
        return self.id

    def get_user_id(self) -> str:
        return self.id


def login_claims(site_user: SiteUser) -> dict[str, Any]:
    """The standard claims of a login answer: ``name``, then those in ``extra``, nothing else
    (``extra`` may hold anything the adapter read; only claims are kept)."""
    claims: dict[str, Any] = {"name": site_user.name}
    claims.update({k: v for k, v in site_user.extra.items() if k in USER_CLAIMS})
    return claims


class UserStore:
    """Remember the site's answer at login; load it again by id."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def remember(self, site_user: SiteUser) -> User:
        user = User(
            id=str(site_user.id),
            name=site_user.name,
            site_token=site_user.site_token,
            claims=login_claims(site_user),
        )
        record = {"user_id": user.id, "name": user.name, "site_token": user.site_token}
        self.table.put(user.id, record | {"claims": user.claims})
        return user

    def get(self, user_id: Any) -> User | None:
        if not user_id:
            return None
        return self._user(user_id, self.table.get(str(user_id)))

    def of(self, user_id: Any, record: dict[str, Any] | None) -> User | None:
        """The user ``user_id`` from its record read already (with a code or refresh
        token, :meth:`~app.storage.base.Table.get_with`); read now if there was none."""
        if record is None:
            return self.get(user_id)
        return self._user(user_id, record) if user_id else None

    def _user(self, user_id: Any, record: dict[str, Any] | None) -> User | None:
        if record is None:
            return None
        return User(
            id=str(user_id),
            name=record["name"],
            site_token=record["site_token"],
            claims=record.get("claims") or {"name": record["name"]},
        )
