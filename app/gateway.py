"""The ``/api/*`` gateway as its own lean layer (issue 14): a bearer check and a proxy
need none of the page machinery.

:func:`build` makes the gateway's app, a :class:`app.lean.LeanApp` holding the gateway's
blueprint (:mod:`app.views.api`, where every check lives) and what every lean app has
(see :mod:`app.lean`, which also mounts it in front of the main app: the main app no
longer routes ``/api/``). Its short path takes ``/api/<plain name>`` by a method its
one route accepts: the rule matched by a regular expression instead of the URL map.
Any other request (a path with a slash or an odd character in the name, a method the
route does not take) goes Flask's own way, so its 404, 405 or redirect is Flask's.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from .lean import LeanApp, Route, settled_route
from .lean import build as build_lean
from .paths import API

#: The WSGI environ's ``PATH_INFO`` prefix sent to the gateway.
PREFIX = API
#: A function name the URL map would match as it is (no slash to merge or redirect):
#: only such a path takes the short way; any other goes through Flask's routing.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")


class Gateway(LeanApp):
    """The gateway's app: ``/api/<plain name>`` by a method its one route takes goes the
    short way (:class:`app.lean.LeanApp`)."""

    #: The gateway's one route, set once by :meth:`settle` (before serving), read as one
    #: value: the rule, the methods the short way takes (the route's, bar ``OPTIONS`` if
    #: Flask answers it), its endpoint and its blueprint.
    settled: Route | None = None

    def short_route(self, path: str) -> tuple[Route, dict[str, Any]] | None:
        route = self.settled
        if route is None or not path.startswith(PREFIX):
            return None
        name = path[len(PREFIX) :]
        if not PLAIN_NAME.fullmatch(name):
            return None
        return route, {"name": name}

    def settle(self) -> None:
        """Take the gateway's one route (its blueprint registered): set once, before any
        request, so no thread ever sees part of it; a second route is a start-up error."""
        rules = list(self.url_map.iter_rules())
        if len(rules) != 1:
            raise RuntimeError(f"the gateway app has {len(rules)} routes; it must have one")
        self.settled = settled_route(rules[0])


def build(main: Flask) -> Gateway:
    """The gateway's Flask app, over ``main``'s state, configuration and extensions."""
    from .views import api

    return build_lean(main, Gateway, __name__, api.bp)
