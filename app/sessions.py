"""Server-side sessions in the ``session`` table, loaded only when a view touches them.

The cookie holds a random id; storage holds the data under the id's SHA-256, so a
login made through one worker or machine holds on every other, and logout ends it
everywhere. Endpoints that never read the session (``/token``, ``/api/*``) cost no
storage round trip for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from flask import request
from flask import request as flask_request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from .audit import printable
from .secrets_hash import new_secret, token_digest
from .storage import StorageUnavailable, Table

log = logging.getLogger("oauth2")

#: Rewrite an unchanged session at most this often, to slide its expiry.
TOUCH_EVERY = 60


class StoredSession(CallbackDict, SessionMixin):
    """A session dict that reads storage on first use."""

    def __init__(self, sid: str | None, loader: Callable[[str], dict[str, Any] | None]) -> None:
        super().__init__(None, lambda _self: setattr(self, "modified", True))
        self.sid = sid
        self.old_sid: str | None = None
        self.modified = False
        self.loaded = sid is None
        self.failed = False
        self.touched_at = 0.0
        self._loader = loader

    def _load(self) -> None:
        if self.loaded:
            return
        record = self._loader(self.sid) if self.sid else None
        self.loaded = True  # only now: a failed read must not look like an empty session
        if record is None:
            self.sid = None
            return
        self.touched_at = record.pop("_touched", 0.0)
        dict.update(self, record)

    def regenerate(self) -> None:
        """Give the session a new id (at login); the old id stops working."""
        self._load()
        if self.sid and not self.old_sid:
            self.old_sid = self.sid
        self.sid = None
        self.modified = True

    def unavailable(self) -> None:
        """Storage failed in this request: read as empty from now on, save nothing."""
        dict.clear(self)
        self.loaded = self.failed = True

    def end(self) -> None:
        """Forget everything (at logout), here and in storage."""
        self.regenerate()
        dict.clear(self)

    @property
    def new(self) -> bool:  # type: ignore[override]
        return self.sid is None


def _loading(name: str) -> Callable[..., Any]:
    method = getattr(CallbackDict, name)

    def wrapper(self: StoredSession, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return method(self, *args, **kwargs)

    wrapper.__name__ = name
    return wrapper


for _name in (
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__contains__",
    "__iter__",
    "__len__",
    "get",
    "pop",
    "setdefault",
    "update",
    "clear",
    "keys",
    "items",
    "values",
    "popitem",
    "copy",
    "__repr__",
    "__eq__",
):
    setattr(StoredSession, _name, _loading(_name))


class StoredSessionInterface(SessionInterface):
    """Flask session interface over a storage :class:`Table`."""

    def __init__(
        self, table: Table, batch: Callable[[], AbstractContextManager[Any]] | None = None
    ) -> None:
        self.table = table
        # Storage.batch: a renewed session's delete and put go in one round trip.
        self.batch = batch or contextlib.nullcontext

    def get_cookie_secure(self, app) -> bool:
        # Secure whenever this request came over TLS (directly, or per a trusted proxy).
        return bool(app.config["SESSION_COOKIE_SECURE"]) or flask_request.is_secure

    def open_session(self, app, request) -> StoredSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        return StoredSession(sid or None, lambda s: self.table.get(token_digest(s)))

    def save_session(self, app, session, response) -> None:
        try:
            self._save(app, session, response)
        except StorageUnavailable as exc:
            # The same 503 a view's outage gets (JSON or the error page), in place.
            from .errors import unavailable_response

            log.error("session storage unavailable on %s: %s", printable(request.path), exc)
            answer = unavailable_response()
            response.status_code = answer.status_code
            response.set_data(answer.get_data())
            response.content_type = answer.content_type
            response.headers["Retry-After"] = answer.headers["Retry-After"]

    def _save(self, app, session: StoredSession, response) -> None:
        # The cookie changes only once the writes landed: a failed save answers 503
        # and leaves the browser's cookie as it was.
        with self.batch():
            set_cookie = self._write(app, session)
        if set_cookie is not None:
            set_cookie(response)

    def _write(self, app, session: StoredSession) -> Callable[[Any], None] | None:
        """Write the session; return what to do to the response's cookie, if anything."""
        if session.failed:
            return None  # the request failed on storage: keep the stored session and cookie
        if session.old_sid:
            self.table.discard(token_digest(session.old_sid))
        name, domain, path = (
            self.get_cookie_name(app),
            self.get_cookie_domain(app),
            self.get_cookie_path(app),
        )
        if not session.loaded:
            return None
        if not dict.__len__(session):
            if session.sid or session.old_sid:
                if session.sid:
                    self.table.discard(token_digest(session.sid))
                return lambda response: response.delete_cookie(name, domain=domain, path=path)
            return None
        now = time.time()
        if not session.modified and now - session.touched_at < TOUCH_EVERY:
            return None
        sid = session.sid = session.sid or new_secret(32)
        self.table.put(token_digest(sid), dict(dict.items(session), _touched=now))
        secure, samesite = self.get_cookie_secure(app), self.get_cookie_samesite(app)

        def set_cookie(response: Any) -> None:
            response.set_cookie(
                name,
                sid,
                httponly=True,
                path=path,
                domain=domain,
                secure=secure,
                samesite=samesite,
                max_age=self.table.ttl,
            )
            response.vary.add("Cookie")

        return set_cookie
