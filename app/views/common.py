"""Small helpers shared by the views."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app

from ..oauth2.server import OAuth2Server


def state():
    return current_app.extensions["oauth2"]


def oauth() -> OAuth2Server:
    return state().server


def safe_next(target: str | None, default: str = "/review") -> str:
    """Only same-origin paths: no scheme, no host, no ``//`` or backslash tricks."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or any(ord(c) < 32 for c in target):
        return default
    return target
