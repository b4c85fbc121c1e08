"""Helpers of the logout tests: partners with logout URIs, ID Token hints, the session."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.sessions import SID, USER_KEY, note_relying_party
from tests.factories import REDIRECT

#: Where the partners want to land after signing out.
AFTER = "http://localhost:8080/signed-out"


def give(app: Flask, client_id: str, **fields: Any) -> None:
    """Set OIDC fields of a registered client (the clients file's parser is not ours)."""
    registry = app.extensions["oauth2"].clients
    registry._clients[client_id] = dataclasses.replace(registry.get(client_id), **fields)


def session_of(browser: FlaskClient) -> dict[str, Any]:
    """The signed-in browser's stored session (user id, ``sid``...)."""
    with browser.session_transaction() as session:
        return {"user_id": session.get(USER_KEY), "sid": session.get(SID), **dict(session)}


def note(browser: FlaskClient, *client_ids: str) -> None:
    """Record ``client_ids`` as signed in through this session, as a code flow would."""
    with browser.session_transaction() as session:
        for client_id in client_ids:
            note_relying_party(session, client_id)  # type: ignore[arg-type]


def id_token(
    app: Flask,
    sub: str,
    *,
    aud: str | list[str] = "test",
    sid: str | None = None,
    expires_in: int = 3600,
    key: RSAKey | None = None,
    **claims: Any,
) -> str:
    """An ID Token as the server signs them (or with ``key``), to send as a hint."""
    state = app.extensions["oauth2"]
    key = key or state.keys.signing_key("RS256")
    now = int(time.time())
    body = {"iss": state.settings.issuer, "sub": sub, "aud": aud, "iat": now - 10}
    body |= {"exp": now + expires_in, "auth_time": now - 10}
    if sid:
        body["sid"] = sid
    header = {"alg": "RS256", "kid": key.kid}
    return jwt.encode(header, body | claims, key, algorithms=["RS256"])


__all__ = ["AFTER", "REDIRECT", "give", "id_token", "note", "session_of"]
