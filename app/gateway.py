"""The ``/api/*`` gateway as its own lean layer (issue 14): a bearer check and a proxy
need none of the page machinery.

:func:`mount` puts a small dispatcher in front of the main app: a request whose path
starts with ``/api/`` goes to a second, minimal Flask app that holds the gateway's
blueprint (:mod:`app.views.api`, where every check lives) and only what its answers
need: the request id, the request line and the metrics (:mod:`app.observability`),
the JSON errors (``413``, ``405``, the ``503`` of a storage fault, never a trace), the
streamed-body limit and the security headers. It has no sessions (nothing read or
written, no cookie), no CSRF check, no templates, no sign-in manager and none of the
pages' hooks. Both apps share one state, one configuration and one ``extensions``
dict, so what a test or a reload changes on the main app holds for the gateway too.

Everything in front of the dispatcher (``ProxyFix``, the admin listener's mark) runs
for both, as it did; the main app no longer routes ``/api/``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.sessions import SessionInterface

from .paths import API

#: The WSGI environ's ``PATH_INFO`` prefix sent to the gateway.
PREFIX = API


class NoSessions(SessionInterface):
    """No session at all: nothing looked up, nothing saved, no cookie (Flask hands the
    view its null session, which holds nothing)."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


def build(main: Flask) -> Flask:
    """The gateway's Flask app, over ``main``'s state, configuration and extensions."""
    from . import _limit_streamed_body, errors, observability, pages
    from .views import api

    gateway = Flask(__name__, static_folder=None, template_folder=None)
    gateway.config = main.config
    gateway.extensions = main.extensions
    gateway.json = main.json
    gateway.session_interface = NoSessions()
    gateway.before_request(_limit_streamed_body)
    errors.init_json_app(gateway)
    pages.init_app(gateway)  # the security headers (no page is rendered here)
    gateway.register_blueprint(api.bp)
    observability.init_request_hooks(gateway)
    return gateway


def mount(main: Flask) -> Flask:
    """Serve ``/api/`` from :func:`build`'s app, everything else from ``main``; returns
    the gateway app (kept as ``main.extensions["oauth2.gateway"]``)."""
    gateway = build(main)
    main.extensions["oauth2.gateway"] = gateway
    pages_app = main.wsgi_app
    api_app = gateway.wsgi_app

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith(PREFIX):
            return api_app(environ, start_response)
        return pages_app(environ, start_response)

    main.wsgi_app = dispatch  # type: ignore[method-assign]
    return gateway
