"""Two-step sign-in: TOTP secrets (RFC 6238), recovery codes and used time steps.

Everything lives in the ``factors`` table, told apart by key:

* ``totp:<user>``: the confirmed secret (sealed with AES-GCM when a keys secret is
  configured, :class:`~app.oidc.sealing.Sealer`, bound to the user id), the last time
  step accepted and when it was enrolled;
* ``pending:<user>``: a secret shown on the account page and not yet confirmed (10 min);
* ``step:<user>:<n>``: a counter per accepted time step, so two requests with the same
  code race on one atomic increment and exactly one wins (steps at or below the last
  accepted one are refused before that);
* ``recovery:<hmac>``: one record per recovery code, keyed by an HMAC of the user id and
  the code (the HMAC key derived from the server's secret), so a code is used by one
  atomic ``take`` and the table never holds a code.

Neither secrets nor codes are logged; the audit log names the event and the user only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp
import segno

from .oidc.sealing import Sealer, SealError
from .storage import Table

#: RFC 6238 defaults every authenticator app understands.
PERIOD, DIGITS = 30, 6
#: Accept the step before and after the current one (clock drift).
WINDOW = 1
#: Seconds an unconfirmed secret waits for its first code.
PENDING_TTL = 600
#: How many recovery codes a user holds, and their length (base32, 80 bits).
RECOVERY_CODES = 10
RECOVERY_CHARS = 16
#: HKDF ``info`` strings: the TOTP secrets' own key, never the signing keys' bytes.
SEAL_INFO = b"oauth2-server two-factor: TOTP secret AES-256-GCM key v1"
SEAL_ID_INFO = b"oauth2-server two-factor: TOTP secret key id v1"
RECOVERY_INFO = b"oauth2-server two-factor: recovery code HMAC key v1"


def normalise(code: str) -> str:
    """A typed code without spaces and dashes, lower case (recovery codes) ."""
    return "".join(code.split()).replace("-", "").lower()


def format_recovery(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


@dataclass
class Enrolment:
    """A user's confirmed TOTP factor."""

    secret: str
    last_step: int
    enrolled_at: float


