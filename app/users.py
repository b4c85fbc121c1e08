"""Users of the existing site as this server knows them: the ``users`` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask_login import UserMixin

from .adapters.base import SiteUser
from .storage import Table


@dataclass
class User(UserMixin):
    """A signed-in user: flask-login's user and Authlib's resource owner."""

    id: str
    name: str
    site_token: str

    def get_id(self) -> str:
        return self.id

    def get_user_id(self) -> str:
        return self.id


class UserStore:
    """Remember the site's answer at login; load it again by id."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def remember(self, site_user: SiteUser) -> User:
        user = User(id=str(site_user.id), name=site_user.name, site_token=site_user.site_token)
        self.table.put(
            user.id, {"user_id": user.id, "name": user.name, "site_token": user.site_token}
        )
        return user

    def get(self, user_id: Any) -> User | None:
        if not user_id:
            return None
        record = self.table.get(str(user_id))
        if record is None:
            return None
        return User(id=str(user_id), name=record["name"], site_token=record["site_token"])
