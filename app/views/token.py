"""The back channel: token, revocation and introspection endpoints (POST, body only)."""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from flask import Blueprint, after_this_request, request

from .. import context
from ..cors import public_client_origins
from ..limits import token_limits
from ..oauth2 import rfc9449
from ..oauth2.requests import ParamsRequest
from ..oauth2.server import body_params
from ..paths import INTROSPECT, REVOKE, TOKEN
from .common import oauth, state

bp = Blueprint("token", __name__)


def _request() -> ParamsRequest:
    """The body's parameters; the query string carries none of them (RFC 6749 §3.2)."""
    req = context.request()
    if req.query_string and req.args:
        raise InvalidRequestError("Send parameters in the request body, not the URL.")
    # The endpoint's URL (nothing here reads more of it), from the parts Werkzeug holds
    # already: ``request.url`` would spend a URI-to-IRI round trip on it.
    uri = f"{req.scheme}://{req.host}{req.root_path}{req.path}"
    params = ParamsRequest(req.method, uri, req.headers, body_params())
    if req.path == TOKEN and not params.payload.grant_type:
        raise InvalidRequestError("Missing 'grant_type'.")
    return params


def _respond(endpoint: str | None, answer=None):
    """The endpoint's answer (``endpoint`` None: the token endpoint's, its grant's answer
    made by ``answer`` when given: see ``OAuth2Server.create_token_response``)."""
    try:
        params = _request()
        if endpoint is None and oauth().dpop is not None and "DPoP" in params.headers:
            params.dpop = _proof()
    except OAuth2Error as error:
        return oauth().handle_error_response(None, error)
    # The records of a token response and its audit entry go in one round trip (a code's
    # or a refresh token's exchange holds both already); they are sent before the
    # response is returned.
    with state().storage.batch():
        if endpoint is None:
            return oauth().create_token_response(params, answer)
        return oauth().create_endpoint_response(endpoint, params)


def _proof() -> rfc9449.Proof:
    """RFC 9449 §5: the token request's proof, checked (the grant remembers its ``jti``
    once the request passes, so a refused request uses nothing up)."""
    dpop = oauth().dpop
    try:
        proof = dpop.check(request.headers.getlist("DPoP"), request.method, request.path)
    except rfc9449.DPoPError as refusal:
        raise dpop.token_error(refusal) from None
    nonce = dpop.nonce()
    if nonce:
        after_this_request(lambda response: rfc9449.with_nonce(response, nonce))
    return proof


@bp.route(TOKEN, methods=["POST", "OPTIONS"])
@public_client_origins
@token_limits
def token():
    return _respond(None)


@bp.route(REVOKE, methods=["POST", "OPTIONS"])
@public_client_origins
@token_limits
def revoke():
    return _respond("revocation")


@bp.post(INTROSPECT)
@token_limits
def introspect():
    return _respond("introspection")
