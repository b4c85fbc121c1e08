"""Client metadata of the admin API and the CLI: RFC 7591 names, getAlby's spellings.

OAuth 2.0 Dynamic Client Registration (RFC 7591) §2 names the fields; getAlby's admin
API spelled some of them its own way (``name``, ``url``, ``imageUrl``, ``domain``,
``public``), and both are accepted. :func:`canonical` maps a JSON body onto the RFC
names; :func:`complete` checks the whole and fills the defaults; :func:`file_entry`
turns the result into a clients-file entry, which :func:`app.clients.parse_client`
then checks like any other client (redirect URIs, scopes, IP allowlist...).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from .client_policy import POLICY_FIELDS
from .clients import ADMIN_SCOPE, RESPONSE_TYPE_GRANTS, http_url, normal_response_type
from .oauth2.client_auth import METHODS
from .quotas import FIELDS as QUOTA_FIELDS
from .settings import GRANT_TYPES

#: getAlby's spelling -> RFC 7591's.
ALIASES = {"name": "client_name", "url": "client_uri", "imageUrl": "logo_uri"}
#: Fields holding one http(s) URL (RFC 7591 §2).
URL_FIELDS = ("client_uri", "logo_uri", "policy_uri", "tos_uri")
#: OpenID Connect's fields (Registration §2, Back-Channel Logout §2.2): ``parse_client``
#: checks them as it checks the clients file's.
OIDC_FIELDS = (
    "post_logout_redirect_uris",
    "id_token_signed_response_alg",
    "subject_type",
    "sector_identifier_uri",
    "backchannel_logout_uri",
    "backchannel_logout_session_required",
    "skip_consent",
    "require_two_factor",
    "dpop_bound_access_tokens",
)
#: Every field a client record keeps, in the order responses show them.
FIELDS = (
    "client_name",
    "client_uri",
    "logo_uri",
    "policy_uri",
    "tos_uri",
    "contacts",
    "redirect_uris",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "scope",
    "ip_allowlist",
    "allowed_origins",
    "rate_limit",
    *POLICY_FIELDS,
    *OIDC_FIELDS,
    *QUOTA_FIELDS,
)
#: Fields the server sets; a body may carry them back (from a GET) and they are ignored.
READ_ONLY = frozenset(
    {
        "client_id_issued_at",
        "client_secret_expires_at",
        "created_at",
        "updated_at",
        "source",
        "read_only",
        "secrets",
    }
)
#: Flags beside the metadata.
FLAGS = ("disabled",)
CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
#: RFC 7591's default would be ``authorization_code`` alone; the clients file and
#: ``clients add`` give refresh tokens with it, and so do we.
DEFAULT_GRANTS = ["authorization_code", "refresh_token"]
MAX_TEXT = 2000
#: Characters that reorder the text around them: "\u202elapyap" shows as "paypal" on the
#: consent page (Unicode TR 9; CVE-2021-42574's "Trojan Source").
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def is_public(meta: dict[str, Any]) -> bool:
    """Whether the metadata is a public client's: one that holds no secret."""
    return meta.get("token_endpoint_auth_method") == "none"


class ClientMetadataError(ValueError):
    """Metadata refused: ``error`` is RFC 7591 §3.2.2's code, the message its description."""

    def __init__(self, description: str, error: str = "invalid_client_metadata") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def read_body(
    body: Any, current: dict[str, Any] | None = None, allow_null: bool = False
) -> dict[str, Any]:
    """A request body's fields under RFC 7591 names, getAlby's spellings mapped.

    ``null`` values are kept only for a merge patch (``allow_null``), where they remove
    the field; ``current`` is the metadata a patch applies to.
    """
    if not isinstance(body, dict):
        raise ClientMetadataError("the body must be a JSON object of client metadata")
    out: dict[str, Any] = {}
    unknown = []
    for key, value in body.items():
        name = _name(key)
        if name is None:
            if key not in READ_ONLY:
                unknown.append(key)
            continue
        if value is None and not allow_null:
            continue
        if name in out and out[name] != value:
            raise ClientMetadataError(f"{key}: says otherwise than another field of the body")
        out[name] = value
    if unknown:
        raise ClientMetadataError("unknown field(s): " + ", ".join(sorted(map(str, unknown))))
    _domain(out)
    _public(out, current or {})
    return out


