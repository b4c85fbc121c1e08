"""``/readyz`` for load balancers and ``/metrics`` for Prometheus (README "Operating it")."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, request

from ..admin_listener import on_admin_listener
from ..oauth2.rfc6750 import bearer_token
from ..observability.readiness import readiness
from ..paths import METRICS, READY
from ..secrets_hash import verify_secret
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


@bp.get(METRICS)
def metrics():
    """Prometheus text; see :mod:`app.observability.metrics` and README "Operating it".

    404 unless ``metrics.enabled``, and on the public address when ``admin.listen`` is
    set; with ``metrics.token_hash``, 401 without that bearer token.
    """
    settings = state().settings.config
    if not settings.metrics.enabled:
        abort(404)
    if settings.admin.listen and not on_admin_listener():
        abort(404)
    wanted = settings.metrics.token_hash
    if wanted:
        presented = bearer_token(request.headers.get("Authorization", ""))
        if not presented or not verify_secret(wanted, presented):
            return Response(
                "metrics: a bearer token is required\n",
                401,
                {"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
                mimetype="text/plain",
            )
    from ..observability.metrics import exposition

    body, content_type = exposition()
    return Response(body, 200, {"Cache-Control": "no-store"}, content_type=content_type)
