"""DPoP proofs made in advance (RFC 9449) for the bench's DPoP gateway scenario.

A client signs one proof per request: a JWT with ``typ: dpop+jwt``, its public key in
the ``jwk`` header, and the claims ``jti`` (unique), ``htm``, ``htu``, ``iat`` and, at a
resource, ``ath`` (base64url SHA-256 of the access token). The server refuses a ``jti``
it has seen within its ``iat`` window, so a load run needs one fresh proof per request:
they are signed here, before the run (the client's signing must not be priced as the
server's work), each carrying the ``iat`` of the moment it was made. The server's window
(``dpop.iat_window`` in the bench's config) must cover the time from signing the first
proof to sending the last one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws
from joserfc.jwk import ECKey

ALG = "ES256"


def new_key() -> ECKey:
    """A fresh P-256 key (ES256, the algorithm every DPoP implementation supports)."""
    return ECKey.generate_key("P-256", private=True)


def ath(access_token: str) -> str:
    """The ``ath`` claim: base64url (no padding) of the SHA-256 of the access token."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


#: The public members of each key type (RFC 7638 §3.2), all the ``jwk`` header needs.
PUBLIC_MEMBERS = {
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
    "RSA": ("kty", "n", "e"),
}


def public_jwk(key: Any) -> dict[str, Any]:
    """The ``jwk`` header: the public key's members only (no ``d``, no ``key_ops``)."""
    public = key.as_dict(private=False)
    return {name: public[name] for name in PUBLIC_MEMBERS[public["kty"]]}


def thumbprint(key: Any) -> str:
    """The key's RFC 7638 SHA-256 thumbprint (what the server binds as ``cnf.jkt``)."""
    return key.thumbprint()


def proof(
    key: Any,
    method: str,
    url: str,
    access_token: str | None = None,
    nonce: str | None = None,
    iat: int | None = None,
    jti: str | None = None,
    alg: str = ALG,
) -> str:
    """One DPoP proof JWT for ``method`` ``url`` (``url`` without query and fragment),
    signed by ``key`` (a joserfc key; ``alg`` one the key signs with, e.g. ``Ed25519``)."""
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)}
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time()) if iat is None else iat,
    }
    if access_token is not None:
        claims["ath"] = ath(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return _sign(key, header, claims)


def _sign(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact(header, payload, key, algorithms=[header["alg"]])


def proofs(
    key: ECKey, method: str, url: str, count: int, access_token: str | None = None
) -> list[str]:
    """``count`` proofs for the same request, each with its own ``jti``, signed now.

    The same JWS as :func:`proof` makes (the tests check the server and joserfc accept
    them), about 2.5 times faster: the protected header is encoded once and each payload
    is signed with the key's ``cryptography`` object directly (ES256: ECDSA P-256
    SHA-256, the signature as ``r || s``, RFC 7518 §3.4).
    """
    header = {"typ": "dpop+jwt", "alg": ALG, "jwk": public_jwk(key)}
    head = _b64(json.dumps(header, separators=(",", ":")).encode()) + b"."
    base = {"htm": method, "htu": url, "iat": int(time.time())}
    if access_token is not None:
        base["ath"] = ath(access_token)
    signer = key.private_key
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    out = []
    for _ in range(count):
        claims = {"jti": secrets.token_urlsafe(16), **base}
        signing_input = head + _b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(signer.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        out.append((signing_input + b"." + _b64(signature)).decode("ascii"))
    return out


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def write_proofs(path: Path, items: list[str]) -> Path:
    """One proof a line (the wrk script ``lua/dpop.lua`` sends each line once)."""
    path.write_text("\n".join(items) + "\n")
    return path
