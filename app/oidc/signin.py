"""What a sign-in contributes to its ID Tokens, read from the session and kept on the grant.

The code record takes them at consent; the grant's tokens keep them, so an ID Token
issued at a later refresh names the same sign-in (OpenID Connect Core §12.2).
"""

from __future__ import annotations

import time
from typing import Any

from flask import has_request_context, session

from ..sessions import AMR_KEY, SID, SIGNED_IN_AT, note_relying_party
from .acr import achieved

#: The sign-in's facts: when (``auth_time``), which sign-in (``sid``), how (``amr``) and
#: the level it reached (``acr``, :mod:`app.oidc.acr`).
SIGN_IN_FACTS = ("auth_time", "sid", "amr", "acr")
#: How users sign in without a second step (RFC 8176): a password at the site.
AMR = ["pwd"]
#: The session key of the sign-in's methods when it used more (``["pwd", "otp"]`` or
#: ``["pwd", "hwk"]``, set by the second step, :mod:`app.views.account`): ``AMR_KEY``.
__all__ = [
    "AMR",
    "AMR_KEY",
    "SIGN_IN_FACTS",
    "facts_of",
    "remember_relying_party",
    "sign_in_facts",
]


def sign_in_facts() -> dict[str, Any]:
    """This session's sign-in facts (the time falls back to now outside a signed-in session)."""
    if not has_request_context():
        return {"auth_time": int(time.time()), "amr": list(AMR), "acr": achieved(AMR)}
    signed_in_at = session.get(SIGNED_IN_AT)
    amr = list(session.get(AMR_KEY) or AMR)
    facts = {
        "auth_time": int(signed_in_at) if signed_in_at else int(time.time()),
        "sid": session.get(SID),
        "amr": amr,
        "acr": achieved(amr),
    }
    return {name: value for name, value in facts.items() if value is not None}


def facts_of(record: dict[str, Any] | None) -> dict[str, Any]:
    """The sign-in facts a code or token record carries."""
    record = record or {}
    return {name: record[name] for name in SIGN_IN_FACTS if record.get(name) is not None}


def remember_relying_party(client_id: str) -> None:
    """Note that this session's user was signed in to ``client_id`` (for logout)."""
    if has_request_context():
        note_relying_party(session, client_id)  # type: ignore[arg-type]
