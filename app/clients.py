"""Registered clients: the clients file (original and new format) and redirect matching."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, list_to_scope, scope_to_list
from limits import parse

from .addresses import parse_ip
from .oauth2.client_auth import SECRET_METHODS
from .oidc.scopes import known_scopes
from .secrets_hash import known_scheme, verify_secret, verify_seed_sha1
from .settings import GRANT_TYPES, Settings

if TYPE_CHECKING:
    from .client_store import ClientStore
    from .quotas import QuotaPolicy

#: Client secrets published with the demo data (README, clients.json.example).
DEMO_SECRETS = ("hunter2",)
#: The server's own scope: the admin API (``/admin/``), granted only by client credentials.
ADMIN_SCOPE = "admin"
#: Scopes of this server beside the adapter's: never a client's default, never shown to
#: a user, never in a user's token.
SERVER_SCOPES = (ADMIN_SCOPE,)
LOOPBACK_HOSTS = ("127.0.0.1", "[::1]")
#: ``response_type`` -> the grant type it needs (``id_token``: OpenID Connect implicit).
RESPONSE_TYPE_GRANTS = {
    "code": "authorization_code",
    "token": "implicit",
    "id_token": "implicit",
    "id_token token": "implicit",
}


def normal_response_type(value: str) -> str:
    """``token id_token`` and ``id_token token`` are one response type (OAuth 2.0 Multiple
    Response Types §3: order does not matter): spell it one way."""
    parts = value.split(" ")
    return " ".join(sorted(parts)) if set(parts) == {"id_token", "token"} else value


class ClientFileError(ValueError):
    """The clients file is invalid; the message names the client and field."""


def loopback_uri(uri: str) -> tuple[str, str, str] | None:
    """Return (scheme, host, path?query) for an ``http`` loopback IP URI (RFC 8252 §7.3)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if parts.scheme != "http" or host not in LOOPBACK_HOSTS or "@" in parts.netloc:
        return None
    return parts.scheme, host, f"{parts.path}?{parts.query}"


