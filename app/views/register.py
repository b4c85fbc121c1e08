"""Dynamic client registration (RFC 7591) at ``/register`` and its management (RFC 7592)
at ``/register/<client_id>``: on only with ``registration.enabled``, else 404."""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Blueprint, Response, abort

from ..audit import audit
from ..paths import REGISTER
from .common import oauth

bp = Blueprint("register", __name__)

EVENTS = {"POST": "client_registered", "GET": "client_registration_read"}
EVENTS |= {"PUT": "client_registration_replaced", "DELETE": "client_registration_deleted"}


def _respond(name: str, client_id: str | None = None) -> Response:
    from flask import request

    server = oauth()
    if name not in server._endpoints:
        abort(404)
    try:
        response = server.create_endpoint_response(name)
    except OAuth2Error as error:  # raised while the request was read
        response = server.handle_error_response(None, error)
    if response.status_code < 300:
        made = response.get_json(silent=True) or {}
        audit(EVENTS[request.method], client_id=client_id or made.get("client_id"))
    else:
        audit("client_registration_refused", client_id=client_id, status=response.status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post(REGISTER)
def register() -> Response:
    return _respond("client_registration")


@bp.route(f"{REGISTER}/<client_id>", methods=["GET", "PUT", "DELETE"])
def configure(client_id: str) -> Response:
    return _respond("client_configuration", client_id)
