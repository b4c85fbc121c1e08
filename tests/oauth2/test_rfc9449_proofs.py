"""DPoP (RFC 9449 §4.3): every check of a proof, refused at /api, UserInfo and /token.

A refused proof gets ``invalid_dpop_proof`` (401 with a ``DPoP`` challenge at a
resource, 400 at the token endpoint), never a 5xx, and changes nothing: no token is
issued and its ``jti`` is not used up.
"""

from __future__ import annotations

import base64
import json
import time
import warnings

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey, RSAKey

from app.oauth2.rfc9449 import access_token_hash
from tests.conftest import basic, bearer, table
from tests.oauth2.conftest import error_of, open_app, unchanged
from tests.oauth2.dpop_helpers import ISSUER, Prover

KEY = Prover()
#: The key's private half, which a proof's ``jwk`` must never carry (§4.2).
PRIVATE = KEY.key.as_dict(private=True)
assert "d" in PRIVATE
#: An RSA key too short for RS256 (RFC 7518 §3.3), though RS256 is allowed.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SecurityWarning)  # joserfc's own warning: too short
    WEAK = Prover(RSAKey.generate_key(1024), "RS256")


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(path: str = "/api/profile", htm: str = "GET", token: str | None = None) -> str:
    """``alg: none``: a header, claims and an empty signature."""
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": KEY.key.as_dict(private=False)}
    claims = {"jti": "j-none", "htm": htm, "htu": ISSUER + path, "iat": int(time.time())}
    if token:
        claims["ath"] = access_token_hash(token)
    return f"{_b64(header)}.{_b64(claims)}."


def hmac_signed(path: str = "/api/profile", htm: str = "GET", token: str | None = None, jwk=None):
    """HS256 with a shared secret, naming the public key (or the secret itself) as ``jwk``."""
    secret = OctKey.generate_key(256)
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk or KEY.key.as_dict(private=False)}
    claims = {"jti": "j-hmac", "htm": htm, "htu": ISSUER + path, "iat": int(time.time())}
    if token:
        claims["ath"] = access_token_hash(token)
    return jwt.encode(header, claims, secret, algorithms=["HS256"])


def other_signer(path: str, htm: str, token: str | None) -> str:
    """Signed by another key than the ``jwk`` it names."""
    forger = Prover()
    header = {"jwk": KEY.key.as_dict(private=False)}
    return forger.proof(htm, path, token, header=header)


