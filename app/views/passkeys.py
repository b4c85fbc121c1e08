"""The passkey forms: add and remove on ``/account``, answer at ``/login/otp``.

The browser side is ``static/passkeys.js``: it asks the authenticator with the options
the page carries and posts the answer (JSON) in an ordinary form field, so errors come
back as pages and the forms keep their CSRF tokens. Adding a passkey when the account
already has a second factor needs this session to have shown one in the last 10 minutes
(:func:`~app.views.account.may_add_factor`); removing a passkey needs the current second
factor again (a code, a recovery code or a passkey added more than 10 minutes ago), so
that a session left open somewhere cannot strip the account of its factors.
"""

from __future__ import annotations

from flask import redirect, request, session
from flask_login import current_user

from ..audit import audit
from ..oidc.signin import AMR_KEY
from ..passkeys import MAX_NAME, PasskeyError
from ..sessions import CSRF_KEY
from .account import (
    AGAIN,
    _account,
    _page,
    factors,
    has_second_factor,
    may_add_factor,
    note_second_factor,
    passkeys,
    settled_before,
)


def _session_bound() -> str:
    """What binds the account page's challenges to this session: its CSRF secret."""
    return str(session.get(CSRF_KEY, ""))


def login_with_passkey(user_id: str, answer: str, pending_id: str) -> bool:
    """The second step's answer: whether one of the user's passkeys signed this sign-in's
    challenge (audited either way)."""
    try:
        verified = passkeys().authenticate(user_id, answer, "login", pending_id)
    except PasskeyError as error:
        audit("passkey_failed", user_id=user_id, reason=error.reason, step="login")
        return False
    audit("passkey_used", user_id=user_id, user_verified=verified)
    return True


def confirmed_with_passkey(user_id: str, answer: str, removing: str = "") -> bool:
    """Whether the account page's confirmation was signed by one of the user's passkeys:
    one added in the last minutes proves only its own removal (``removing``)."""
    bound, settled = _session_bound(), settled_before(user_id)
    try:
        verified = passkeys().authenticate(user_id, answer, "confirm", bound, settled, removing)
    except PasskeyError as error:
        audit("passkey_failed", user_id=user_id, reason=error.reason, step="confirm")
        return False
    audit("passkey_used", user_id=user_id, user_verified=verified, step="confirm")
    return True


def account_context(user_id: str) -> dict:
    """What the account page shows of passkeys, with fresh challenges for its forms."""
    store = passkeys()
    listed = store.of(user_id)
    can_add = may_add_factor(user_id)
    bound = _session_bound()
    return {
        "passkeys": listed,
        "max_name": MAX_NAME,
        "can_add": can_add,
        "registration_options": (
            store.registration_options(user_id, current_user.name, bound) if can_add else None
        ),
        "confirm_options": (
            store.authentication_options(user_id, "confirm", bound) if listed else None
        ),
        # Without the app, new recovery codes are confirmed with a passkey (its own challenge).
        "regenerate_options": (
            store.authentication_options(user_id, "confirm", bound)
            if listed and not factors().enrolled(user_id)
            else None
        ),
        "recovery_left": factors().recovery_left(user_id),
    }


def add(user_id: str, lockout):
    """Verify and keep a new passkey; the first factor of an account brings recovery codes."""
    if not may_add_factor(user_id):
        return _account(error=AGAIN, status=403)
    first = not has_second_factor(user_id)
    try:
        added = passkeys().register(
            user_id,
            request.form.get("name", ""),
            request.form.get("credential", ""),
            _session_bound(),
        )
    except PasskeyError as error:
        audit("passkey_failed", user_id=user_id, reason=error.reason, step="register")
        message = {
            "too_many": "You have too many passkeys. Remove one first.",
            "duplicate": "That passkey is already on your account.",
        }.get(error.reason, "The passkey was not added. Try again.")
        return _account(error=message, status=400)
    lockout.succeeded(user_id)
    if first:
        session[AMR_KEY] = ["pwd", "hwk"]  # the user just showed the factor
        note_second_factor()
    audit("passkey_registered", user_id=user_id, name=added.name)
    next_url = request.form.get("next", "")
    if first:
        codes = factors().new_recovery_codes(user_id)
        return _page("account_codes.html", codes=codes, next=next_url, passkey=True)
    return redirect("/account?added=1", 302)


def remove(user_id: str, proved: bool):
    """Remove one passkey once the current second factor was shown (``proved``)."""
    if not proved:
        audit("otp_failed", user_id=user_id, method="passkey_remove")
        return _account(error="Confirm with your code or a passkey to remove it.", status=400)
    key = request.form.get("credential", "")
    if not passkeys().remove(user_id, key):
        return _account(error="Choose a passkey to remove.", status=400)
    if not has_second_factor(user_id):
        factors().drop_recovery_codes(user_id)
        session.pop(AMR_KEY, None)
    audit("passkey_removed", user_id=user_id)
    return redirect("/account?removed=1", 302)
