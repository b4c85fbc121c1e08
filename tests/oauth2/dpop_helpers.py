"""DPoP proofs for the tests (RFC 9449 §4), made with joserfc as a client would."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from app.oauth2.rfc9449 import access_token_hash

#: The issuer of the test apps (``auth_server.url``'s default): proofs name its URLs.
ISSUER = "http://127.0.0.1:8081"


def _b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Prover:
    """A client's DPoP key: :meth:`proof` signs a proof for one request."""

    def __init__(self, key: Key | None = None, alg: str = "ES256") -> None:
        self.key = key or ECKey.generate_key("P-256")
        self.alg = alg

    @classmethod
    def of(cls, alg: str) -> Prover:
        if alg.startswith(("RS", "PS")):
            return cls(RSAKey.generate_key(2048), alg)
        if alg in ("EdDSA", "Ed25519"):
            return cls(OKPKey.generate_key("Ed25519"), alg)
        return cls(ECKey.generate_key({"ES256": "P-256", "ES384": "P-384"}[alg]), alg)

    @property
    def jkt(self) -> str:
        return self.key.thumbprint()

    def proof(
        self,
        method: str = "POST",
        path: str = "/token",
        token: str | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A proof for ``method`` ``ISSUER + path`` (``token``: with its ``ath``); ``header``
        and ``claims`` override or add (a value None drops the member)."""
        head = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.key.as_dict(private=False)}
        body: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": ISSUER + path,
            "iat": int(time.time()),
        }
        if token is not None:
            body["ath"] = access_token_hash(token)
        head.update(header or {})
        body.update(claims)
        head = {k: v for k, v in head.items() if v is not None}
        body = {k: v for k, v in body.items() if v is not None}
        with warnings.catch_warnings():
            # joserfc warns that RFC 9864 deprecates EdDSA; clients still sign with it.
            warnings.simplefilter("ignore", SecurityWarning)
            try:
                return jwt.encode(head, body, self.key, algorithms=[self.alg])
            except (JoseError, ValueError, TypeError):
                return self.raw(head, body)

    def raw(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """Sign what joserfc would refuse to (a ``jwk`` that is no key) with this key."""
        signing_input = f"{_b64(header)}.{_b64(claims)}".encode()
        alg = JWSRegistry.algorithms[self.alg]
        signature = alg.sign(signing_input, self.key)
        return f"{signing_input.decode()}.{_b64(signature)}"

    def headers(self, method: str = "POST", path: str = "/token", token: str | None = None, **kw):
        """``DPoP`` (and, with ``token``, ``Authorization: DPoP``) headers of a request."""
        headers = {"DPoP": self.proof(method, path, token, **kw)}
        if token is not None:
            headers["Authorization"] = f"DPoP {token}"
        return headers
