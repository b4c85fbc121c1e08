"""Signing out: the sign-out form and OpenID Connect's ``end_session_endpoint``.

``POST /logout`` with our CSRF token is a confirmed sign-out (the header's form, the
confirmation page). Anything else (``GET``, or a ``POST`` from a partner's page, which
cannot carry our token) is an RP-Initiated Logout request: validated, then either ended
at once (a current ``id_token_hint`` for this very session) or shown the confirmation
page. Every sign-out queues back-channel Logout Tokens and never waits for them.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from flask import Blueprint, current_app, redirect, request, session
from flask.blueprints import BlueprintSetupState
from flask_login import current_user, logout_user

from ..audit import audit
from ..oauth2.requests import Params, ParamsRequest, checked, require_utf8
from ..oidc import backchannel
from ..oidc.logout import PARAMS, EndSession, needs_confirmation
from ..pages import render_error, render_page
from ..paths import LOGOUT
from ..sessions import SID, relying_parties
from .common import state

bp = Blueprint("logout", __name__)


@bp.record_once
def _start(setup: BlueprintSetupState) -> None:
    """Give the app its back-channel sender when the blueprint is registered."""
    backchannel.init_app(setup.app)  # type: ignore[arg-type]  # a Flask app here


FORM = "application/x-www-form-urlencoded"


@bp.route(LOGOUT, methods=["GET", "POST"])
def logout():
    try:
        params = _params()
        confirmed = request.method == "POST" and "csrf_token" in request.form
        if confirmed and current_user.is_authenticated:
            current_app.extensions["csrf"].protect()  # a bad or stale token: 400, nothing ends
        end = _validate(params)
    except InvalidRequestError as error:
        return render_error(
            400,
            "This sign-out link cannot be used",
            "The application sent a sign-out request we cannot act on, so you were "
            "not signed out and not sent anywhere.",
            error.description,
        )
    if not current_user.is_authenticated:
        return _done(end, params)  # nothing to end
    if not confirmed and _ask(end):
        return render_page("logout", fields=params, client=end.client)
    _sign_out(end.client.client_id if end.client else None)
    return _done(end, params)


def _params() -> Params:
    """The request's parameters: the query of a GET, the form of a POST."""
    if request.method == "GET":
        require_utf8(request.query_string)
        raw = request.args
    else:
        body = request.get_data(cache=True)  # before the form: kept for it to parse
        if body and request.mimetype != FORM:
            raise InvalidRequestError("Send the form as application/x-www-form-urlencoded.")
        require_utf8(body)
        raw = request.form
    return checked({name: raw.getlist(name) for name in raw if name in PARAMS}, unique=False)


def _validate(params: Params):
    oauth_request = ParamsRequest(request.method, request.url, request.headers, params)
    return EndSession(state().server, state().keys, state().settings.issuer).validate_request(
        oauth_request
    )


def _ask(end) -> bool:
    secret = state().keys.pairwise_secret() if end.id_token_claims else b""
    return needs_confirmation(end, current_user.id, session.get(SID), secret)


def _sign_out(initiator: str | None) -> None:
    """End the session here and everywhere, then queue the partners' Logout Tokens."""
    user_id, sid, parties = current_user.id, session.get(SID), relying_parties(session)  # type: ignore[arg-type]
    logout_user()
    session.end()  # type: ignore[attr-defined]
    audit("logout", user_id=user_id, client_id=initiator)
    backchannel.notify(user_id, sid, parties)


def _done(end, params: Params):
    """Back to the partner's registered page, the sign-in page, or "you are signed out"."""
    if end.redirect_uri:
        return redirect(end.redirect_uri, 302)
    if not params:
        return redirect("/login", 302)  # the plain sign-out form
    return render_page("signed_out", client=end.client)
