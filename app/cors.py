"""Cross-origin calls from browsers (the Fetch standard's CORS protocol), per endpoint kind.

Bearer endpoints (``/api/*``, later UserInfo) take no cookies, so any page may call
them: ``Access-Control-Allow-Origin: *``, never credentials. The token endpoints
answer only the origins a public client registered (``allowed_origins``), echoed with
``Vary: Origin``: those of the clients file are known in memory; those of clients kept
in storage (admin API, registration) are read only for a request that carries an
``Origin`` the file's clients did not register, so a change made on any instance counts
on the next request and a request without ``Origin`` costs no read. Pages never answer
CORS: nothing here is applied to them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Response, after_this_request, current_app, request
from werkzeug.exceptions import HTTPException

from . import context
from .oauth2.server import body_params

#: Response headers a script may read beyond the safelisted ones.
EXPOSE = "WWW-Authenticate, Retry-After, RateLimit, RateLimit-Policy, DPoP-Nonce"
#: Seconds a browser may keep a preflight answer (Chromium keeps at most 7200).
MAX_AGE = "7200"
#: ``DPoP``: a browser client's proof (RFC 9449), at the token endpoint and resources.
BEARER_HEADERS = "Authorization, Content-Type, DPoP"
TOKEN_ENDPOINT_HEADERS = "Content-Type, DPoP"  # noqa: S105 - header names


def _methods() -> list[str]:
    rule = request.url_rule
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}) if rule else []


def _preflight(origin: str | None, allow_headers: str) -> Response:
    """Answer ``OPTIONS``: the methods, and to an allowed origin's preflight, CORS."""
    response = current_app.response_class(status=204)
    response.headers["Allow"] = ", ".join([*_methods(), "OPTIONS"])
    if origin and request.headers.get("Access-Control-Request-Method"):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ", ".join(_methods())
        response.headers["Access-Control-Allow-Headers"] = allow_headers
        response.headers["Access-Control-Max-Age"] = MAX_AGE
    return response


def _allow(response: Response, origin: str) -> Response:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE
    return response


def any_origin(view: Callable[..., Any]) -> Callable[..., Any]:
    """CORS for any origin on a bearer-only view; list ``OPTIONS`` in its methods.

    Put it outermost, so a refusal by an inner decorator (a 429) carries it too."""

    @functools.wraps(view)
    def cors_view(*args: Any, **kwargs: Any) -> Any:
        if context.request().method == "OPTIONS":
            return _preflight("*", BEARER_HEADERS)
        after_this_request(lambda response: _allow(response, "*"))
        return view(*args, **kwargs)

    return cors_view


def public_client_origins(view: Callable[..., Any]) -> Callable[..., Any]:
    """CORS at a token endpoint for the registered origins of the public client named
    in the request; a preflight (which has no body) for those of any public client."""

    @functools.wraps(view)
    def cors_view(*args: Any, **kwargs: Any) -> Any:
        req = context.request()
        if req.method == "OPTIONS":
            origin = req.headers.get("Origin")
            asks = bool(req.headers.get("Access-Control-Request-Method"))
            allowed = bool(origin) and asks and _any_public_client_origin(str(origin))
            response = _preflight(origin if allowed else None, TOKEN_ENDPOINT_HEADERS)
            response.vary.add("Origin")
            return response
        after_this_request(_allow_named_client)
        return view(*args, **kwargs)

    return cors_view


def _any_public_client_origin(origin: str) -> bool:
    """Whether a public client lists ``origin``: the file's first (no read), then the store's."""
    clients = _clients()
    if clients.public_origin(origin):
        return True
    return clients.store is not None and bool(clients.store.public_origin(origin))


def _allow_named_client(response: Response) -> Response:
    if "Vary" in response.headers:
        response.vary.add("Origin")
    else:  # the usual case: no Vary to parse and merge
        response.headers["Vary"] = "Origin"
    origin = context.request().environ.get("HTTP_ORIGIN")
    client = _clients().get(_named_client_id()) if origin else None
    if origin and client is not None and client.allows_origin(origin):
        return _allow(response, origin)
    return response


def _named_client_id() -> str | None:
    """The ``client_id`` of the request's body, if it parses (the view reported it if not)."""
    try:
        values = body_params().get("client_id") or []
    except (OAuth2Error, HTTPException):
        return None
    return values[0] if len(values) == 1 else None


def _clients() -> Any:
    return context.state().clients
