"""A partner's DPoP client (RFC 9449): exchange a code for a DPoP-bound token, call /api.

    python examples/dpop_client.py SERVER CLIENT_ID CLIENT_SECRET CODE [REDIRECT_URI]

The key pair lives only in this process: a stolen access token is useless without it.
Needs only joserfc (``pip install joserfc``) and the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from joserfc import jwt
from joserfc.jwk import ECKey

KEY = ECKey.generate_key("P-256")  # keep it for as long as the tokens bound to it


def proof(method: str, url: str, access_token: str | None = None, nonce: str | None = None):
    """A DPoP proof JWT for one request (RFC 9449 §4.2)."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.as_dict(private=False)}
    claims = {"jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time())}
    if access_token:  # at a resource: the hash of the token it comes with
        digest = hashlib.sha256(access_token.encode()).digest()
        claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    if nonce:
        claims["nonce"] = nonce
    return jwt.encode(header, claims, KEY, algorithms=["ES256"])


def send(method: str, url: str, headers: dict, body: bytes | None = None, token=None):
    """Send with a fresh proof; once more with the server's nonce if it asks for one."""
    nonce = None
    for _ in range(2):
        request = urllib.request.Request(url, body, method=method)  # noqa: S310 - http(s)
        for name, value in {**headers, "DPoP": proof(method, url, token, nonce)}.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request) as answer:  # noqa: S310 - http(s) only
                return json.load(answer)
        except urllib.error.HTTPError as error:
            nonce = error.headers.get("DPoP-Nonce")
            if not nonce:
                raise SystemExit(f"{error.code}: {error.read().decode()}") from None
    raise SystemExit("the server kept asking for a nonce")


def main(server: str, client_id: str, secret: str, code: str, redirect_uri: str) -> None:
    if not server.startswith(("https://", "http://")):
        raise SystemExit("SERVER: an http(s) URL, such as https://auth.example.com")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    headers = {
        "Authorization": f"Basic {basic}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    body = urllib.parse.urlencode(form).encode()
    tokens = send("POST", f"{server}/token", headers, body)
    print("token_type:", tokens["token_type"])  # "DPoP"
    access = tokens["access_token"]
    auth = {"Authorization": f"DPoP {access}"}
    profile = send("GET", f"{server}/api/profile", auth, None, access)
    print("profile:", json.dumps(profile))


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    main(*sys.argv[1:5], sys.argv[5] if len(sys.argv) == 6 else "http://localhost:8080/")
