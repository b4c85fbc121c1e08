"""A client's policy and its consent-page facts: API allowlist, token lifetimes, links.

The same names in the clients file, the admin API and (within limits) dynamic
registration:

* ``api_allowlist``: the ``/api`` functions the client may call, beyond what its scopes
  allow (absent: every function its token's scopes allow; ``[]``: none);
* ``access_token_lifetime`` / ``refresh_token_lifetime``: seconds, within
  :data:`LIFETIME_BOUNDS` (absent: the server's, ``storage.tokens.ttl`` and
  ``storage.refresh_tokens.ttl``);
* ``client_uri``, ``logo_uri``, ``policy_uri``, ``tos_uri`` (RFC 7591 §2): shown on the
  consent page.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .clients import http_url

#: Field -> (shortest, longest) lifetime in seconds a client may be given.
LIFETIME_BOUNDS = {
    "access_token_lifetime": (60, 86400),
    "refresh_token_lifetime": (60, 31536000),
}
#: RFC 7591 §2's URLs shown to the user.
LINK_FIELDS = ("client_uri", "logo_uri", "policy_uri", "tos_uri")
#: Every policy field, in the order responses show them.
POLICY_FIELDS = ("api_allowlist", *LIFETIME_BOUNDS)
#: An ``/api`` function's name, as the adapter's routes are named (``user/profile``).
API_NAME = re.compile(r"[A-Za-z0-9._~/-]{1,200}")
NETLOC = re.compile(r"[A-Za-z0-9.\[\]:-]+")


class PolicyError(ValueError):
    """A policy field is wrong; the message names the field."""


def policy_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~app.clients.Client` keyword arguments for ``entry``'s policy and links.

    Raises :class:`PolicyError` with ``field: problem``.
    """
    out: dict[str, Any] = {"api_allowlist": api_allowlist(entry.get("api_allowlist"))}
    for name in LIFETIME_BOUNDS:
        out[name] = lifetime(name, entry.get(name))
    for name in LINK_FIELDS:
        value = entry.get(name)
        if value is not None and not (isinstance(value, str) and web_url(value)):
            raise PolicyError(f"{name}: expected an http or https URL")
        out[name] = value
    return out


def api_allowlist(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 1000:
        raise PolicyError("api_allowlist: expected a list of /api function names")
    for name in value:
        if not isinstance(name, str) or not API_NAME.fullmatch(name.strip("/")):
            raise PolicyError(f"api_allowlist: {name!r} is not an /api function name")
    return list(dict.fromkeys(name.strip("/") for name in value))


def lifetime(name: str, value: Any) -> int | None:
    if value is None:
        return None
    low, high = LIFETIME_BOUNDS[name]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PolicyError(f"{name}: expected whole seconds from {low} to {high}")
    return value


def web_url(value: str) -> bool:
    """An absolute http(s) URL without credentials or control characters."""
    if any(ord(c) < 33 or ord(c) == 127 for c in value) or len(value) > 2000:
        return False
    return http_url(value)


def shown_image(uri: str | None) -> str | None:
    """The logo URL a page may load: https, or http on a loopback address; else None."""
    if not uri or not web_url(uri):
        return None
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if not NETLOC.fullmatch(parts.netloc):
        return None  # the origin goes into the page's Content-Security-Policy
    if parts.scheme == "https" or host in ("127.0.0.1", "::1", "localhost"):
        return uri
    return None


def image_origin(uri: str) -> str:
    """``scheme://host[:port]`` of an image URL, for the page's ``img-src``."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def allows_function(allowlist: list[str] | None, name: str) -> bool:
    """Whether a client with ``allowlist`` may call the ``/api`` function ``name``."""
    return allowlist is None or name.strip("/") in allowlist


def consent_links(client) -> list[tuple[str, str]]:
    """The consent page's links: (text naming the client, URL) for each link it has."""
    kinds = (
        ("client_uri", "website"),
        ("policy_uri", "privacy policy"),
        ("tos_uri", "terms of service"),
    )
    return [
        (f"{client.name}'s {text}", getattr(client, name))
        for name, text in kinds
        if getattr(client, name, None) and web_url(getattr(client, name))
    ]
