"""The ``/api/*`` gateway: check the bearer token and its scope, then proxy to the site."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, Response, after_this_request, jsonify, request

from ..adapters import UpstreamUnavailable
from ..client_policy import allows_function
from ..cors import any_origin
from ..limits import api_limit
from ..oauth2 import rfc6750, rfc9449
from ..oauth2.accept import find_access, find_bearer
from ..oauth2.models import StoredToken
from ..observability.requestlog import note
from ..quotas.web import spend
from .common import state

bp = Blueprint("api", __name__)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: The WSGI environ key where the gateway's fast path (:mod:`app.gateway`) leaves the
#: site's answer to a call (or the exception the call raised) for Flask's path to render:
#: ``(raw token, function name, answer)``.
STASHED = "oauth2.gateway.upstream"
#: ... and the token it looked up for the request's bearer token: ``(raw, found)``, found
#: the stored token, None, or the error its checks met (raised here in the lookup's place).
LOOKED_UP = "oauth2.gateway.looked_up"


def _fail(status: int, error: str, www: str | None = None) -> Response:
    response = jsonify(success=0, error=error)
    response.status_code = status
    if www:
        response.headers["WWW-Authenticate"] = www
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/api/<path:name>", methods=METHODS)
@any_origin
@api_limit
def call(name: str):
    app = state()
    server = app.server
    header = request.headers.get("Authorization", "")
    raw = rfc6750.bearer_token(header)
    token = _bearer(server, raw)
    dpop = raw is None and server.dpop is not None and rfc9449.dpop_token(header)
    proof = None
    if dpop:
        token, proof, refused = _dpop(dpop)
        if refused is not None:
            return refused
    rfc6750.note(token is not None)
    if token is None and not rfc6750.names_bearer(header):
        return _fail(401, "missing token", 'Bearer realm="api"')
    if token is None:
        return _fail(401, "invalid token", 'Bearer realm="api", error="invalid_token"')
    note(token.client_id, token.user_id)
    route = app.adapter.api.get(name)
    refused = failed_check(server, token, route, name, request.method)
    if route is None:  # refused == "route"
        return _fail(404, "no such function")
    if refused == "method":
        response = _fail(405, "use " + " or ".join(route.allowed))
        response.headers["Allow"] = ", ".join(route.allowed)
        return response
    if refused == "scope":
        return _fail(403, "insufficient scope", _scope_challenge(bool(dpop), route.scope))
    if refused == "function":
        return _fail(403, "function not allowed", _scope_challenge(bool(dpop)))
    if refused == "user":
        return _fail(403, "this function acts for a user; use a user's token")
    if proof is not None:  # RFC 9449 §11.1: the proof is used up only by a call that passes
        try:
            server.dpop.remember(proof)
        except rfc9449.DPoPError as refusal:
            return _dpop_refusal(refusal)
    client = app.clients.get(token.client_id)
    return spend(
        client,
        token.record,
        name,
        lambda: _proxy(app.adapter, route.called_with(request.method), token),
    )


def _bearer(server: Any, raw: str | None) -> StoredToken | None:
    """``find_bearer``, or what the fast path (:mod:`app.gateway`) found for the same
    token before it handed the request here (or the error it met): looked up once."""
    looked = request.environ.pop(LOOKED_UP, None)
    if looked is not None and raw is not None and looked[0] == raw:
        if isinstance(looked[1], BaseException):
            raise looked[1]
        return looked[1]
    return find_bearer(server, raw)


def failed_check(server: Any, token: StoredToken, route: Any, name: str, method: str) -> str | None:
    """The first check a call of ``name`` (its ``route``, None if the site has no such
    function) by ``method`` with the accepted ``token`` fails: ``"route"``, ``"method"``,
    ``"scope"``, ``"function"`` (the client's ``api_allowlist``) or ``"user"`` (a
    client's own token); None when it passes them all. Both ways of serving a call
    (:func:`call`, the fast path of :mod:`app.gateway`) ask this."""
    if route is None:
        return "route"
    if method not in route.allowed:
        return "method"
    if route.scope not in (scope_to_list(token.scope) or []):
        return "scope"
    if not _allowed_function(server, token.client_id, name):
        return "function"
    if not token.user_id:
        return "user"
    return None


def _dpop(raw: str):
    """RFC 9449 §7: the token ``raw`` of an ``Authorization: DPoP`` request and its proof
    (not yet remembered), or a 401 (``invalid_dpop_proof``, ``use_dpop_nonce``,
    ``invalid_token``)."""
    dpop = state().server.dpop
    nonce = dpop.nonce()
    if nonce:
        after_this_request(lambda response: rfc9449.with_nonce(response, nonce))
    values = request.headers.getlist("DPoP")
    try:
        token, proof = dpop.bound(raw, values, request.method, request.path, _find)
    except rfc9449.DPoPError as refusal:
        rfc6750.note(False)
        return None, None, _dpop_refusal(refusal)
    if token is None:
        rfc6750.note(False)
        return None, None, _fail(401, "invalid token", dpop.challenge("invalid_token"))
    return token, proof, None


def _dpop_refusal(refusal: rfc9449.DPoPError) -> Response:
    error = refusal.error.replace("_", " ")
    return _fail(401, error, state().server.dpop.challenge(refusal.error, refusal.description))


def _scope_challenge(dpop: bool, scope: str | None = None) -> str:
    """``insufficient_scope`` under the scheme the token came with (RFC 9449 §7.1)."""
    if dpop:
        value = state().server.dpop.challenge("insufficient_scope")
    else:
        value = 'Bearer realm="api", error="insufficient_scope"'
    return value + (f', scope="{scope}"' if scope else "")


def _find(raw: str):
    return find_access(state().server, raw)


def _allowed_function(server, client_id: str, name: str) -> bool:
    """The client's ``api_allowlist`` (beyond scopes): absent, every function is allowed."""
    client = server.clients.get(client_id)
    return client is not None and allows_function(client.api_allowlist, name)


def upstream_headers(token: StoredToken, content_type: str | None) -> dict[str, Any]:
    """The headers a call sends the site: who it is for, and the caller's content type."""
    headers = {
        "X-OAuth-Client-Id": token.client_id,
        "X-OAuth-User-Id": token.user_id,
        "X-OAuth-Scope": token.scope,
    }
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def _proxy(adapter, route, token) -> Response:
    # The fast path (app.gateway) may have called the site already and left the answer
    # it does not render itself (or the call's error) here: the site is never called twice.
    stashed = request.environ.pop(STASHED, None)
    if stashed is not None:  # (raw token, its function, answer): this call's, or not used
        raw, name, answer = stashed
        same = raw == rfc6750.bearer_token(request.headers.get("Authorization", ""))
        stashed = answer if same and name == route.name else None
    try:
        if stashed is None:
            upstream = adapter.call(
                route,
                token.record.get("site_token", ""),
                token.user_id,
                upstream_headers(token, request.content_type),
                request.get_data() if request.method in ("POST", "PUT", "PATCH") else None,
                request.args.to_dict(),
            )
        elif isinstance(stashed, BaseException):
            raise stashed
        else:
            upstream = stashed
    except UpstreamUnavailable as exc:
        if exc.timeout:
            return _fail(504, "the site did not answer in time")
        return _fail(502, "the site is unavailable")
    if upstream.status >= 500:
        return _fail(502, "the site failed")
    response = Response(upstream.body, status=upstream.status, content_type=upstream.content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
