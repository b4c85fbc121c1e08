"""Server-side sessions in the ``session`` table, loaded only when a view touches them.

The cookie holds a random id; storage holds the data under the id's SHA-256, so a
login made through one worker or machine holds on every other, and logout ends it
everywhere. Endpoints that never read the session (``/token``, ``/api/*``) cost no
storage round trip for it.

A stranger's visit stores nothing: until someone signs in, what the session holds (the
CSRF secret of the sign-in form, Flask-Login's flags) travels in a second, signed
cookie, so no row is written for a visitor who never signs in. Signing in starts a
stored session with a new id and a new CSRF secret, which ends a fixed time
(``auth_server.session_max_age``) after sign-in however active it is.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from flask import request
from flask import request as flask_request
from flask.sessions import SecureCookieSessionInterface, SessionInterface, SessionMixin
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.datastructures import CallbackDict

from .audit import printable
from .oidc.subjects import SECTORED_SID
from .secrets_hash import new_secret, token_digest
from .storage import StorageUnavailable, Table

log = logging.getLogger("oauth2")

#: Rewrite an unchanged session at most this often, to slide its expiry.
TOUCH_EVERY = 60

#: Flask-Login's key for the signed-in user: a session holding it is stored.
USER_KEY = "_user_id"
#: Flask-WTF's key for the CSRF secret (``WTF_CSRF_FIELD_NAME``'s default).
CSRF_KEY = "csrf_token"
#: When the stored session began (sign-in), for its absolute lifetime and the ID Token's
#: ``auth_time``.
SIGNED_IN_AT = "_signed_in_at"
#: The OpenID Connect session id (``sid``) of this sign-in, new at each sign-in.
SID = "_sid"
#: The clients that were sent a code or an ID Token in this session (for logout).
RELYING_PARTIES = "_rps"
#: How this sign-in was made (``amr``), set by the second step (:mod:`app.oidc.signin`).
AMR_KEY = "_amr"
#: When this session last showed a second factor (sign-in's second step, or a
#: confirmation on ``/account``): adding a factor needs it recent (:mod:`app.views.account`).
SECOND_FACTOR_AT = "_2fa_at"
#: Every fact of a sign-in: a new sign-in starts without any of the previous one's.
SIGN_IN_KEYS = (USER_KEY, SIGNED_IN_AT, SID, RELYING_PARTIES, AMR_KEY, SECOND_FACTOR_AT)


class StoredSession(CallbackDict, SessionMixin):
    """A session dict that reads storage on first use."""

    def __init__(
        self,
        sid: str | None,
        loader: Callable[[str], Loaded],
        anonymous: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(None, lambda _self: setattr(self, "modified", True))
        self.sid = sid
        self.old_sid: str | None = None
        self.modified = False
        self.loaded = sid is None
        self.failed = False
        self.touched_at = 0.0
        #: The signed-in user's id and ``users`` record, read with the session (the
        #: user loader's answer, :meth:`owner_record`); None if not read with it.
        self.owner: tuple[str, dict[str, Any] | None] | None = None
        self._loader = loader
        self.anonymous = anonymous or {}  # what the signed visitor cookie carried
        if sid is None:
            dict.update(self, self.anonymous)

    def _load(self) -> None:
        if self.loaded:
            return
        record, owner = self._loader(self.sid) if self.sid else (None, None)
        self.loaded = True  # only now: a failed read must not look like an empty session
        if record is None:
            if self.sid and not self.old_sid:
                self.old_sid = self.sid  # ended by its absolute lifetime: delete the row
            self.sid = None
            dict.update(self, self.anonymous)
            return
        self.touched_at = record.pop("_touched", 0.0)
        dict.update(self, record)
        self.owner = owner  # (the loader took its id from this record)

    def owner_record(self, user_id: str) -> tuple[bool, dict[str, Any] | None]:
        """``(True, record)`` when ``user_id``'s ``users`` record (``None``: there is
        none) was read with this session, else ``(False, None)``: read it."""
        owner = self.owner
        if owner is not None and owner[0] == user_id:
            return True, owner[1]
        return False, None

    def regenerate(self) -> None:
        """Give the session a new id; the old id stops working."""
        self._load()
        if self.sid and not self.old_sid:
            self.old_sid = self.sid
        self.sid = None
        self.owner = None  # the user read with the old id is not this session's
        self.modified = True

    def signed_in(self) -> None:
        """Start the signed-in session: a new id, a new CSRF secret, its lifetime from now."""
        self.regenerate()
        for key in SIGN_IN_KEYS:  # nothing of a previous sign-in in this browser carries over
            self.pop(key, None)
        # The new secret is made here (random, as Flask-WTF makes one) and stored with the
        # new id, so the first form after sign-in (the consent page) writes nothing.
        self[CSRF_KEY] = secrets.token_hex(20)
        self[SIGNED_IN_AT] = time.time()
        self[SID] = SECTORED_SID + new_secret(16)

    @property
    def stored(self) -> bool:
        """Whether this session lives in storage (someone signed in) or in the signed cookie."""
        return self.sid is not None or USER_KEY in dict.keys(self)

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


def note_relying_party(session: StoredSession, client_id: str) -> None:
    """Remember that ``client_id`` signed the user in during this session (for logout)."""
    parties = session.get(RELYING_PARTIES, [])
    if client_id not in parties:
        session[RELYING_PARTIES] = [*parties, client_id]


def relying_parties(session: StoredSession) -> list[str]:
    """The clients :func:`note_relying_party` recorded in this session."""
    return list(session.get(RELYING_PARTIES, []))


class VisitorCookie(SecureCookieSessionInterface):
    """Flask's signed cookie session, under its own salt: a visitor's session."""

    salt = "oauth2-visitor-session"


#: What a session loader answers: the stored session (None: none), and the signed-in
#: user's id and ``users`` record when they were read with it.
Loaded = tuple[dict[str, Any] | None, tuple[str, dict[str, Any] | None] | None]


class StoredSessionInterface(SessionInterface):
    """Flask session interface over a storage :class:`Table`.

    With ``users`` (the ``users`` table), a signed-in session is read with its user's
    record (:meth:`~app.storage.base.Table.get_with`: one round trip on one Redis), which
    the sign-in manager's user loader then takes instead of reading it again."""

    def __init__(
        self,
        table: Table,
        batch: Callable[[], AbstractContextManager[Any]] | None = None,
        max_age: int | None = None,
        users: Table | None = None,
    ) -> None:
        self.table = table
        self.users = users
        # Storage.batch: a renewed session's delete and put go in one round trip.
        self.batch = batch or contextlib.nullcontext
        self.max_age = max_age
        self.visitor = VisitorCookie()

    def get_cookie_secure(self, app) -> bool:
        # Secure whenever this request came over TLS (directly, or per a trusted proxy).
        return bool(app.config["SESSION_COOKIE_SECURE"]) or flask_request.is_secure

    def visitor_cookie_name(self, app) -> str:
        return self.get_cookie_name(app) + "_visitor"

    def open_session(self, app, request) -> StoredSession:
        if not request.cookies:  # API and token calls: no cookie to look for
            return StoredSession(None, self._record)
        sid = request.cookies.get(self.get_cookie_name(app))
        return StoredSession(sid or None, self._record, self._visitor_data(app, request))

    def _record(self, sid: str) -> Loaded:
        """The stored session, unless its absolute lifetime since sign-in has run out, and
        its user's record when read with it."""
        owner = None
        if self.users is not None and self.table.joins(self.users):
            record, user = self.table.get_with(token_digest(sid), USER_KEY, self.users)
            user_id = record.get(USER_KEY) if record else None
            if isinstance(user_id, str) and user_id:
                owner = (user_id, user)
        else:
            record = self.table.get(token_digest(sid))
        if record and self.max_age and time.time() >= record.get(SIGNED_IN_AT, 0) + self.max_age:
            return None, None
        return record, owner

    def _visitor_data(self, app, request) -> dict[str, Any]:
        value = request.cookies.get(self.visitor_cookie_name(app))
        if not value:
            return {}
        try:
            data = self._signer(app).loads(value, max_age=self.table.ttl)
        except BadData:
            return {}
        return data if isinstance(data, dict) else {}

    def _signer(self, app) -> URLSafeTimedSerializer:
        signer = self.visitor.get_signing_serializer(app)
        if signer is None:  # settings always set one; Flask's type allows none
            raise RuntimeError("SECRET_KEY is not set")
        return signer

    def save_session(self, app, session, response) -> None:
        if session.sid is None and not (session.modified or session.old_sid or session.anonymous):
            return  # a visitor's session nothing touched (API and token calls): no cookie
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
        # The cookies change only once the writes landed: a failed save answers 503
        # and leaves the browser's cookies as they were.
        with self.batch():
            cookies = self._write(app, session)
        for name, value in cookies.items():
            self._set_cookie(app, response, name, value)

    def _write(self, app, session: StoredSession) -> dict[str, str | None]:
        """Write the session; return the cookies to set (``None``: delete)."""
        if session.failed:
            return {}  # the request failed on storage: keep the stored session and cookie
        if session.old_sid:
            self.table.discard(token_digest(session.old_sid))
        if not session.loaded:
            return {}
        name, visitor = self.get_cookie_name(app), self.visitor_cookie_name(app)
        cookies: dict[str, str | None] = {name: None} if session.old_sid else {}
        if not session.stored:
            if session.modified and dict.__len__(session):
                cookies[visitor] = self._signer(app).dumps(dict(dict.items(session)))
            elif session.anonymous and not dict.__len__(session):
                cookies[visitor] = None
            return cookies
        if session.anonymous:
            cookies[visitor] = None  # signed in: the visitor's cookie is done with
        if not dict.__len__(session):
            self.table.discard(token_digest(str(session.sid)))
            return {**cookies, name: None}
        now = time.time()
        if not session.modified and now - session.touched_at < TOUCH_EVERY:
            return {}
        sid = session.sid = session.sid or new_secret(32)
        self.table.put(token_digest(sid), dict(dict.items(session), _touched=now))
        return {**cookies, name: sid}

    def _set_cookie(self, app, response: Any, name: str, value: str | None) -> None:
        """Set a cookie, or delete it (``None``), with the session cookie's attributes."""
        response.set_cookie(
            name,
            value or "",
            httponly=True,
            path=self.get_cookie_path(app),
            domain=self.get_cookie_domain(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
            max_age=self.table.ttl if value else 0,
            expires=None if value else 0,
        )
        response.vary.add("Cookie")