#: (id, a function of (path, htm, token) giving the DPoP header value)
BAD_PROOFS = [
    ("wrong-method", lambda p, m, t: KEY.proof("PUT" if m != "PUT" else "GET", p, t)),
    ("wrong-path", lambda p, m, t: KEY.proof(m, "/api/other", t)),
    ("wrong-host", lambda p, m, t: KEY.proof(m, p, t, htu="http://evil.example" + p)),
    ("wrong-scheme", lambda p, m, t: KEY.proof(m, p, t, htu="https://127.0.0.1:8081" + p)),
    ("htu-bad-port", lambda p, m, t: KEY.proof(m, p, t, htu="http://127.0.0.1:99999" + p)),
    ("htu-bad-ipv6", lambda p, m, t: KEY.proof(m, p, t, htu="http://[::1" + p)),
    ("relative-htu", lambda p, m, t: KEY.proof(m, p, t, htu=p)),
    ("htu-not-a-string", lambda p, m, t: KEY.proof(m, p, t, htu=["x"])),
    ("stale-iat", lambda p, m, t: KEY.proof(m, p, t, iat=int(time.time()) - 330)),
    ("future-iat", lambda p, m, t: KEY.proof(m, p, t, iat=int(time.time()) + 400)),
    ("iat-a-string", lambda p, m, t: KEY.proof(m, p, t, iat=str(int(time.time())))),
    ("iat-a-bool", lambda p, m, t: KEY.proof(m, p, t, iat=True)),
    ("no-iat", lambda p, m, t: KEY.proof(m, p, t, iat=None)),
    ("iat-overflows-a-float", lambda p, m, t: KEY.proof(m, p, t, iat=10**400)),
    ("iat-overflows-negative", lambda p, m, t: KEY.proof(m, p, t, iat=-(10**400))),
    ("no-jti", lambda p, m, t: KEY.proof(m, p, t, jti=None)),
    ("empty-jti", lambda p, m, t: KEY.proof(m, p, t, jti="")),
    ("jti-a-number", lambda p, m, t: KEY.proof(m, p, t, jti=7)),
    ("no-htm", lambda p, m, t: KEY.proof(m, p, t, htm=None)),
    ("lowercase-htm", lambda p, m, t: KEY.proof(m.lower(), p, t)),
    ("no-typ", lambda p, m, t: KEY.proof(m, p, t, header={"typ": None})),
    ("typ-jwt", lambda p, m, t: KEY.proof(m, p, t, header={"typ": "JWT"})),
    ("no-jwk", lambda p, m, t: KEY.proof(m, p, t, header={"jwk": None})),
    ("jwk-a-string", lambda p, m, t: KEY.proof(m, p, t, header={"jwk": "key"})),
    ("jwk-unknown-kty", lambda p, m, t: KEY.proof(m, p, t, header={"jwk": {"kty": "XX"}})),
    ("private-key", lambda p, m, t: KEY.proof(m, p, t, header={"jwk": PRIVATE})),
    ("other-signer", lambda p, m, t: other_signer(p, m, t)),
    ("rsa-1024", lambda p, m, t: WEAK.proof(m, p, t)),
    ("alg-none", lambda p, m, t: unsigned(p, m, t)),
    ("hs256", lambda p, m, t: hmac_signed(p, m, t)),
    (
        "hs256-secret-as-jwk",
        lambda p, m, t: hmac_signed(p, m, t, jwk={"kty": "oct", "k": _b64(b"s" * 32)}),
    ),
    ("not-a-jwt", lambda p, m, t: "garbage"),
    ("three-garbage-parts", lambda p, m, t: "a.b.c"),
    ("header-not-json", lambda p, m, t: f"{_b64(b'{not json')}.{_b64({})}.c2ln"),
    ("header-a-list", lambda p, m, t: f"{_b64(b'[1]')}.{_b64({})}.c2ln"),
    ("claims-not-json", lambda p, m, t: KEY.proof(m, p, t).split(".")[0] + ".bm9w.c2ln"),
    ("non-ascii", lambda p, m, t: "é." + KEY.proof(m, p, t)),
    ("too-long", lambda p, m, t: KEY.proof(m, p, t, pad="x" * 9000)),
]
#: Checks only a resource makes: the proof must be of this access token (``ath``).
BAD_ATH = [
    ("no-ath", lambda p, m, t: KEY.proof(m, p, None)),
    ("other-tokens-ath", lambda p, m, t: KEY.proof(m, p, "another-token")),
    ("ath-a-number", lambda p, m, t: KEY.proof(m, p, t, ath=1)),
]


@pytest.fixture
def bound(client) -> str:
    """An access token (with ``read-only`` for the user) bound to :data:`KEY`."""
    from tests.conftest import REDIRECT, get_code

    code = get_code(client, scope="openid read-only")
    answer = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic(), **KEY.headers()},
    )
    assert answer.get_json()["token_type"] == "DPoP"
    return answer.get_json()["access_token"]


def assert_refused_proof(response, status: int = 401) -> None:
    assert response.status_code == status, response.get_json()
    if status == 401:
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('DPoP error="invalid_dpop_proof"'), challenge
        assert 'algs="ES256 EdDSA Ed25519 PS256 RS256"' in challenge
    else:
        assert error_of(response) == "invalid_dpop_proof"


@pytest.mark.parametrize("make", table(BAD_PROOFS + BAD_ATH))
@pytest.mark.parametrize("path", ["/api/profile", "/userinfo"])
def test_a_resource_refuses_a_bad_proof(client, state, bound, make, path) -> None:
    headers = {"Authorization": f"DPoP {bound}", "DPoP": make(path, "GET", bound)}
    with unchanged(state):
        assert_refused_proof(client.get(path, headers=headers))
    good = KEY.headers("GET", path, bound)
    assert client.get(path, headers=good).status_code == 200


