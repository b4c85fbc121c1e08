"""Operating the server: readiness (``/readyz``), request logs and Prometheus metrics.

:func:`init_app` is the one hook ``create_app`` calls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response

from ..paths import TOKEN
from . import requestlog

if TYPE_CHECKING:
    from .. import State

#: ``app.extensions`` key of the audit hook that counts events (set when metrics are on).
EVENTS = "oauth2.metrics_events"


def init_app(app: Flask) -> None:
    """Register the request id and log line, the metrics hooks and the ops views."""
    from ..views import ops

    state: State = app.extensions["oauth2"]
    if state.settings.config.metrics.enabled:
        from . import metrics

        _init_metrics(app, state, metrics)
    init_request_hooks(app)
    app.register_blueprint(ops.bp)


def init_request_hooks(app: Flask) -> requestlog.RequestLine:
    """The request id, the request line and (when metrics are on) the request counts:
    the hooks every app serving requests registers (the main app, the ``/api`` one)."""
    state: State = app.extensions["oauth2"]
    observe = None
    if state.settings.config.metrics.enabled:
        from . import metrics

        observe = _count_requests(metrics)
    return requestlog.init_app(app, observe)


def _count_requests(metrics: Any) -> requestlog.Observer:
    observe = metrics.observe_request

    def count(
        rule: str | None,
        method: str,
        status: int,
        took: float,
        path: str,
        response: Response | None,
    ) -> None:
        observe(rule, method, status, took)
        if path == TOKEN and 400 <= status < 500 and response is not None and response.is_json:
            body = response.get_json(silent=True)
            if isinstance(body, dict):
                metrics.observe_token_error(str(body.get("error")))

    return count


def _init_metrics(app: Flask, state: State, metrics: Any) -> None:
    """Once per app state: the audit events counted, the site's and storage's calls timed
    (an app sharing the state shares ``app.extensions[EVENTS]``)."""

    def client_label(client_id: str) -> str:
        """The client's own id for the operator's clients (the clients file, the admin
        API); a shared label for those registered by anyone (RFC 7591) and gone ones."""
        client = state.clients.get(client_id) if client_id else None
        if client is None:
            return metrics.UNKNOWN_CLIENT
        if getattr(client, "source", None) == "registration":
            return metrics.REGISTERED_CLIENTS
        return client_id

    cap = state.settings.config.metrics.max_client_labels
    app.extensions[EVENTS] = lambda event, record: metrics.observe_event(
        event, record, client_label, cap
    )
    _time_upstream(state, metrics)
    from .readiness import kind

    metrics.time_storage(state.storage, kind)


def _time_upstream(state: State, metrics: Any) -> None:
    """Wrap this app's adapter's ``call``: each ``/api`` call to the site is timed by
    function, its failures counted (the adapter's own code is left as it is)."""
    from ..adapters import UpstreamUnavailable

    adapter = state.adapter
    original = adapter.call

    observe = metrics.observe_upstream
    clock = time.perf_counter

    def call(route, *args, **kwargs):
        started = clock()
        try:
            answer = original(route, *args, **kwargs)
        except UpstreamUnavailable as exc:
            failure = "timeout" if exc.timeout else "unavailable"
            observe(route.name, clock() - started, failure=failure)
            raise
        observe(route.name, clock() - started, answer.status)
        return answer

    adapter.call = call  # type: ignore[method-assign]
