"""``/readyz`` for load balancers and ``/metrics`` for Prometheus (README "Operating it")."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..observability.readiness import readiness
from ..paths import READY
from .common import state

bp = Blueprint("ops", __name__)


@bp.get(READY)
def ready():
    """200 when every storage backend and the site answer; 503 naming those that did not."""
    ok, checks = readiness(state())
    response = jsonify(status="ready" if ok else "unavailable", checks=checks)
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    if not ok:
        response.headers["Retry-After"] = "5"
    return response
