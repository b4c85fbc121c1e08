"""Request ids and one structured log line per request (logger ``oauth2.request``).

The id comes from the caller's ``X-Request-Id`` when it is short and plain (letters,
digits, ``._:+/=-``, at most 128), else it is made here; every response carries it back,
and every line logged while the request is served carries it too (:data:`REQUEST_ID`).

The line names the method, the path (never the query string, where a code, a state or
an ``id_token_hint`` may travel), the route, the status, the time taken, the client when
known and a keyed hash of the user, never a token, code or secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, request, session

from ..audit import fields_line
from ..logconfig import REQUEST_ID

log = logging.getLogger("oauth2.request")

HEADER = "X-Request-Id"
SAFE_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
#: Longest path logged; longer ones are clipped (the route names the endpoint anyway).
MAX_PATH = 200
NOTICE = 25


def request_id(offered: str | None) -> str:
    """The caller's id when safe to log and echo, else a new random one."""
    if offered and SAFE_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def note(client_id: Any = None, user_id: Any = None) -> None:
    """Tell the request line who the request was for (the audit trail calls this)."""
    if client_id and not g.get("log_client"):
        g.log_client = str(client_id)
    if user_id and not g.get("log_user"):
        g.log_user = str(user_id)


def user_hash(user_id: str) -> str:
    """A keyed hash of the user id: the same user's lines match, nobody can reverse it."""
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:16]


def _begin() -> None:
    g.request_id = request_id(request.headers.get(HEADER))
    g.started = time.perf_counter()
    REQUEST_ID.set(g.request_id)


def _signed_in_user() -> str | None:
    """The signed-in user's id, only if this request already opened its session."""
    if not getattr(session, "loaded", True):
        return None
    user_id = session.get("_user_id")
    return str(user_id) if user_id else None


def _finish(response: Response) -> Response:
    if "request_id" not in g:  # a handler ahead of ours answered (it cannot: we go first)
        _begin()
    response.headers[HEADER] = g.request_id
    if current_app.extensions["oauth2"].settings.config.logging.requests and log.isEnabledFor(
        NOTICE
    ):
        _log_line(response)
    return response


def line_fields(response: Response) -> dict[str, Any]:
    """The request line's fields, in the order the text format shows them."""
    user = g.get("log_user") or _signed_in_user()
    rule = request.url_rule.rule if request.url_rule is not None else None
    return {
        "method": request.method,
        "path": request.path[:MAX_PATH],
        "route": rule,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
        "client_id": g.get("log_client"),
        "user": user_hash(user) if user else None,
        "ip": request.remote_addr,
        "request_id": g.request_id,
    }


def _log_line(response: Response) -> None:
    fields = line_fields(response)
    log.log(
        NOTICE, "request %s", fields_line(fields), extra={"fields": fields, "summary": "request"}
    )


def _end(_exc: BaseException | None) -> None:
    REQUEST_ID.set(None)


def init_app(app: Flask) -> None:
    """Go first among ``before_request`` hooks (so a limiter's 429 is logged with its id)."""
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_finish)
    app.teardown_request(_end)
