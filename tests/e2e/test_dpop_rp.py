"""DPoP (RFC 9449) with a third-party client: panva's ``openid-client`` / ``oauth4webapi``.

The relying party (``tests/e2e/rp/rp.mjs``, modes ``dpop-start`` and ``dpop-finish``)
holds a key made by the library (ES256; Ed25519 for the public client), binds the code to it
(``dpop_jkt``), and lets the library's DPoP handle sign every proof: the code exchange,
UserInfo, ``/api/profile``, the refresh, and ``/api/profile`` with the refreshed token.
It records every HTTP exchange the library made (scheme, the proof's header and claims,
status, ``DPoP-Nonce``, ``WWW-Authenticate``), so the test checks what went over the wire,
not only that the library was satisfied. With the server's nonces on, the library meets
``use_dpop_nonce`` at the token endpoint and at the resource, and retries with the nonce.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import pytest
import requests
from joserfc.jwk import JWKRegistry

from bench import dpop
from tests.e2e.conftest import HTTP_TIMEOUT
from tests.e2e.test_oidc_rp import CALLBACK, SECRET, rp_client, run_rp
from tests.e2e.test_serve import sign_in_and_allow

SCOPE = "openid profile email read-only"


def public_client(client_id: str, **extra: object) -> dict[str, object]:
    """A public client (no secret, PKCE): its refresh token is bound to the DPoP key too."""
    entry = rp_client(client_id, token_endpoint_auth_method="none", **extra)
    entry.pop("client_secret_hash")
    return entry


def steps(exchanges: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The recorded exchanges grouped by the RP's step marks, in order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    current = "?"
    for entry in exchanges:
        if "step" in entry:
            current = entry["step"]
            grouped[current] = []
        else:
            grouped[current].append(entry)
    return grouped


def ath(token: str) -> str:
    digest = hashlib.sha256(token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_proof(
    entry: dict[str, Any], method: str, url: str, jkt: str, token: str | None, alg: str
) -> None:
    """A proof the library sent: ``alg`` with the key of ``jkt``, for this request, and at a
    resource the ``DPoP`` scheme and the token's hash (``ath``)."""
    proof = entry["proof"]
    assert proof is not None, entry
    assert proof["header"]["typ"] == "dpop+jwt" and proof["header"]["alg"] == alg
    assert "d" not in proof["header"]["jwk"]
    assert JWKRegistry.import_key(proof["header"]["jwk"]).thumbprint() == jkt
    claims = proof["claims"]
    assert claims["htm"] == method and claims["htu"] == url
    assert claims["jti"] and isinstance(claims["iat"], int)
    if token is None:
        assert "ath" not in claims
    else:
        assert claims["ath"] == ath(token)
        assert entry["scheme"] == "DPoP"


def api(server_url: str, token: str, scheme: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{server_url}/api/profile",
        headers={"Authorization": f"{scheme} {token}", **headers},
        timeout=HTTP_TIMEOUT,
    )


