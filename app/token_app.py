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

from flask import Flask

from .lean import LeanApp
from .lean import build as build_lean


class TokenApp(LeanApp):
    """The back channel's app: :class:`app.lean.LeanApp` as it is, each route's own path
    by a method it takes going the short way."""


def build(main: Flask) -> TokenApp:
    """The back channel's Flask app, over ``main``'s state, configuration and extensions."""
    from .views import oidc, token

    return build_lean(main, TokenApp, __name__, token.bp, oidc.bp)