def http_url(value: str) -> bool:
    """An absolute http(s) URL with a host and a valid port, and no credentials in it."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc


def valid_redirect_uri(uri: str) -> bool:
    """Absolute http(s) URI without a fragment (RFC 6749 §3.1.2)."""
    return http_url(uri) and "#" not in uri and not _SPACE_OR_CONTROL.search(uri)


#: The control characters, as a regex class's body: C0 (below U+0020), DEL, C1.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
#: Whitespace (``str.isspace``) or a control character anywhere.
_SPACE_OR_CONTROL = re.compile(rf"[\s{CONTROL_CHARACTERS}]")


@dataclass
class Client(ClientMixin):
    """One registered partner site."""

    client_id: str
    name: str
    redirect_uris: list[str]
    grant_types: list[str]
    scopes: list[str]
    public: bool = False
    secret_hash: str | None = None
    seed_secret: tuple[str, str] | None = None  # (hex sha1, salt) of the original format
    ip_allowlist: list[str] = field(default_factory=list)
    allow_wildcard: bool = False
    #: Browser origins (``scheme://host[:port]``) of a public client's pages, answered
    #: CORS at ``/token`` and ``/revoke``.
    allowed_origins: list[str] = field(default_factory=list)
    rate_limit: str | None = None  # its own cap on authenticated /token traffic
    # -- OpenID Connect (RFC 7591 / OIDC Registration names) ----------------------
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    #: ``client_secret_basic``, ``client_secret_post`` or ``none``; None: any it may use.
    token_endpoint_auth_method: str | None = None
    id_token_signed_response_alg: str | None = None  # None: ``oidc.default_alg``
    subject_type: str = "public"  # or "pairwise"
    #: The pairwise sector: the host of ``sector_identifier_uri`` (None: the redirect host).
    sector_identifier: str | None = None
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = False
    #: A first-party client: the user is never asked to consent.
    skip_consent: bool = False
    #: Users signing in to this client must use a second factor (README "Two-step sign-in").
    require_two_factor: bool = False
    #: RFC 9449 §5.2: every token request of this client must carry a DPoP proof.
    dpop_bound_access_tokens: bool = False
    #: The registered ``response_types`` (None: every one its grant types allow).
    response_types: list[str] | None = None
    #: Its quotas of ``/api`` calls (:mod:`app.quotas`); None: none.
    quotas: QuotaPolicy | None = None
    # -- policy and links (app.client_policy) ---------------------------------------
    #: The ``/api`` functions it may call (None: any its token's scopes allow).
    api_allowlist: list[str] | None = None
    access_token_lifetime: int | None = None  # None: the server's
    refresh_token_lifetime: int | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    policy_uri: str | None = None
    tos_uri: str | None = None

    # -- Authlib's ClientMixin --------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        fixed = [uri for uri in self.redirect_uris if uri != "*"]
        return fixed[0] if len(fixed) == 1 and len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None, server_scopes: bool = False) -> str | None:
        """No scope asks for the default; any scope outside the client's is refused.

        The server's scopes (``admin``) only with ``server_scopes`` (client credentials),
        and never as the default.
        """
        allowed = self.scopes if server_scopes else self.user_scopes()
        if not scope:
            defaults = self.user_scopes()
            return defaults[0] if defaults else ""
        requested = scope_to_list(scope)
        if any(s not in allowed for s in requested):
            return None
        return list_to_scope(list(dict.fromkeys(requested)))

    def user_scopes(self) -> list[str]:
        """The client's scopes a user may grant: the adapter's, not the server's."""
        return [s for s in self.scopes if s not in SERVER_SCOPES]

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if not valid_redirect_uri(redirect_uri):
            return False
        if redirect_uri in self.redirect_uris:
            return True
        if self.allow_wildcard and "*" in self.redirect_uris:
            return True
        loop = loopback_uri(redirect_uri)
        return loop is not None and any(loopback_uri(u) == loop for u in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash:
            return verify_secret(self.secret_hash, client_secret)
        if self.seed_secret:
            digest, salt = self.seed_secret
            return verify_seed_sha1(digest, self.client_id, client_secret, salt)
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """A client uses the method it registered (RFC 7591 §2), else any of its kind."""
        if self.token_endpoint_auth_method:
            return method == self.token_endpoint_auth_method
        if self.public:
            return method == "none"
        return method in SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        response_type = normal_response_type(response_type)
        if self.response_types is not None and response_type not in self.response_types:
            return False
        return RESPONSE_TYPE_GRANTS.get(response_type) in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def check_ip(self, address: str | None) -> bool:
        """True when the client has no IP allowlist or ``address`` is in it."""
        if not self.ip_allowlist:
            return True
        ip = parse_ip(address)
        if ip is None:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.ip_allowlist)

    def allows_origin(self, origin: str | None) -> bool:
        """True when ``origin`` is one of this public client's registered origins."""
        return self.public and origin in self.allowed_origins

    def uses_demo_secret(self) -> bool:
        """True when the secret is one published with the demo data."""
        return any(self.check_client_secret(secret) for secret in DEMO_SECRETS)

    def to_public_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "name": self.name}


def _grant_types(entry: dict[str, Any], where: str) -> list[str]:
    if "grant_types" in entry:
        grants = entry["grant_types"]
        if not isinstance(grants, list) or any(g not in GRANT_TYPES for g in grants):
            raise ClientFileError(f"{where}.grant_types: each must be one of {GRANT_TYPES}")
        return list(grants)
    grants = []
    if entry.get("allow_code_grant"):
        grants += ["authorization_code", "refresh_token"]
    if entry.get("allow_implicit_grant"):
        grants.append("implicit")
    if entry.get("allow_client_credentials"):
        grants.append("client_credentials")
    return grants


def _rate_limit(entry: dict[str, Any], where: str) -> str | None:
    """The client's own ``rate_limit`` (``"100000/minute"``), checked like ``limits.*``."""
    rate = entry.get("rate_limit")
    if rate is None:
        return None
    try:
        parse(rate)
    except (ValueError, TypeError) as exc:
        raise ClientFileError(f"{where}.rate_limit: {rate!r} is not a rate like 60/minute") from exc
    return str(rate)


