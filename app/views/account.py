"""Two-step sign-in pages: the account page (``/account``) and the second step
(``/login/otp``). The factors themselves: :mod:`app.twofactor` (TOTP, recovery codes)
and :mod:`app.passkeys`; the passkey forms: :mod:`app.views.passkeys`.

The second step holds the pending user in the session without signing in: the
password was right, nobody is signed in until a code or a passkey is. It has its own
CSRF secret (new when the password is accepted), a random id that binds the page's
passkey challenge to it, and lasts :data:`PENDING_LIFETIME` seconds.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlencode

from flask import Blueprint, current_app, redirect, request, session
from flask_login import current_user, login_required, login_user
from markupsafe import Markup

from ..audit import audit
from ..limits import delay_fields
from ..oidc.acr import PHISHING_RESISTANT, SECOND_FACTORS, TWO_STEP
from ..oidc.signin import AMR_KEY
from ..pages import render_error, with_script
from ..passkeys import Passkeys
from ..sessions import CSRF_KEY, SECOND_FACTOR_AT
from ..twofactor import TwoFactor
from .common import safe_next, state

bp = Blueprint("account", __name__)

#: Session keys: the sign-in waiting for its code, and the factors the sign-in used.
PENDING = "_2fa_pending"
#: Seconds the second step waits for a code after the password was accepted.
PENDING_LIFETIME = 300
MAX_CODE = 64
#: Seconds a second-factor proof of this session (the sign-in's second step, or a
#: confirmation on ``/account``) allows adding another factor; and the age below which a
#: newly added factor does not prove anything about the account's other factors.
FRESH_PROOF = 600


def _per_process(name: str, make):
    """The process's ``name`` object, made by ``make(settings)`` on first use."""
    built = current_app.extensions.get(name)
    if built is None:
        built = current_app.extensions[name] = make(state().settings)
    return built


def factors() -> TwoFactor:
    """The process's :class:`TwoFactor` (built on first use)."""
    return _per_process(
        "two_factor",
        lambda settings: TwoFactor(
            state().storage.factors, settings.keys_secret, settings.auth.site_name
        ),
    )


def passkeys() -> Passkeys:
    """The process's :class:`Passkeys` (built on first use)."""
    return _per_process(
        "passkeys",
        lambda settings: Passkeys(
            state().storage.factors, settings.issuer, settings.auth.site_name
        ),
    )


def has_second_factor(user_id: str) -> bool:
    """Whether the user has a second factor: a TOTP app or a passkey. Sign-in asks it of
    every user: one read of the user's factor records (they hold both) where a record
    is never stored without its index entries; elsewhere (a Redis Cluster) the TOTP
    record is read by its key, so a write that failed half-way can never hide it."""
    table = factors().table
    if not table.indexed_at_once:
        return factors().enrolled(user_id) or passkeys().has(user_id)
    records = table.list_by_user(user_id)
    return factors().enrolled_in(records, user_id) or passkeys().among(records, user_id)


def used_second_factor() -> bool:
    """Whether this session's sign-in used a second factor."""
    return bool(SECOND_FACTORS & set(session.get(AMR_KEY) or ()))


def note_second_factor() -> None:
    """Record that this session showed a second factor now (:data:`FRESH_PROOF`)."""
    session[SECOND_FACTOR_AT] = time.time()


def may_add_factor(user_id: str) -> bool:
    """Whether this session may add a factor: the account has none yet, or the session
    showed one within :data:`FRESH_PROOF` seconds (a stolen, old session may not)."""
    if not has_second_factor(user_id):
        return True
    shown = session.get(SECOND_FACTOR_AT)
    recent = isinstance(shown, (int, float)) and time.time() - shown <= FRESH_PROOF
    return used_second_factor() and recent


def settled_before(user_id: str) -> float | None:
    """Factors added at or after this time prove nothing about the others (``None``: the
    account has one factor only, which proves itself)."""
    if len(passkeys().of(user_id)) + factors().enrolled(user_id) < 2:
        return None
    return time.time() - FRESH_PROOF


def required_for(client=None) -> bool:
    """Whether a sign-in (to ``client``, if any) must use a second factor."""
    if state().settings.two_factor.required:
        return True
    return bool(client and client.require_two_factor)


def _page(template: str, status: int = 200, **context):
    from flask import render_template

    return current_app.make_response((render_template(template, **context), status))


# -- the second step -------------------------------------------------------------------


