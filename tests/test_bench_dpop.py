"""The bench's DPoP proofs (``bench/dpop.py``): real RFC 9449 proofs, one ``jti`` each.

The bench signs its proofs before a run with a fast path (the header encoded once, the
payload signed with ``cryptography`` directly); these tests hold that path to the same
JWS joserfc makes and verifies.
"""

from __future__ import annotations

import time

import pytest
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import JWKRegistry

from bench import dpop

URL = "http://127.0.0.1:8080/api/profile"


def test_fast_proofs_verify_with_joserfc_and_never_repeat_a_jti() -> None:
    key = dpop.new_key()
    before = int(time.time())
    proofs = dpop.proofs(key, "GET", URL, 50, "the-access-token")
    jtis = set()
    for proof in proofs:
        header = jws.extract_compact(proof.encode()).protected
        assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
        public = JWKRegistry.import_key(header["jwk"])
        assert not public.is_private and public.thumbprint() == dpop.thumbprint(key)
        claims = jwt.decode(proof, public, algorithms=["ES256"]).claims
        assert claims["htm"] == "GET" and claims["htu"] == URL
        assert claims["ath"] == dpop.ath("the-access-token")
        assert before <= claims["iat"] <= int(time.time())
        jtis.add(claims["jti"])
    assert len(jtis) == len(proofs)


def test_a_fast_proof_fails_verification_under_another_key() -> None:
    proof = dpop.proofs(dpop.new_key(), "GET", URL, 1)[0]
    with pytest.raises(BadSignatureError):
        jwt.decode(proof, dpop.new_key(), algorithms=["ES256"])


def test_single_proof_carries_the_nonce_and_no_ath_without_a_token() -> None:
    key = dpop.new_key()
    proof = dpop.proof(key, "POST", "http://127.0.0.1:8080/token", nonce="n-1")
    claims = jwt.decode(proof, key, algorithms=["ES256"]).claims
    assert claims["nonce"] == "n-1" and claims["htm"] == "POST" and "ath" not in claims
