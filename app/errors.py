"""One answer per failure: JSON for API clients, the error page for people; never a trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, request, session
from flask_login import AnonymousUserMixin
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import BadRequest, HTTPException

from . import context
from .audit import printable
from .pages import render_error
from .paths import API, JSON_PATHS
from .storage import StorageUnavailable

log = logging.getLogger("oauth2")


RETRY_AFTER = "5"


def wants_json() -> bool:
    return request.path.startswith(JSON_PATHS)


def _storage_unavailable(exc: StorageUnavailable):
    log.error("storage unavailable on %s: %s", printable(request.path), exc)
    return unavailable_response()


def unavailable_response() -> Response:
    """The 503 for a storage outage: JSON for programs, the error page for people."""
    if wants_json():
        response = jsonify(
            error="temporarily_unavailable",
            error_description="Storage is unavailable; try again shortly.",
        )
        response.status_code = 503
    else:
        response = _unavailable_page()
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def _unavailable_page():
    # The session may be what is down: show the page as to a signed-out visitor, from
    # an empty session (the page reads flashed messages), and write nothing back.
    g._login_user = AnonymousUserMixin()
    forget = getattr(session, "unavailable", None)
    if forget is not None:
        forget()
    try:
        return render_error(
            503,
            "Temporarily unavailable",
            "We cannot reach our storage right now. Please try again shortly.",
        )
    except StorageUnavailable:
        return Response(
            "Service temporarily unavailable; try again shortly.", 503, mimetype="text/plain"
        )


def _csrf_error(exc: CSRFError):
    return render_error(
        400,
        "Form expired",
        "The form was missing its security token or it "
        "had expired. Go back, reload the page and try again.",
    )


def _http_error(exc: HTTPException):
    response = _http_error_body(exc)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value  # e.g. Allow on 405
    return response


def _http_error_body(exc: HTTPException):
    if wants_json():
        body: dict[str, object] = {
            "error": _json_error_code(exc.code or 500),
            "error_description": exc.description,
        }
        if request.path.startswith(API):
            body = {"success": 0, "error": (exc.name or "error").lower()}
        response = jsonify(body)
        response.status_code = exc.code or 500
        return response
    return render_error(exc.code or 500, exc.name, exc.description or "")


def _json_error_code(status: int) -> str:
    return {
        413: "invalid_request",
        405: "invalid_request",
        404: "not_found",
        429: "too_many_requests",
    }.get(status, "invalid_request" if status < 500 else "server_error")


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", printable(request.method), printable(request.path))
    if wants_json():
        response = jsonify(error="server_error", error_description="Internal error.")
        response.status_code = 500
        return response
    return render_error(500, "Something went wrong", "The error was logged.")


def _require_utf8_query() -> None:
    """Refuse raw non-UTF-8 bytes in the query string before any view or limit reads it.

    Werkzeug raises on them while parsing ``request.args``; percent-encoded bytes it
    replaces, and the OAuth endpoints refuse those themselves (RFC 6749 Appendix B).
    """
    try:
        context.request().query_string.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The query string is not valid UTF-8.") from None


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_error)
    init_json_app(app)


def init_json_app(app: Flask) -> None:
    """What an app answering programs alone needs (the ``/api`` gateway): JSON errors."""
    app.before_request(_require_utf8_query)
    app.register_error_handler(StorageUnavailable, _storage_unavailable)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
