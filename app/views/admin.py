"""The admin API for clients (``/admin/clients``): JSON, for a bearer token with ``admin``.

The token comes from the client-credentials grant of a client allowed the scope
``admin`` (RFC 6750 answers: 401 without a good token, 403 without the scope).
Clients of the clients file are listed and shown, marked read-only; the ones made
here live in the ``clients`` table (:mod:`app.client_store`). Every call is audited
with the acting client; no answer holds a secret but the one just made.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, Response, g, jsonify, request

from ..admin_listener import on_admin_listener
from ..audit import audit
from ..client_metadata import ClientMetadataError, read_body
from ..client_store import (
    MAX_OVERLAP,
    ClientConflict,
    ClientStore,
    describe,
    describe_file,
    editable,
)
from ..clients import ADMIN_SCOPE
from ..oauth2 import rfc6750
from ..oauth2.accept import find_bearer
from ..oauth2.requests import json_body
from ..oauth2.rfc7591 import INITIAL_TOKEN
from ..paths import ADMIN_CLIENTS, ADMIN_REGISTRATION_TOKENS
from ..secrets_hash import new_secret, token_digest
from .common import state

bp = Blueprint("admin", __name__)

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
REALM = 'Bearer realm="admin"'


class AdminError(Exception):
    """An answer other than success: status, RFC-style ``error`` and a description."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@bp.errorhandler(AdminError)
def _admin_error(exc: AdminError) -> Response:
    return _answer({"error": exc.error, "error_description": exc.description}, exc.status)


@bp.errorhandler(ClientMetadataError)
def _metadata_error(exc: ClientMetadataError) -> Response:
    audit("admin_refused", actor=g.get("admin_actor"), error=exc.error)
    return _answer({"error": exc.error, "error_description": exc.description}, 400)


@bp.errorhandler(ClientConflict)
def _conflict(exc: ClientConflict) -> Response:
    return _answer({"error": "conflict", "error_description": str(exc)}, 409)


@bp.before_request
def _authenticate() -> Response | None:
    """RFC 6750 §3.1: no token 401 (no error code), a bad one 401, too weak a one 403."""
    if state().settings.admin.listen and not on_admin_listener():
        return _answer({"error": "not_found", "error_description": "Not found."}, 404)
    header = request.headers.get("Authorization", "")
    raw = rfc6750.bearer_token(header)
    token = find_bearer(state().server, raw)
    rfc6750.note(token is not None)
    if token is None:
        bad = rfc6750.names_bearer(header)
        audit("admin_refused", error="invalid_token" if bad else "no_token")
        if not bad:
            return _challenge(401, "unauthorized", "Send a bearer token with the scope admin.")
        return _challenge(401, "invalid_token", "The token is unknown, expired or revoked.")
    client = state().clients.get(token.client_id)
    if (
        token.user_id
        or client is None
        or ADMIN_SCOPE not in (scope_to_list(token.scope) or [])
        or ADMIN_SCOPE not in client.scopes
    ):
        audit("admin_refused", actor=token.client_id, error="insufficient_scope")
        return _challenge(403, "insufficient_scope", "The token lacks the scope admin.")
    g.admin_actor = token.client_id
    return None


def _challenge(status: int, error: str, description: str) -> Response:
    response = _answer({"error": error, "error_description": description}, status)
    # §3.1: a request without credentials gets the challenge without an error code.
    extra = "" if error == "unauthorized" else f', error="{error}"'
    scope = ', scope="admin"' if error == "insufficient_scope" else ""
    response.headers["WWW-Authenticate"] = f"{REALM}{extra}{scope}"
    return response


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# -- routes ----------------------------------------------------------------------------
@bp.get(ADMIN_CLIENTS)
def list_clients() -> Response:
    limit = _limit(request.args.get("limit"))
    after = _cursor(request.args.get("cursor"))
    shown = _everyone()
    page = [c for c in shown if c["client_id"] > after][: limit + 1]
    more = len(page) > limit
    page = page[:limit]
    next_cursor = _encode(page[-1]["client_id"]) if more and page else None
    audit("admin_clients_listed", actor=g.admin_actor, count=len(page))
    return _answer({"clients": page, "next_cursor": next_cursor})


