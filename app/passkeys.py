"""Passkeys (Web Authentication Level 3) as a second factor, with the ``webauthn`` package.

https://www.w3.org/TR/webauthn-3/

The relying party is this server: its ID is the issuer's host and the only origin
accepted is the issuer's own (scheme, host and port), compared exactly. Records live in
the ``factors`` table beside the TOTP ones (:mod:`app.twofactor`):

* ``passkey:<user>:<digest of the credential id>``: one credential (its id and public
  key, the last signature counter, transports, AAGUID, backup flags, a name, when it was
  added and last used);
* ``passkey-user:<user>``: the random user handle given to authenticators (never the
  site's user id, which the authenticator would store and show);
* ``challenge:<digest of the challenge>``: a challenge waiting for its answer (a few
  minutes), bound to the user, a purpose and the page's sign-in or session; the answer
  spends it with one atomic ``take``, so it is used once;
* ``count:<passkey key>:<n>``: a counter per signature count accepted (a few minutes),
  so two answers carrying the same count race on one atomic increment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import webauthn
from webauthn.helpers import parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from .storage import StorageUnavailable, Table

#: Seconds a challenge waits for the authenticator's answer (the browser's own timeout
#: is a minute shorter, so a slow user sees the browser's message first).
CHALLENGE_TTL = 180
#: Seconds a caller making a user's handle holds its claim (a crashed one's lapses).
HANDLE_CLAIM_TTL = 5
TIMEOUT_MS = 120_000
#: The most a posted credential (JSON) may weigh: an assertion is a few hundred bytes, a
#: registration with a certificate chain a few kilobytes.
MAX_RESPONSE = 32_768
MAX_NAME = 64
MAX_PASSKEYS = 20
#: Purposes a challenge is made for; an answer is accepted for its own purpose only.
PURPOSES = ("register", "login", "confirm")
TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)


class PasskeyError(Exception):
    """A passkey answer refused; ``reason`` is a short code for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Passkey:
    """One registered credential."""

    key: str
    name: str
    created_at: float
    last_used_at: float | None
    backed_up: bool

    @property
    def added(self) -> str:
        return time.strftime("%d %b %Y", time.gmtime(self.created_at))

    @property
    def used(self) -> str | None:
        when = self.last_used_at
        return time.strftime("%d %b %Y %H:%M UTC", time.gmtime(when)) if when else None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def clean_name(name: str) -> str:
    """A passkey's name as shown: printable, single spaces, at most :data:`MAX_NAME`."""
    printable = "".join(c if c.isprintable() else " " for c in name)
    return " ".join(printable.split())[:MAX_NAME] or "Passkey"


def _parse(response: str) -> dict[str, Any]:
    """The posted credential as a JSON object; its size and shape checked first."""
    if not response or len(response) > MAX_RESPONSE:
        raise PasskeyError("malformed")
    try:
        parsed = json.loads(response)
    except ValueError:
        raise PasskeyError("malformed") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("response"), dict):
        raise PasskeyError("malformed")
    return parsed


def _challenge_of(parsed: dict[str, Any]) -> bytes:
    """The challenge the browser signed (read from its client data, checked later)."""
    try:
        client_data = parse_client_data_json(unb64url(parsed["response"]["clientDataJSON"]))
    except (WebAuthnException, ValueError, TypeError, KeyError, AttributeError):
        raise PasskeyError("malformed") from None
    return client_data.challenge


