"""Secrets at rest: token digests and named client-secret hash schemes.

Schemes (the stored value names its scheme, so old and new clients live side by side):

* ``seed-sha1``: the original server's format, hex SHA-1 of ``client_id:secret:salt``
  with the salt in ``client_salt``; read for compatibility, never written.
* ``sha256$<hex>``: for the 256-bit random secrets ``clients add`` generates; a
  slow hash adds nothing against guessing a random value and costs every request.
* ``pbkdf2-sha256$<iterations>$<salt>$<hex>``: for human-chosen secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PBKDF2_ITERATIONS = 600_000


def new_secret(nbytes: int = 32) -> str:
    """Return a URL-safe random value with ``nbytes`` of entropy."""
    return secrets.token_urlsafe(nbytes)


def token_digest(value: str) -> str:
    """Return the storage key of a code or token: its SHA-256, hex."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def seed_sha1(client_id: str, secret: str, salt: str) -> str:
    data = f"{client_id}:{secret}:{salt}".encode("utf-8", "surrogatepass")
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - the original format


def hash_random_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def hash_chosen_secret(secret: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = base64.b64encode(secrets.token_bytes(16)).decode().rstrip("=")
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt.encode(), iterations).hex()
    return f"pbkdf2-sha256${iterations}${salt}${digest}"


_HASH_FORMATS = {
    "sha256": re.compile(r"sha256\$[0-9a-f]{64}"),
    "pbkdf2-sha256": re.compile(
        r"pbkdf2-sha256\$[1-9][0-9]{0,8}\$[A-Za-z0-9+/=._-]{8,64}\$[0-9a-f]{64}"
    ),
}


def known_scheme(stored: str) -> bool:
    """True when ``stored`` is a complete value of a scheme we can verify."""
    pattern = _HASH_FORMATS.get(stored.split("$", 1)[0])
    return bool(pattern and pattern.fullmatch(stored))


def verify_secret(stored: str, secret: str) -> bool:
    """Check ``secret`` against a ``sha256$`` or ``pbkdf2-sha256$`` value in constant time."""
    if not known_scheme(stored):
        return False
    scheme, _, rest = stored.partition("$")
    if scheme == "sha256":
        expected = rest
        actual = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    elif scheme == "pbkdf2-sha256":
        iterations, salt, expected = rest.split("$", 2)
        actual = hashlib.pbkdf2_hmac(
            "sha256", secret.encode("utf-8", "surrogatepass"), salt.encode(), int(iterations)
        ).hex()
    else:
        return False
    return hmac.compare_digest(actual, expected)


def verify_seed_sha1(stored: str, client_id: str, secret: str, salt: str) -> bool:
    actual = seed_sha1(client_id, secret, salt)
    return hmac.compare_digest(actual, stored.lower())
