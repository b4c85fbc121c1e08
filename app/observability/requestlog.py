"""Request ids and one structured log line per request (logger ``oauth2.request``).

The id comes from the caller's ``X-Request-Id`` when it is short and plain (letters,
digits, ``._:+/=-``, at most 128), else it is made here; every response carries it back,
and every line logged while the request is served carries it too (:data:`REQUEST_ID`).

The line names the method, the path (never the query string, where a code, a state or
an ``id_token_hint`` may travel), the route, the status, the time taken, the client when
known and a keyed hash of the user, never a token, code or secret.

It runs on every request, so it is kept cheap (README "Operating it" prices it): the
request's facts live in its WSGI environ (no ``g`` look-ups), the hooks are one
``before_request`` and one ``after_request`` (which also counts the request when metrics
are on). When the logging set-up is the standard one (one stream handler of ours, nothing
filtering: :mod:`.direct`), the line is rendered from its fields and written to that
handler's stream as the handler would write it, as the request ends, without a record;
otherwise it is handed to the logger as one record made from a template (no caller
look-up), its text rendered only if a handler formats it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, current_app, session

from .. import context
from ..audit import _PLAIN, fields_line
from ..logconfig import REQUEST_ID, iso_time, json_line, text_line
from ..paths import HEALTH, READY
from . import direct

#: The load balancers' and orchestrators' probes (``logging.probe_lines``).
PROBES = frozenset((HEALTH, READY))

log = logging.getLogger("oauth2.request")

HEADER = "X-Request-Id"
SAFE_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
#: Longest path logged; longer ones are clipped (the route names the endpoint anyway).
MAX_PATH = 200
NOTICE = 25
#: Users whose hash each app keeps (then it starts again): the recent ones.
USER_HASHES = 4096
#: Rendered parts of request lines each app keeps (:meth:`_Records.facts_text`), as many.
KEPT_PARTS = 4096

#: Where a request keeps its id, its start and who it was for: its WSGI environ.
ID_KEY = "oauth2.request_id"
STARTED_KEY = "oauth2.started"
CLIENT_KEY = "oauth2.log_client"
USER_KEY = "oauth2.log_user"
_OFFERED = "HTTP_X_REQUEST_ID"

#: What :func:`init_app` may be given to count each answered request (metrics):
#: ``(route rule or None, method, status, seconds, path, response)``; the response is
#: None for an answer the gateway's fast path made without one.
Observer = Callable[[str | None, str, int, float, str, "Response | None"], None]

#: What a request line is held as until it is written (:meth:`_Records.fields` makes its
#: fields): method, path, route, status, seconds taken, client, user id, address, its id.
Facts = tuple[str, str, "str | None", int, float, "str | None", "str | None", "str | None", str]


#: Request ids made at once from one read of the system's random source (below).
IDS_AT_ONCE = 256


#: The version 4 UUID's fixed bits, for :data:`IDS_AT_ONCE` ids side by side: what
#: each id's random bits keep (all but the version's and the variant's), and those bits.
_ID_KEEP = int.from_bytes(bytes.fromhex("ffffffffffff0fff3fffffffffffffff") * IDS_AT_ONCE, "big")
_ID_SET = int.from_bytes(bytes.fromhex("00000000000040008000000000000000") * IDS_AT_ONCE, "big")


def _made_ids() -> Iterator[str]:
    """:data:`IDS_AT_ONCE` random (version 4) UUIDs' 32 hex digits each, as
    ``uuid.uuid4().hex`` makes them, from one ``os.urandom`` call (the fixed bits set
    in all of them at once, as one number)."""
    size = 16 * IDS_AT_ONCE
    raw = int.from_bytes(os.urandom(size), "big") & _ID_KEEP | _ID_SET
    text = raw.to_bytes(size, "big").hex()
    return iter([text[at : at + 32] for at in range(0, 2 * size, 32)])


#: This process's ids not handed out yet (``next`` on a list's iterator is atomic).
_ids: Iterator[str] = iter(())


def new_id() -> str:
    """A random (version 4) UUID's 32 hex digits, as ``uuid.uuid4().hex``. Read from the
    system's random source :data:`IDS_AT_ONCE` at a time: a read a request was a system
    call that let go of the GIL (a thread switch under load) for an id."""
    global _ids
    try:
        return next(_ids)
    except StopIteration:
        _ids = _made_ids()  # two threads here at once: each its own fresh ids, no repeat
        return next(_ids)


def _forget_ids() -> None:
    """In a forked child: the parent's ids are the parent's (a worker hands out its own)."""
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_ids)


def request_id(offered: str | None) -> str:
    """The caller's id when safe to log and echo, else a new random one."""
    if offered and SAFE_ID.fullmatch(offered):
        return offered
    return new_id()


