"""The authorization endpoint: validate, ask the user, answer the client."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from authlib.oauth2.rfc6749.errors import InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, redirect, request
from flask_login import current_user

from ..audit import audit
from ..oauth2.server import query_params
from ..oidc.scopes import descriptions
from ..pages import render_error, render_page
from ..secrets_hash import new_secret, token_digest
from .common import oauth, state

bp = Blueprint("authorize", __name__)

TXN = "txn:"


def _error(error: OAuth2Error):
    """Redirect to the client once its redirect URI is known good and the user signed in.

    Before sign-in the error page is shown instead (RFC 9700 §4.11.2): an unauthenticated
    visitor must not be bounced to a client's URI by any request someone crafted.
    """
    if error.redirect_uri and current_user.is_authenticated:
        return oauth().with_issuer(oauth().handle_error_response(None, error))
    return render_error(
        400,
        "This link cannot be used",
        "The application sent an invalid sign-in request.",
        f"{error.error}: {error.description or ''}".strip(": "),
    )


@bp.get("/authorize")
def authorize():
    try:
        params = query_params()
        grant = oauth().get_consent_grant(request=params, end_user=None)
    except OAuth2Error as error:
        return _error(error)
    if not current_user.is_authenticated:
        return redirect("/login?" + urlencode({"next": request.full_path}), 302)
    transaction_id = new_secret(24)
    state().storage.session.put(
        TXN + token_digest(transaction_id),
        {"user_id": current_user.id, "params": params, "scope": grant.request.scope},
        ttl=state().settings.auth.transaction_ttl,
    )
    return _dialog(grant, transaction_id)


def _dialog(grant, transaction_id: str):
    scopes = descriptions(state().adapter.scopes)
    scope = grant.request.scope
    return render_page(
        "dialog",
        client=grant.client,
        user=current_user,
        scopes=[(s, scopes.get(s, s)) for s in scope_to_list(scope) or []],
        transaction_id=transaction_id,
        scope=scope,
        redirect_host=urlsplit(grant.redirect_uri).netloc,
    )


@bp.post("/authorize")
def decide():
    key, txn = _own_transaction(request.form.get("transaction_id", ""))
    if txn is None:
        return _expired()
    try:
        params = dict(txn["params"], scope=[_narrowed(txn["scope"], request.form.get("scope"))])
        grant = oauth().get_consent_grant(request=params, end_user=current_user)
    except OAuth2Error as error:
        return _error(error)  # a refused answer leaves the transaction as it was
    if state().storage.session.take(key) is None:
        return _expired()  # single use: another answer took it meanwhile
    allowed = "allow" in request.form and "cancel" not in request.form
    client_id = grant.client.get_client_id()
    # The decision's audit entry, the code and its audit entry: one round trip, sent
    # before the redirect is returned.
    with state().storage.batch():
        audit("consent" if allowed else "denied", client_id=client_id, user_id=current_user.id)
        return oauth().create_authorization_response(
            request=grant.request,
            grant_user=current_user._get_current_object() if allowed else None,
            grant=grant,
        )


def _expired():
    return render_error(
        400,
        "This request has expired",
        "The sign-in request was already answered or has expired. "
        "Go back to the application and start again.",
    )


def _own_transaction(transaction_id: str) -> tuple[str, dict | None]:
    """The signed-in user's own transaction (its key and record); anyone else's is not."""
    key = TXN + token_digest(transaction_id)
    if not transaction_id or not current_user.is_authenticated:
        return key, None
    txn = state().storage.session.get(key)
    if txn is None or txn["user_id"] != current_user.id:
        return key, None
    return key, txn


def _narrowed(granted: str, posted: str | None) -> str:
    """The user may grant fewer scopes than asked, never more; a blank scope changes nothing."""
    if not posted or not posted.strip():
        return granted
    wanted = scope_to_list(posted)
    if not set(wanted) <= set(scope_to_list(granted) or ()):
        raise InvalidScopeError()
    return " ".join(wanted)