def ask_second_step(user_id: str, next_url: str, need: str = TWO_STEP):
    """After the password: remember the pending user (not signed in), go to the code
    page; ``need`` is ``phr`` when only a passkey will do (``acr_values``)."""
    session.pop(AMR_KEY, None)
    session[PENDING] = {
        "user_id": user_id,
        "at": time.time(),
        "next": next_url,
        "id": secrets.token_urlsafe(24),
        "need": need,
    }
    session[CSRF_KEY] = secrets.token_hex(20)  # the code form's own CSRF secret
    return redirect("/login/otp", 302)


def _pending() -> dict | None:
    pending = session.get(PENDING)
    if not isinstance(pending, dict) or time.time() - pending.get("at", 0) > PENDING_LIFETIME:
        return None
    return pending


def _expired():
    session.pop(PENDING, None)
    return redirect("/login", 302)


def _otp_form(error: str | None = None, status: int = 200, wait: int = 0):
    pending = _pending() or {}
    user_id = pending.get("user_id", "")
    options = None
    if user_id and passkeys().has(user_id):
        options = passkeys().authentication_options(user_id, "login", pending.get("id", ""))
    codes = pending.get("need") != PHISHING_RESISTANT
    response = _page(
        "login_otp.html",
        status,
        error=error,
        passkey_options=options,
        codes=codes,
        totp=codes and factors().enrolled(user_id),
    )
    if options:
        with_script(response)
    if wait:
        response.headers["Retry-After"] = str(wait)
        response.headers.extend(delay_fields(state().limits.otp, wait))
    return response


@bp.get("/login/otp")
def login_otp():
    if _pending() is None:
        return _expired()
    return _otp_form()


@bp.post("/login/otp")
def login_otp_post():
    pending = _pending()
    if pending is None:
        return _expired()
    user_id = pending["user_id"]
    answer = request.form.get("passkey", "")
    code = request.form.get("code", "")
    if answer:
        method = "passkey"
    elif pending.get("need") == PHISHING_RESISTANT:
        return _otp_form("This application asks for a passkey: a code will not do.", 400)
    elif not code or len(code) > MAX_CODE:
        return _otp_form("Enter the code from your authenticator app.", 400)
    else:
        method = "totp" if code.strip().isdigit() else "recovery"
    lockout = state().limits.otp
    attempt = lockout.reserve(user_id)
    if attempt.wait:
        audit("otp_locked", user_id=user_id)
        minutes = (
            f"{attempt.wait} seconds" if attempt.wait < 120 else f"{attempt.wait // 60} minutes"
        )
        return _otp_form(f"Too many wrong codes. Try again in {minutes}.", 429, attempt.wait)
    if method == "passkey":
        from .passkeys import login_with_passkey

        ok = login_with_passkey(user_id, answer, pending.get("id", ""))
    elif method == "totp":
        ok = factors().verify(user_id, code)
    else:
        ok = factors().use_recovery_code(user_id, code)
    user = state().users.get(user_id) if ok else None
    if user is None:
        audit("otp_failed", user_id=user_id, method=method)
        if attempt.delay:
            audit("lockout", user_id=user_id, seconds=attempt.delay, step="otp")
        if method == "passkey":
            return _otp_form("That passkey was not accepted. Try again.", 401)
        return _otp_form("That code is not right, or was already used.", 401)
    lockout.succeeded(user_id)
    session.pop(PENDING, None)
    session.signed_in()  # type: ignore[attr-defined]  # new id, new CSRF secret
    session[AMR_KEY] = ["pwd", "hwk" if method == "passkey" else "otp"]
    note_second_factor()
    login_user(user)
    audit("login", user_id=user_id, second_factor=method)
    if method == "recovery":
        audit("recovery_code_used", user_id=user_id, left=factors().recovery_left(user_id))
    return redirect(pending.get("next") or "/review", 302)


# -- the account page ------------------------------------------------------------------


def _account(message: str | None = None, error: str | None = None, status: int = 200, **extra):
    from .passkeys import account_context

    user_id = current_user.id
    enrolled = factors().enrolled(user_id)
    context: dict = {
        "enrolled": enrolled,
        "message": message,
        "error": error,
        "next": safe_next(request.values.get("next"), ""),
        "required": required_for(),
        **account_context(user_id),
    }
    if not enrolled:
        secret = factors().pending(user_id)
        assert secret is not None
        uri = factors().uri(user_id, current_user.name, secret)
        context["qr"] = Markup(TwoFactor.qr_svg(uri))  # noqa: S704 - segno's own SVG
        context["manual_key"] = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return with_script(_page("account.html", status, **(context | extra)))


