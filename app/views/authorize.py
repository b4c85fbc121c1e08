"""The authorization endpoint: validate, sign the user in, ask (or remember), answer.

The OpenID Connect sign-in parameters (``prompt``, ``max_age``, ``id_token_hint``...)
are decided in :mod:`app.oidc.prompt`; remembered consent in :mod:`app.oidc.consent`.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode, urlsplit

from authlib.oauth2.rfc6749.errors import InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from flask import Blueprint, redirect, request, session
from flask_login import current_user

from .. import context
from ..audit import audit
from ..client_policy import consent_links, image_origin, shown_image
from ..oauth2.server import query_params
from ..oidc import acr, prompt
from ..oidc.consent import OPENID, Consents, code_scopes, describe, must_ask
from ..oidc.signin import AMR_KEY
from ..pages import render_error, render_page, with_image_origin
from ..quotas import choice as quota_choice
from ..secrets_hash import new_secret, token_digest
from ..sessions import SIGNED_IN_AT
from .account import ask_second_step, enrolment_redirect, has_second_factor, passkeys, required_for
from .common import oauth, state

bp = Blueprint("authorize", __name__)

TXN = "txn:"


def _error(error: OAuth2Error):
    """Redirect to the client once its redirect URI is known good and the user signed in.

    Before sign-in the error page is shown instead (RFC 9700 §4.11.2): an unauthenticated
    visitor must not be bounced to a client's URI by any request someone crafted. The
    exception is ``prompt=none``'s answers (``login_required``...), which OpenID Connect
    sends to the (validated) redirect URI precisely because no one is signed in.
    """
    if error.redirect_uri and (
        current_user.is_authenticated or error.error in prompt.SILENT_ERRORS
    ):
        return oauth().with_issuer(oauth().handle_error_response(None, error))
    return render_error(
        400,
        "This link cannot be used",
        "The application sent an invalid sign-in request.",
        f"{error.error}: {error.description or ''}".strip(": "),
    )


def _silent(error_cls, grant):
    """A ``prompt=none`` request's refusal, for the client's redirect URI."""
    payload = grant.request.payload
    return _error(
        error_cls(
            state=payload.state,
            redirect_uri=grant.redirect_uri,
            redirect_fragment=payload.response_type != "code",
        )
    )


def _user():
    return current_user._get_current_object() if current_user.is_authenticated else None


@bp.get("/authorize")
def authorize():
    try:
        params = query_params()
        grant = oauth().get_consent_grant(request=params, end_user=_user())
        asked = prompt.parse(grant, state().keys, state().settings.issuer)
    except OAuth2Error as error:
        return _error(error)
    if not current_user.is_authenticated or _sign_in_again(asked, grant):
        if asked.silent:
            return _silent(LoginRequiredError, grant)
        return _to_sign_in(asked)
    client = grant.client
    need = acr.required(asked.acr_values, required_for(client))
    if not acr.meets(session.get(AMR_KEY), need):
        if asked.silent:
            return _silent(LoginRequiredError, grant)
        return _step_up(need)
    requested = scope_to_list(grant.request.scope) or []
    remembered = _remembered(client.get_client_id(), requested)
    if not must_ask(client, requested, remembered, asked.consent):
        why = {"skip_consent": True} if client.skip_consent else {"remembered": True}
        quota_choice.recall(state(), client, current_user.id)
        return _issue(grant, current_user._get_current_object(), **why)
    if asked.silent:
        return _silent(ConsentRequiredError, grant)
    transaction_id = new_secret(24)
    state().storage.session.put(
        TXN + token_digest(transaction_id),
        {"user_id": current_user.id, "params": params, "scope": grant.request.scope},
        ttl=state().settings.auth.transaction_ttl,
    )
    return _dialog(grant, transaction_id, remembered)


def _sign_in_again(asked: prompt.SignIn, grant) -> bool:
    """Whether the signed-in user must sign in (again) before this request is answered."""
    sub = None
    if asked.hint_sub is not None:
        sub = prompt.subject_of(grant.client, current_user.id, state().keys)
    if not asked.needs_sign_in(session.get(SIGNED_IN_AT), sub, time.time()):
        return False
    return not prompt.fresh_sign_in(session, prompt.request_key(request.query_string))


def _step_up(need: str):
    """Ask the signed-in user for the second step this request needs (a passkey for
    ``phr``), or send them to set one up when they have none that will do."""
    user_id = current_user.id
    phr = need == acr.PHISHING_RESISTANT
    if passkeys().has(user_id) if phr else has_second_factor(user_id):
        return ask_second_step(user_id, request.full_path, need)
    return enrolment_redirect(request.full_path)


def _to_sign_in(asked: prompt.SignIn):
    """Send the user to the sign-in page, which comes back to this same request."""
    if asked.marks_sign_in:
        prompt.ask_sign_in(session, prompt.request_key(request.query_string))
    return redirect("/login?" + urlencode({"next": request.full_path}), 302)


def _remembered(client_id: str, requested: list[str]) -> set[str]:
    """The scopes remembered for this user and client (OpenID Connect requests only)."""
    if OPENID not in requested:
        return set()
    return Consents.of(state()).granted(current_user.id, client_id)


def _issue(grant, user, **audited):
    """Answer the client through Authlib: the code or token (``user``), or access_denied."""
    client_id = grant.client.get_client_id()
    # The decision's audit entry, the code and its audit entry: one round trip, sent
    # before the redirect is returned.
    with state().storage.batch():
        event = "consent" if user else "denied"
        audit(event, client_id=client_id, user_id=current_user.id, **audited)
        return oauth().create_authorization_response(
            request=grant.request, grant_user=user, grant=grant
        )


def _dialog(grant, transaction_id: str, remembered: set[str]):
    described = state().adapter.scopes
    scope = grant.request.scope
    requested = scope_to_list(scope) or []
    new = [s for s in requested if s not in remembered] or requested
    kept = [s for s in requested if s not in new]
    logo = shown_image(grant.client.logo_uri)
    page = render_page(
        "dialog",
        client=grant.client,
        logo=logo,
        links=consent_links(grant.client),
        user=current_user,
        scopes=[(s, describe(s, described)) for s in new],
        kept=[(s, describe(s, described)) for s in kept],
        transaction_id=transaction_id,
        scope=scope,
        redirect_host=urlsplit(grant.redirect_uri).netloc,
        quota=quota_choice.dialog_field(state(), grant.client, current_user.id),
    )
    return with_image_origin(page, image_origin(logo)) if logo else page


@bp.post("/authorize")
def decide():
    form = context.request().form
    key, txn = _own_transaction(form.get("transaction_id", ""))
    if txn is None:
        return _expired()
    try:
        scope = _code_scope(txn, _narrowed(txn["scope"], form.get("scope")))
        params = dict(txn["params"], scope=[scope])
        grant = oauth().get_consent_grant(request=params, end_user=current_user)
        chosen = quota_choice.read(grant.client, form)
    except OAuth2Error as error:
        return _error(error)  # a refused answer leaves the transaction as it was
    except quota_choice.QuotaChoiceError as error:
        return render_error(
            400, "Please check the number of calls", f"{error} Go back and try again."
        )
    if state().storage.session.take(key) is None:
        return _expired()  # single use: another answer took it meanwhile
    if "allow" not in form or "cancel" in form:
        return _issue(grant, None)
    quota_choice.keep(state(), grant.client, current_user.id, chosen)
    if OPENID in (scope_to_list(txn["scope"]) or []):
        consents = Consents.of(state())
        consents.remember(current_user.id, grant.client.get_client_id(), scope_to_list(scope))
    return _issue(grant, current_user._get_current_object())


def _code_scope(txn: dict, narrowed: str) -> str:
    """The code's scope: for OpenID Connect, what is remembered plus what was allowed now."""
    requested = scope_to_list(txn["scope"]) or []
    if OPENID not in requested:
        return narrowed
    remembered = Consents.of(state()).granted(current_user.id, txn["params"]["client_id"][0])
    return " ".join(code_scopes(requested, remembered, scope_to_list(narrowed) or []))


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
