"""OAuth 2.0 Demonstrating Proof of Possession (DPoP), https://www.rfc-editor.org/rfc/rfc9449

Written on joserfc (no maintained Python library does it): the proof checks (§4.3),
the replay cache (§11.1) in shared storage, stateless server nonces (§8, §9), the
binding of tokens to the proof key's thumbprint (§5, §6) and its check at resources
(§7). A refused proof raises :class:`DPoPError` and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedResponseTypeError,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry, extract_compact

TYP = "dpop+jwt"
#: A proof is a few hundred bytes (an RSA-4096 key's a few thousand): refuse more unread.
MAX_PROOF = 8192
#: RFC 7518 §3.3: RSA keys of 2048 bits or more.
MIN_RSA_BITS = 2048
#: RFC 9449 §7.1: ``DPoP`` 1*SP token68.
_CREDENTIALS = re.compile(r"[Dd][Pp][Oo][Pp] +([A-Za-z0-9\-._~+/]+=*)")
#: The replay cache's keys, in the ``codes`` table (single use is that table's trade).
REPLAY_PREFIX = "dpop-jti:"


class DPoPError(Exception):
    """A refused proof: ``invalid_dpop_proof``, or ``use_dpop_nonce`` (send this nonce)."""

    def __init__(self, description: str, error: str = "invalid_dpop_proof") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class DPoPTokenError(OAuth2Error):
    """The token endpoint's answer to a refused proof (§5: status 400)."""

    status_code = 400

    def __init__(self, refusal: DPoPError, algs: str, nonce: str | None) -> None:
        super().__init__(refusal.description)
        self.error = refusal.error
        self.algs = algs
        self.nonce = nonce

    def get_headers(self):
        headers = super().get_headers()
        headers.append(("WWW-Authenticate", f'DPoP error="{self.error}", algs="{self.algs}"'))
        if self.nonce:
            headers.append(("DPoP-Nonce", self.nonce))
        return headers


@dataclass(frozen=True)
class Proof:
    """A checked proof: its key's RFC 7638 thumbprint, ``jti`` and ``iat``."""

    jkt: str
    jti: str
    iat: int


def dpop_token(header: str) -> str | None:
    """The token68 of an ``Authorization: DPoP`` header, or ``None`` for anything else."""
    match = _CREDENTIALS.fullmatch(header)
    return match.group(1) if match else None


def with_nonce(response: Any, nonce: str) -> Any:
    """Hand out the current nonce (§8.2: on every DPoP response while nonces are on)."""
    response.headers["DPoP-Nonce"] = nonce
    return response