def note(client_id: Any = None, user_id: Any = None) -> None:
    """Tell the request line who the request was for (the audit trail calls this)."""
    note_in(context.request().environ, client_id, user_id)


def note_in(environ: dict[str, Any], client_id: Any = None, user_id: Any = None) -> None:
    """:func:`note` for the request of WSGI environ ``environ`` (no request context)."""
    if client_id and not environ.get(CLIENT_KEY):
        environ[CLIENT_KEY] = str(client_id)
    if user_id and not environ.get(USER_KEY):
        environ[USER_KEY] = str(user_id)


def user_hash(user_id: str, key: bytes | None = None) -> str:
    """A keyed hash of the user id: the same user's lines match, nobody can reverse it."""
    if key is None:
        key = str(current_app.secret_key or "").encode()
    return hmac.digest(key, user_id.encode(), hashlib.sha256).hex()[:16]


def _begin() -> None:
    environ = context.request().environ
    rid = environ.get(ID_KEY)
    if rid is None:
        _start(environ)
    else:  # begun by the gateway's fast path, which handed the request on: the same id
        REQUEST_ID.set(rid)


def _start(environ: dict[str, Any]) -> str:
    offered = environ.get(_OFFERED)
    rid = offered if offered and SAFE_ID.fullmatch(offered) else new_id()
    environ[ID_KEY] = rid
    environ[STARTED_KEY] = time.perf_counter()
    REQUEST_ID.set(rid)
    return rid


def _signed_in_user(environ: dict[str, Any]) -> str | None:
    """The signed-in user's id, only if this request already opened its session (none
    without a cookie: an API or token request, looked at no further)."""
    if "HTTP_COOKIE" not in environ or not getattr(session, "loaded", True):
        return None
    user_id = session.get("_user_id")
    return str(user_id) if user_id else None


def line_text(fields: dict[str, Any]) -> str:
    """``fields_line(fields)`` for keys of lowercase letters and ``_``: the line's
    ``key=value`` pairs, each value escaped by ``printable``. Its common case, every value
    a plain string (``_PLAIN``: nothing ``printable`` would quote; the strings are
    looked at together, joined by a plain ``!``), an int or a float (whose text is plain),
    is joined at once."""
    pairs = []
    texts = []
    for key, value in fields.items():
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif kind is not int and kind is not float:
            return fields_line(fields)
        pairs.append(f"{key}={value}")
    if texts and not (all(texts) and _plain("!".join(texts))):
        return fields_line(fields)
    return " ".join(pairs)


#: Whether a string is one plain token as it is (``printable`` leaves it alone).
_plain = _PLAIN.fullmatch
#: A part of a line kept as not plain (:func:`_pairs`): such a line is made of its fields.
_NOT_PLAIN = "\x00"


def _pairs(pairs: tuple[tuple[str, Any], ...]) -> str:
    """`` key=value`` for each pair whose value is not None; :data:`_NOT_PLAIN` when a
    value is not one plain string."""
    text = ""
    for name, value in pairs:
        if value is None:
            continue
        if type(value) is not str or not _plain(value):
            return _NOT_PLAIN
        text += f" {name}={value}"
    return text


def _keep(kept: dict[tuple[Any, ...], str], key: tuple[Any, ...], text: str) -> str:
    """Keep ``text`` as ``key``'s part in ``kept`` (emptied once it holds
    :data:`KEPT_PARTS`)."""
    if len(kept) >= KEPT_PARTS:
        kept.clear()
    kept[key] = text
    return text


class _Line:
    """The text of a request line, rendered only when a handler formats the record
    (``str()``; the JSON format reads the record's ``fields`` instead)."""

    __slots__ = ("fields", "text")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.text: str | None = None

    def __str__(self) -> str:
        if self.text is None:
            self.text = line_text(self.fields)
        return self.text