@pytest.mark.parametrize("make", table(BAD_PROOFS))
def test_the_token_endpoint_refuses_a_bad_proof(client, state, make) -> None:
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    with unchanged(state):
        answer = client.post(
            "/token", data=data, headers={**basic(), "DPoP": make("/token", "POST", None)}
        )
        assert_refused_proof(answer, 400)
    assert answer.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')


def test_query_and_fragment_of_htu_are_ignored(client, bound) -> None:
    htu = ISSUER + "/api/profile?x=1#frag"
    headers = {
        "Authorization": f"DPoP {bound}",
        "DPoP": KEY.proof("GET", "/api/profile", bound, htu=htu),
    }
    assert client.get("/api/profile?other=2", headers=headers).status_code == 200
    # The default port and the host's case are normalised too (RFC 3986 §6.2.2-3).
    htu = "HTTP://127.0.0.1:8081/api/profile"
    headers["DPoP"] = KEY.proof("GET", "/api/profile", bound, htu=htu)
    assert client.get("/api/profile", headers=headers).status_code == 200


def test_a_replayed_proof_is_refused(client, state, bound) -> None:
    headers = KEY.headers("GET", "/api/profile", bound)
    assert client.get("/api/profile", headers=headers).status_code == 200
    with unchanged(state):
        again = client.get("/api/profile", headers=headers)
    assert_refused_proof(again)
    assert "used before" in again.headers["WWW-Authenticate"]
    # The same jti from another key is another proof (the cache is per key).
    other = Prover()
    same_jti = other.proof(
        "GET",
        "/api/profile",
        bound,
        jti=json.loads(base64.urlsafe_b64decode(headers["DPoP"].split(".")[1] + "=="))["jti"],
    )
    refused = client.get("/api/profile", headers={**headers, "DPoP": same_jti})
    assert (
        refused.status_code == 401
        and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    )


def test_a_replayed_proof_is_refused_at_the_token_endpoint(client, state) -> None:
    headers = {**basic(), **KEY.headers()}
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    assert client.post("/token", data=data, headers=headers).status_code == 200
    with unchanged(state):
        assert_refused_proof(client.post("/token", data=data, headers=headers), 400)


def test_a_proof_of_another_key_is_refused(client, state, bound) -> None:
    """Key swap: a good proof, but not of the key the token is bound to."""
    thief = Prover()
    with unchanged(state):
        answer = client.get("/api/profile", headers=thief.headers("GET", "/api/profile", bound))
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')


def test_an_unbound_token_is_refused_under_the_dpop_scheme(client) -> None:
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    token = client.post("/token", data=data, headers=basic()).get_json()["access_token"]
    answer = client.get("/api/profile", headers=KEY.headers("GET", "/api/profile", token))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert client.get("/api/profile", headers=bearer(token)).status_code == 403  # no user


@pytest.mark.parametrize("path", ["/api/profile", "/userinfo"])
def test_one_proof_exactly(client, bound, path) -> None:
    auth = {"Authorization": f"DPoP {bound}"}
    assert_refused_proof(client.get(path, headers=auth))
    two = [("Authorization", f"DPoP {bound}")] + [
        ("DPoP", KEY.proof("GET", path, bound)) for _ in range(2)
    ]
    assert_refused_proof(client.get(path, headers=two))
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    twice = [("Authorization", basic()["Authorization"])] + [
        ("DPoP", KEY.proof()) for _ in range(2)
    ]
    assert_refused_proof(client.post("/token", data=data, headers=twice), 400)


# -- server nonces (§8, §9) --------------------------------------------------------------
@pytest.fixture
def nonced(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, dpop={"nonce": True}) as app:
        yield app


