"""The audit trail: one record per security-relevant event, in the ``audit`` table."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app, has_request_context, request

log = logging.getLogger("oauth2.audit")


def audit(event: str, **fields: Any) -> None:
    """Record ``event`` with the client, user, IP and time; never a secret."""
    record = {"event": event, "at": time.time(), **fields}
    if has_request_context():
        record.setdefault("ip", request.remote_addr)
    current_app.extensions["oauth2"].storage.audit.append(record)
    if log.isEnabledFor(logging.INFO):  # the hot path logs nothing above NOTICE
        log.info("%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items() if v is not None))
