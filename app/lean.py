"""Lean apps for what programs call most (issue 14): a request that needs none of the
page machinery is served by a small Flask app of its own, on a shorter request path.

:func:`mount` puts a dispatcher in front of the main app. A path starting with ``/api/``
goes to the gateway (:mod:`app.gateway`); ``/token``, ``/revoke``, ``/introspect``,
``/userinfo``, ``/jwks.json`` and the OpenID Provider metadata go to the back channel's
app (:mod:`app.token_app`); anything else to the main app, as before. Each lean app
holds its blueprints (where every check lives, unchanged) and only what its answers
need: the request id, the request line and the metrics
(:mod:`app.observability`), the JSON errors (``413``, ``405``, the ``503`` of a storage
fault, never a trace), the streamed-body limit and the security headers. It has no
sessions (nothing read or written, no cookie), no CSRF check, no templates, no sign-in
manager and none of the pages' hooks. All apps share one state, one configuration and
one ``extensions`` dict, so what a test or a reload changes on the main app holds for
the lean ones too. Everything in front of the dispatcher (``ProxyFix``, the admin
listener's mark) runs for all of them, as it did.

A lean app is a :class:`LeanApp`: Flask with a shorter request path for the usual call,
one of its routes by a method the route takes. Flask's own path spends more on itself
than these endpoints' checks do (binding a URL adapter and routing, opening a null
session, ``ensure_sync`` and signals per hook, a copy of the headers on the way out);
the short path does what Flask would for such a request and no more: a request context
is still pushed, so ``request``, ``g``, ``current_app`` and ``after_this_request`` work
in the shared modules (the checks, CORS, limits, quotas, DPoP, observability), and the
answer is what Flask's path gives, byte for byte (``tests/test_gateway_dispatch.py`` and
``tests/test_token_app.py`` compare the two). Any other request (a path the app does
not route plainly, a method its route does not take, ``TRUSTED_HOSTS`` set, what
Flask's URL adapter refuses) goes Flask's own way, so its 404, 405 or 400 is Flask's.
``bench/README.md`` ("The gateway's own dispatcher", "The back channel's own app") has
where the time went and what this bought.
"""

from __future__ import annotations

import re
import sys
from types import CodeType, FunctionType
from typing import Any, NamedTuple

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

from .observability.requestlog import RequestLine

#: Headers Werkzeug rewrites on the way out (made absolute URLs): such an answer goes its way.
REWRITTEN = frozenset({"location", "content-location"})
#: A ``Host`` (else the server's name) Werkzeug's URL adapter takes as it is (an ASCII
#: name or address, a port): any other (an IDNA name it might refuse) goes Flask's way.
PLAIN_HOST = re.compile(
    r"(?:(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)

#: What Werkzeug's URL map merges into one slash when it matches a path.
REPEATED_SLASHES = re.compile(r"/{2,}")


class Answer(NamedTuple):
    """An answer a view makes without a response object (a body of bytes, its status
    line and its header fields in order, ``Content-Length`` among them), sent as it is:
    what the response object Flask would make of it sends."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes

    def response(self, cls: type[Response]) -> Response:
        """The response object Flask's path would have made of it."""
        return cls(self.body, self.status, self.headers)


#: A settled route: its rule, the methods the short way takes (the route's, bar
#: ``OPTIONS`` if Flask answers it), its endpoint and its blueprint.
Route = tuple[Rule, frozenset[str], str, str]


def settled_route(rule: Rule) -> Route:
    methods = frozenset(rule.methods or ())
    if getattr(rule, "provide_automatic_options", False):
        methods -= {"OPTIONS"}
    return (rule, methods, rule.endpoint, rule.endpoint.rpartition(".")[0])


class NoSessions(SessionInterface):
    """No session at all: nothing looked up, nothing saved, no cookie (Flask hands the
    view its null session, which holds nothing)."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


class _Context(RequestContext):
    """A request context already routed and with its (null) session: no URL adapter is
    bound (nothing on a lean app builds URLs) and no session interface is asked."""

    def __init__(self, app: LeanApp, request: Any) -> None:
        self.app = app
        self.request = request
        self.url_adapter = None
        self.flashes = None
        self._session = app.session_interface.make_null_session(app)  # one per request
        self._after_request_functions = []
        self._cv_tokens = []


class SyncedFlask(Flask):
    """Flask that remembers which of its hooks and views are plain functions: Flask asks
    ``inspect.iscoroutinefunction`` of each one for every request (``ensure_sync``), a
    dozen times a page. For a plain Python function that answer is its code's flags, so
    the code objects found plain are remembered: the functions made anew per request
    (``after_this_request`` lambdas) share their line's one entry. Anything else (a
    bound method, a partial, a function marked a coroutine function) goes Flask's way."""

    #: How many code objects are remembered (one a function's source: few).
    PLAIN_MOST = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain_codes: set[CodeType] = set()

    def ensure_sync(self, func: Any) -> Any:
        if type(func) is not FunctionType or hasattr(func, "_is_coroutine_marker"):
            return super().ensure_sync(func)
        code = func.__code__
        if code in self._plain_codes:
            return func
        synced = super().ensure_sync(func)
        if synced is func and len(self._plain_codes) < self.PLAIN_MOST:
            self._plain_codes.add(code)
        return synced