def access_token_hash(token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII (§4.2)."""
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _QuietEdDSA(JWSRegistry):
    """joserfc's registry, without the warning RFC 9864's deprecation of ``EdDSA`` raises:
    clients (oauth4webapi among them) still sign proofs with it, over Ed25519 keys."""

    algorithms = dict(JWSRegistry.algorithms)
    #: The header holds the public key: an RSA one is longer than joserfc's 512 allows.
    max_header_length = 4096
    max_payload_length = 4096


def _quiet(name: str) -> None:
    alg = JWSRegistry.algorithms[name]
    clone = type(alg).__new__(type(alg))
    clone.__dict__.update(alg.__dict__)
    clone.security_warning = None
    _QuietEdDSA.algorithms[name] = clone


_quiet("EdDSA")


def _bits(modulus: Any) -> int:
    """The size in bits of an RSA JWK's ``n`` (base64url), read before joserfc imports
    the key (it would warn, not refuse)."""
    if not isinstance(modulus, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


def _number(value: Any) -> TypeGuard[float]:
    """A JSON number fit for a NumericDate (RFC 7519 §2): not a bool, not infinite, not
    an integer too large for a float (``math.isfinite`` would raise OverflowError)."""
    if type(value) is int:
        return abs(value) < 2**53
    return type(value) is float and math.isfinite(value)


def _url(value: str) -> tuple[str, str, str]:
    """Scheme, authority and path of a URL, normalised (RFC 3986 §6.2.2-3), no query."""
    parts = urlsplit(value)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    authority = host if port in (None, default) else f"{host}:{port}"
    return scheme, authority, parts.path or "/"


class DPoP:
    """The proof checks, the replay cache in ``table`` and the nonces, from ``dpop`` config.

    ``secret``: the configured secret nonces are derived from (shared by every instance).
    """

    def __init__(self, config: Any, table: Any, secret: str, issuer: str) -> None:
        self.algorithms = list(config.algorithms)
        self.algs = " ".join(self.algorithms)
        self._registries = {alg: _QuietEdDSA(algorithms=[alg]) for alg in self.algorithms}
        self._any = _QuietEdDSA(algorithms=self.algorithms)
        self.window = config.iat_window
        self.required = config.required
        self.use_nonce = config.nonce
        self.step = config.nonce_step
        self.table = table
        self.issuer = issuer
        info = b"oauth2-server dpop nonce"
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
        self._nonce_key = hkdf.derive(secret.encode("utf-8"))

    # -- nonces (§8, §9) ----------------------------------------------------------------
    def _nonce_at(self, step: int) -> str:
        mac = hmac.new(self._nonce_key, struct.pack(">q", step), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def nonce(self, now: float | None = None) -> str | None:
        """The nonce to hand out now (None: nonces are off)."""
        if not self.use_nonce:
            return None
        return self._nonce_at(int((time.time() if now is None else now) // self.step))

    def _nonce_ok(self, value: Any, now: float) -> bool:
        """This step's nonce, the two before it, or the next (clocks of instances differ)."""
        if not isinstance(value, str):
            return False
        step = int(now // self.step)
        given = value.encode("ascii", "replace")
        return any(
            hmac.compare_digest(given, self._nonce_at(s).encode())
            for s in range(step - 2, step + 2)
        )

    # -- the proof (§4.3) ---------------------------------------------------------------
    def check(self, values: list[str], method: str, path: str, token: str | None = None) -> Proof:
        """Check the ``DPoP`` header values of a request to ``path`` (under the issuer);
        ``token``: the access token it comes with at a resource (for ``ath``).

        Everything but the replay cache: call :meth:`remember` once the request passes.
        Any unexpected error reading the proof is a refusal too (never a 5xx).
        """
        try:
            return self._check(values, method, path, token)
        except DPoPError:
            raise
        except Exception as error:  # noqa: BLE001 - pure parsing: no storage is touched here
            raise DPoPError("The DPoP proof could not be read.") from error

    def _check(self, values: list[str], method: str, path: str, token: str | None) -> Proof:
        if len(values) != 1:
            raise DPoPError("Send exactly one DPoP header.")
        key, claims = self._verified(values[0])
        now = time.time()
        self._claims(claims, method, path, token, now)
        if self.use_nonce and not self._nonce_ok(claims.get("nonce"), now):
            raise DPoPError("Use the server's DPoP nonce.", "use_dpop_nonce")
        return Proof(key.thumbprint(), claims["jti"], int(claims["iat"]))

    def _verified(self, value: str) -> tuple[Any, dict[str, Any]]:
        """§4.3 steps 2-7: a JWT, ``typ``, an allowed ``alg``, a public ``jwk`` that signed it."""
        if len(value) > MAX_PROOF or not value.isascii():
            raise DPoPError("The DPoP proof is not a JWT.")
        try:
            header = extract_compact(value.encode("ascii"), registry=self._any).headers()
        except (JoseError, ValueError, TypeError) as error:
            raise DPoPError("The DPoP proof is not a JWT.") from error
        if header.get("typ") != TYP:
            raise DPoPError(f"The DPoP proof's typ must be {TYP}.")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise DPoPError(f"The DPoP proof's alg must be one of {self.algs}.")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise DPoPError("The DPoP proof must carry its public key (jwk).")
        if jwk.get("kty") == "RSA" and _bits(jwk.get("n")) < MIN_RSA_BITS:
            raise DPoPError(f"An RSA key of the DPoP proof needs {MIN_RSA_BITS} bits.")
        try:
            key = JWKRegistry.import_key(jwk)
        except (JoseError, ValueError, TypeError, KeyError) as error:
            raise DPoPError("The DPoP proof's jwk is not a usable key.") from error
        if key.is_private:
            raise DPoPError("The DPoP proof's jwk must be a public key.")
        registry = self._registries[alg]
        try:
            claims = jwt.decode(value, key, algorithms=[alg], registry=registry).claims
        except (JoseError, ValueError, TypeError) as error:
            raise DPoPError("The DPoP proof's signature does not verify.") from error
        return key, claims

    def _claims(
        self, claims: dict[str, Any], method: str, path: str, token: str | None, now: float
    ) -> None:
        """§4.3 steps 8-12: ``jti``, ``htm``, ``htu``, ``iat`` and ``ath``."""
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 512:
            raise DPoPError("The DPoP proof needs a jti.")
        if claims.get("htm") != method:
            raise DPoPError("The DPoP proof's htm is not this request's method.")
        if not self._same_url(claims.get("htu"), path):
            raise DPoPError("The DPoP proof's htu is not this request's URL.")
        iat = claims.get("iat")
        if not _number(iat) or abs(now - iat) > self.window:
            raise DPoPError("The DPoP proof's iat is too far from now.")
        if token is not None:
            ath = claims.get("ath")
            expected = access_token_hash(token)
            if not isinstance(ath, str) or not hmac.compare_digest(
                ath.encode("ascii", "replace"), expected.encode()
            ):
                raise DPoPError("The DPoP proof's ath does not match the access token.")

    def _same_url(self, htu: Any, path: str) -> bool:
        """§4.3 step 9: ``htu`` names this request's URL under the issuer (the external
        URL, whatever the proxy in front), query and fragment aside."""
        try:
            return isinstance(htu, str) and _url(htu) == _url(self.issuer + path)
        except ValueError:  # urlsplit: a bad port or IPv6 literal
            return False

    def remember(self, proof: Proof) -> None:
        """§11.1: refuse a proof whose ``jti`` was seen within the window, on any instance.

        The cache is a counter per (key, ``jti``) in shared storage: the first
        increment wins, atomically on every backend; it lives as long as the proof
        could still pass the ``iat`` check.
        """
        digest = hashlib.sha256(f"{proof.jkt}\n{proof.jti}".encode()).hexdigest()
        ttl = max(1, math.ceil(proof.iat + self.window - time.time()) + 1)
        if self.table.incr(REPLAY_PREFIX + digest, 1, ttl) != 1:
            raise DPoPError("The DPoP proof was used before.")

    def accept(self, raw: str, values: list[str], method: str, path: str, find) -> Any:
        """§7.1: the access token ``raw`` of an ``Authorization: DPoP`` request, looked up
        with ``find``, if the request's proof is good and of the key the token is bound
        to; ``None`` for a bad, unbound or other key's token; :class:`DPoPError` for a
        bad proof. The proof's ``jti`` is remembered only when the token is accepted.
        """
        token, proof = self.bound(raw, values, method, path, find)
        if token is not None:
            self.remember(proof)
        return token

    def bound(self, raw: str, values: list[str], method: str, path: str, find) -> Any:
        """:meth:`accept` without the replay cache: ``(token or None, proof)``; call
        :meth:`remember` once the request passes its other checks."""
        proof = self.check(values, method, path, raw)
        token = find(raw)
        bound = token.record.get("jkt") if token is not None else None
        if not bound or not hmac.compare_digest(bound, proof.jkt):
            return None, proof
        return token, proof

    def challenge(self, error: str | None = None, description: str | None = None) -> str:
        """The ``WWW-Authenticate`` challenge of a resource's refusal (§7.1)."""
        value = "DPoP"
        if error is not None:
            value += f' error="{error}",'
        if description is not None:
            value += f' error_description="{description}",'
        return f'{value} algs="{self.algs}"'

    def token_error(self, refusal: DPoPError) -> DPoPTokenError:
        return DPoPTokenError(refusal, self.algs, self.nonce())


class DPoPBinding:
    """The token grants' extension: bind what they issue to the proof's key (§5).

    The proof was checked by the token view (``request.dpop``). A client (or the
    server) that requires DPoP gets no token without one; a code issued with
    ``dpop_jkt`` (§10) and a public client's bound refresh token need a proof of
    that same key. The access token always carries ``jkt``; a refresh token only
    when its client is public (§5: a confidential client's is bound by its
    authentication already).
    """

    def __init__(self, dpop: DPoP) -> None:
        self.dpop = dpop

    def __call__(self, grant) -> None:
        grant.register_hook("before_create_token_response", self.check)
        grant.register_hook("after_create_token_response", self.answer)

    def check(self, grant, *args) -> None:
        request = grant.request
        proof: Proof | None = getattr(request, "dpop", None)
        client = request.client
        source = request.authorization_code or request.refresh_token
        field = "dpop_jkt" if request.authorization_code else "jkt"
        bound = source.record.get(field) if source is not None else None
        required = self.dpop.required or client.dpop_bound_access_tokens or bound is not None
        if proof is None and required:
            raise self.dpop.token_error(DPoPError("This request needs a DPoP proof."))
        if proof is not None and bound is not None and not hmac.compare_digest(proof.jkt, bound):
            raise InvalidGrantError("The DPoP proof's key is not the key this grant is bound to.")
        if proof is not None:
            try:
                self.dpop.remember(proof)
            except DPoPError as refusal:
                raise self.dpop.token_error(refusal) from None
            request.dpop_jkt = proof.jkt
            request.dpop_refresh = bool(client.public)

    def answer(self, grant, response) -> None:
        if getattr(grant.request, "dpop_jkt", None):
            _, token, _ = response
            token["token_type"] = "DPoP"  # noqa: S105 - a token type, not a secret


class DPoPImplicit:
    """The implicit grants' extension: their access tokens leave through the front
    channel, unbound (RFC 9449 binds at the token endpoint only), so a client that
    requires DPoP, or a server with ``dpop.required``, gets none there."""

    def __init__(self, dpop: DPoP) -> None:
        self.dpop = dpop

    def __call__(self, grant) -> None:
        grant.register_hook("after_validate_authorization_request", self.check)

    def check(self, grant, redirect_uri) -> None:
        request = grant.request
        if "token" not in (request.payload.response_type or "").split():
            return  # ``id_token`` alone issues no access token
        if self.dpop.required:
            raise UnsupportedResponseTypeError(
                request.payload.response_type, redirect_uri=redirect_uri, redirect_fragment=True
            )
        if request.client.dpop_bound_access_tokens:
            raise UnauthorizedClientError(
                "This client's access tokens are DPoP-bound: use the authorization code flow.",
                redirect_uri=redirect_uri,
                redirect_fragment=True,
            )