@bp.post(ADMIN_CLIENTS)
def create_client() -> Response:
    fields = _no_new_skip_consent(read_body(_json()))
    client_id = fields.pop("client_id", None)
    if client_id is not None and state().clients.file_client(str(client_id)):
        raise ClientConflict(f"client_id {client_id!r} is taken by the clients file")
    record, secret = _store().create(
        fields, client_id, state().storage, state().grants.revoke_grant
    )
    audit("admin_client_created", actor=g.admin_actor, client_id=record["client_id"])
    body = describe(record)
    if secret is not None:
        body["client_secret"] = secret  # shown this once; stored as a hash only
    response = _answer(body, 201)
    response.headers["Location"] = f"{ADMIN_CLIENTS}/{record['client_id']}"
    return response


@bp.get(f"{ADMIN_CLIENTS}/<client_id>")
def show_client(client_id: str) -> Response:
    audit("admin_client_read", actor=g.admin_actor, client_id=client_id)
    file_client = state().clients.file_client(client_id)
    if file_client is not None:
        return _answer(describe_file(file_client))
    return _answer(describe(_record(client_id)))


@bp.put(f"{ADMIN_CLIENTS}/<client_id>")
def replace_client(client_id: str) -> Response:
    record = _editable_record(client_id)
    fields = _same_id(client_id, read_body(_json(), record["metadata"]))
    _no_new_skip_consent(fields, record["metadata"])
    updated = _store().update(record, fields)
    audit("admin_client_replaced", actor=g.admin_actor, client_id=client_id)
    return _answer(describe(updated))


@bp.patch(f"{ADMIN_CLIENTS}/<client_id>")
def patch_client(client_id: str) -> Response:
    """RFC 7396 JSON merge patch: the fields given replace, ``null`` removes."""
    record = _editable_record(client_id)
    patch = _same_id(client_id, read_body(_json(), record["metadata"], allow_null=True))
    _no_new_skip_consent(patch, record["metadata"])
    merged = editable(record)
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    updated = _store().update(record, merged)
    audit("admin_client_patched", actor=g.admin_actor, client_id=client_id)
    return _answer(describe(updated))


@bp.delete(f"{ADMIN_CLIENTS}/<client_id>")
def delete_client(client_id: str) -> Response:
    _editable_record(client_id)
    with state().grants.ending():  # the token cache: one announcement for every grant
        revoked = _store().remove(client_id, state().storage, state().grants.revoke_grant)
    if revoked is None:
        raise AdminError(404, "not_found", f"no client {client_id!r}")
    audit("admin_client_deleted", actor=g.admin_actor, client_id=client_id, revoked=revoked)
    return Response(status=204)


@bp.post(f"{ADMIN_CLIENTS}/<client_id>/secret")
def rotate_secret(client_id: str) -> Response:
    record = _editable_record(client_id)
    overlap = _overlap(_json() if request.get_data(cache=True) else {})
    updated, secret = _store().rotate(record, overlap)
    audit("admin_secret_rotated", actor=g.admin_actor, client_id=client_id, overlap=overlap)
    body = {"client_id": client_id, "client_secret": secret}
    body.update({k: v for k, v in describe(updated).items() if k.endswith("expires_at")})
    return _answer(body)


