"""Discovery (RFC 8414) and a health check for load balancers."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..oauth2.rfc8414 import build_metadata
from .common import oauth, state

bp = Blueprint("wellknown", __name__)


@bp.get("/.well-known/oauth-authorization-server")
def metadata():
    server = oauth()
    if not hasattr(server, "metadata"):
        server.metadata = build_metadata(server)
    response = jsonify(server.metadata)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/healthz")
def health():
    for backend in state().storage.backends.values():
        backend.ping()
    return jsonify(status="ok")


@bp.get("/")
def index():
    from flask import redirect

    return redirect("/review", 302)
