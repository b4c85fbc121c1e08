"""Discovery (RFC 8414) and a health check for load balancers."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..paths import AS_METADATA, HEALTH, JWKS
from .common import oauth, state

bp = Blueprint("wellknown", __name__)


@bp.get(AS_METADATA)
def metadata():
    response = jsonify(oauth().metadata)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get(JWKS)
def jwks():
    """The ID Token signing keys' public halves (a minimal route for the key work; the
    OpenID Connect core work serves the full one)."""
    keys = state().keys
    response = jsonify(keys.public_jwks())
    response.headers["Cache-Control"] = f"public, max-age={state().settings.oidc.jwks_max_age}"
    return response


@bp.get(HEALTH)
def health():
    state().storage.ping()
    return jsonify(status="ok")


@bp.get("/")
def index():
    from flask import redirect

    return redirect("/review", 302)
