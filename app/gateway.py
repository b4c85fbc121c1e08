"""The ``/api/*`` gateway as its own lean layer (issue 14): a bearer check and a proxy
need none of the page machinery.

:func:`build` makes the gateway's app, a :class:`app.lean.LeanApp` holding the gateway's
blueprint (:mod:`app.views.api`, where every check lives) and what every lean app has
(see :mod:`app.lean`, which also mounts it in front of the main app: the main app no
longer routes ``/api/``). Its short path takes ``/api/<plain name>`` by a method its
one route accepts: the rule matched by a regular expression instead of the URL map.
Any other request (a path with a slash or an odd character in the name, a method the
route does not take) goes Flask's own way, so its 404, 405 or redirect is Flask's.

In front of both, the **fast path** (:meth:`Gateway._fast`) serves the call a partner
makes all day, a ``GET`` of a function with a good bearer token that passes every check,
on the WSGI environ alone: no request or response object, no context, no hooks run one
by one. It asks what the view asks, through the same functions (the limiter's budgets,
:func:`~app.oauth2.accept.find_bearer` and its token cache,
:func:`~app.views.api.failed_check`, the quotas' :func:`~app.quotas.web.budgets`), then
calls the site and sends what Flask's path would send for that answer, field for field
and in its order (the limit's ``RateLimit`` fields, CORS, the request id, the security
headers), logging and counting it as the request hooks do. Anything else is handed to
Flask's path before anything has changed: no token or a refused one, a query string, a
body, DPoP, a client with quotas, an error; so every refusal, and every answer of the
site other than a plain 200, is Flask's own. The token it looked up (or the error it met)
and the site's answer, once the site is called, go on in the WSGI environ, so a handed-on
call reads the token once and calls the site once. It is on only while the app's hooks,
view and signal receivers are the ones it stands for (:meth:`Gateway._known_hooks`), and
``tests/test_gateway_fast.py`` holds its answers to Flask's path's for any ``GET``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from flask import (
    Flask,
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    request_finished,
    request_started,
    request_tearing_down,
)

from . import pages
from .client_store import request_memo
from .cors import EXPOSE
from .lean import LeanApp, Route, settled_route
from .lean import build as build_lean
from .limits.counters import digest
from .limits.web import REFUSED, counted, group_of
from .oauth2 import accept, rfc6750
from .observability import requestlog
from .observability.requestlog import HEADER, USER_KEY
from .paths import API
from .quotas.web import budgets
from .views import api

log = logging.getLogger("oauth2")

#: Signals Flask's path sends for every call: while any has a receiver for the gateway,
#: every call goes that way. (``got_request_exception`` is sent for an error, and errors
#: are all handed to Flask's path.)
SIGNALS = (
    request_started,
    request_finished,
    request_tearing_down,
    appcontext_pushed,
    appcontext_popped,
    appcontext_tearing_down,
)
#: The fields the fast path's answer has before the security headers are added.
FAST_FIELDS = frozenset(
    {
        "Content-Type",
        "Content-Length",
        "Cache-Control",
        "RateLimit-Policy",
        "RateLimit",
        "Access-Control-Allow-Origin",
        "Access-Control-Expose-Headers",
        "X-Request-Id",
    }
)
#: A content type the fast path passes on as it is (printable, no control character).
PLAIN_VALUE = re.compile(r"[\x20-\x7e]+")

#: The WSGI environ's ``PATH_INFO`` prefix sent to the gateway.
PREFIX = API
#: A function name the URL map would match as it is (no slash to merge or redirect):
#: only such a path takes the short way; any other goes through Flask's routing.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")


class Gateway(LeanApp):
    """The gateway's app: ``/api/<plain name>`` by a method its one route takes goes the
    short way (:class:`app.lean.LeanApp`)."""

    #: The gateway's one route, set once by :meth:`settle` (before serving), read as one
    #: value: the rule, the methods the short way takes (the route's, bar ``OPTIONS`` if
    #: Flask answers it), its endpoint and its blueprint.
    settled: Route | None = None

    def short_route(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        route = self.settled
        if route is None or not path.startswith(PREFIX):
            return None
        name = path[len(PREFIX) :]
        if not PLAIN_NAME.fullmatch(name):
            return None
        return route, {"name": name}

    def settle(self) -> None:
        """Take the gateway's one route (its blueprint registered): set once, before any
        request, so no thread ever sees part of it; a second route is a start-up error.
        The fast path is on when the app's hooks and view are the ones it does the work
        of (:meth:`_known_hooks`)."""
        rules = list(self.url_map.iter_rules())
        if len(rules) != 1:
            raise RuntimeError(f"the gateway app has {len(rules)} routes; it must have one")
        self.settled = settled_route(rules[0])
        hooks = self._hooks_now()
        self.fast_hooks = hooks if hooks == self._known_hooks() else None

    # -- the fast path --------------------------------------------------------------------
    #: The app's hooks and view as :meth:`settle` found them, when they are the ones the
    #: fast path does the work of; None: no fast path (every call goes Flask's way).
    fast_hooks: tuple[Any, ...] | None = None

    def _hooks_now(self) -> tuple[Any, ...]:
        """The hooks and view a call would run (what a test or an extension may change)."""
        route = self.settled
        return self.hooks_now(route[2] if route is not None else None)

    def _known_hooks(self) -> tuple[Any, ...]:
        """The hooks whose work :meth:`_call` does itself, as :func:`app.lean.build` made
        the app."""
        return self.built_hooks(api.call)

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.fast_hooks is not None and environ.get("REQUEST_METHOD") == "GET":
            answer = self._fast(environ, start_response)
            if answer is not None:
                return answer
        return super().wsgi_app(environ, start_response)

    def _fast(self, environ: dict[str, Any], start_response: Any) -> list[bytes] | None:
        """Serve the usual call, a ``GET`` with a good bearer token that passes every
        check, without Flask's request machinery; None hands the request to Flask's path
        (which serves everything else exactly as before)."""
        found = self.short_route(environ.get("PATH_INFO", ""))
        if (
            found is None
            or environ.get("QUERY_STRING")
            or environ.get("CONTENT_LENGTH") not in (None, "", "0")
            or "HTTP_TRANSFER_ENCODING" in environ
            or "HTTP_DPOP" in environ
            or not self.plain(environ)
            or any(signal.has_receivers_for(self) for signal in SIGNALS)
            or self._hooks_now() != self.fast_hooks
            or not _no_body(environ)
        ):
            return None
        self._got_first_request = True  # as Flask's path: no setup method from now on
        rid = requestlog._start(environ)
        try:
            with request_memo(environ):
                return self._call(environ, start_response, found, rid)
        finally:
            requestlog.REQUEST_ID.set(None)

    def _call(
        self,
        environ: dict[str, Any],
        start_response: Any,
        found: tuple[Route, dict[str, Any]],
        rid: str,
    ) -> list[bytes] | None:
        """:meth:`_fast`'s call of the function ``found`` names (its route and name)."""
        name = found[1]["name"]
        state = self.extensions["oauth2"]
        raw = rfc6750.bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        if raw is None:
            return None
        # Nothing below changes anything until the site is called: a refusal hands the
        # request to Flask's path, which checks it again and answers, the token looked
        # up here handed on with it (no second read); an error is raised there in the
        # lookup's place.
        try:
            limits, key = state.limits, None
            if limits.enabled:
                ip = "api:" + group_of(environ.get("REMOTE_ADDR"))
                key = "token:" + digest(raw)
                for budget, of in (("api_ip", ip), ("api", key)):
                    refusal = limits.rates.spent(budget, of)
                    if refusal is not None:  # handed on: Flask's path refuses it (429)
                        environ[REFUSED] = (budget, of, refusal)
                        return None
            server = state.server
            token = accept.find_bearer(server, raw)
            environ[api.LOOKED_UP] = (raw, token)
            if token is None:
                return None
            requestlog.note_in(environ, token.client_id, token.user_id)
            route = state.adapter.api.get(name)
            if api.failed_check(server, token, route, name, "GET") is not None:
                return None
            if budgets(state.clients.get(token.client_id), token.record, name):
                return None  # the quotas' reservations and fields: Flask's path
            content_type = environ.get("CONTENT_TYPE")
            headers = api.upstream_headers(token, content_type)
        except Exception as exc:  # noqa: BLE001 - raised on Flask's path, as there
            environ[api.LOOKED_UP] = (raw, exc)
            return None
        try:
            upstream = state.adapter.call(
                route.called_with("GET"),
                token.record.get("site_token", ""),
                token.user_id,
                headers,
                None,
                {},
            )
        except Exception as exc:  # noqa: BLE001 - rendered by Flask's path, as there
            environ[api.STASHED] = (raw, route.name, exc)
            return None
        try:
            body, kind = upstream.body, upstream.content_type
            plain = (
                upstream.status == 200
                and type(body) is bytes
                and type(kind) is str
                and PLAIN_VALUE.fullmatch(kind) is not None
            )
        except Exception:  # noqa: BLE001 - an adapter's odd answer: Flask's path says what
            plain = False
        if not plain:
            environ[api.STASHED] = (raw, route.name, upstream)  # answered as Flask's path does
            return None
        try:
            # What Flask's path sends for it, in its order: the view's response, the limit's
            # fields, CORS, the request id, then the security headers it lacks.
            path = environ["PATH_INFO"]
            secure = environ["wsgi.url_scheme"] == "https"
            after = [
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Expose-Headers", EXPOSE),
                (HEADER, rid),
            ]
            after += [
                (field, value)
                for field, value in pages._wanted(False, path, secure)
                if field not in FAST_FIELDS
            ]
            # The call is counted last: nothing before it is handed on counted.
            counts = counted(limits, "api", key) if key is not None else []
        except Exception:  # noqa: BLE001 - the answer is rendered by Flask's path
            environ[api.STASHED] = (raw, route.name, upstream)
            return None
        fields = [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *counts,
            *after,
        ]
        line = self.request_line
        if line is not None:
            try:
                rule = found[0][0].rule
                user, address = environ.get(USER_KEY), environ.get("REMOTE_ADDR")
                line.done(environ, "GET", path, rule, 200, user, address, None)
            except Exception:  # the call was made and counted: it is answered all the same
                log.exception("the request line or its counts failed on %s", path)
        start_response("200 OK", fields)
        return [body]


