"""Hypothesis over the ``DPoP`` header (RFC 9449): never a 5xx, a refusal changes nothing.

Values are raw bytes, JWT-shaped garbage, a good proof with bytes changed, and proofs
signed by a real key over arbitrary JSON headers and claims, so the checks behind the
signature are reached too.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REDIRECT, basic, get_code
from tests.oauth2.conftest import snapshot
from tests.oauth2.dpop_helpers import Prover

KEY = Prover()
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])  # no float holds them (OverflowError)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Members a proof's header and claims have, so that generated values land on them.
HEADER_NAMES = st.sampled_from(["typ", "alg", "jwk", "kid", "crit", "b64"])
CLAIM_NAMES = st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce", "exp"])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@st.composite
def mutated(draw, base: str) -> str:
    """A good proof with a few characters replaced, inserted or cut."""
    chars = list(base)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(chars) - 1))
        chars[at : at + draw(st.integers(0, 3))] = draw(st.text(max_size=3))
    return "".join(chars)


@st.composite
def signed(draw, method: str, path: str, token: str | None) -> str:
    """A proof signed by :data:`KEY` with arbitrary values over some members."""
    header = draw(st.dictionaries(HEADER_NAMES, JSON, max_size=2))
    claims = draw(st.dictionaries(CLAIM_NAMES, JSON, max_size=3))
    return KEY.proof(method, path, token, header=header, **claims)


@st.composite
def shaped(draw) -> str:
    """Three base64url parts of arbitrary bytes or JSON."""
    parts = [
        _b64(draw(st.binary(max_size=40) | JSON.map(lambda v: json.dumps(v).encode())))
        for _ in range(3)
    ]
    return ".".join(parts)


def values(method: str, path: str, token: str | None):
    good = KEY.proof(method, path, token)
    return st.one_of(
        st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
        shaped(),
        mutated(good),
        signed(method, path, token),
    )


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def bound(client) -> str:
    code = get_code(client, scope="openid read-only")
    answer = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic(), **KEY.headers()},
    )
    return answer.get_json()["access_token"]


def check(app, method: str, path: str, value: str, **kw):
    before = snapshot(app.extensions["oauth2"])
    response = app.test_client(use_cookies=False).open(
        path, method=method, environ_overrides={"HTTP_DPOP": value}, **kw
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert snapshot(app.extensions["oauth2"]) == before
        assert response.headers["WWW-Authenticate"].startswith("DPoP ")
    return response


def test_token_endpoint(app, client) -> None:
    data = {"grant_type": "client_credentials", "scope": "read-only"}

    @FUZZ
    @given(value=values("POST", "/token", None))
    def run(value: str) -> None:
        check(app, "POST", "/token", value, data=data, headers=basic())

    run()


@pytest.mark.parametrize("path", ["/api/profile", "/userinfo"])
def test_resources(app, bound, path) -> None:
    @FUZZ
    @given(value=values("GET", path, bound))
    def run(value: str) -> None:
        check(app, "GET", path, value, headers={"Authorization": f"DPoP {bound}"})

    run()