class Passkeys:
    """Every user's passkeys and pending challenges, in the ``factors`` table."""

    def __init__(self, table: Table, issuer: str, rp_name: str) -> None:
        parts = urlsplit(issuer)
        self.table = table
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.rp_id = parts.hostname or ""
        self.rp_name = rp_name

    # -- credentials ----------------------------------------------------------------
    def _records(self, user_id: str) -> list[dict[str, Any]]:
        records = self.table.list_by_user(user_id)
        found = [r for r in records if r["key"].startswith(f"passkey:{user_id}:")]
        return sorted(found, key=lambda r: r.get("created_at", 0))

    @staticmethod
    def among(records: list[dict[str, Any]], user_id: str) -> bool:
        """:meth:`has`, among the user's factor records (the table's ``list_by_user``)."""
        prefix = f"passkey:{user_id}:"
        return any(record["key"].startswith(prefix) for record in records)

    def of(self, user_id: str) -> list[Passkey]:
        return [
            Passkey(r["key"], r["name"], r["created_at"], r.get("last_used_at"), r["backed_up"])
            for r in self._records(user_id)
        ]

    def has(self, user_id: str) -> bool:
        return bool(self._records(user_id))

    def handle(self, user_id: str) -> bytes:
        """The user's random handle for authenticators, made on first use by the one caller
        that wins an atomic claim (others wait for it): two first registrations at once
        cannot each put their own handle."""
        key, claim = "passkey-user:" + user_id, "passkey-user-claim:" + user_id
        deadline = time.monotonic() + 2 * HANDLE_CLAIM_TTL
        while time.monotonic() < deadline:
            record = self.table.get(key)
            if record is not None:
                return unb64url(record["handle"])
            if self.table.incr(claim, ttl=HANDLE_CLAIM_TTL) == 1:
                record = self.table.get(key)  # made while this caller was slow: keep it
                if record is None:
                    record = {"user_id": user_id, "handle": b64url(secrets.token_bytes(32))}
                    self.table.put(key, record)
                return unb64url(record["handle"])
            time.sleep(0.05)
        raise StorageUnavailable("the passkey user handle was not made in time")

    def _descriptors(self, user_id: str) -> list[PublicKeyCredentialDescriptor]:
        return [
            PublicKeyCredentialDescriptor(
                id=unb64url(r["credential_id"]),
                transports=[AuthenticatorTransport(t) for t in r.get("transports", [])],
            )
            for r in self._records(user_id)
        ]

    def remove(self, user_id: str, key: str) -> bool:
        """Forget one of the user's own passkeys (another user's key is not theirs)."""
        record = self.table.get(key) if key.startswith("passkey:") else None
        if record is None or record["user_id"] != user_id or not self.table.delete(key):
            return False
        self.table.discard("signs:" + key)
        return True

    def remove_all(self, user_id: str) -> None:
        for record in self._records(user_id):
            self.table.delete(record["key"])
            self.table.discard("signs:" + record["key"])

    # -- challenges -----------------------------------------------------------------
    def _new_challenge(self, user_id: str, purpose: str, bound: str) -> bytes:
        challenge = secrets.token_bytes(32)
        record = {"user_id": user_id, "purpose": purpose, "bound": _digest(bound)}
        self.table.put("challenge:" + _digest(b64url(challenge)), record, ttl=CHALLENGE_TTL)
        return challenge

    def _take_challenge(self, parsed: dict, user_id: str, purpose: str, bound: str) -> bytes:
        """Spend the challenge the answer signed: unknown, expired, used or not this
        sign-in's, it is refused (and a challenge taken by a wrong answer is gone)."""
        challenge = _challenge_of(parsed)
        record = self.table.take("challenge:" + _digest(b64url(challenge)))
        if (
            record is None
            or record.get("user_id") != user_id
            or record.get("purpose") != purpose
            or not secrets.compare_digest(record.get("bound", ""), _digest(bound))
        ):
            raise PasskeyError("challenge")
        return challenge

    # -- registration -----------------------------------------------------------------
    def registration_options(self, user_id: str, user_name: str, bound: str) -> str:
        """The ``PublicKeyCredentialCreationOptions`` (JSON) for a new passkey."""
        options = webauthn.generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_id=self.handle(user_id),
            user_name=user_name or user_id,
            challenge=self._new_challenge(user_id, "register", bound),
            timeout=TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=self._descriptors(user_id),
        )
        return webauthn.options_to_json(options)

    def register(self, user_id: str, name: str, response: str, bound: str) -> Passkey:
        """Verify a new credential and keep it; :class:`PasskeyError` if refused."""
        parsed = _parse(response)
        challenge = self._take_challenge(parsed, user_id, "register", bound)
        if len(self._records(user_id)) >= MAX_PASSKEYS:
            raise PasskeyError("too_many")
        try:
            verified = webauthn.verify_registration_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
            )
        except (WebAuthnException, ValueError, TypeError, KeyError, AttributeError):
            raise PasskeyError("invalid") from None
        credential_id = b64url(verified.credential_id)
        key = f"passkey:{user_id}:{_digest(credential_id)[:32]}"
        if self.table.get(key) is not None:
            raise PasskeyError("duplicate")
        transports = parsed["response"].get("transports")
        now = time.time()
        record: dict[str, Any] = {
            "user_id": user_id,
            "credential_id": credential_id,
            "public_key": b64url(verified.credential_public_key),
            "sign_count": verified.sign_count,
            "transports": sorted(set(transports) & TRANSPORTS)
            if isinstance(transports, list)
            else [],
            "aaguid": verified.aaguid,
            "backup_eligible": verified.credential_device_type.value == "multi_device",
            "backed_up": verified.credential_backed_up,
            "user_verified": verified.user_verified,
            "name": clean_name(name),
            "created_at": now,
            "last_used_at": None,
        }
        self.table.put(key, record)
        return Passkey(key, record["name"], now, None, record["backed_up"])

    # -- authentication ---------------------------------------------------------------
    def _advance(self, key: str, seen: int, count: int) -> bool:
        """Move the credential's highest accepted sign count from ``seen`` up to ``count``
        with atomic increments only (every backend has them): an answer that finds the
        counter moved meanwhile takes its own increment back and is refused."""
        counter = "signs:" + key
        if count <= seen:
            return False
        if self.table.incr(counter, count - seen, ttl=0) == count:
            return True
        self.table.incr(counter, seen - count, ttl=0)  # raced: undo ours
        return False

    def authentication_options(self, user_id: str, purpose: str, bound: str) -> str:
        """The ``PublicKeyCredentialRequestOptions`` (JSON): the user's passkeys only."""
        options = webauthn.generate_authentication_options(
            rp_id=self.rp_id,
            challenge=self._new_challenge(user_id, purpose, bound),
            timeout=TIMEOUT_MS,
            allow_credentials=self._descriptors(user_id),
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return webauthn.options_to_json(options)

    def authenticate(
        self,
        user_id: str,
        response: str,
        purpose: str,
        bound: str,
        added_before: float | None = None,
        unless: str = "",
    ) -> bool:
        """Verify an assertion by one of the user's passkeys; return whether the
        authenticator verified the user (PIN, biometrics). Refused: :class:`PasskeyError`;
        also (``too_new``) a passkey added at or after ``added_before``, unless it is the
        one whose key is ``unless``."""
        parsed = _parse(response)
        challenge = self._take_challenge(parsed, user_id, purpose, bound)
        credential_id = parsed.get("rawId")
        if not isinstance(credential_id, str):
            raise PasskeyError("malformed")
        key = f"passkey:{user_id}:{_digest(credential_id)[:32]}"
        record = self.table.get(key)
        if record is None or record.get("credential_id") != credential_id:
            raise PasskeyError("unknown_credential")
        if added_before is not None and key != unless and record["created_at"] >= added_before:
            raise PasskeyError("too_new")
        # WebAuthn §7.2 step 6: a user handle, when the authenticator sends one, is this user's.
        user_handle = parsed["response"].get("userHandle")
        if user_handle is not None and user_handle != b64url(self.handle(user_id)):
            raise PasskeyError("invalid")
        highest = self.table.incr("signs:" + key, 0, ttl=0)  # the highest count accepted
        try:
            verified = webauthn.verify_authentication_response(
                credential=parsed,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=unb64url(record["public_key"]),
                credential_current_sign_count=max(int(record["sign_count"]), highest),
            )
        except (WebAuthnException, ValueError, TypeError, KeyError, AttributeError):
            raise PasskeyError("invalid") from None
        # Answers checked at once against the same stored counter (a cloned key, or two
        # genuine answers 7 and 8) all pass the library's check: the highest count moves
        # up atomically, so it never goes back and of equal counts one wins.
        count = verified.new_sign_count
        if count and not self._advance(key, highest, count):
            raise PasskeyError("invalid")
        current = self.table.get(key)
        if current is not None:  # removed meanwhile: leave it removed
            updated = {
                "sign_count": max(count, int(current.get("sign_count", 0))),
                "backed_up": verified.credential_backed_up,
                "last_used_at": time.time(),
            }
            self.table.put(key, current | updated)
        return verified.user_verified
