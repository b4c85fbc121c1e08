"""Small helpers shared by the views."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import context
from ..clients import CONTROL_CHARACTERS
from ..oauth2.server import OAuth2Server

if TYPE_CHECKING:  # app/__init__.py imports the views: no import cycle at run time
    from .. import State


def state() -> State:
    """The process's :class:`~app.State` (built by ``create_app``), typed for the views."""
    return context.state()


def oauth() -> OAuth2Server:
    server: OAuth2Server = context.state().server
    return server


#: A control character anywhere: C0 (below U+0020), DEL, or C1 (U+0080 to U+009F).
CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


def safe_next(target: str | None, default: str = "/review") -> str:
    """Only same-origin paths: no scheme, no host, no ``//`` or backslash tricks."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or CONTROL.search(target):
        return default
    return target