def test_the_token_endpoint_asks_for_a_nonce_then_accepts_it(nonced) -> None:
    http = nonced.test_client()
    state = nonced.extensions["oauth2"]
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    with unchanged(state):
        first = http.post("/token", data=data, headers={**basic(), **KEY.headers()})
    assert first.status_code == 400 and error_of(first) == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    with unchanged(state):
        wrong = http.post("/token", data=data, headers={**basic(), **KEY.headers(nonce="x" * 43)})
    assert error_of(wrong) == "use_dpop_nonce"
    answer = http.post("/token", data=data, headers={**basic(), **KEY.headers(nonce=nonce)})
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["DPoP-Nonce"] == nonce


def test_a_stale_nonce_is_refused(nonced) -> None:
    http = nonced.test_client()
    dpop = nonced.extensions["oauth2"].server.dpop
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    stale = dpop.nonce(time.time() - 3 * 60)
    refused = http.post("/token", data=data, headers={**basic(), **KEY.headers(nonce=stale)})
    assert error_of(refused) == "use_dpop_nonce"
    recent = dpop.nonce(time.time() - 60)
    accepted = http.post("/token", data=data, headers={**basic(), **KEY.headers(nonce=recent)})
    assert accepted.status_code == 200


@pytest.mark.parametrize("path", ["/api/profile", "/userinfo"])
def test_a_resource_asks_for_a_nonce(nonced, path) -> None:
    from tests.conftest import REDIRECT, get_code

    http = nonced.test_client()
    dpop = nonced.extensions["oauth2"].server.dpop
    code = get_code(http, scope="openid read-only")
    answer = http.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={**basic(), **KEY.headers(nonce=dpop.nonce())},
    )
    token = answer.get_json()["access_token"]
    first = http.get(path, headers=KEY.headers("GET", path, token))
    assert first.status_code == 401
    assert first.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    nonce = first.headers["DPoP-Nonce"]
    wrong = http.get(path, headers=KEY.headers("GET", path, token, nonce="wrong"))
    assert wrong.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    good = http.get(path, headers=KEY.headers("GET", path, token, nonce=nonce))
    assert good.status_code == 200 and good.headers["DPoP-Nonce"] == nonce


def test_nonces_are_off_by_default(client) -> None:
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    answer = client.post("/token", data=data, headers={**basic(), **KEY.headers()})
    assert answer.status_code == 200 and "DPoP-Nonce" not in answer.headers


def test_an_unexpected_error_reading_a_proof_is_a_refusal(client, state, bound, monkeypatch):
    """Whatever a proof's parsing trips over is ``invalid_dpop_proof``, never a 5xx."""
    from app.oauth2.rfc9449 import DPoP

    def trip(*args, **kwargs):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(DPoP, "_claims", trip)
    headers = KEY.headers("GET", "/api/profile", bound)
    with unchanged(state):
        assert_refused_proof(client.get("/api/profile", headers=headers))


def test_a_dpop_callers_403_carries_a_dpop_challenge(client, bound) -> None:
    """RFC 9449 §7.1: the refusal of a ``DPoP`` request names the ``DPoP`` scheme."""
    headers = KEY.headers("POST", "/api/update_avatar", bound)
    response = client.post("/api/update_avatar", headers=headers, data={"avatar": "x"})
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP error="insufficient_scope"'), challenge
    assert 'scope="read-write"' in challenge and 'algs="' in challenge


def test_a_refused_api_call_does_not_use_its_proof_up(client, state, bound) -> None:
    """A 403 (scope) at /api changes nothing: the same proof is refused for scope again,
    not as a replay; a call that passes uses it up."""
    headers = KEY.headers("POST", "/api/update_avatar", bound)
    with unchanged(state):
        for _ in range(2):
            response = client.post("/api/update_avatar", headers=headers, data={"avatar": "x"})
            assert response.status_code == 403, response.get_json()
    good = KEY.headers("GET", "/api/profile", bound)
    assert client.get("/api/profile", headers=good).status_code == 200
    replayed = client.get("/api/profile", headers=good)
    assert_refused_proof(replayed)
