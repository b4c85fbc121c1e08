"""Test data with good defaults, made the way the server makes it.

``make_client`` builds a clients-file entry. ``make_user`` signs a user in at the
site (the app's dummy site) and remembers them; ``make_code`` and ``make_token`` store
an authorization code or a token pair of a new grant for that user through the app's
own grant store (hashed, as if issued) and return what the partner would hold, so a
test of redemption, introspection or ``/api`` needs no consent flow first. ``login``
signs a test client in through the login form, CSRF token included. Override any
field by keyword.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import State
from app.oauth2.grant_store import new_grant_id
from app.secrets_hash import hash_random_secret, new_secret
from app.users import User

#: The redirect URI of the demo clients (``clients.json.example``).
REDIRECT = "http://localhost:8080/"
#: The demo clients' secret, and every ``make_client`` one unless given.
SECRET = "hunter2"
#: A user of the dummy site (its password is ``password``).
USER = "alice"


def make_client(
    client_id: str = "partner",
    redirect_uris: Sequence[str] = (REDIRECT,),
    secret: str | None = SECRET,
    **fields: Any,
) -> dict[str, Any]:
    """A clients-file entry: confidential with ``secret``, public when it is None."""
    entry: dict[str, Any] = {
        "client_id": client_id,
        "name": client_id,
        "redirect_uris": list(redirect_uris),
        "grant_types": ["authorization_code", "refresh_token"],
    }
    if secret is None:
        entry["public"] = True
    else:
        entry["client_secret_hash"] = hash_random_secret(secret)
    return entry | fields


def make_user(state: State, username: str = USER) -> User:
    """Sign ``username`` in at the site (the dummy site's password) and remember them."""
    site_user = state.adapter.login(username, "password")
    assert site_user is not None, f"the site refused {username}"
    return state.users.remember(site_user)


def make_code(state: State, client_id: str = "test", **fields: Any) -> str:
    """Store an unused authorization code of ``USER`` for ``client_id``; return the code."""
    code = new_secret(32)
    record = {
        "client_id": client_id,
        "user_id": make_user(state).id,
        "grant_id": new_grant_id(),
        "redirect_uri": REDIRECT,
        "scope": "read-only",
        "code_challenge": None,
        "code_challenge_method": None,
        "auth_time": int(time.time()),
    }
    state.grants.save_code(code, record | fields)
    return code


def make_token(
    state: State,
    client_id: str = "test",
    scope: str = "read-only",
    expires_in: int = 3600,
    refresh: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """Store an access token (and refresh token) of ``USER``; return the token response.

    A negative ``expires_in`` stores one that has already expired."""
    token: dict[str, Any] = {
        "token_type": "Bearer",
        "access_token": new_secret(32),
        "expires_in": expires_in,
        "scope": scope,
    }
    if refresh:
        token["refresh_token"] = new_secret(32)
    user = make_user(state)
    record = {"client_id": client_id, "grant_id": new_grant_id(), "user_id": user.id}
    record |= {"user_name": user.name, "site_token": user.site_token}
    state.grants.save_token(token, record | fields)
    return token


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(
    client: FlaskClient,
    username: str = USER,
    password: str = "password",
    next_url: str | None = "",
    path: str = "/login",
    **request: Any,
) -> TestResponse:
    """Open the login page at ``path`` and send its form; ``request`` goes to both calls
    (``base_url=``, ``headers=``...). ``next_url=None`` sends no ``next`` field."""
    page = client.get(path, **request)
    form = {"username": username, "password": password, "next": next_url}
    form["csrf_token"] = csrf_from(page.get_data(as_text=True))
    data = {name: value for name, value in form.items() if value is not None}
    return client.post(path, data=data, **request)
