"""Bearer Token Usage (RFC 6750), https://www.rfc-editor.org/rfc/rfc6750

The ``Authorization`` header parser (§2.1), total: any header gives a token or
``None``, never an exception. A resource endpoint records whether the token it was
shown was good (:func:`note`), and other layers (the limiter) read it.
"""

from __future__ import annotations

import re

from flask import g

#: §2.1: credentials = "Bearer" 1*SP b64token
_CREDENTIALS = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")


def bearer_token(header: str) -> str | None:
    """The b64token of a ``Bearer`` header, or ``None`` for anything else."""
    match = _CREDENTIALS.fullmatch(header)
    return match.group(1) if match else None


def names_bearer(header: str) -> bool:
    """Whether the header presents some ``Bearer`` value, well formed or not (§3.1: a
    request without one lacks authentication and gets no error code)."""
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and bool(value.strip())


def note(valid: bool) -> None:
    """Record whether the request's bearer token was good (present, live)."""
    g.bearer_valid = valid


def verified() -> bool:
    """Whether a resource endpoint accepted this request's bearer token."""
    return bool(g.get("bearer_valid"))
