"""A software authenticator for tests: makes the browser's JSON for a registration
(``none`` attestation) and for assertions, with a real P-256 key, so the server's
verification (the ``webauthn`` package) runs on genuine signatures, and each check can
be broken one field at a time (origin, RP ID, challenge, signature counter)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    """One credential on a pretend authenticator."""

    rp_id: str
    origin: str
    sign_count: int = 0
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    user_handle: bytes = b""

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        x, y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: x, -3: y})

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        data = {"type": kind, "challenge": challenge, "origin": origin or self.origin}
        return json.dumps(data | {"crossOrigin": False}).encode()

    def _auth_data(self, flags: int, rp_id: str | None, extra: bytes = b"") -> bytes:
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_hash + bytes([flags]) + struct.pack(">I", self.sign_count) + extra

    def register(
        self, options: str | dict, origin: str | None = None, rp_id: str | None = None
    ) -> str:
        """The JSON ``navigator.credentials.create()`` gives for these options."""
        opts = json.loads(options) if isinstance(options, str) else options
        self.user_handle = unb64url(opts["user"]["id"])
        attested = bytes(16) + struct.pack(">H", len(self.credential_id)) + self.credential_id
        auth_data = self._auth_data(UP | UV | AT, rp_id, attested + self._cose_key())
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", opts["challenge"], origin)
        return json.dumps(
            {
                "id": b64url(self.credential_id),
                "rawId": b64url(self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["internal", "made-up"],
                },
                "clientExtensionResults": {},
            }
        )

    def assert_(
        self,
        options: str | dict,
        origin: str | None = None,
        rp_id: str | None = None,
        count: int | None = None,
        flags: int = UP | UV,
    ) -> str:
        """The JSON ``navigator.credentials.get()`` gives; the counter grows by one
        unless ``count`` says what to send."""
        opts = json.loads(options) if isinstance(options, str) else options
        self.sign_count = self.sign_count + 1 if count is None else count
        auth_data = self._auth_data(flags, rp_id)
        client_data = self._client_data("webauthn.get", opts["challenge"], origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        answer: dict[str, Any] = {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(self.user_handle),
            },
            "clientExtensionResults": {},
        }
        return json.dumps(answer)
