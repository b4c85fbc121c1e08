"""Authentication Context Class References: ``acr_values`` asked, ``acr`` achieved.

OpenID Connect Core 1.0 §2 (``acr``) and §3.1.2.1 (``acr_values``),
https://openid.net/specs/openid-connect-core-1_0.html

Three levels, from the methods a sign-in used (its ``amr``, RFC 8176):

* ``pwd``: the site's password alone;
* ``mfa``: the password and a second step (a TOTP or recovery code, or a passkey);
* ``phr``: the password and a passkey, "phishing-resistant" (OpenID Enhanced
  Authentication Profile ACR Values 1.0): a passkey answers only to this server's origin,
  so a look-alike site that took the password cannot complete the sign-in.

``acr_values`` lists the levels a client accepts; the least demanding known one is what
the sign-in must reach (``mfa phr`` is met by either), unknown values are ignored, as
§3.1.2.1 makes them voluntary. Every ID Token carries the level reached as ``acr``.
"""

from __future__ import annotations

from collections.abc import Iterable

PASSWORD, TWO_STEP, PHISHING_RESISTANT = "pwd", "mfa", "phr"
#: Every level, weakest first (the discovery document's ``acr_values_supported``).
LEVELS = (PASSWORD, TWO_STEP, PHISHING_RESISTANT)
#: RFC 8176 methods of a second step: a one-time code, a hardware-bound key (passkey).
SECOND_FACTORS = frozenset({"otp", "hwk"})


def achieved(amr: Iterable[str] | None) -> str:
    """The level a sign-in that used ``amr`` reached."""
    methods = set(amr or ())
    if "hwk" in methods:
        return PHISHING_RESISTANT
    return TWO_STEP if methods & SECOND_FACTORS else PASSWORD


def required(acr_values: Iterable[str], two_step: bool) -> str:
    """The level a request needs: the least of its known ``acr_values``, at least
    ``mfa`` when the server or the client requires a second step."""
    known = [LEVELS.index(value) for value in acr_values if value in LEVELS]
    level = min(known) if known else 0
    return LEVELS[max(level, LEVELS.index(TWO_STEP) if two_step else 0)]


def meets(amr: Iterable[str] | None, level: str) -> bool:
    """Whether a sign-in that used ``amr`` reached ``level``."""
    return LEVELS.index(achieved(amr)) >= LEVELS.index(level)
