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

The gateway app is a :class:`Gateway`: Flask with a shorter request path for the usual
call, ``/api/<plain name>`` by a method its route takes. Flask's own path spends more
on itself than the bearer check does (binding a URL adapter and routing, opening a null
session, ``ensure_sync`` and signals per hook, a copy of the headers on the way out);
the short path does what Flask would for such a request and no more: a request context
is still pushed, so ``request``, ``g``, ``current_app`` and ``after_this_request`` work
in the shared modules (the checks, CORS, limits, quotas, DPoP, observability), and the
answer is what Flask's path gives, byte for byte (``tests/test_gateway_dispatch.py``
compares the two). Any other request (a path with a slash or an odd character in the
name, a method the route does not take, ``TRUSTED_HOSTS`` set) goes Flask's own way,
so its 404, 405 or redirect is Flask's. ``bench/README.md`` ("The gateway's own
dispatcher") has where the time went and what this bought.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from flask import (
    Flask,
    Response,
    request_finished,
    request_started,
    request_tearing_down,
)
from flask.ctx import RequestContext, _sentinel
from flask.globals import _cv_app, _cv_request
from flask.sessions import SessionInterface
from werkzeug.routing import Rule

from .paths import API

#: The WSGI environ's ``PATH_INFO`` prefix sent to the gateway.
PREFIX = API
#: A function name the URL map would match as it is (no slash to merge or redirect):
#: only such a path takes the short way; any other goes through Flask's routing.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")
#: Headers Werkzeug rewrites on the way out (made absolute URLs): such an answer goes its way.
REWRITTEN = frozenset({"location", "content-location"})
#: A ``Host`` (else the server's name) Werkzeug's URL adapter takes as it is (an ASCII
#: name or address, a port): any other (an IDNA name it might refuse) goes Flask's way.
PLAIN_HOST = re.compile(
    r"(?:(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


class NoSessions(SessionInterface):
    """No session at all: nothing looked up, nothing saved, no cookie (Flask hands the
    view its null session, which holds nothing)."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


class _Context(RequestContext):
    """A request context already routed and with its (null) session: no URL adapter is
    bound (nothing on the gateway builds URLs) and no session interface is asked."""

    def __init__(self, app: Gateway, request: Any) -> None:
        self.app = app
        self.request = request
        self.url_adapter = None
        self.flashes = None
        self._session = app.session_interface.make_null_session(app)  # one per request
        self._after_request_functions = []
        self._cv_tokens = []


class Gateway(Flask):
    """Flask with a short request path for ``/api/<plain name>`` by a method the route
    takes: the rule matched by a regular expression, the request context pushed without
    binding a URL adapter or opening a session, then exactly what Flask's
    ``full_dispatch_request`` runs for it (URL value preprocessors and ``before_request``
    hooks of the app then the blueprint, the view, ``after_this_request`` functions,
    ``after_request`` hooks of the blueprint then the app, newest first, errors to the
    same handlers) without ``ensure_sync`` (the gateway's hooks are plain functions) and
    sending ``request_started``/``request_finished`` only when someone listens. Any other
    request (an odd path, another method: a 404, 405 or redirect) takes Flask's own path.
    """

    #: The gateway's one route, set once by :meth:`settle` (before serving), read as one
    #: value: the rule, the methods the short way takes (the route's, bar ``OPTIONS`` if
    #: Flask answers it), its endpoint and its blueprint.
    settled: tuple[Rule, frozenset[str], str, str] | None = None

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        name = path[len(PREFIX) :]
        route = self.settled
        if (
            route is None
            or environ.get("REQUEST_METHOD") not in route[1]
            or not path.startswith(PREFIX)
            or not PLAIN_NAME.fullmatch(name)
            or self.config["TRUSTED_HOSTS"] is not None
            # What Flask's URL adapter refuses with a 400: a WebSocket upgrade, another
            # scheme, a host it cannot take (an invalid IDNA name).
            or environ.get("wsgi.url_scheme") not in ("http", "https")
            or "websocket" in environ.get("HTTP_UPGRADE", "").lower()
            or not PLAIN_HOST.fullmatch(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        ):
            return super().wsgi_app(environ, start_response)
        rule = route[0]
        request = self.request_class(environ)
        request.json_module = self.json
        request.url_rule = rule
        request.view_args = {"name": name}
        ctx = _Context(self, request)
        error: BaseException | None = None
        try:
            try:
                ctx.push()
                response = self._dispatch(ctx, route)
            except Exception as e:
                error = e
                response = self.handle_exception(e)
            except:  # noqa: E722 - as Flask: recorded for the teardown, then raised
                error = sys.exc_info()[1]
                raise
            return self._send(response, environ, start_response)
        finally:
            if "werkzeug.debug.preserve_context" in environ:  # the test client's ``with``
                environ["werkzeug.debug.preserve_context"](_cv_app.get())
                environ["werkzeug.debug.preserve_context"](_cv_request.get())
            if error is not None and self.should_ignore_error(error):
                error = None
            ctx.pop(error)

    def _dispatch(self, ctx: _Context, route: tuple[Rule, frozenset[str], str, str]) -> Response:
        self._got_first_request = True
        request = ctx.request
        blueprint = route[3]
        try:
            if request_started.receivers:
                request_started.send(self, _async_wrapper=self.ensure_sync)
            rv = self._before(request, blueprint)
            if rv is None:
                rv = self.view_functions[route[2]](**request.view_args)  # type: ignore[arg-type]
        except Exception as e:
            rv = self.handle_user_exception(e)
        if not isinstance(rv, self.response_class):
            rv = self.make_response(rv)
        for func in ctx._after_request_functions:
            rv = func(rv)
        for name in (blueprint, None):
            for func in reversed(self.after_request_funcs.get(name, ())):
                rv = func(rv)
        if request_finished.receivers:
            request_finished.send(self, _async_wrapper=self.ensure_sync, response=rv)
        return rv

    def _before(self, request: Any, blueprint: str) -> Any:
        scopes = (None, blueprint)
        for name in scopes:
            for preprocess in self.url_value_preprocessors.get(name, ()):
                preprocess(request.endpoint, request.view_args)
        for name in scopes:
            for func in self.before_request_funcs.get(name, ()):
                rv = func()
                if rv is not None:
                    return rv
        return None

    def _send(self, response: Response, environ: dict[str, Any], start_response: Any) -> Any:
        """Start the answer and return its body. The usual one (a body of bytes in memory,
        its length set, a status that has a body, no ``Location``) goes as it is: what
        Werkzeug's ``Response.__call__`` would send, without its copy of the headers."""
        status = response.status_code
        body = response.response
        if (
            type(response) is not self.response_class
            or environ["REQUEST_METHOD"] == "HEAD"
            or status < 200
            or status in (204, 304)
            or response.direct_passthrough
            or response._on_close
            or type(body) is not list
            or not all(type(chunk) is bytes for chunk in body)
        ):
            return response(environ, start_response)
        headers = response.headers.to_wsgi_list()
        names = {name.lower() for name, _ in headers}
        if "content-length" not in names or not names.isdisjoint(REWRITTEN):
            return response(environ, start_response)
        start_response(response.status, headers)
        return body

    def do_teardown_request(self, exc: BaseException | None = _sentinel) -> None:  # type: ignore[assignment]
        """Flask's, over the gateway's one blueprint, the hooks called as they are."""
        if exc is _sentinel:
            exc = sys.exc_info()[1]
        rule = _cv_request.get().request.url_rule
        blueprint = rule.endpoint.rpartition(".")[0] if rule is not None else None
        names = (None,) if blueprint is None else (blueprint, None)
        for name in names:
            for func in reversed(self.teardown_request_funcs.get(name, ())):
                func(exc)
        if request_tearing_down.receivers:
            request_tearing_down.send(self, _async_wrapper=self.ensure_sync, exc=exc)

    def settle(self) -> None:
        """Take the gateway's one route (its blueprint registered): set once, before any
        request, so no thread ever sees part of it; a second route is a start-up error."""
        rules = list(self.url_map.iter_rules())
        if len(rules) != 1:
            raise RuntimeError(f"the gateway app has {len(rules)} routes; it must have one")
        (rule,) = rules
        methods = frozenset(rule.methods or ())
        if getattr(rule, "provide_automatic_options", False):
            methods -= {"OPTIONS"}
        self.settled = (rule, methods, rule.endpoint, rule.endpoint.rpartition(".")[0])


def build(main: Flask) -> Gateway:
    """The gateway's Flask app, over ``main``'s state, configuration and extensions."""
    from . import _limit_streamed_body, errors, observability, pages
    from .views import api

    gateway = Gateway(__name__, static_folder=None, template_folder=None)
    gateway.config = main.config
    gateway.extensions = main.extensions
    gateway.json = main.json
    gateway.session_interface = NoSessions()
    gateway.before_request(_limit_streamed_body)
    errors.init_json_app(gateway)
    pages.init_app(gateway)  # the security headers (no page is rendered here)
    gateway.register_blueprint(api.bp)
    observability.init_request_hooks(gateway)
    gateway.settle()
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
