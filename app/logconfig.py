"""One log format for every process: ours, gunicorn's and granian's.

Each line starts with an ISO 8601 timestamp in UTC, then the level and the logger's
name, whichever server runs the app, so the lines of the main process and its workers
read and sort as one log.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The id of the request this thread serves (``X-Request-Id``), for every line it logs.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

#: Keys a JSON line always has; a record's ``fields`` never replace them.
BASE_KEYS = ("ts", "level", "logger", "message", "request_id")


class IsoFormatter(logging.Formatter):
    """``2026-12-02T08:15:02.123Z``: sortable, unambiguous across time zones."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``logging.format: "json"``): ``ts``, ``level``, ``logger``,
    ``message``, ``request_id`` when a request is being served, then the record's
    ``fields`` (``extra={"fields": {...}, "summary": "..."}``: the request line's, an
    audit event's; the summary is then the message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            # A structured line's short summary: its fields follow as keys.
            "message": getattr(record, "summary", None) or record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key not in BASE_KEYS and value is not None:
                    entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


FORMATTERS = {
    "text": {"()": "app.logconfig.IsoFormatter", "fmt": FORMAT},
    "json": {"()": "app.logconfig.JsonFormatter"},
}


def log_config(loggers: dict[str, int | str] | None = None, fmt: str = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: the root and ``loggers`` (name: level),
    each writing our format (``fmt``: ``text`` or ``json``) to stderr once (a server's own
    loggers do not propagate)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"iso": FORMATTERS[fmt]},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "iso",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            name: {"level": level, "handlers": ["stderr"], "propagate": False}
            for name, level in (loggers or {}).items()
        },
    }