def _secret(entry: dict[str, Any], where: str, public: bool) -> dict[str, Any]:
    if public:
        if entry.get("client_secret") or entry.get("client_secret_hash"):
            raise ClientFileError(f"{where}: a public client must not have a secret")
        return {}
    stored = entry.get("client_secret_hash")
    if stored:
        if not known_scheme(stored):
            raise ClientFileError(f"{where}.client_secret_hash: unknown hash scheme")
        return {"secret_hash": stored}
    if entry.get("client_secret") and entry.get("client_salt") is not None:
        return {"seed_secret": (str(entry["client_secret"]), str(entry["client_salt"]))}
    raise ClientFileError(
        f"{where}: needs client_secret_hash (or the original client_secret + client_salt), "
        'or "public": true'
    )


def _plain_http(uri: str) -> bool:
    return uri != "*" and not uri.startswith("https://") and loopback_uri(uri) is None


def _plain_http_problem(where: str, uri: str) -> str:
    return f"{where}: redirect URI {uri!r} must use https outside loopback in production"


def _ip_allowlist(entry: dict[str, Any], where: str) -> list[str]:
    """Each entry an IP network (``10.0.0.0/8``, ``2001:db8::/32``) or a single address."""
    networks = entry.get("ip_allowlist", [])
    if not isinstance(networks, list):
        raise ClientFileError(f"{where}.ip_allowlist: expected a list of networks")
    for network in networks:
        if not isinstance(network, str) or not _is_network(network):
            raise ClientFileError(
                f"{where}.ip_allowlist: {network!r} is not an IP network such as 192.0.2.0/24"
            )
    return list(networks)


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _origin(value: Any) -> str | None:
    """``value`` as browsers send it in ``Origin`` (RFC 6454), or None if it is not one."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except (TypeError, ValueError, AttributeError):
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")
    return origin if value == origin else None


def _allowed_origins(entry: dict[str, Any], where: str, public: bool) -> list[str]:
    origins = entry.get("allowed_origins", [])
    if not isinstance(origins, list):
        raise ClientFileError(f"{where}.allowed_origins: expected a list of origins")
    if origins and not public:
        raise ClientFileError(
            f"{where}.allowed_origins: only a public client may list origins "
            "(a confidential client's secret must never be in a browser)"
        )
    for origin in origins:
        if _origin(origin) is None:
            raise ClientFileError(
                f"{where}.allowed_origins: {origin!r} is not an origin such as "
                "https://app.example.com (lower case, no path, no default port)"
            )
    return list(origins)


def _scopes(entry: dict[str, Any], where: str, all_scopes: list[str]) -> list[str]:
    """The client's ``scopes``: each known (the adapter's or OpenID Connect's); all by default."""
    known = known_scopes(all_scopes)
    # The server's own scopes (``admin``) are never a default: a client lists them.
    scopes = entry.get("scopes", [s for s in known if s not in SERVER_SCOPES])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ClientFileError(f"{where}.scopes: expected a list of scope names")
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise ClientFileError(f"{where}.scopes: unknown scope(s) {', '.join(unknown)}")
    return list(scopes)


def _name(entry: dict[str, Any], where: str, client_id: str) -> str:
    """``name`` or its RFC 7591 spelling ``client_name``."""
    name = entry.get("name", entry.get("client_name"))
    if name is not None and not isinstance(name, str):
        raise ClientFileError(f"{where}.client_name: expected a string")
    return name or client_id


def _quotas(entry: dict[str, Any], where: str) -> QuotaPolicy | None:
    from .quotas import QuotaError, parse_policy

    try:
        return parse_policy(entry)
    except QuotaError as exc:
        raise ClientFileError(f"{where}.{exc}") from None