#: Refusals of the account page's forms.
AGAIN = "Sign out and sign in again with your second factor first (in the last 10 minutes)."
NOT_RIGHT = (
    "That code is not right, or was already used. A factor added in the last 10 minutes"
    " cannot confirm changes to your other factors yet."
)

DONE = {
    "done": "Two-step sign-in with an app is off.",
    "enrolled": "Two-step sign-in with an app is on. Your recovery codes stay the same.",
    "added": "The passkey was added.",
    "removed": "The passkey was removed.",
}


@bp.get("/account")
@login_required
def account():
    message = next((text for name, text in DONE.items() if request.args.get(name)), None)
    return _account(message=message)


def _proved(user_id: str, action: str) -> bool:
    """Whether the form carries the user's current second factor: a passkey's answer,
    a TOTP code, or (to remove a factor) a recovery code, each used once."""
    from .passkeys import confirmed_with_passkey

    answer, code, fx = request.form.get("passkey", ""), request.form.get("code", ""), factors()
    removing = request.form.get("credential", "") if action == "passkey_remove" else ""
    if answer:
        return confirmed_with_passkey(user_id, answer, removing)
    if not code:
        return False
    enrolment, settled = fx.enrolment(user_id), settled_before(user_id)
    # An app enrolled in the last minutes proves only its own removal.
    if (
        enrolment is not None
        and (action == "remove" or settled is None or enrolment.enrolled_at < settled)
        and fx.verify(user_id, code)
    ):
        return True
    return action != "regenerate" and fx.use_recovery_code(user_id, code)


@bp.post("/account")
@login_required
def account_post():
    from . import passkeys as passkey_forms

    action, user_id = request.form.get("action", ""), current_user.id
    code = request.form.get("code", "")
    if len(code) > MAX_CODE:
        return _account(error="That code is not right.", status=400)
    lockout = state().limits.otp
    attempt = lockout.reserve(user_id)
    if attempt.wait:
        return _account(error="Too many wrong codes. Try again later.", status=429)
    fx = factors()
    if action == "passkey_add":
        return passkey_forms.add(user_id, lockout)
    if action == "passkey_remove":
        proved = _proved(user_id, action)
        if proved:
            lockout.succeeded(user_id)
            note_second_factor()
        return passkey_forms.remove(user_id, proved)
    if action == "enrol" and not fx.enrolled(user_id):
        first = not has_second_factor(user_id)
        if not may_add_factor(user_id):
            # A session that did not show the existing factor recently must not add one
            # next to it (and a password-only one must not get recovery codes with it).
            audit("otp_failed", user_id=user_id, method="enrol")
            return _account(error=AGAIN, status=403)
        codes = fx.confirm(user_id, code, new_codes=first)
        if codes is None:
            audit("otp_failed", user_id=user_id, method="enrol")
            return _account(error="That code is not right. Try the next one.", status=400)
        lockout.succeeded(user_id)
        if first:
            session[AMR_KEY] = ["pwd", "otp"]  # the user just showed the factor
            note_second_factor()
        audit("totp_enrolled", user_id=user_id)
        if not codes:  # the recovery codes of the passkeys stay
            return redirect("/account?enrolled=1", 302)
        return _page(
            "account_codes.html", codes=codes, next=safe_next(request.form.get("next"), "")
        )
    if action in ("remove", "regenerate") and has_second_factor(user_id):
        if action == "remove" and not fx.enrolled(user_id):
            return _account(error="Two-step sign-in with an app is already off.", status=400)
        if not _proved(user_id, action):
            audit("otp_failed", user_id=user_id, method=action)
            return _account(error=NOT_RIGHT, status=400)
        lockout.succeeded(user_id)
        note_second_factor()
        if action == "remove":
            keep = passkeys().has(user_id)
            fx.remove(user_id, keep_codes=keep)
            if not keep:
                session.pop(AMR_KEY, None)
            audit("totp_removed", user_id=user_id)
            return redirect("/account?done=1", 302)
        codes = fx.new_recovery_codes(user_id)
        audit("recovery_codes_regenerated", user_id=user_id)
        return _page("account_codes.html", codes=codes, next="")
    return render_error(400, "This form cannot be used", "Reload the account page and try again.")


def enrolment_redirect(next_url: str):
    """Send a user who must enrol to the account page, coming back to ``next_url``."""
    return redirect("/account?" + urlencode({"next": next_url}), 302)
