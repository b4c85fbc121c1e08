"""The back channel's own lean app (issue 14): ``/token``, ``/revoke``,
``/introspect``, ``/userinfo``, ``/jwks.json`` and the OpenID Provider metadata are
called by programs, with no cookie, page or form token to look at.

:func:`build` makes a :class:`app.lean.LeanApp` holding their blueprints
(:mod:`app.views.token` and :mod:`app.views.oidc`, where every check lives, unchanged)
and what every lean app has; :func:`app.lean.mount` sends it exactly those paths (the
main app no longer serves them). Its short path takes each of them, spelled exactly as
its route, by a method the route takes: the route is looked up in a dict instead of the
URL map. Any other request (``GET /token``: Flask's JSON 405) goes Flask's own way in
this app. A cookie sent along is neither read nor renewed, and no answer sets one (the
main app's sessions never were the back channel's business).

**Plain token answers.** A ``POST /token`` without ``Origin`` or ``DPoP`` runs the token
view's own steps, in its order and through its functions (the limiter's
:func:`~app.limits.web.before_token` and :func:`~app.limits.web.after_token`, the
view's ``_respond``, Authlib's grant through ``OAuth2Server.create_token_response``),
except that a grant's successful answer is made as a plain :class:`~app.lean.Answer`
(a list of header fields and the body's bytes) instead of a response object, and the
``after_request`` hooks' work is done on that list (:meth:`TokenApp._after_answer`):
``Vary``, the request id and the request line, the security headers, field for field
and in the order Flask's path gives them. Every refusal and error is the response object
Flask's path makes, through its own hooks. It is on only while the app's hooks, the token
view and the signal receivers are the ones it stands for, and
``tests/test_token_fast.py`` holds its answers to Flask's path's.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.grants import BaseGrant
from flask import Flask, Response, after_this_request, request_finished, request_started

from . import context, cors, pages
from .cors import public_client_origins
from .lean import Answer, LeanApp, Route, _Context
from .lean import build as build_lean
from .limits import web as limits_web
from .limits.web import token_limits
from .observability.requestlog import HEADER
from .views import token as token_views

#: The token view's endpoint, and the limiter's scope for it (``token_limits``' own).
TOKEN_ENDPOINT = "token.token"  # noqa: S105 - an endpoint name
LIMIT_SCOPE = "token:"
#: The header fields Authlib's grants answer a token with.
GRANT_FIELDS = list(BaseGrant.TOKEN_RESPONSE_HEADER)


class TokenApp(LeanApp):
    """The back channel's app: :class:`app.lean.LeanApp`, each route's own path by a
    method it takes going the short way, a token's success answered plainly."""

    #: The app's hooks and token view as :meth:`settle` found them, when they are the
    #: ones plain answers stand for; None: none are made.
    plain_hooks: tuple[Any, ...] | None = None

    def settle(self) -> None:
        super().settle()
        hooks = self._hooks_now()
        known = hooks == self._known_hooks() and _known_token_view(token_views.token)
        self.plain_hooks = hooks if known else None

    def _hooks_now(self) -> tuple[Any, ...]:
        """The hooks and token view a request would run."""
        return self.hooks_now(TOKEN_ENDPOINT)

    def _known_hooks(self) -> tuple[Any, ...]:
        """What :meth:`_hooks_now` is as :func:`app.lean.build` made the app."""
        return self.built_hooks(token_views.token)

    def _plain(self, environ: dict[str, Any]) -> bool:
        """Whether a token request may be answered plainly: no CORS or DPoP answer to
        make, no signal receiver that wants the response object, the known hooks."""
        return (
            self.plain_hooks is not None
            and environ.get("REQUEST_METHOD") == "POST"
            and "HTTP_ORIGIN" not in environ
            and "HTTP_DPOP" not in environ
            and not request_started.receivers
            and not request_finished.receivers
            and self._hooks_now() == self.plain_hooks
        )

    def _view(self, route: Route, request: Any) -> Any:
        if route[2] != TOKEN_ENDPOINT or not self._plain(request.environ):
            return super()._view(route, request)
        # ``public_client_origins``, then ``token_limits``, then the view, as they run.
        after_this_request(cors._allow_named_client)
        limits = context.state().limits
        if not limits.enabled:
            return token_views._respond(None, self._answer)
        ip = limits_web.ip_group()
        failing = limits_web.before_token(limits, LIMIT_SCOPE, ip)
        answer = token_views._respond(None, self._answer)
        if isinstance(answer, Answer):
            answer.headers.extend(limits_web.after_token(limits, LIMIT_SCOPE, ip, failing))
            return answer
        response = self.make_response(answer)
        limits_web._after_token(limits, LIMIT_SCOPE, ip, failing, response)
        return response

    def _answer(self, status: int, body: Any, headers: Any) -> Answer | Response:
        """A grant's answer: the usual success (a JSON object, 200, the grant's usual
        fields) as an :class:`Answer`; anything else as ``handle_response`` makes it."""
        if status != 200 or type(body) is not dict or list(headers) != GRANT_FIELDS:
            return context.state().server.handle_response(status, body, headers)
        data = self.json.dumps(body).encode()
        fields = [*GRANT_FIELDS, ("Content-Length", str(len(data)))]
        return Answer("200 OK", fields, data)

    def _after_answer(self, ctx: _Context, blueprint: str, answer: Answer) -> Answer | Response:
        """The hooks' work on a plain answer, as they would do it on its response object:
        ``Vary`` (``_allow_named_client`` without an ``Origin``), the request id and the
        request line (``finish``), then the security headers it lacks. Anything else
        registered meanwhile: the hooks run on it as a response object."""
        line = self.request_line
        if (
            ctx._after_request_functions != [cors._allow_named_client]
            or line is None
            or self.after_request_funcs.get(blueprint)
        ):
            return super()._after_answer(ctx, blueprint, answer)
        request = ctx.request
        fields = answer.headers
        fields.append(("Vary", "Origin"))
        fields.append((HEADER, line.answered(request, 200, None)))
        fields += pages.missing(fields, "application/json", request.path, request.is_secure)
        return answer


def _known_token_view(view: Any) -> bool:
    """Whether the token view is the one :meth:`TokenApp._view` does the steps of:
    ``public_client_origins`` around ``token_limits`` around a view named ``token``
    (the limiter's scope) that calls ``_respond(None)``. Decorators are told by their
    wrappers' code; the view by its name and the names its code calls."""

    def wrapper_code(decorator: Any) -> Any:
        return decorator(lambda: None).__code__

    limited = getattr(view, "__wrapped__", None)
    inner = getattr(limited, "__wrapped__", None)
    return (
        view.__code__ is wrapper_code(public_client_origins)
        and limited is not None
        and limited.__code__ is wrapper_code(token_limits)
        and inner is not None
        and inner.__name__ + ":" == LIMIT_SCOPE
        and inner.__code__.co_names == ("_respond",)
        and inner.__code__.co_consts == (None,)
    )


def build(main: Flask) -> TokenApp:
    """The back channel's Flask app, over ``main``'s state, configuration and extensions."""
    from .views import oidc, token

    return build_lean(main, TokenApp, __name__, token.bp, oidc.bp)