def parse_client(
    entry: dict[str, Any],
    index: int,
    all_scopes: list[str],
    allow_wildcard: bool,
    require_https: bool = False,
) -> Client:
    """Build one client from a clients-file entry, naming the entry in every error.

    ``all_scopes`` are the adapter's; the OpenID Connect scopes are known beside them.
    """
    from .client_policy import PolicyError, policy_fields
    from .oidc.registration import oidc_fields

    if not isinstance(entry, dict) or not entry.get("client_id"):
        raise ClientFileError(f"clients[{index}]: missing client_id")
    client_id = str(entry["client_id"])
    where = f"client {client_id!r}"
    redirects = entry.get("redirect_uris", entry.get("valid_redirects", []))
    if not isinstance(redirects, list):
        raise ClientFileError(f"{where}.redirect_uris: expected a list")
    for uri in redirects:
        if uri == "*":
            if not allow_wildcard:
                raise ClientFileError(
                    f'{where}: the redirect URI "*" lets anyone receive this client\'s codes; '
                    "list exact URIs or set client_credentials.allow_wildcard_redirects"
                )
        elif not isinstance(uri, str) or not valid_redirect_uri(uri):
            raise ClientFileError(f"{where}: invalid redirect URI {uri!r}")
        elif require_https and _plain_http(uri):
            raise ClientFileError(_plain_http_problem(where, uri))
    scopes = _scopes(entry, where, all_scopes)
    public = bool(entry.get("public", entry.get("token_endpoint_auth_method") == "none"))
    grants = _grant_types(entry, where)
    if public and "client_credentials" in grants:
        raise ClientFileError(f"{where}: a public client cannot use client_credentials")
    oidc = oidc_fields(
        entry,
        where,
        grants=grants,
        public=public,
        redirects=list(redirects),
        require_https=require_https,
    )
    try:
        policy = policy_fields(entry)
    except PolicyError as exc:
        raise ClientFileError(f"{where}.{exc}") from None
    return Client(
        client_id=client_id,
        name=_name(entry, where, client_id),
        redirect_uris=list(redirects),
        grant_types=grants,
        scopes=scopes,
        public=public,
        ip_allowlist=_ip_allowlist(entry, where),
        allow_wildcard=allow_wildcard,
        allowed_origins=_allowed_origins(entry, where, public),
        rate_limit=_rate_limit(entry, where),
        quotas=_quotas(entry, where),
        **_secret(entry, where, public),
        **oidc,
        **policy,
    )


