"""Operating the server: readiness (``/readyz``), request logs and Prometheus metrics.

:func:`init_app` is the one hook ``create_app`` calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the request id and log line, the metrics hooks and the ops views."""
    from ..views import ops
    from . import requestlog

    requestlog.init_app(app)
    app.register_blueprint(ops.bp)