class _Records:
    """Log records of the request line from a template made once (a real ``LogRecord``'s
    attributes), with the time, thread and process filled in per line: what
    ``Logger.log`` would make, without its caller look-up and record factory."""

    def __init__(self, logger: logging.Logger) -> None:
        template = logger.makeRecord(
            logger.name, NOTICE, __file__, 0, "request %s", (None,), None, "finish"
        )
        self.template = dict(vars(template))
        self.logger = logger
        self.name: str = template.name
        self.level: str = template.levelname
        self.threads = logging.logThreads
        self.processes = logging.logProcesses
        #: The user's hash in a line made of a request's facts (its app's key).
        self.hashed: Callable[[str], str] = user_hash
        #: Rendered parts of lines (:meth:`facts_text`): method, path and route; client,
        #: user and address.
        self._heads: dict[tuple[Any, ...], str] = {}
        self._tails: dict[tuple[Any, ...], str] = {}
        #: What :meth:`render` puts between a line's time and its text (our text format).
        self.text_prefix = text_line("", self.level, self.name, "request ")

    def make(self, line: _Line, now: float) -> logging.LogRecord:
        record = logging.LogRecord.__new__(logging.LogRecord)
        values = vars(record)
        values.update(self.template)
        values["created"] = now
        values["msecs"] = int((now - int(now)) * 1000) + 0.0
        values["relativeCreated"] = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
        if self.threads:
            values["thread"] = threading.get_ident()
            values["threadName"] = threading.current_thread().name
        if self.processes:
            values["process"] = os.getpid()
        values["args"] = (line,)
        values["fields"] = line.fields
        values["summary"] = "request"
        return record

    def emit(self, line: dict[str, Any] | Facts, now: float) -> None:
        """Log the line made at ``now``, given as its fields or as a request's facts (whose
        fields :meth:`fields` makes when the line is rendered: nothing of it is worked out
        while the request runs): straight to the stream when the set-up is the standard
        one (:mod:`.direct`, held there unrendered: :meth:`render`), else as a record
        through ``Logger.handle``."""
        out = direct.route(self.logger, NOTICE)
        if out is None:
            self.logger.handle(self.make(_Line(self.fields(line)), now))
            return
        handler, kind = out
        direct.HOLDER.hold(handler, (self, kind, now, line, REQUEST_ID.get()))

    def fields(self, line: dict[str, Any] | Facts) -> dict[str, Any]:
        """The fields of a held line: given as they are, or made of a request's facts."""
        if isinstance(line, dict):
            return line
        method, path, rule, status, took, client, user, ip, rid = line
        return {
            "method": method,
            "path": path[:MAX_PATH],
            "route": rule,
            "status": status,
            "duration_ms": round(took * 1000, 2),
            "client_id": client,
            "user": self.hashed(user) if user else None,
            "ip": ip,
            "request_id": rid,
        }

    def render(self, entry: tuple[Any, ...]) -> str:
        """The text of a line :meth:`emit` held: ``(self, kind, now, line, request id)``,
        as the handler's formatter would make it of the record while the request ran."""
        _, kind, now, line, rid = entry
        if kind is direct.TEXT:
            text = self.facts_text(line) if type(line) is tuple else None
            if text is None:
                text = line_text(self.fields(line))
            return iso_time(now) + self.text_prefix + text
        return json_line(now, self.level, self.name, "request", self.fields(line), request_id=rid)

    def facts_text(self, line: Facts) -> str | None:
        """``line_text(self.fields(line))`` made straight from the facts in the common
        case (every string plain and not empty, the status an int, the time a float);
        else None. The text of the request's method, path and route, and of its client,
        user and address, is made once for each and kept (:meth:`_head`, :meth:`_tail`):
        a worker's lines repeat them, and only the status, time and id change."""
        method, path, rule, status, took, client, user, ip, rid = line
        if type(status) is not int or type(took) is not float:
            return None
        if type(rid) is not str or not _plain(rid):
            return None
        head = self._heads.get((method, path, rule))
        if head is None:
            head = self._head((method, path, rule))
        tail = self._tails.get((client, user, ip))
        if tail is None:
            tail = self._tail((client, user, ip))
        if head is _NOT_PLAIN or tail is _NOT_PLAIN:
            return None
        return f"{head} status={status} duration_ms={round(took * 1000, 2)}{tail} request_id={rid}"

    def _head(self, key: tuple[Any, ...]) -> str:
        """The text of a line's method, path (clipped) and route, kept: the line's start."""
        method, path, rule = key
        text = _NOT_PLAIN
        if type(method) is str and type(path) is str:
            text = _pairs((("method", method), ("path", path[:MAX_PATH]), ("route", rule)))
        return _keep(self._heads, key, text if text is _NOT_PLAIN else text[1:])

    def _tail(self, key: tuple[Any, ...]) -> str:
        """The text of a line's client, user (hashed) and address, kept."""
        client, user, ip = key
        hashed = self.hashed(user) if user else None
        pairs = (("client_id", client), ("user", hashed), ("ip", ip))
        return _keep(self._tails, key, _pairs(pairs))

    def record(self, entry: tuple[Any, ...]) -> logging.LogRecord:
        """The record of a line :meth:`emit` held (for ``handleError``)."""
        return self.make(_Line(self.fields(entry[3])), entry[2])


