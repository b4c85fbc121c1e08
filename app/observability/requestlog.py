"""Request ids and one structured log line per request (``oauth2.request``)."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Placeholder until the request log lands."""
