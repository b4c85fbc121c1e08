"""OpenID Connect's endpoints: discovery, the signing keys (JWKS) and UserInfo."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import context
from ..adapters import UpstreamUnavailable
from ..cors import any_origin
from ..oauth2 import rfc9449
from ..oidc.userinfo import Refusal, dpop_request, presented_token, user_info
from ..paths import JWKS, OIDC_METADATA, USERINFO
from .common import oauth, state

bp = Blueprint("oidc", __name__)


@bp.route(OIDC_METADATA, methods=["GET", "OPTIONS"])
@any_origin
def configuration() -> Response:
    """The same document as RFC 8414's (built once at start)."""
    response = jsonify(oauth().metadata)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.route(JWKS, methods=["GET", "OPTIONS"])
@any_origin
def jwks() -> Response:
    """The public halves of the published signing keys; never a private member."""
    response = jsonify(state().keys.public_jwks())
    response.mimetype = "application/jwk-set+json"
    response.headers["Cache-Control"] = f"public, max-age={state().settings.oidc.jwks_max_age}"
    return response


@bp.route(USERINFO, methods=["GET", "POST", "OPTIONS"])
@any_origin
def userinfo() -> Response:
    req = context.request()
    server, built = oauth(), state()
    proof = dpop_request(server, req.headers, req.method, req.path)
    try:
        # Only a POST's body may carry the token (a GET's form is not parsed for nothing).
        form = req.form if req.method == "POST" else None
        raw = presented_token(req.headers, req.method, form, proof is not None)
        claims = user_info(server, built.users, built.adapter, raw, proof)
    except Refusal as refusal:
        return _no_store(_with_nonce(_refused(refusal), proof))
    except UpstreamUnavailable as exc:
        status = 504 if exc.timeout else 502
        return _no_store(_error(status, "temporarily_unavailable", "The site did not answer."))
    # ``jsonify`` without its two looks through ``current_app``: the same response.
    answer: Response = context.app().json.response(claims)  # type: ignore[assignment]
    return _no_store(_with_nonce(answer, proof))


def _with_nonce(response: Response, proof) -> Response:
    """RFC 9449 §8.2: a DPoP request's answer carries the current nonce (if nonces are on)."""
    nonce = oauth().dpop.nonce() if proof is not None else None
    return rfc9449.with_nonce(response, nonce) if nonce else response


def _error(status: int, error: str, description: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    return response


def _refused(refusal: Refusal) -> Response:
    response = _error(refusal.status, refusal.error or "invalid_token", refusal.description)
    response.headers["WWW-Authenticate"] = refusal.www_authenticate()
    return response


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
