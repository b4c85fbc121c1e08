"""The signing keys' private halves, encrypted at rest (AES-256-GCM, key by HKDF).

The encryption key is derived with HKDF-SHA256 from the configured secret
(``oidc.keys_secret``, else ``auth_server.session_secret``); a second HKDF output, the
*key id*, is stored with the ring so a server started with another secret says so by
name instead of failing to decrypt. Each key's private members are sealed separately,
bound to its ``kid`` (the AEAD's associated data), so a sealed blob cannot be moved to
another entry. Neither the secret nor the derived key is ever logged or shown: this
class's ``repr`` names the key id only.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: HKDF ``info`` strings: one derived value per purpose, never the same bytes twice.
KEY_INFO = b"oauth2-server oidc signing keys: AES-256-GCM key v1"
ID_INFO = b"oauth2-server oidc signing keys: key id v1"
#: The algorithm recorded with the ring (there is one; a new one would get a new name).
ALG = "A256GCM-HKDF-SHA256"
NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed key that does not open with this secret (tampered, or another secret)."""


def _derive(secret: str, info: bytes, length: int) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info)
    return hkdf.derive(secret.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """Seal and open private key members with a key derived from one secret."""

    def __init__(self, secret: str, key_info: bytes = KEY_INFO, id_info: bytes = ID_INFO) -> None:
        """``key_info``/``id_info``: another purpose's HKDF labels (the TOTP secrets')."""
        if not secret:
            raise ValueError("the keys secret is empty")
        self._aead = AESGCM(_derive(secret, key_info, 32))
        #: Names the secret in storage without revealing it (a separate HKDF output).
        self.key_id = _b64(_derive(secret, id_info, 12))

    def __repr__(self) -> str:
        return f"Sealer(key_id={self.key_id!r})"

    def seal(self, members: dict[str, Any], kid: str) -> str:
        """The private ``members`` of the key ``kid``, encrypted: nonce || ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        plain = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
        return _b64(nonce + self._aead.encrypt(nonce, plain, kid.encode()))

    def open(self, sealed: str, kid: str) -> dict[str, Any]:
        """The private members sealed for ``kid``; :class:`SealError` if they do not open."""
        try:
            blob = _unb64(sealed)
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], kid.encode())
            members = json.loads(plain)
        except (InvalidTag, ValueError, TypeError) as exc:
            raise SealError(f"the private half of key {kid} does not decrypt") from exc
        if not isinstance(members, dict):
            raise SealError(f"the private half of key {kid} is not a key")
        return members