def _name(key: str) -> str | None:
    """The name a body key stands for, or None for one outside the metadata."""
    if key in ("client_secret", "client_secret_hash"):
        raise ClientMetadataError(
            f"{key}: the server makes secrets; rotate one with POST /admin/clients/<id>/secret"
        )
    if key in ALIASES:
        return ALIASES[key]
    if key in FIELDS or key in FLAGS or key in ("client_id", "public", "domain"):
        return key
    return None


def _domain(fields: dict[str, Any]) -> None:
    """getAlby's ``domain``: here one exact redirect URI (no prefix matching)."""
    if "domain" not in fields:
        return
    domain = fields.pop("domain")
    if domain is None:
        return
    if not isinstance(domain, str):
        raise ClientMetadataError("domain: expected a URL", "invalid_redirect_uri")
    if fields.get("redirect_uris") not in (None, [domain]):
        raise ClientMetadataError("domain: give redirect_uris or domain, not both")
    fields["redirect_uris"] = [domain]


def _public(fields: dict[str, Any], current: dict[str, Any]) -> None:
    """getAlby's ``public``: a client without a secret (``token_endpoint_auth_method: none``)."""
    if "public" not in fields:
        return
    public = fields.pop("public")
    if public is None:
        return
    if not isinstance(public, bool):
        raise ClientMetadataError("public: expected true or false")
    method = fields.get("token_endpoint_auth_method") or current.get("token_endpoint_auth_method")
    if method is not None and (method == "none") == public:
        fields.setdefault("token_endpoint_auth_method", method)
    elif "token_endpoint_auth_method" in fields:
        raise ClientMetadataError("public: says otherwise than token_endpoint_auth_method")
    else:
        fields["token_endpoint_auth_method"] = "none" if public else "client_secret_basic"


def complete(fields: dict[str, Any], user_scopes: list[str]) -> dict[str, Any]:
    """Check every field and fill the defaults; return the metadata a record keeps."""
    meta: dict[str, Any] = {}
    for name in ("client_name", *URL_FIELDS):
        if fields.get(name) is not None:
            meta[name] = _text(name, fields[name], url=name in URL_FIELDS)
    for name in ("contacts", "ip_allowlist", "allowed_origins", "redirect_uris"):
        if fields.get(name) is not None:
            meta[name] = _strings(name, fields[name])
    grants = fields.get("grant_types")
    grants = DEFAULT_GRANTS if grants is None else _strings("grant_types", grants)
    bad = [g for g in grants if g not in GRANT_TYPES]
    if bad or not grants:
        raise ClientMetadataError(f"grant_types: each one of {', '.join(GRANT_TYPES)}")
    meta["grant_types"] = list(dict.fromkeys(grants))
    meta["response_types"] = _response_types(fields.get("response_types"), meta["grant_types"])
    meta["token_endpoint_auth_method"] = _method(fields.get("token_endpoint_auth_method"))
    meta["scope"] = _scope(fields.get("scope"), user_scopes)
    if fields.get("rate_limit") is not None:
        meta["rate_limit"] = _text("rate_limit", fields["rate_limit"])
    # Policy, OpenID Connect and quota fields: parse_client checks them as the file's.
    for name in (*POLICY_FIELDS, *OIDC_FIELDS, *QUOTA_FIELDS):
        if fields.get(name) is not None:
            meta[name] = fields[name]
    if meta["response_types"] and not meta.get("redirect_uris"):
        raise ClientMetadataError(
            "redirect_uris: a client of the code or implicit grant needs one",
            "invalid_redirect_uri",
        )
    return meta