def load_clients_file(
    path: str | os.PathLike[str],
    all_scopes: list[str],
    allow_wildcard: bool = False,
    production: bool = False,
) -> dict[str, Client]:
    """Read and validate the clients file; raise :class:`ClientFileError` naming every
    problem at once. Production also demands https redirect URIs and no demo secrets."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ClientFileError(f"client_credentials.file: {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ClientFileError(f"client_credentials.file: {path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ClientFileError(f"client_credentials.file: {path} must hold a JSON list")
    clients: dict[str, Client] = {}
    problems: list[str] = []
    for index, entry in enumerate(entries):
        try:
            client = parse_client(entry, index, [*all_scopes, *SERVER_SCOPES], allow_wildcard)
        except ClientFileError as exc:
            problems.append(str(exc))
            continue
        problems += _refusals(client, clients, production)
        clients[client.client_id] = client
    if problems:
        raise ClientFileError("\n".join(problems))
    return clients


def _refusals(client: Client, seen: dict[str, Client], production: bool) -> list[str]:
    where = f"client {client.client_id!r}"
    if client.client_id in seen:
        return [f"{where}: listed twice"]
    problems = [p for p in (admin_scope_problem(client), front_channel_dpop_problem(client)) if p]
    if not production:
        return problems
    problems += [_plain_http_problem(where, u) for u in client.redirect_uris if _plain_http(u)]
    logout_uris = [*client.post_logout_redirect_uris, client.backchannel_logout_uri or "*"]
    problems += [
        f"{where}: logout URI {uri!r} must use https outside loopback in production"
        for uri in logout_uris
        if _plain_http(uri)
    ]
    if client.uses_demo_secret():
        problems.append(
            f"{where}: its secret is a published demo secret; production needs a secret "
            "of its own (a new client_secret_hash, or `oauth2-server clients add`)"
        )
    return problems


def admin_scope_problem(client: Client) -> str | None:
    """Why ``client`` may not hold the ``admin`` scope, or None: only a confidential
    client of the client-credentials grant alone may (a user's token never carries it)."""
    if ADMIN_SCOPE not in client.scopes:
        return None
    if client.public or client.grant_types != ["client_credentials"]:
        return (
            f"client {client.client_id!r}.scopes: {ADMIN_SCOPE!r} is for a confidential "
            'client whose only grant is "client_credentials"'
        )
    return None


def front_channel_dpop_problem(client: Client) -> str | None:
    """Why ``client`` may not ask for DPoP-bound access tokens, or None: RFC 9449 §5.2
    binds every access token it gets, and one the implicit grant hands over in the front
    channel (``response_type`` with ``token``) is bound to no key. The authorization
    endpoint refuses such a request anyway; this refuses the client when it is made."""
    if not client.dpop_bound_access_tokens:
        return None
    kinds = client.response_types
    if kinds is None:  # none registered: every one its grants allow
        kinds = ["token"] if "implicit" in client.grant_types else []
    if any("token" in kind.split() for kind in kinds):
        return (
            f"client {client.client_id!r}.dpop_bound_access_tokens: a client that gets "
            "access tokens from the authorization endpoint (the implicit grant) cannot "
            "have them bound; drop 'implicit' (and each response type with 'token') or "
            "this flag"
        )
    return None


class ClientRegistry:
    """The clients of the file, read once (``serve`` builds a new one on ``SIGHUP``),
    then those of the ``clients`` table (:mod:`app.client_store`), read on every lookup
    so that a change made on any instance counts on the next request."""

    #: The clients made through the admin API or the CLI (``with_store``); None: file only.
    store: ClientStore | None = None

    def __init__(
        self,
        path: str,
        all_scopes: list[str],
        allow_wildcard: bool = False,
        production: bool = False,
    ) -> None:
        self.path = path
        taken = [s for s in all_scopes if s in SERVER_SCOPES]
        if taken:
            raise ClientFileError(f"the adapter's scope {taken[0]!r} is this server's own scope")
        self._clients = load_clients_file(path, all_scopes, allow_wildcard, production)
        self._origins = {o for c in self._clients.values() if c.public for o in c.allowed_origins}

    @classmethod
    def from_settings(cls, settings: Settings, all_scopes: list[str]) -> ClientRegistry:
        """The configured clients file, held to production's rules there."""
        cc = settings.client_credentials
        return cls(
            settings.resolve_path(cc.file),
            all_scopes,
            allow_wildcard=cc.allow_wildcard_redirects,
            production=settings.env == "production",
        )

    def with_store(self, store: ClientStore) -> ClientRegistry:
        """This registry's file clients, then ``store``'s (one app's view)."""
        registry = copy.copy(self)
        registry.store = store
        return registry

    def get(self, client_id: str | None) -> Client | None:
        """The client ``client_id`` if it may act now: a file client, else a stored one
        that is not disabled. A file client costs no storage read."""
        if not client_id:
            return None
        found = self._clients.get(client_id)
        if found is not None or self.store is None:
            return found
        return self.store.active(client_id)

    def file_client(self, client_id: str) -> Client | None:
        """The clients file's ``client_id``, or None."""
        return self._clients.get(client_id)

    def public_origin(self, origin: str | None) -> bool:
        """True when ``origin`` is registered by any public client (of the file)."""
        return origin in self._origins

    def all(self) -> list[Client]:
        """The file's clients."""
        return list(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)


def append_client(path: str | os.PathLike[str], entry: dict[str, Any]) -> None:
    """Add one entry to the clients file atomically (write a temp file, then rename)."""
    target = Path(path)
    entries = json.loads(target.read_text(encoding="utf-8")) if target.exists() else []
    if any(e.get("client_id") == entry["client_id"] for e in entries):
        raise ClientFileError(f"client {entry['client_id']!r}: already in {path}")
    entries.append(entry)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=".clients-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(entries, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, target)