class PagesApp(SyncedFlask):
    """The main app (the pages and everything the lean apps do not take): its request
    line's hook (:func:`app.observability.requestlog.init_app`) runs on the answer Flask
    finalized, the session saved. A session that could not be saved turns the answer into
    a 503 there; the line and the request count then say 503, and the request's time
    includes the save. If finalizing raised, Flask finalizes its 500 instead, and that
    is the answer the hook sees: once a request, whatever failed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called with each finalized answer (the session saved), in order.
        self.answered_hooks: list[Any] = []

    def finalize_request(self, rv: Any, from_error_handler: bool = False) -> Any:
        response = super().finalize_request(rv, from_error_handler)
        for hook in self.answered_hooks:
            response = hook(response)
        return response


class LeanApp(SyncedFlask):
    """Flask with a short request path for a request :meth:`short_route` names, by a method the
    route takes: the request context pushed without binding a URL adapter or opening a
    session, then exactly what Flask's ``full_dispatch_request`` runs for it (URL value
    preprocessors and ``before_request`` hooks of the app then the blueprint, the view,
    ``after_this_request`` functions, ``after_request`` hooks of the blueprint then the
    app, newest first, errors to the same handlers) without ``ensure_sync`` (the hooks
    are plain functions) and sending ``request_started``/``request_finished`` only when
    someone listens. Any other request takes Flask's own path.

    By default each route is a plain path (no arguments) and goes the short way by that
    exact path, looked up in a dict instead of the URL map; a subclass with other routes
    (:class:`app.gateway.Gateway`) overrides :meth:`short_route` and :meth:`settle`."""

    #: Path -> settled route, set once by :meth:`settle` (before serving), never changed:
    #: a request reads it as one value.
    routes: dict[str, Route] = {}
    #: The paths :func:`mount` sends here (all of this app's routes).
    paths: frozenset[str] = frozenset()
    #: The app's request line and counts (:func:`build` sets it).
    request_line: RequestLine | None = None

    def short_route(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        """The settled route and view arguments a path takes the short way by, or None
        for Flask's path: exactly what the URL map would match."""
        route = self.routes.get(path)
        return None if route is None else (route, {})

    def settle(self) -> None:
        """Take the routes (the blueprints registered), once, before any request: each a
        plain path without arguments, so the path alone names it; anything else is a
        start-up error."""
        routes: dict[str, Route] = {}
        for rule in self.url_map.iter_rules():
            if rule.arguments or rule.rule in routes or not rule.rule.startswith("/"):
                raise RuntimeError(f"the {self.name} app's route {rule.rule!r} is not a plain path")
            routes[rule.rule] = settled_route(rule)
        self.routes = routes
        self.paths = frozenset(routes)

    def hooks_now(self, endpoint: str | None) -> tuple[Any, ...]:
        """The hooks a request would run and ``endpoint``'s view (what a test or an
        extension may change): what a short path that does their work checks against
        :meth:`built_hooks`."""

        def named(hooks: dict[Any, list[Any]]) -> tuple[Any, ...]:
            return tuple((key, tuple(funcs)) for key, funcs in hooks.items() if funcs)

        return (
            named(self.before_request_funcs),
            named(self.after_request_funcs),
            named(self.teardown_request_funcs),
            named(self.url_value_preprocessors),
            tuple(self.teardown_appcontext_funcs),
            self.view_functions.get(endpoint) if endpoint is not None else None,
        )

    def built_hooks(self, view: Any) -> tuple[Any, ...]:
        """What :meth:`hooks_now` is as :func:`build` made the app, ``view`` the view: the
        hooks in the order Flask's path runs them."""
        from . import _limit_streamed_body, errors, pages
        from .observability import requestlog

        line = self.request_line
        finish = line.finish if line is not None else None
        before = (requestlog._begin, _limit_streamed_body, errors._require_utf8_query)
        return (
            ((None, before),),
            ((None, (pages._security_headers, finish)),),
            ((None, (requestlog._end,)),),
            (),
            (),
            view,
        )

    def plain(self, environ: dict[str, Any]) -> bool:
        """Whether Flask's routing would take the request as it is: no ``TRUSTED_HOSTS``
        to check, and none of what its URL adapter refuses with a 400 (a WebSocket
        upgrade, another scheme, a host it cannot take such as an invalid IDNA name)."""
        return (
            self.config["TRUSTED_HOSTS"] is None
            and environ.get("wsgi.url_scheme") in ("http", "https")
            and "websocket" not in environ.get("HTTP_UPGRADE", "").lower()
            and PLAIN_HOST.fullmatch(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
            is not None
        )

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        found = self.short_route(environ.get("PATH_INFO", ""))
        if (
            found is None
            or environ.get("REQUEST_METHOD") not in found[0][1]
            or not self.plain(environ)
        ):
            return super().wsgi_app(environ, start_response)
        route, view_args = found
        request = self.request_class(environ)
        request.json_module = self.json
        limit = self.config["MAX_CONTENT_LENGTH"]
        if limit is not None:  # what Flask's ``Request.max_content_length`` would read, as it is
            request.max_content_length = limit
        request.url_rule = route[0]
        request.view_args = view_args
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

    def _dispatch(self, ctx: _Context, route: Route) -> Response | Answer:
        self._got_first_request = True
        request = ctx.request
        blueprint = route[3]
        try:
            if request_started.receivers:
                request_started.send(self, _async_wrapper=self.ensure_sync)
            rv = self._before(request, blueprint)
            if rv is None:
                rv = self._view(route, request)
        except Exception as e:
            rv = self.handle_user_exception(e)
        if isinstance(rv, Answer):
            return self._after_answer(ctx, blueprint, rv)
        return self._after(ctx, blueprint, rv)

    def _view(self, route: Route, request: Any) -> Any:
        """The route's view called (a subclass may answer some requests its own way)."""
        return self.view_functions[route[2]](**request.view_args)

    def _after_answer(self, ctx: _Context, blueprint: str, answer: Answer) -> Answer | Response:
        """What the ``after_request`` hooks make of a view's plain :class:`Answer`: here,
        the hooks themselves run on it as a response object (a subclass that knows its
        hooks may do their work on the answer as it is)."""
        return self._after(ctx, blueprint, answer.response(self.response_class))

    def _after(self, ctx: _Context, blueprint: str, rv: Any) -> Response:
        """The tail of Flask's ``full_dispatch_request``: the response made, then the
        ``after_this_request`` functions and the ``after_request`` hooks run on it."""
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

    def _send(
        self, response: Response | Answer, environ: dict[str, Any], start_response: Any
    ) -> Any:
        """Start the answer and return its body. An :class:`Answer` goes as it is, and so
        does the usual response (a body of bytes in memory, its length set, a status that
        has a body, no ``Location``): what Werkzeug's ``Response.__call__`` would send,
        without its copy of the headers."""
        if isinstance(response, Answer):
            if environ["REQUEST_METHOD"] != "HEAD":
                start_response(response.status, response.headers)
                return [response.body]
            response = response.response(self.response_class)  # no body: Werkzeug's way
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
        """Flask's, over the request's blueprint, the hooks called as they are."""
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


def build(main: Flask, cls: type[LeanApp], name: str, *blueprints: Any) -> Any:
    """A lean app of ``cls`` serving ``blueprints``, over ``main``'s state, configuration
    and extensions, with what every lean app's answers need; its routes settled."""
    from . import _limit_streamed_body, errors, observability, pages

    lean = cls(name, static_folder=None, template_folder=None)
    lean.config = main.config
    lean.extensions = main.extensions
    lean.json = main.json
    lean.session_interface = NoSessions()
    lean.before_request(_limit_streamed_body)
    errors.init_json_app(lean)
    pages.init_app(lean)  # the security headers (no page is rendered here)
    for blueprint in blueprints:
        lean.register_blueprint(blueprint)
    lean.request_line = observability.init_request_hooks(lean)
    lean.settle()
    return lean


def mount(main: Flask) -> None:
    """Serve ``/api/`` from the gateway's app and the back channel's paths from its own
    (kept as ``main.extensions["oauth2.gateway"]`` and ``["oauth2.token_app"]``),
    everything else from ``main``, which does not route theirs."""
    from . import gateway, token_app

    api = gateway.build(main)
    back = token_app.build(main)
    main.extensions["oauth2.gateway"] = api
    main.extensions["oauth2.token_app"] = back
    pages_app = main.wsgi_app
    api_app = api.wsgi_app
    back_app = back.wsgi_app
    prefix = gateway.PREFIX
    back_paths = back.paths

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if "//" in path or not path.startswith("/"):
            # Werkzeug's URL map merges repeated slashes (``//token`` matches ``/token``)
            # and puts a missing leading one back: such a path goes to the app whose
            # route it matches, and that app's own Flask path answers it as the URL map
            # says. No view runs in two stacks.
            path = REPEATED_SLASHES.sub("/", "/" + path)
        if path.startswith(prefix):
            return api_app(environ, start_response)
        if path in back_paths:
            return back_app(environ, start_response)
        return pages_app(environ, start_response)

    main.wsgi_app = dispatch  # type: ignore[method-assign]
