"""The audit trail: one record per security-relevant event, in the ``audit`` table.

Strangers choose some of what is recorded (a claimed client id, a username), so each
string is stored bounded (:func:`bounded`), and every log line or ``audit tail`` line
that shows such values renders them through :func:`fields_line`, which escapes what
could forge a line or a field.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import unicodedata
from collections.abc import Mapping
from typing import Any

from flask import has_request_context

from . import context
from .logconfig import REQUEST_ID

log = logging.getLogger("oauth2.audit")

#: Events logged at WARNING, so the default level (``notice``) shows them: a replayed
#: code or refresh token (its grant revoked), a lockout, a refused admin call, a
#: back-channel logout not delivered. Every other event is logged at INFO.
WARNED = frozenset(
    {
        "code_replay",
        "refresh_reuse",
        "lockout",
        "login_locked",
        "client_lockout",
        "otp_locked",
        "admin_refused",
        "backchannel_failed",
        "backchannel_dropped",
    }
)

#: Longest string stored in an audit record; real ids and usernames are far shorter.
MAX_FIELD = 64

#: Unicode categories never shown raw: controls, format (bidi overrides, zero-width),
#: line and paragraph separators, surrogates, private use and unassigned code points.
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def audit(event: str, **fields: Any) -> None:
    """Record ``event`` with the client, user, IP and time; never a secret."""
    record = audit_record(event, **fields)
    context.state().storage.audit.append(record)
    audited(record)


def audit_record(event: str, **fields: Any) -> dict[str, Any]:
    """The record :func:`audit` stores, not stored: for a write that must land with others
    (a token exchange writes its ``token_issued`` entry in its own script or statement)."""
    record = {"event": event, "at": time.time(), **{k: bounded(v) for k, v in fields.items()}}
    if has_request_context():
        record.setdefault("ip", context.request().remote_addr)
    return record


def audited(record: dict[str, Any]) -> None:
    """What follows a stored record: the request line's client and user, the metrics, a log
    line. Called only once the exchange that carries the record succeeded (or, for an audit
    table elsewhere, once its write is queued in the request's batch, which may still fail:
    then the answer is a 503), so none of them tells of a lost race."""
    if has_request_context():
        from .observability.requestlog import note

        note(record.get("client_id"), record.get("user_id"))
    event = record["event"]
    counted = context.extension("oauth2.metrics_events")
    if counted is not None:
        counted(event, record)
    level = logging.WARNING if event in WARNED else logging.INFO
    if log.isEnabledFor(level):  # the hot path logs nothing above NOTICE
        shown = {**record, "request_id": REQUEST_ID.get()}
        log.log(
            level,
            "%s %s",
            printable(event),
            fields_line(shown, skip=("event", "at", "ip")),
            extra={"fields": {k: v for k, v in shown.items() if k != "at"}, "summary": event},
        )


def bounded(value: Any) -> Any:
    """Clip a long string, keeping a digest of the whole so distinct values stay distinct."""
    if not isinstance(value, str) or len(value) <= MAX_FIELD:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{value[: MAX_FIELD - 20]}...#{digest}"


#: Printable ASCII but space, ``"``, ``=`` and ``\``: such a value is its own safe token.
_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")


def printable(value: Any) -> str:
    """``value`` as one safe token: quoted and escaped when it holds anything unusual."""
    text = str(value)
    if _PLAIN.fullmatch(text):  # the common case, without a look at each character
        return text
    escaped = "".join(_escaped(c) for c in text)
    if text and escaped == text and not any(c in ' ="' for c in text):
        return text
    return f'"{escaped}"'


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if unicodedata.category(char) not in HIDDEN:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def fields_line(record: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key=value`` pairs for one log line, keys and values escaped by :func:`printable`."""
    return " ".join(
        f"{printable(k)}={printable(v)}"
        for k, v in record.items()
        if v is not None and k not in skip
    )
