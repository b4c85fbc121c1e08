"""Where each endpoint lives, spelled once: for the routes, the metadata and the error pages."""

from __future__ import annotations

AUTHORIZE = "/authorize"
TOKEN = "/token"  # noqa: S105 - a path, not a secret
REVOKE = "/revoke"
INTROSPECT = "/introspect"
API = "/api/"
ADMIN = "/admin/"
ADMIN_CLIENTS = ADMIN + "clients"
ADMIN_REGISTRATION_TOKENS = ADMIN + "registration-tokens"
WELL_KNOWN = "/.well-known/"
AS_METADATA = WELL_KNOWN + "oauth-authorization-server"
OIDC_METADATA = WELL_KNOWN + "openid-configuration"
USERINFO = "/userinfo"
JWKS = "/jwks.json"
HEALTH = "/healthz"
#: Readiness (storage and the site) and Prometheus metrics (app.observability).
READY = "/readyz"
METRICS = "/metrics"
JWKS = "/jwks.json"
OPENAPI = "/openapi.json"
#: OpenID Connect RP-Initiated Logout's ``end_session_endpoint`` (and the sign-out form).
LOGOUT = "/logout"
STATIC = "/static/"
#: Dynamic client registration (RFC 7591) and, below it, management (RFC 7592).
REGISTER = "/register"

#: Endpoint name (as Authlib registers it) -> path, for the metadata document.
ENDPOINTS = {"revocation": REVOKE, "introspection": INTROSPECT}

#: Paths whose callers are programs: their errors are JSON, never a page.
JSON_PATHS = (
    API,
    ADMIN,
    TOKEN,
    REVOKE,
    INTROSPECT,
    WELL_KNOWN,
    HEALTH,
    READY,
    USERINFO,
    JWKS,
    REGISTER,
)

#: Public, secret-free responses that caches may keep.
CACHEABLE = (STATIC, WELL_KNOWN, OPENAPI, JWKS)
