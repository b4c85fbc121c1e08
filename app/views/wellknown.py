"""Discovery (RFC 8414) and the liveness check (readiness: :mod:`app.views.ops`)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..paths import AS_METADATA, HEALTH
from .common import oauth

bp = Blueprint("wellknown", __name__)


@bp.get(AS_METADATA)
def metadata():
    response = jsonify(oauth().metadata)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get(HEALTH)
def health():
    """Liveness: this process answers. Storage and the site are ``/readyz``'s checks, so
    a storage outage takes instances out of rotation without getting them restarted."""
    response = jsonify(status="ok")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def index():
    from flask import redirect

    return redirect("/review", 302)
