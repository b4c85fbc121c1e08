"""The sign-in parameters of an authorization request (OpenID Connect Core 1.0 §3.1.2.1).

https://openid.net/specs/openid-connect-core-1_0.html#AuthRequest

``prompt``, ``max_age``, ``login_hint``, ``id_token_hint``, ``ui_locales``,
``claims_locales``, ``acr_values`` and ``display`` are read and checked here, for every
authorization request, whether or not the OpenID grants are registered; the view asks
:func:`parse` once and then the questions below. A bad value is ``invalid_request``,
sent to the client's (already validated) redirect URI.

* ``prompt``: a set of ``none``, ``login``, ``consent``, ``select_account``; ``none``
  stands alone. ``select_account`` shows the sign-in page, as ``login`` does: a browser
  holds one account here at a time, so choosing an account is signing in with it.
* ``max_age``: seconds; an older sign-in (``auth_time``) signs in again.
* ``id_token_hint``: an ID Token this server signed for this client (``exp`` ignored);
  its ``sub`` for someone other than the signed-in user signs in again.
* ``acr_values``: the levels the client accepts, which the view turns into a second step
  (:mod:`app.oidc.acr`).

A sign-in page shown because of these is asked for once per request: the session keeps
a marker for the request (:func:`ask_sign_in`), and the same request coming back after a
newer sign-in goes on (:func:`fresh_sign_in`) instead of asking again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from joserfc import jwt
from joserfc.errors import JoseError

from ..secrets_hash import token_digest
from ..sessions import SIGNED_IN_AT
from .subjects import subject_for

PROMPTS = frozenset({"none", "login", "consent", "select_account"})
#: The prompts that show the sign-in page to a signed-in user.
SIGN_IN_PROMPTS = frozenset({"login", "select_account"})
DISPLAYS = frozenset({"page", "popup", "touch", "wap"})
#: Errors a ``prompt=none`` request gets at its redirect URI even before sign-in.
SILENT_ERRORS = frozenset(
    {"login_required", "consent_required", "interaction_required", "account_selection_required"}
)
#: The parameters that may appear once at most (RFC 6749 §3.1).
PARAMS = (
    "prompt",
    "max_age",
    "login_hint",
    "id_token_hint",
    "ui_locales",
    "claims_locales",
    "acr_values",
    "display",
    "nonce",
)
MAX_TEXT = 256
MAX_AGE = 2**31 - 1
ALGORITHMS = ["RS256", "ES256"]
#: Space-separated words of printable ASCII (``acr_values``).
WORDS = re.compile(r"[\x21-\x7e]+( [\x21-\x7e]+)*")
#: Space-separated BCP 47 language tags, loosely (``ui_locales``, ``claims_locales``).
_TAG = r"[A-Za-z0-9]{1,8}(-[A-Za-z0-9]{1,8})*"
LOCALES = re.compile(f"{_TAG}( {_TAG})*")
#: Any text without control characters (a ``login_hint`` may be an e-mail address).
NO_CONTROLS = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")
JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
#: The session's marker of a sign-in asked for by one authorization request.
REAUTH = "_reauth"


@dataclass(frozen=True)
class SignIn:
    """What an authorization request asks of the sign-in."""

    prompt: frozenset[str] = frozenset()
    max_age: int | None = None
    login_hint: str | None = None
    #: The ``sub`` of a verified ``id_token_hint``.
    hint_sub: str | None = None
    ui_locales: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()

    @property
    def silent(self) -> bool:
        """``prompt=none``: answer at once, never show a page."""
        return "none" in self.prompt

    @property
    def consent(self) -> bool:
        """``prompt=consent``: show the consent page even if consent is remembered."""
        return "consent" in self.prompt

    def needs_sign_in(self, auth_time: float | None, sub: str | None, now: float) -> bool:
        """Whether the signed-in user (signed in at ``auth_time``, seen as ``sub``) must
        sign in again before this request is answered."""
        if self.prompt & SIGN_IN_PROMPTS:
            return True
        if self.max_age is not None and (auth_time is None or now - auth_time > self.max_age):
            return True
        return self.hint_sub is not None and self.hint_sub != sub

    @property
    def marks_sign_in(self) -> bool:
        """Whether a sign-in for this request must be remembered (see :func:`ask_sign_in`)."""
        asks = bool(self.prompt & SIGN_IN_PROMPTS)
        return asks or self.max_age is not None or self.hint_sub is not None


def parse(grant, keys, issuer: str) -> SignIn:
    """Read and check the request's sign-in parameters; ``invalid_request`` if one is bad."""
    payload = grant.request.payload
    client_id = grant.client.get_client_id()

    def bad(description: str) -> InvalidRequestError:
        return InvalidRequestError(
            description,
            state=payload.state,
            redirect_uri=grant.redirect_uri,
            redirect_fragment=payload.response_type != "code",
        )

    lists = payload.datalist
    for name in PARAMS:
        if len(lists.get(name, [])) > 1:
            raise bad(f"Parameter '{name}' is repeated.")
    # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    data = {name: value for name, value in payload.data.items() if value != ""}
    try:
        _accepted(data)
        return SignIn(
            prompt=_prompt(data.get("prompt")),
            max_age=_max_age(data.get("max_age")),
            login_hint=_text(data.get("login_hint"), NO_CONTROLS, "login_hint"),
            hint_sub=_hint_sub(data.get("id_token_hint"), keys, issuer, client_id),
            ui_locales=tuple((_text(data.get("ui_locales"), LOCALES, "ui_locales") or "").split()),
            acr_values=tuple((_text(data.get("acr_values"), WORDS, "acr_values") or "").split()),
        )
    except ValueError as error:
        raise bad(str(error)) from None


