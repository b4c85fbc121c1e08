"""The ``dummy`` adapter: an :class:`HttpAdapter` preset for the bundled stand-in site."""

from __future__ import annotations

from typing import Any

from .http import HttpAdapter

SCOPES = {
    "read-only": "Read your profile",
    "read-write": "Read your profile and change your avatar",
}

API = {
    "profile": {"method": "GET", "path": "/info", "scope": "read-only"},
    # The original answered every function on GET too, the avatar in the query string.
    "update_avatar": {"method": ["POST", "GET"], "path": "/update_avatar", "scope": "read-write"},
}

KEYS = {"type", "host", "port", "user_agent", "timeout"}


class DummyAdapter(HttpAdapter):
    """Talk to the bundled dummy site (``app.dummy_site``), started beside the server.

    Config: ``host`` (default ``127.0.0.1``), ``port`` (default ``8084``),
    ``user_agent`` and ``timeout`` (default 5 seconds).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.bundled_site = site_address(config)

    def http_config(self, config: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(config) - KEYS)
        if unknown:
            raise ValueError(f"resource_server.{unknown[0]}: unknown key for the dummy adapter")
        host, port = site_address(config)
        preset = {"base_url": f"http://{host}:{port}", "scopes": SCOPES, "api": API}
        preset["login"] = {"token_from": "cookie:dummy-server-token"}
        return {
            **preset,
            **{key: config[key] for key in ("user_agent", "timeout") if key in config},
        }


def site_address(config: dict[str, Any]) -> tuple[str, int]:
    """Return the dummy site's ``(host, port)`` from config."""
    port = config.get("port", 8084)
    port = int(port) if isinstance(port, str) and port.isdigit() else port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"resource_server.port: {port!r} is not a TCP port")
    return str(config.get("host", "127.0.0.1")), port