def _no_body(environ: dict[str, Any]) -> bool:
    """Whether the request has no body. With no ``Content-Length`` (checked first) a body
    the server ends itself (``wsgi.input_terminated``: HTTP/2, say) may still come: one
    byte is read to see, and put back in front of the rest for Flask's path (whose
    streamed-body limit reads it)."""
    if not environ.get("wsgi.input_terminated"):
        return True  # no length, nothing the server ends: no body (PEP 3333)
    stream = environ.get("wsgi.input")
    try:
        first = stream.read(1) if stream is not None else b""
    except Exception:  # noqa: BLE001 - Flask's path reads the body and answers what it finds
        return False
    if not first:
        return True
    environ["wsgi.input"] = _PutBack(first, stream)
    return False


class _PutBack:
    """A request body with its first byte, read already, put back in front (a file-like
    object as ``wsgi.input`` is: ``read``, ``readline``, ``readlines``, iteration by
    line). A read of everything reads in chunks to the end (a server's ``read()`` may
    not include what it buffered after a sized read)."""

    def __init__(self, first: bytes, stream: Any) -> None:
        self.first, self.stream = first, stream

    def read(self, size: int | None = -1) -> bytes:
        if size == 0:
            return b""
        first, self.first = self.first, b""
        if size is None or size < 0:
            chunks = [first]
            chunk = self.stream.read(65536)
            while chunk:
                chunks.append(chunk)
                chunk = self.stream.read(65536)
            return b"".join(chunks)
        return first + (self.stream.read(size - len(first)) if size > len(first) else b"")

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            first, self.first = self.first, b""
            return first if first == b"\n" else first + self.stream.readline()
        if not self.first:
            return self.stream.readline(size)
        if size == 0:
            return b""
        first, self.first = self.first, b""
        if first == b"\n" or size == 1:
            return first
        return first + self.stream.readline(size - 1)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        line = self.readline()
        while line:
            yield line
            line = self.readline()


def build(main: Flask) -> Gateway:
    """The gateway's Flask app, over ``main``'s state, configuration and extensions."""
    return build_lean(main, Gateway, __name__, api.bp)
