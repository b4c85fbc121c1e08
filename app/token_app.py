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
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from .lean import LeanApp, Route, settled_route
from .lean import build as build_lean


class TokenApp(LeanApp):
    """The back channel's app: each route's own path, by a method it takes, goes the
    short way (:class:`app.lean.LeanApp`)."""

    #: Path -> settled route, set once by :meth:`settle` (before serving), never changed:
    #: a request reads it as one value.
    routes: dict[str, Route] = {}
    #: The paths :func:`app.lean.mount` sends here (all of this app's routes).
    paths: frozenset[str] = frozenset()

    def short_route(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        route = self.routes.get(path)
        return None if route is None else (route, {})

    def settle(self) -> None:
        """Take the routes (the blueprint registered), each a plain path without
        arguments, so the path alone names it; anything else is a start-up error."""
        routes: dict[str, Route] = {}
        for rule in self.url_map.iter_rules():
            if rule.arguments or rule.rule in routes or not rule.rule.startswith("/"):
                raise RuntimeError(f"the token app's route {rule.rule!r} is not a plain path")
            routes[rule.rule] = settled_route(rule)
        self.routes = routes
        self.paths = frozenset(routes)


def build(main: Flask) -> TokenApp:
    """The back channel's Flask app, over ``main``'s state, configuration and extensions."""
    from .views import oidc, token

    return build_lean(main, TokenApp, __name__, token.bp, oidc.bp)