def _text(name: str, value: Any, url: bool = False) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise ClientMetadataError(f"{name}: expected a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 or c in BIDI_CONTROLS for c in value):
        raise ClientMetadataError(f"{name}: control characters are not allowed")
    if url and not http_url(value):
        raise ClientMetadataError(f"{name}: expected an http or https URL")
    return value


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClientMetadataError(f"{name}: expected a list of strings")
    if len(value) > 100 or any(len(v) > MAX_TEXT for v in value):
        raise ClientMetadataError(f"{name}: too many or too long")
    return list(value)


def _response_types(value: Any, grants: list[str]) -> list[str]:
    """RFC 7591 §2.1: each response type needs its grant type; none given: all they allow."""
    implied = [rt for rt, grant in RESPONSE_TYPE_GRANTS.items() if grant in grants]
    if value is None:
        return implied
    types = [normal_response_type(t) for t in _strings("response_types", value)]
    if any(t not in implied for t in types):
        raise ClientMetadataError(
            f"response_types: each one of {', '.join(implied) or 'none'} for these grant_types"
        )
    return list(dict.fromkeys(types))  # the registered ones (§2: they limit the client)


def _method(value: Any) -> str:
    if value is None:
        return "client_secret_basic"
    if value not in METHODS:
        raise ClientMetadataError(f"token_endpoint_auth_method: one of {', '.join(METHODS)}")
    return str(value)


def _scope(value: Any, user_scopes: list[str]) -> str:
    """A space-separated list (RFC 7591 §2); the default is every scope of the adapter."""
    if value is None:
        return " ".join(user_scopes)
    if not isinstance(value, str):
        raise ClientMetadataError("scope: expected a space-separated string")
    scopes = list(dict.fromkeys(value.split()))
    unknown = [s for s in scopes if s not in (*user_scopes, ADMIN_SCOPE)]
    if unknown:
        raise ClientMetadataError(f"scope: unknown scope(s) {', '.join(unknown)}")
    return " ".join(scopes)


def internal_host(host: str | None) -> bool:
    """Whether ``host`` names this machine or a non-public network by itself: ``localhost``
    or an IP literal that is not globally routable (loopback, private, link-local...)."""
    host = (host or "").lower().rstrip(".")
    if not host or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return False  # a name: checked again where it resolves, at delivery


def stored_client_problem(meta: dict[str, Any], production: bool) -> str | None:
    """What a client kept in storage (the admin API, ``clients add --store``) may not
    have, beyond what the clients file may: the file is the operator's trusted
    configuration, the ``clients`` table is data written over an API.

    * ``sector_identifier_uri`` (not fetched) must be the host of every redirect URI or a
      parent domain of it: otherwise a client could name another partner's sector and
      receive that partner's pairwise ``sub`` values.
    * In production, ``backchannel_logout_uri`` must not name this machine or a private
      network (the server would POST to it: a request forgery into the operator's net).
    """
    sector_uri = meta.get("sector_identifier_uri")
    if isinstance(sector_uri, str):
        sector = (urlsplit(sector_uri).hostname or "").lower()
        for uri in meta.get("redirect_uris") or []:
            host = (urlsplit(uri).hostname or "").lower() if uri != "*" else ""
            if not sector or not (host == sector or host.endswith("." + sector)):
                return (
                    f"sector_identifier_uri: its host {sector!r} must be the host of each "
                    f"redirect URI or a parent domain of it (not of {uri!r})"
                )
    backchannel = meta.get("backchannel_logout_uri")
    if (
        production
        and isinstance(backchannel, str)
        and internal_host(urlsplit(backchannel).hostname)
    ):
        return (
            f"backchannel_logout_uri: {backchannel!r} names this machine or a private "
            "network; a client of the clients file may, a stored one may not"
        )
    return None


def client_id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not CLIENT_ID.fullmatch(value):
        return "client_id: 1 to 128 of A-Z a-z 0-9 . _ ~ -"
    return None


def file_entry(client_id: str, meta: dict[str, Any], secret_hash: str | None) -> dict[str, Any]:
    """The clients-file entry ``parse_client`` checks and builds the client from."""
    entry: dict[str, Any] = {
        "client_id": client_id,
        "name": meta.get("client_name") or client_id,
        "redirect_uris": meta.get("redirect_uris", []),
        "grant_types": meta["grant_types"],
        "scopes": meta["scope"].split(),
        "public": is_public(meta),
        "ip_allowlist": meta.get("ip_allowlist", []),
    }
    for name in (
        "allowed_origins",  # public clients only, each an origin: parse_client checks
        "rate_limit",
        "response_types",
        "token_endpoint_auth_method",
        *URL_FIELDS,
        *POLICY_FIELDS,
        *OIDC_FIELDS,
        *QUOTA_FIELDS,
    ):
        if name in meta:
            entry[name] = meta[name]
    if secret_hash:
        entry["client_secret_hash"] = secret_hash
    return entry
