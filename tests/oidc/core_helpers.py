"""Helpers of the OpenID Connect core tests: clients, flows, and ID Token checks."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import authorize_url, consent, location_params
from tests.factories import REDIRECT, USER, login, make_client
from tests.oauth2.conftest import redeem

NONCE = "n-0S6_WzA2Mj"

#: Clients beside the demo ones (``test``, ``sp-demo``: original format, both grants).
OIDC_CLIENTS: list[dict[str, Any]] = [
    make_client("rp", scopes=["openid", "profile", "email", "read-only"]),
    make_client("rp-es", id_token_signed_response_alg="ES256"),
    make_client("pw-a", subject_type="pairwise", redirect_uris=["https://a.example/cb"]),
    make_client("pw-a2", subject_type="pairwise", redirect_uris=["https://a.example/other"]),
    make_client("pw-b", subject_type="pairwise", redirect_uris=["https://b.example/cb"]),
    make_client(
        "pw-sector",
        subject_type="pairwise",
        redirect_uris=["https://c.example/cb", "https://d.example/cb"],
        sector_identifier_uri="https://a.example/sector.json",
    ),
    make_client("no-oidc", scopes=["read-only"]),
    make_client("old-implicit", grant_types=["implicit"], secret=None),
]


def code_for(
    client, client_id: str = "test", redirect_uri: str = REDIRECT, username=USER, **params
) -> str:
    """Sign ``username`` in, consent, and return the code."""
    login(client, username)
    url = authorize_url(client_id=client_id, redirect_uri=redirect_uri, **params)
    response = consent(client, url)
    assert response.status_code == 302, response.get_data(as_text=True)
    found = location_params(response)
    assert "code" in found, found
    return found["code"]


def tokens_for(
    client,
    client_id: str = "test",
    scope: str = "openid",
    redirect_uri: str = REDIRECT,
    username: str = USER,
    **params,
) -> dict[str, Any]:
    """Run the code flow with ``scope`` for ``username``; return the token response."""
    code = code_for(client, client_id, redirect_uri, username, scope=scope, **params)
    data = {"redirect_uri": redirect_uri}
    response = redeem(client, code, client_id, **data)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def jwks_of(client) -> KeySet:
    response = client.get("/jwks.json")
    assert response.status_code == 200
    return KeySet.import_key_set(response.get_json())


def decode(client, id_token: str) -> jwt.Token:
    """Verify ``id_token`` against the served JWKS (by its ``kid``); return it."""
    return jwt.decode(id_token, jwks_of(client), algorithms=["RS256", "ES256"])


def half_hash(value: str, alg: str = "RS256") -> str:
    """at_hash / c_hash: the left half of the SHA-256 (both algorithms use it), base64url."""
    assert alg in ("RS256", "ES256")
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def open_rp_app(tmp_path, dummy_site, **over):
    """:func:`tests.oauth2.conftest.open_app` with the demo clients and :data:`OIDC_CLIENTS`."""
    from tests.oauth2.conftest import open_app

    return open_app(tmp_path, dummy_site, clients=OIDC_CLIENTS, **over)
