"""``admin.listen``: the admin API answers only on a second, internal listener.

gunicorn binds both addresses with the same workers and names, in each request's WSGI
environ, the socket the request came in on (``SERVER_NAME``, ``SERVER_PORT``). The mark
is made outermost, before ``ProxyFix`` could rewrite those from forwarded headers, so a
caller on the public address cannot claim to be on the admin one.
"""

from __future__ import annotations

from typing import Any

from flask import request

from .config_model import listen_address

#: The environ key set on requests that came in on the admin listener.
ON_ADMIN = "oauth2.admin_listener"


def mark(wsgi_app: Any, listen: str) -> Any:
    """Wrap ``wsgi_app``: requests to the ``admin.listen`` socket carry :data:`ON_ADMIN`."""
    host, port = listen_address(listen)

    def marked(environ: dict[str, Any], start_response: Any) -> Any:
        local = (environ.get("SERVER_NAME", ""), str(environ.get("SERVER_PORT", "")))
        environ[ON_ADMIN] = local == (host, port)
        return wsgi_app(environ, start_response)

    return marked


def on_admin_listener() -> bool:
    return bool(request.environ.get(ON_ADMIN))
