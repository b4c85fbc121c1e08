"""Operating the server: readiness (``/readyz``), request logs and Prometheus metrics.

:func:`init_app` is the one hook ``create_app`` calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from ..paths import TOKEN

if TYPE_CHECKING:
    from .. import State

#: ``app.extensions`` key of the audit hook that counts events (set when metrics are on).
EVENTS = "oauth2.metrics_events"


def init_app(app: Flask) -> None:
    """Register the request id and log line, the metrics hooks and the ops views."""
    from ..views import ops
    from . import requestlog

    requestlog.init_app(app)
    state: State = app.extensions["oauth2"]
    if state.settings.config.metrics.enabled:
        _init_metrics(app, state)
    app.register_blueprint(ops.bp)


def _init_metrics(app: Flask, state: State) -> None:
    from . import metrics

    def count(response: Response) -> Response:
        started = g.get("started")
        took = time.perf_counter() - started if started is not None else 0.0
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.observe_request(rule, request.method, response.status_code, took)
        if request.path == TOKEN and 400 <= response.status_code < 500 and response.is_json:
            body = response.get_json(silent=True)
            if isinstance(body, dict):
                metrics.observe_token_error(str(body.get("error")))
        return response

    def known(client_id: str) -> bool:
        return bool(client_id) and state.clients.get(client_id) is not None

    app.after_request(count)
    app.extensions[EVENTS] = lambda event, record: metrics.observe_event(event, record, known)
    _time_upstream(state, metrics)
    from .readiness import kind

    metrics.time_storage(state.storage, kind)


def _time_upstream(state: State, metrics: Any) -> None:
    """Wrap this app's adapter's ``call``: each ``/api`` call to the site is timed by
    function, its failures counted (the adapter's own code is left as it is)."""
    from ..adapters import UpstreamUnavailable

    adapter = state.adapter
    original = adapter.call

    def call(route, *args, **kwargs):
        timer = metrics.Upstream(route.name)
        try:
            answer = original(route, *args, **kwargs)
        except UpstreamUnavailable as exc:
            timer.done(failure="timeout" if exc.timeout else "unavailable")
            raise
        timer.done(answer.status)
        return answer

    adapter.call = call  # type: ignore[method-assign]