def _accepted(data: dict[str, str]) -> None:
    """Check the parameters that are accepted and otherwise unused."""
    _text(data.get("claims_locales"), LOCALES, "claims_locales")
    display = data.get("display")
    if display is not None and display not in DISPLAYS:
        raise ValueError("Unsupported 'display' value.")


def _text(value: str | None, syntax: Any, name: str) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_TEXT or not syntax.fullmatch(value):
        raise ValueError(f"Invalid '{name}' parameter.")
    return value


def _prompt(value: str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if len(value) > MAX_TEXT:
        raise ValueError("Invalid 'prompt' parameter.")
    prompts = frozenset(value.split(" "))
    if not prompts <= PROMPTS:
        raise ValueError("Unsupported 'prompt' value.")
    if "none" in prompts and len(prompts) > 1:
        raise ValueError("'prompt=none' cannot be combined with other values.")
    return prompts


def _max_age(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_AGE:
        raise ValueError("Invalid 'max_age' parameter: a number of seconds is expected.")
    return int(value)


def _hint_sub(value: str | None, keys, issuer: str, client_id: str) -> str | None:
    """The ``sub`` of an ID Token this server signed for ``client_id`` (expired or not)."""
    if value is None:
        return None
    invalid = ValueError("Invalid 'id_token_hint'.")
    if not JWS.fullmatch(value):
        raise invalid
    try:
        token = jwt.decode(value, keys.verification_keys(), algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError, LookupError):
        raise invalid from None
    claims = token.claims
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if (
        "kid" not in token.header
        or claims.get("iss") != issuer
        or not isinstance(audiences, list)
        or client_id not in audiences
        or not isinstance(claims.get("sub"), str)
        or not claims["sub"]
        or "events" in claims  # a Logout Token (Back-Channel Logout §2.4), not an ID Token
    ):
        raise invalid
    return str(claims["sub"])


# -- the sign-in asked for by a request -----------------------------------------------
def request_key(query_string: bytes) -> str:
    """What ties a sign-in marker to one authorization request: its query's digest."""
    return token_digest(query_string.decode("latin-1"))


def ask_sign_in(session, key: str) -> None:
    """Remember, in the session, that this request sent the user to sign in now."""
    session[REAUTH] = {"for": key, "at": time.time()}


def fresh_sign_in(session, key: str) -> bool:
    """Whether the user signed in after this same request asked; the marker is used up."""
    marker = session.get(REAUTH)
    if not isinstance(marker, dict) or marker.get("for") != key:
        return False
    if session.get(SIGNED_IN_AT, 0) < marker.get("at", float("inf")):
        return False
    session.pop(REAUTH, None)
    return True


def subject_of(client, user_id: str, keys) -> str:
    """The ``sub`` the client sees for the user (to compare with an ``id_token_hint``)."""
    if client.subject_type == "pairwise":
        return subject_for(client, user_id, keys.pairwise_secret())
    return subject_for(client, user_id, b"")
