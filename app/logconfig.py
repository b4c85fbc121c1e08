"""One log format for every process: ours, gunicorn's and granian's.

Each line starts with an ISO 8601 timestamp in UTC, then the level and the logger's
name, whichever server runs the app, so the lines of the main process and its workers
read and sort as one log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class IsoFormatter(logging.Formatter):
    """``2026-12-02T08:15:02.123Z``: sortable, unambiguous across time zones."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_config(loggers: dict[str, int | str] | None = None) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: the root and ``loggers`` (name: level),
    each writing our format to stderr once (a server's own loggers do not propagate)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"iso": {"()": "app.logconfig.IsoFormatter", "fmt": FORMAT}},
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
