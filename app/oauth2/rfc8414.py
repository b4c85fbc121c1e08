"""OAuth 2.0 Authorization Server Metadata (RFC 8414), https://www.rfc-editor.org/rfc/rfc8414

The document is built once, from what was registered at start.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from .client_auth import METHODS


def build_metadata(server: Any) -> dict[str, Any]:
    """Describe the endpoints, grants, auth methods and scopes this server registered."""
    issuer = server.issuer
    auth_methods = list(METHODS)
    metadata = AuthorizationServerMetadata(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "scopes_supported": list(server.scopes_supported or []),
            "response_types_supported": sorted(server.response_types),
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": sorted(server.grant_types),
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "code_challenge_methods_supported": server.pkce.methods,
            "authorization_response_iss_parameter_supported": True,
        }
    )
    return dict(metadata)
