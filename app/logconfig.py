"""One log format for every process: ours, gunicorn's and granian's.

Each line starts with an ISO 8601 timestamp in UTC, then the level and the logger's
name, whichever server runs the app, so the lines of the main process and its workers
read and sort as one log.
"""

from __future__ import annotations

import json
import logging
import logging.config
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
        return iso_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        # Our own format, a line without an exception: the same text without the
        # ``%``-style machinery (it runs for every request line).
        if self._fmt != FORMAT or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = iso_time(record.created)
        return text_line(record.asctime, record.levelname, record.name, record.message)


def text_line(asctime: str, level: str, name: str, message: str) -> str:
    """A line of our text format (:data:`FORMAT`) without an exception: what
    :class:`IsoFormatter` writes, for a caller that has no record (the request line)."""
    return f"{asctime} {level} {name}: {message}"


#: The last whole second :func:`iso_time` rendered, and its text.
_SECOND: tuple[int, str] = (-1, "")
#: The end of a timestamp for each millisecond: ``"000Z"`` .. ``"999Z"``.
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))


def iso_time(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`` with a
    ``Z``: the date and time of day rendered once a second (the same rounding)."""
    global _SECOND
    whole = int(created)
    micros = round((created - whole) * 1e6)  # ``created - whole`` is exact, as ``math.modf``
    if micros >= 1_000_000 or micros < 0:  # rounding crossed a second, or before 1970
        moment = datetime.fromtimestamp(created, UTC)
        return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    second, text = _SECOND
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _SECOND = (whole, text)
    return text + _MILLIS[micros // 1000]


class _Current:
    """:func:`json_line`'s default request id: the one of the request being served."""


CURRENT = _Current()

#: ``json.dumps(entry, default=str)``'s encoder, made once.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``logging.format: "json"``): ``ts``, ``level``, ``logger``,
    ``message``, ``request_id`` when a request is being served, then the record's
    ``fields`` (``extra={"fields": {...}, "summary": "..."}``: the request line's, an
    audit event's; the summary is then the message)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        return json_line(
            record.created,
            record.levelname,
            record.name,
            # A structured line's short summary: its fields follow as keys.
            getattr(record, "summary", None) or record.getMessage(),
            fields if isinstance(fields, dict) else None,
            self.formatException(record.exc_info) if record.exc_info else None,
        )


def json_line(
    created: float,
    level: str,
    name: str,
    message: str,
    fields: dict[str, Any] | None = None,
    exception: str | None = None,
    request_id: str | None | _Current = CURRENT,
) -> str:
    """What :class:`JsonFormatter` writes for a record with these attributes, for a caller
    that has no record (the request line): the request id is the current one, unless
    given (a line rendered after its request, the id it had then)."""
    entry: dict[str, Any] = {
        "ts": iso_time(created),
        "level": level,
        "logger": name,
        "message": message,
    }
    if isinstance(request_id, _Current):
        request_id = REQUEST_ID.get()
    if request_id is not None:
        entry["request_id"] = request_id
    if fields is not None:
        for key, value in fields.items():
            if key not in BASE_KEYS and value is not None:
                entry[key] = value
    if exception is not None:
        entry["exception"] = exception
    return _encode(entry)


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


def configure_unless_set(fmt: str = "text") -> bool:
    """Under a WSGI server that ``serve`` did not start (``wsgi.py``): give the root
    logger :func:`log_config`'s handler in format ``fmt`` unless it has a handler
    already. Neither gunicorn nor granian gives the root one by default, and without it
    Python's last-resort handler writes only warnings, bare: the request lines and audit
    events would be lost and nothing would carry a timestamp. A server set up to log the
    root itself (``gunicorn --log-config``, say) keeps its own set-up. Returns whether
    the root was set up here."""
    if logging.getLogger().handlers:
        return False
    logging.config.dictConfig(log_config(fmt=fmt))
    return True
