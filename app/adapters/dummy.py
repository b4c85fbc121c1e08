"""The ``dummy`` adapter: an :class:`HttpAdapter` preset for the bundled stand-in site."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from .http import HttpAdapter
from .http_config import DummyConfig

SCOPES = {
    "read-only": "Read your profile",
    "read-write": "Read your profile and change your avatar",
}

#: The OpenID Connect claims the dummy site's login answer carries for every user.
CLAIMS = ("name", "given_name", "email", "email_verified")

API = {
    "profile": {"method": "GET", "path": "/info", "scope": "read-only"},
    # The original answered every function on GET too, the avatar in the query string.
    "update_avatar": {"method": ["POST", "GET"], "path": "/update_avatar", "scope": "read-write"},
}


class DummyAdapter(HttpAdapter):
    """Talk to the bundled dummy site (``app.dummy_site``), started beside the server.

    Config (:class:`DummyConfig`): ``host`` (default ``127.0.0.1``), ``port`` (default
    ``8084``), ``user_agent`` and ``timeout`` (default 5 seconds).
    """

    Config: ClassVar[type[BaseModel] | None] = DummyConfig

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        site: DummyConfig = self.check_config(config)
        self.bundled_site = (site.host, site.port)

    def http_config(self, config: dict[str, Any]) -> dict[str, Any]:
        site: DummyConfig = self.check_config(config)
        return {
            "base_url": f"http://{site.host}:{site.port}",
            "scopes": SCOPES,
            "api": API,
            "login": {"token_from": "cookie:dummy-server-token"},
            "claims": {"from_login": {claim: f"json:{claim}" for claim in CLAIMS}},
            "user_agent": site.user_agent,
            "timeout": site.timeout,
        }