@pytest.mark.parametrize(
    ("kind", "alg"),
    [("confidential", "ES256"), ("public-with-nonces", "Ed25519")],
)
def test_openid_client_uses_dpop(start_server, kind: str, alg: str) -> None:
    nonces = kind == "public-with-nonces"
    client_id = f"rp-dpop-{kind.split('-')[0]}"
    if nonces:
        entry = public_client(client_id)
        secret: dict[str, str] = {}
    else:
        # The client must use DPoP (a token request without a proof is refused).
        entry = rp_client(client_id, dpop_bound_access_tokens=True)
        secret = {"client_secret": SECRET}
    server = start_server([entry], config={"dpop": {"nonce": nonces}})
    common = {"issuer": server.url, "client_id": client_id, **secret}
    username = f"dpop-{secrets.token_hex(4)}@example.com"

    common["dpop_alg"] = alg  # oauth4webapi names Ed25519 keys' proofs "Ed25519" (RFC 9864)
    started = run_rp("dpop-start", redirect_uri=CALLBACK, scope=SCOPE, **common)
    assert f"dpop_jkt={started['jkt']}" in started["url"]
    with requests.Session() as agent:
        callback = sign_in_and_allow(agent, started["url"], username)
    assert callback.startswith(CALLBACK + "?"), callback
    done = run_rp(
        "dpop-finish",
        callback=callback,
        verifier=started["verifier"],
        nonce=started["nonce"],
        state=started["state"],
        keys=started["keys"],
        other_key_refresh=nonces,  # a public client's refresh token is bound to the key
        **common,
    )
    jkt = started["jkt"]
    assert done["jkt"] == jkt
    by_step = steps(done["exchanges"])
    token_url = f"{server.url}/token"

    # The code exchange: a proof without `ath`; the server's answer is `token_type: DPoP`.
    code = by_step["code"]
    if nonces:
        # First try without a nonce: 400 use_dpop_nonce with a DPoP-Nonce; then the retry.
        first, code = code[0], code[1:]
        assert first["status"] == 400 and first["body"]["error"] == "use_dpop_nonce"
        assert first["dpop_nonce"] and "nonce" not in first["proof"]["claims"]
        assert code[0]["proof"]["claims"]["nonce"] == first["dpop_nonce"]
        assert code[0]["proof"]["claims"]["jti"] != first["proof"]["claims"]["jti"]
    assert len(code) == 1 and code[0]["status"] == 200, code
    check_proof(code[0], "POST", token_url, jkt, None, alg)
    assert code[0]["body"]["token_type"] == "DPoP"
    assert done["token_type"] == "dpop"  # the library's own (lower-cased) reading
    assert done["claims"]["nonce"] == started["nonce"]

    # UserInfo with the DPoP scheme and a proof carrying `ath`.
    userinfo = by_step["userinfo"]
    assert [e["status"] for e in userinfo] == [200], userinfo
    check_proof(userinfo[0], "GET", f"{server.url}/userinfo", jkt, done["access_token"], alg)
    if nonces:  # the nonce the token endpoint handed out is good at UserInfo too
        assert userinfo[0]["proof"]["claims"]["nonce"]
    assert done["userinfo"]["sub"] == done["claims"]["sub"]
    assert done["userinfo"]["email"] == username

    # /api/profile from a second handle that knows no nonce yet.
    profile = by_step["api"]
    if nonces:
        first, profile = profile[0], profile[1:]
        assert first["status"] == 401 and "nonce" not in first["proof"]["claims"]
        assert first["www_authenticate"].startswith("DPoP ")
        assert 'error="use_dpop_nonce"' in first["www_authenticate"]
        assert first["dpop_nonce"]
        assert profile[0]["proof"]["claims"]["nonce"] == first["dpop_nonce"]
    assert [e["status"] for e in profile] == [200], profile
    check_proof(profile[0], "GET", f"{server.url}/api/profile", jkt, done["access_token"], alg)
    assert done["profile"]["status"] == 200 and done["profile"]["body"]["id"]

    # A public client's refresh token is bound: another key cannot use it, and the
    # refused attempt changes nothing (the real refresh below still works).
    if nonces:
        stolen = done["other_key_refresh"]
        assert stolen["accepted"] is False, stolen
        assert stolen["error"] in ("invalid_grant", "invalid_dpop_proof"), stolen
    else:
        assert done["other_key_refresh"] is None

    # The refresh: a new DPoP-bound access token that works at /api/profile.
    refresh = by_step["refresh"]
    assert [e["status"] for e in refresh] == [200], refresh
    check_proof(refresh[0], "POST", token_url, jkt, None, alg)
    assert refresh[0]["body"]["token_type"] == "DPoP"
    assert done["refreshed_token_type"] == "dpop"
    assert done["refreshed_access_token"] != done["access_token"]
    after = by_step["api-refreshed"]
    assert [e["status"] for e in after] == [200], after
    assert done["profile_after_refresh"]["body"]["id"] == done["profile"]["body"]["id"]

    # The server holds the binding: introspection shows the key's thumbprint.
    new_token = done["refreshed_access_token"]
    if not nonces:
        introspected = requests.post(
            f"{server.url}/introspect",
            data={"token": new_token},
            auth=(client_id, SECRET),
            timeout=HTTP_TIMEOUT,
        ).json()
        assert introspected["active"] is True
        assert introspected["token_type"] == "DPoP"
        assert introspected["cnf"] == {"jkt": jkt}

    # The bound token alone is useless: as Bearer, or as DPoP without a proof, refused.
    for scheme in ("Bearer", "DPoP"):
        answer = api(server.url, new_token, scheme)
        assert answer.status_code == 401, (scheme, answer.text)
        assert "invalid_token" in answer.headers.get("WWW-Authenticate", "") or (
            "invalid_dpop_proof" in answer.headers.get("WWW-Authenticate", "")
        ), answer.headers
    bearer_userinfo = requests.get(
        f"{server.url}/userinfo",
        headers={"Authorization": f"Bearer {new_token}"},
        timeout=HTTP_TIMEOUT,
    )
    assert bearer_userinfo.status_code == 401, bearer_userinfo.text

    # Proofs made here (bench/dpop.py, joserfc) with the RP's key: the server accepts the
    # new token with one, refuses the same proof again (replay), and refuses the token the
    # refresh replaced (rotation) even with a good proof.
    exported = started["keys"]["privateKey"]  # WebCrypto adds key_ops and ext: not ours
    members = ("kty", "crv", "x", "y", "d") if alg == "ES256" else ("kty", "crv", "x", "d")
    key = JWKRegistry.import_key({k: exported[k] for k in members})
    assert dpop.thumbprint(key) == jkt
    profile_url = f"{server.url}/api/profile"
    seen = [e["dpop_nonce"] for e in done["exchanges"] if e.get("dpop_nonce")]
    nonce = seen[-1] if nonces else None
    assert bool(seen) == nonces  # the server hands out nonces only when they are on
    proof = dpop.proof(key, "GET", profile_url, new_token, nonce=nonce, alg=alg)
    answer = api(server.url, new_token, "DPoP", DPoP=proof)
    assert answer.status_code == 200, answer.text
    nonce = answer.headers.get("DPoP-Nonce", nonce)
    replayed = api(server.url, new_token, "DPoP", DPoP=proof)
    assert replayed.status_code == 401, replayed.text
    assert 'error="invalid_dpop_proof"' in replayed.headers["WWW-Authenticate"]
    old = done["access_token"]
    stale = api(
        server.url, old, "DPoP", DPoP=dpop.proof(key, "GET", profile_url, old, nonce, alg=alg)
    )
    assert stale.status_code == 401, stale.text
    if not nonces:  # (ES256, no nonce)
        # The bench's fast path (bench/dpop.py ``proofs``, as wrk sends them): each once.
        for proof in dpop.proofs(key, "GET", profile_url, 3, new_token):
            answer = api(server.url, new_token, "DPoP", DPoP=proof)
            assert answer.status_code == 200, answer.text

    # A refresh without a proof is refused (the confidential client must use DPoP; the
    # public client's refresh token is bound) and changes nothing: with one, it works.
    refresh_token = done["refreshed_refresh_token"]
    auth = (client_id, SECRET) if not nonces else None
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if nonces:
        form["client_id"] = client_id
    bare = requests.post(token_url, data=form, auth=auth, timeout=HTTP_TIMEOUT)
    assert bare.status_code in (400, 401), bare.text
    assert bare.json()["error"] in ("invalid_dpop_proof", "invalid_request"), bare.text
    nonce = bare.headers.get("DPoP-Nonce", nonce)
    proved = requests.post(
        token_url,
        data=form,
        auth=auth,
        headers={"DPoP": dpop.proof(key, "POST", token_url, nonce=nonce, alg=alg)},
        timeout=HTTP_TIMEOUT,
    )
    assert proved.status_code == 200, proved.text
    assert proved.json()["token_type"] == "DPoP"