class RequestLine:
    """One app's request line and request counts: what its ``after_request`` hook does
    with an answered request, callable without a request context too (the gateway's
    fast path, :mod:`app.gateway`, answers some requests without one)."""

    def __init__(self, app: Flask, observe: Observer | None) -> None:
        logging_config = app.extensions["oauth2"].settings.config.logging
        self.lines = logging_config.requests
        #: Routes whose passing answers get no line (``logging.probe_lines: false``).
        self.quiet = frozenset() if logging_config.probe_lines else PROBES
        direct.HOLDER.seconds = logging_config.requests_held
        self.key = str(app.secret_key or "").encode()
        self.observe = observe
        self.records = _Records(log)
        self.records.hashed = self.hashed
        #: User id -> its hash (an HMAC costs more than the rest of the line), bounded.
        self.hashes: dict[str, str] = {}
        #: The app's ``after_request`` hook (set by :func:`init_app`).
        self.finish: Callable[[Response], Response] | None = None

    def hashed(self, user: str) -> str:
        found = self.hashes.get(user)
        if found is None:
            if len(self.hashes) >= USER_HASHES:
                self.hashes.clear()
            found = self.hashes[user] = user_hash(user, self.key)
        return found

    def logged(self) -> bool:
        return bool(self.lines) and log.isEnabledFor(NOTICE)

    def answered(self, req: Any, status: int, response: Response | None) -> str:
        """What the ``after_request`` hook does with request ``req`` answered ``status``
        (``response``: None when the answer is not a response object): count and log it;
        the request id its ``X-Request-Id`` field carries."""
        environ = req.environ
        rid: str | None = environ.get(ID_KEY)
        if rid is None:  # a handler ahead of ours answered (it cannot: we go first)
            rid = _start(environ)
        logged = self.logged()
        if self.observe is None and not logged:
            return rid
        rule = req.url_rule.rule if req.url_rule is not None else None
        user = (environ.get(USER_KEY) or _signed_in_user(environ)) if logged else None
        path, ip = req.path, req.remote_addr
        self.done(environ, req.method, path, rule, status, user, ip, response, logged)
        return rid

    def done(
        self,
        environ: dict[str, Any],
        method: str,
        path: str,
        rule: str | None,
        status: int,
        user: str | None,
        ip: str | None,
        response: Response | None,
        logged: bool | None = None,
    ) -> None:
        """Count and log an answered request (``response``: None when none was made;
        ``logged``: :meth:`logged`, when the caller knows it). The line is held as the
        request's facts, its fields made when it is written (:meth:`_Records.fields`)."""
        if logged is None:
            logged = self.logged()
        if self.observe is None and not logged:
            return
        took = time.perf_counter() - environ[STARTED_KEY]  # the same time counted and logged
        if self.observe is not None:
            self.observe(rule, method, status, took, path, response)
        if logged and (status >= 400 or rule not in self.quiet):
            client, rid = environ.get(CLIENT_KEY), environ[ID_KEY]
            facts = (method, path, rule, status, took, client, user, ip, rid)
            self.records.emit(facts, time.time())


def init_app(app: Flask, observe: Observer | None = None) -> RequestLine:
    """Go first among ``before_request`` hooks (so a limiter's 429 is logged with its id);
    one ``after_request`` hook (on the pages' app, a hook run after the session is saved)
    sets the header, logs the line (``logging.requests``) and calls ``observe`` (the
    metrics) when given. Returns the app's :class:`RequestLine`."""
    line = RequestLine(app, observe)

    def finish(response: Response) -> Response:
        req = context.request()
        response.headers[HEADER] = line.answered(req, response.status_code, response)
        return response

    line.finish = finish
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    answered = getattr(app, "answered_hooks", None)
    if answered is not None:  # the pages' app: once its session is saved (lean.PagesApp)
        answered.append(finish)
    else:
        app.after_request(finish)
    app.teardown_request(_end)
    return line


def _end(_exc: BaseException | None) -> None:
    REQUEST_ID.set(None)
