"""The current request, app and ``g`` read without Werkzeug's proxies (issue 14).

``flask.request``, ``current_app`` and ``g`` are ``LocalProxy`` objects: every attribute
read through one finds the context again in Python, about 0.8 µs on the bench box against
0.09 µs for reading the context variable directly, and the back channel's hot path made
some thirty such reads a request (3–6% of a client-credentials call). The functions here
read Flask's context variables once and return the real object; code on a hot path takes
it once and uses it. Outside a context they raise ``LookupError`` (the proxies raise
``RuntimeError``), so they are for code that only ever runs in one; code that may run
outside asks :func:`flask.has_request_context` first, as before.

They rely on Flask's ``flask.globals._cv_request`` and ``_cv_app`` (Flask is pinned in the
lock files; :mod:`app.lean` relies on them too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask.globals import _cv_app, _cv_request

if TYPE_CHECKING:
    from flask import Flask, Request
    from flask.ctx import _AppCtxGlobals

    from . import State

_request_var = _cv_request.get
_app_var = _cv_app.get


def request() -> Request:
    """The request being served (``flask.request``'s object)."""
    return _request_var().request


def app() -> Flask:
    """The app serving the current request (``current_app``'s object)."""
    return _app_var().app


def app_or_none() -> Flask | None:
    """The current app, or None outside an app context."""
    found = _cv_app.get(None)
    return None if found is None else found.app


def state() -> State:
    """The process's :class:`~app.State` (``current_app.extensions["oauth2"]``)."""
    built: State = _app_var().app.extensions["oauth2"]
    return built


def g() -> _AppCtxGlobals:
    """The app context's ``g``."""
    return _app_var().g


def extension(name: str) -> Any:
    """``current_app.extensions.get(name)``."""
    return _app_var().app.extensions.get(name)
