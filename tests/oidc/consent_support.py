"""Support for the consent and sign-in parameter tests: an app whose adapter knows the
OpenID Connect scopes, ID Tokens to send as ``id_token_hint``, and flow helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from joserfc import jwt

from app.adapters.dummy import DummyAdapter
from app.oidc.keys import new_key
from app.storage import base as storage_base
from app.storage import sql
from app.views import authorize as authorize_view
from tests.conftest import authorize_url, consent, location_params
from tests.factories import REDIRECT, login, make_client
from tests.oauth2.conftest import open_app


class OpenIDDummy(DummyAdapter):
    """The dummy adapter with the OpenID Connect scopes beside its own."""

    def http_config(self, config: dict[str, Any]) -> dict[str, Any]:
        answer = super().http_config(config)
        answer["scopes"] = {**answer["scopes"], "openid": "Sign you in", "email": "Your e-mail"}
        return answer


ADAPTER = f"{__name__}:OpenIDDummy"
#: ``oidc``: a confidential partner for the code and implicit flows; ``first``: first-party.
CLIENTS = [
    make_client(
        "oidc",
        name="OIDC partner",
        grant_types=["authorization_code", "implicit", "refresh_token"],
    ),
    make_client("first", name="First party"),
    make_client("other", name="Other partner"),
]
OPENID = "openid read-only"


@pytest.fixture
def oidc_app(tmp_path, dummy_site) -> Iterator[Flask]:
    """An app with the clients above; ``first`` is marked ``skip_consent``."""
    with open_app(
        tmp_path,
        dummy_site,
        clients=CLIENTS,
        resource_server={"type": ADAPTER},
        oidc={"consent_lifetime": 600},
    ) as app:
        app.extensions["oauth2"].clients.get("first").skip_consent = True
        yield app


@pytest.fixture
def later(monkeypatch) -> Callable[[float], None]:
    """Move every clock the server reads (storage expiry, the views) forward."""

    def advance(seconds: float) -> None:
        clock = SimpleNamespace(time=lambda: real() + seconds)
        monkeypatch.setattr(sql, "time", clock)
        monkeypatch.setattr(storage_base, "time", clock)
        monkeypatch.setattr(authorize_view, "time", clock)

    real = time.time
    return advance


@pytest.fixture
def http(oidc_app):
    return oidc_app.test_client()


@pytest.fixture
def st(oidc_app):
    return oidc_app.extensions["oauth2"]


def url(client_id: str = "oidc", scope: str | None = OPENID, **extra: Any) -> str:
    return authorize_url(client_id=client_id, scope=scope, **extra)


def allow(http, client_id: str = "oidc", scope: str | None = OPENID, **extra: Any) -> str:
    """Ask, answer the consent page with Allow; return the code."""
    response = consent(http, url(client_id, scope, **extra))
    assert response.status_code == 302, response.get_data(as_text=True)
    return location_params(response)["code"]


def code_of(response) -> str:
    """The code of a redirect straight to the client (no page shown)."""
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    assert response.headers["Location"].startswith(REDIRECT), response.headers["Location"]
    params = location_params(response)
    assert "code" in params, params
    return params["code"]


def next_of(response) -> str:
    """The ``next`` of a redirect to the sign-in page."""
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login", response.headers["Location"]
    return parse_qs(location.query)["next"][0]


def sign_in_again(http, response, username: str = "alice"):
    """Follow a redirect to the sign-in page: sign in, then follow ``next``."""
    target = next_of(response)
    signed = login(http, username=username, next_url=target)
    assert signed.status_code == 302 and signed.headers["Location"] == target
    return http.get(target)


def id_token(state, sub: str, aud: str | list[str] = "oidc", key=None, **claims: Any) -> str:
    """An ID Token signed like the server's (the ring's RS256 key unless ``key``)."""
    key = key or state.keys.signing_key("RS256")
    now = int(time.time())
    payload = {"iss": state.settings.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + 600}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {**payload, **claims}, key)


def foreign_key():
    """An RS256 key this server never published."""
    return new_key("RS256")