class TwoFactor:
    """The two-step sign-in factors of every user, in one storage table."""

    def __init__(self, table: Table, secret: str | None, issuer: str) -> None:
        self.table = table
        self.issuer = issuer
        self.sealer = Sealer(secret, SEAL_INFO, SEAL_ID_INFO) if secret else None
        # Without a configured secret (development) codes are keyed by a fixed label:
        # still never stored in the clear, though guessable offline from a stolen table.
        key_material = (secret or "development: no keys secret").encode()
        self._code_key = hmac.new(key_material, RECOVERY_INFO, hashlib.sha256).digest()

    # -- secrets ----------------------------------------------------------------------
    def _seal(self, secret: str, user_id: str) -> dict[str, str]:
        if self.sealer is None:
            return {"secret": secret}
        return {"sealed": self.sealer.seal({"s": secret}, "totp:" + user_id)}

    def _open(self, record: dict, user_id: str) -> str | None:
        if "sealed" in record:
            if self.sealer is None:
                return None
            try:
                return str(self.sealer.open(record["sealed"], "totp:" + user_id)["s"])
            except (SealError, KeyError):
                return None
        return record.get("secret")

    def enrolment(self, user_id: str) -> Enrolment | None:
        record = self.table.get("totp:" + user_id)
        if record is None:
            return None
        secret = self._open(record, user_id)
        if secret is None:
            return None
        return Enrolment(secret, int(record.get("last_step", 0)), record["enrolled_at"])

    def enrolled(self, user_id: str) -> bool:
        return self.table.get("totp:" + user_id) is not None

    @staticmethod
    def enrolled_in(records: list[dict[str, Any]], user_id: str) -> bool:
        """:meth:`enrolled`, among the user's factor records (the table's ``list_by_user``:
        the TOTP record names its user)."""
        key = "totp:" + user_id
        return any(record["key"] == key for record in records)

    def pending(self, user_id: str, start: bool = True) -> str | None:
        """The unconfirmed secret shown to ``user_id`` (a new one if none, ``start``)."""
        record = self.table.get("pending:" + user_id)
        secret = self._open(record, user_id) if record else None
        if secret is None and start:
            secret = pyotp.random_base32(32)  # 160 bits (RFC 4226's recommendation)
            record = {"user_id": user_id, **self._seal(secret, user_id)}
            self.table.put("pending:" + user_id, record, ttl=PENDING_TTL)
        return secret

    def uri(self, user_id: str, label: str, secret: str) -> str:
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD)
        return totp.provisioning_uri(name=label or user_id, issuer_name=self.issuer)

    @staticmethod
    def qr_svg(uri: str) -> str:
        """The provisioning URI as an inline SVG (no third-party resource)."""
        qr = segno.make(uri, error="m")
        return qr.svg_inline(scale=4, dark="#111", light="#fff", omitsize=False)

    # -- codes ------------------------------------------------------------------------
    @staticmethod
    def _matching_step(secret: str, code: str, now: float) -> int | None:
        """The time step within the window whose code is ``code`` (every step compared)."""
        code = "".join(code.split())
        if len(code) != DIGITS or not code.isdigit():
            return None
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD)
        current = int(now // PERIOD)
        found = None
        for step in range(current - WINDOW, current + WINDOW + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                found = step
        return found

    def _accept_step(self, user_id: str, step: int, last_step: int) -> bool:
        """Use ``step`` once: refuse it at or below the last one, or if another took it."""
        if step <= last_step:
            return False
        ttl = PERIOD * (2 * WINDOW + 2)
        return self.table.incr(f"step:{user_id}:{step}", ttl=ttl) == 1

    def confirm(
        self, user_id: str, code: str, now: float | None = None, new_codes: bool = True
    ) -> list[str] | None:
        """Confirm the pending secret with its first code: enrolled, and new recovery codes
        (none when not ``new_codes``: the user keeps those of their other factor)."""
        now = time.time() if now is None else now
        secret = self.pending(user_id, start=False)
        step = self._matching_step(secret, code, now) if secret else None
        if secret is None or step is None or not self._accept_step(user_id, step, 0):
            return None
        record = {"user_id": user_id, **self._seal(secret, user_id)}
        self.table.put("totp:" + user_id, record | {"last_step": step, "enrolled_at": now})
        self.table.delete("pending:" + user_id)
        return self.new_recovery_codes(user_id) if new_codes else []

    def verify(self, user_id: str, code: str, now: float | None = None) -> bool:
        """Whether ``code`` is the user's current code, never accepted before."""
        now = time.time() if now is None else now
        enrolment = self.enrolment(user_id)
        if enrolment is None:
            return False
        step = self._matching_step(enrolment.secret, code, now)
        if step is None or not self._accept_step(user_id, step, enrolment.last_step):
            return False
        record = self.table.get("totp:" + user_id)
        if record is not None:  # removed meanwhile: leave it removed
            last = max(step, int(record.get("last_step", 0)))
            self.table.put("totp:" + user_id, record | {"last_step": last})
        return True

    # -- recovery codes ---------------------------------------------------------------
    def _code_key_of(self, user_id: str, code: str) -> str:
        mac = hmac.new(self._code_key, f"{user_id}\0{normalise(code)}".encode(), "sha256")
        return "recovery:" + mac.hexdigest()

    def new_recovery_codes(self, user_id: str) -> list[str]:
        """Replace every recovery code of the user; the new ones are returned, once."""
        self._drop(user_id, "recovery:")
        alphabet = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols, no 0/o/1/l
        codes = []
        for _ in range(RECOVERY_CODES):
            code = "".join(secrets.choice(alphabet) for _ in range(RECOVERY_CHARS))
            self.table.put(self._code_key_of(user_id, code), {"user_id": user_id})
            codes.append(format_recovery(code))
        return codes

    def use_recovery_code(self, user_id: str, code: str) -> bool:
        """Spend one recovery code: exactly one of any concurrent uses succeeds.

        Codes exist while the user has a second factor (TOTP or a passkey): they are
        dropped with the last one (:meth:`remove`)."""
        if not 0 < len(normalise(code)) <= 64:
            return False
        return self.table.take(self._code_key_of(user_id, code)) is not None

    def recovery_left(self, user_id: str) -> int:
        return sum(1 for r in self.table.list_by_user(user_id) if r["key"].startswith("recovery:"))

    # -- removal ----------------------------------------------------------------------
    def _drop(self, user_id: str, prefix: str) -> None:
        for record in self.table.list_by_user(user_id):
            if record["key"].startswith(prefix):
                self.table.delete(record["key"])

    def remove(self, user_id: str, keep_codes: bool = False) -> None:
        """Forget the user's secret, and the recovery codes unless ``keep_codes`` (the
        user keeps another second factor, a passkey)."""
        self.table.delete("totp:" + user_id)
        if not keep_codes:
            self.drop_recovery_codes(user_id)

    def drop_recovery_codes(self, user_id: str) -> None:
        self._drop(user_id, "recovery:")