@bp.post(ADMIN_REGISTRATION_TOKENS)
def issue_registration_token() -> Response:
    """A single-use initial access token for ``/register`` (RFC 7591 §3), shown once."""
    body = _json() if request.get_data(cache=True) else {}
    ttl = _expires_in(body, state().settings.registration.initial_token_ttl)
    token = new_secret(32)
    _store().table.put(INITIAL_TOKEN + token_digest(token), {"actor": g.admin_actor}, ttl=ttl)
    audit("admin_registration_token_issued", actor=g.admin_actor, expires_in=ttl)
    enabled = state().settings.registration.enabled
    return _answer({"initial_access_token": token, "expires_in": ttl, "enabled": enabled}, 201)


def _expires_in(body: Any, default: int) -> int:
    if not isinstance(body, dict) or set(body) - {"expires_in"}:
        raise AdminError(400, "invalid_request", 'The body may hold only {"expires_in": seconds}.')
    value = body.get("expires_in", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= MAX_OVERLAP:
        raise AdminError(400, "invalid_request", f"expires_in: whole seconds, 60 to {MAX_OVERLAP}")
    return value


# -- helpers ---------------------------------------------------------------------------
def _store() -> ClientStore:
    store = state().clients.store
    assert store is not None  # create_app gives every registry its store
    return store


def _everyone() -> list[dict[str, Any]]:
    """File clients and stored ones by ``client_id``; the file's win a clash."""
    registry = state().clients
    shown = {c.client_id: describe_file(c) for c in registry.all()}
    for record in _store().records():
        shown.setdefault(record["client_id"], describe(record))
    return [shown[k] for k in sorted(shown)]


def _record(client_id: str) -> dict[str, Any]:
    record = _store().record(client_id)
    if record is None:
        raise AdminError(404, "not_found", f"no client {client_id!r}")
    return record


def _editable_record(client_id: str) -> dict[str, Any]:
    if state().clients.file_client(client_id) is not None:
        raise AdminError(
            409,
            "conflict",
            f"client {client_id!r} comes from the clients file, which is read-only here: "
            "edit the file and reload the server (SIGHUP)",
        )
    return _record(client_id)


def _no_new_skip_consent(
    fields: dict[str, Any], current: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``skip_consent`` (no consent page, ever) is not granted over the API: an admin
    token would otherwise make a client that takes any signed-in user's data silently
    (``prompt=none``). The operator marks first-party clients in the clients file or with
    the CLI; a client that has it may keep it here."""
    if fields.get("skip_consent") is True and not (current or {}).get("skip_consent"):
        raise ClientMetadataError(
            "skip_consent: first-party clients are marked in the clients file or with "
            "`oauth2-server clients`, not over the admin API"
        )
    return fields


def _same_id(client_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    given = fields.pop("client_id", client_id)
    if given != client_id:
        raise ClientMetadataError("client_id: differs from the client's; it cannot change")
    return fields


def _json() -> Any:
    if not request.is_json:
        raise AdminError(400, "invalid_request", "Send the body as application/json.")
    body = json_body(request)
    if body is None:
        raise AdminError(400, "invalid_request", "The body is not a JSON document.")
    return body


def _overlap(body: Any) -> int | None:
    if not isinstance(body, dict) or set(body) - {"overlap"}:
        raise AdminError(400, "invalid_request", 'The body may hold only {"overlap": seconds}.')
    overlap = body.get("overlap")
    if overlap is None:
        return None
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= MAX_OVERLAP:
        raise AdminError(400, "invalid_request", f"overlap: whole seconds, 0 to {MAX_OVERLAP}")
    return overlap


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise AdminError(400, "invalid_request", f"limit: a whole number, 1 to {MAX_LIMIT}")
    return int(raw)


def _encode(client_id: str) -> str:
    return base64.urlsafe_b64encode(client_id.encode()).decode().rstrip("=")


def _cursor(raw: str | None) -> str:
    """The ``client_id`` a page starts after (an opaque cursor from ``next_cursor``)."""
    if not raw:
        return ""
    try:
        padded = raw + "=" * (-len(raw) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise AdminError(400, "invalid_request", "cursor: not one this server gave") from None


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response
