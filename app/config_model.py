"""The configuration's model: every default, type and range, and the rules across keys.

:class:`Config` (pydantic, strict, unknown keys refused) owns each section's keys;
:func:`cross_checks` the rules that span keys or depend on the environment. Every
problem is reported at once, one line each, starting with the key it names.
``app.settings`` reads the files and the environment into it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from .storage import StorageConfigError, option_problems, parse_spec

#: The demo clients file shipped for ``make run``; its secrets are published.
DEMO_CLIENTS_FILE = "clients.json.example"
#: The bundled stand-in site's adapter, under both of its names.
DUMMY_ADAPTERS = ("dummy", "app.adapters.dummy:DummyAdapter")

#: The original's syslog-style levels mapped onto Python's.
LOG_LEVELS = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "notice": 25,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
logging.addLevelName(25, "NOTICE")

#: The original server's published session secret and ours: never acceptable in production.
KNOWN_DEV_SECRETS = {
    "$4$eRDyE/eQ$/F/mHVBpobUbTB7VcaFQ5GfaCNg$",
    "development-only-secret-change-me",  # config/development.json
}

#: The HTTP servers ``oauth2-server serve`` can run (``auth_server.server``).
SERVERS = ("gunicorn", "granian")
#: Every grant this server can offer (``auth_server.grant_types``).
GrantType = Literal["authorization_code", "implicit", "refresh_token", "client_credentials"]
GRANT_TYPES: tuple[GrantType, ...] = get_args(GrantType)


class ConfigError(ValueError):
    """The configuration is invalid; one line per problem, each starting with its key."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# -- value checks (each raises ValueError with a message for the operator) ---------------
def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown level {value!r} (one of {', '.join(LOG_LEVELS)})")
    return value


def _rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate like 60/minute") from None
    return value


def _storage_entry(value: Any) -> Any:
    try:
        parse_spec("x", value)
    except StorageConfigError as exc:
        # "storage.x.ttl: ..." -> ".ttl: ...": the table's key goes in front (see problem_lines).
        raise ValueError(str(exc).removeprefix("storage.x").removeprefix(": ")) from None
    return value


TemplateName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Rate = Annotated[str, AfterValidator(_rate)]
Seconds = Annotated[int, Field(ge=0)]
StorageEntry = Annotated[str | dict[str, Any], AfterValidator(_storage_entry)]


class Section(BaseModel):
    """A config section: strict types (no ``"no"`` read as true), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Views(Section):
    """Template names under ``templates/`` (the original's ``auth_server.views``)."""

    layout: TemplateName = "layout"
    login: TemplateName = "login"
    dialog: TemplateName = "dialog"
    review: TemplateName = "review"
    error: TemplateName = "error"
    #: The sign-out confirmation (OpenID Connect logout), and the page after it.
    logout: TemplateName = "logout"
    signed_out: TemplateName = "signed_out"


class AuthServer(Section):
    url: HttpUrl = "http://127.0.0.1:8081"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8081
    ssl: bool = False
    ssl_cert: str | None = None
    ssl_key: str | None = None
    session_secret: str | None = Field(default=None, repr=False)
    num_workers: Literal["auto"] | Annotated[int, Field(gt=0)] = "auto"
    #: Request threads per worker: a thread waits on storage and, for ``/api``, the site.
    threads: Annotated[int, Field(ge=1, le=256)] = 4
    server: Literal["gunicorn", "granian"] = "granian"
    site_name: str = "Stuff Nation"
    views: Views = Views()
    max_body_bytes: Annotated[int, Field(ge=1024)] = 65536
    transaction_ttl: Annotated[int, Field(gt=0)] = 600
    #: A signed-in session ends this long after sign-in, however active.
    session_max_age: Annotated[int, Field(ge=60)] = 43200
    require_pkce: bool = False
    allow_plain_pkce: bool = False
    trusted_proxies: Seconds = 0
    grant_types: list[GrantType] = list(GRANT_TYPES)
    #: Seconds in which the owner repeating a just-rotated refresh is not treated as a thief.
    refresh_grace_period: Annotated[int, Field(ge=0, le=300)] = 10
    #: Seconds after consent after which no refresh token of the grant works (0: no limit).
    refresh_absolute_lifetime: Seconds = 7776000


class ClientCredentials(Section):
    file: str = "./clients.json.example"
    allow_wildcard_redirects: bool = False


class StorageSection(Section):
    """Per-table backends; tables without an entry use ``default``."""

    default: StorageEntry = "sqlite:///var/oauth2.db"
    session: StorageEntry | None = None
    codes: StorageEntry | None = None
    tokens: StorageEntry | None = None
    refresh_tokens: StorageEntry | None = None
    users: StorageEntry | None = None
    audit: StorageEntry | None = None
    clients: StorageEntry | None = None
    keys: StorageEntry | None = None
    consents: StorageEntry | None = None
    factors: StorageEntry | None = None
    auto_migrate: bool = True
    purge_interval: Seconds = 300


class ResourceServer(BaseModel):
    """The adapter's section: ``type`` here, the rest checked by the adapter itself."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: Annotated[str, StringConstraints(min_length=1)] = "dummy"


class Logging(Section):
    level: Annotated[str, AfterValidator(_log_level)] = "notice"
    short_sid: bool = True
    #: ``text`` (ISO timestamp, level, logger, message) or ``json`` (one object a line).
    format: Literal["text", "json"] = "text"
    #: One line per request (logger ``oauth2.request``, at NOTICE).
    requests: bool = True
    #: Seconds request lines may be held to be written together (0: each as it ends).
    requests_held: Annotated[float, Field(ge=0, le=1)] = 0.25
    #: The lines of ``/healthz`` and ``/readyz`` probes that passed (false: failed ones only).
    probe_lines: bool = True


class Limits(Section):
    enabled: bool = True
    storage: str | None = None
    token: Rate = "60000/minute"  # noqa: S105 - a rate, not a secret
    token_ip: Rate = "1200/minute"  # noqa: S105
    login_ip: Rate = "60/minute"
    login_user: Rate = "30/minute"
    api: Rate = "6000/minute"
    api_ip: Rate = "120/minute"
    lockout_after: Annotated[int, Field(ge=1)] = 5
    lockout_base: Annotated[float, Field(gt=1)] = 2
    lockout_max: Annotated[int, Field(ge=1)] = 900
    client_lockout_after: Annotated[int, Field(ge=1)] = 20
    client_lockout_max: Annotated[int, Field(ge=1)] = 60


class Audit(Section):
    #: Days audit records are kept; 0 keeps them forever. It is the audit table's TTL.
    retention_days: Seconds = 90


class OIDC(Section):
    """OpenID Connect: ID Tokens, signing keys, remembered consent, logout."""

    #: Lifetime of an ID Token (and how long a retired signing key stays published after
    #: its last use, plus ``jwks_max_age``).
    id_token_ttl: Annotated[int, Field(gt=0, le=86400)] = 3600
    #: The ID Token signing algorithm for clients that name none
    #: (``id_token_signed_response_alg``).
    default_alg: Literal["RS256", "ES256"] = "RS256"
    #: How long relying parties and caches may keep the JWKS (``Cache-Control: max-age``);
    #: ``keys rotate`` waits at least this long between publishing a key and signing with it.
    jwks_max_age: Annotated[int, Field(ge=0, le=86400)] = 600
    #: Seconds a user's consent to a client is remembered (0: until revoked at /review).
    consent_lifetime: Seconds = 0
    #: Back-channel logout delivery: seconds per attempt, and attempts after the first.
    backchannel_timeout: Annotated[int, Field(gt=0, le=60)] = 5
    backchannel_retries: Annotated[int, Field(ge=0, le=10)] = 3
    #: The secret the signing keys' private halves are encrypted with in storage
    #: (``OAUTH2_KEYS_SECRET``); unset: ``auth_server.session_secret`` when that is set,
    #: else (development) the keys are stored unencrypted. Changing it needs
    #: ``oauth2-server keys reset`` (README "Signing keys and rotation").
    keys_secret: str | None = Field(default=None, repr=False)


def _listen(value: str | None) -> str | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('expected "host:port", such as "127.0.0.1:9091"')
    return value


def listen_address(value: str) -> tuple[str, str]:
    """``(host, port)`` of ``admin.listen`` as the WSGI environ names them."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), port


class Admin(Section):
    """The admin API for clients (``/admin/``) and ``oauth2-server clients``."""

    #: Seconds a client's previous secret keeps working after a rotation (0: none).
    secret_overlap: Annotated[int, Field(ge=0, le=2592000)] = 86400
    #: ``host:port`` of a second, internal listener: ``/admin/`` answers only there
    #: (404 on the public address). gunicorn only (granian serves one address).
    listen: Annotated[str | None, AfterValidator(_listen)] = None


def _secret_hash(value: str | None) -> str | None:
    from .secrets_hash import known_scheme

    if value is not None and not known_scheme(value):
        raise ValueError("expected a hash like sha256$<hex> (see README 'Dynamic registration')")
    return value


class Registration(Section):
    """Dynamic client registration (RFC 7591) and its management (RFC 7592): off by default."""

    enabled: bool = False
    #: The hash (``sha256$<hex>``) of an initial access token the operator hands out;
    #: the admin API issues single-use ones too (``POST /admin/registration-tokens``).
    initial_access_token_hash: Annotated[str | None, AfterValidator(_secret_hash)] = Field(
        default=None, repr=False
    )
    #: Default lifetime of an initial access token the admin API issues.
    initial_token_ttl: Annotated[int, Field(ge=60, le=2592000)] = 86400


class TwoFactor(Section):
    """Two-step sign-in (TOTP): README "Two-step sign-in"."""

    #: Every user must enrol a second factor before any sign-in completes a flow.
    required: bool = False


#: The asymmetric algorithms a DPoP proof may use (RFC 9449 §4.2); never ``none`` nor an HMAC.
DPoPAlg = Literal["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "EdDSA", "Ed25519"]


class DPoP(Section):
    """Sender-constrained tokens (RFC 9449): README "Sender-constrained tokens"."""

    #: Accept DPoP proofs at ``/token``, ``/api`` and UserInfo (off: tokens are Bearer only).
    enabled: bool = True
    #: Every token request must carry a proof (per client: ``dpop_bound_access_tokens``).
    required: bool = False
    #: The proof signing algorithms accepted (asymmetric only).
    algorithms: Annotated[list[DPoPAlg], Field(min_length=1)] = [
        "ES256",
        "EdDSA",
        "Ed25519",
        "PS256",
        "RS256",
    ]
    #: Seconds a proof's ``iat`` may be from the server's clock, either way.
    iat_window: Annotated[int, Field(gt=0, le=3600)] = 300
    #: Server nonces (``DPoP-Nonce``, ``use_dpop_nonce``): stateless, derived from
    #: ``auth_server.session_secret``, so every instance accepts every other's.
    nonce: bool = False
    #: Seconds each nonce is handed out for; it is accepted for about three times as long.
    nonce_step: Annotated[int, Field(ge=10, le=3600)] = 60


class Metrics(Section):
    """Prometheus ``/metrics``: off by default; when on, behind a token or ``admin.listen``."""

    enabled: bool = False
    #: The hash (``sha256$<hex>``, ``oauth2-server hash-secret``-style) of the bearer token
    #: the scraper sends; unset, ``/metrics`` answers only on ``admin.listen``.
    token_hash: Annotated[str | None, AfterValidator(_secret_hash)] = Field(
        default=None, repr=False
    )
    #: Clients whose tokens each get a ``client_id`` label (the first seen by each
    #: process); the tokens of further clients are counted under ``<other>``.
    max_client_labels: Annotated[int, Field(ge=0, le=100000)] = 1000


class TokenCacheSection(Section):
    """The per-process access-token cache (``app.oauth2.token_cache``): README "Operating it".

    On by default where the ``tokens`` table is on Redis or Postgres (SQLite has no
    channel between processes: never). Every revocation then answers
    ``max_staleness_ms`` later, and each process holds one more connection. Every
    instance must have the same setting.
    """

    enabled: bool = True
    #: How long a process may serve cached records without proof it heard every
    #: revocation, and how long each revocation waits before it answers.
    max_staleness_ms: Annotated[int, Field(ge=5, le=1000)] = 50
    max_entries: Annotated[int, Field(gt=0, le=1000000)] = 10000
    #: Seconds an entry lives at most (never beyond its token's expiry).
    max_age: Annotated[int, Field(gt=0, le=3600)] = 60


class Config(Section):
    """The whole configuration, one section per attribute."""

    auth_server: AuthServer = AuthServer()
    client_credentials: ClientCredentials = ClientCredentials()
    storage: StorageSection = StorageSection()
    resource_server: ResourceServer = ResourceServer()
    logging: Logging = Logging()
    limits: Limits = Limits()
    audit: Audit = Audit()
    oidc: OIDC = OIDC()
    admin: Admin = Admin()
    registration: Registration = Registration()
    two_factor: TwoFactor = TwoFactor()
    metrics: Metrics = Metrics()
    dpop: DPoP = DPoP()
    token_cache: TokenCacheSection = TokenCacheSection()


def defaults_document() -> dict[str, Any]:
    """Every default as JSON: ``config/default.json`` is this (``oauth2-server defaults``)."""
    document = Config().model_dump(mode="json")
    # Tables without an entry use ``default``: leave them out rather than list nulls.
    document["storage"] = {k: v for k, v in document["storage"].items() if v is not None}
    return document


#: The shipped defaults, as a plain dict (for tests and tools).
DEFAULTS: dict[str, Any] = defaults_document()


def cross_checks(config: Config, env: str) -> list[str]:
    """Rules that span keys or depend on the environment; one problem per line."""
    auth, problems = config.auth_server, []
    if auth.ssl and not (auth.ssl_cert and auth.ssl_key):
        problems.append("auth_server.ssl_cert/ssl_key: required when auth_server.ssl is true")
    audit_entry = config.storage.audit
    if isinstance(audit_entry, dict) and audit_entry.get("ttl") is not None:
        problems.append("storage.audit.ttl: set audit.retention_days instead")
    if config.admin.listen and auth.server != "gunicorn":
        problems.append(
            'admin.listen: needs auth_server.server "gunicorn" (granian serves one address)'
        )
    if config.metrics.enabled and not (config.metrics.token_hash or config.admin.listen):
        problems.append("metrics.enabled: needs metrics.token_hash or admin.listen (never public)")
    if config.admin.listen and config.admin.listen == f"{auth.host}:{auth.port}":
        problems.append("admin.listen: must differ from auth_server.host:port")
    if env == "production":
        problems += _stand_ins(config)
    return problems


def adapter_problems(data: Mapping[str, Any]) -> list[str]:
    """What the adapter ``resource_server.type`` names finds wrong with its section."""
    from .adapters import adapter_class

    section = data.get("resource_server", {})
    kind = section.get("type", "dummy") if isinstance(section, dict) else None
    if not kind or not isinstance(kind, str):
        return []  # the model names what is wrong with the section itself
    section = {"type": ResourceServer().type, **section}
    try:
        adapter_class(section["type"]).check_config(section)
    except ConfigError as error:
        return error.problems
    except ValueError as error:  # the type itself: not importable, not an adapter
        return [str(error)]
    return []


def _stand_ins(config: Config) -> list[str]:
    """Production refuses development stand-ins, naming every one and its fix."""
    auth, problems = config.auth_server, []
    if not auth.url.startswith("https://"):
        problems.append("auth_server.url: production serves over https (behind TLS or a proxy)")
    secret = auth.session_secret
    if not secret or secret in KNOWN_DEV_SECRETS or len(secret) < 16:
        problems.append(
            "auth_server.session_secret: production needs a strong secret of your own "
            "(set OAUTH2_SESSION_SECRET)"
        )
    keys_secret = config.oidc.keys_secret
    if keys_secret is not None and (keys_secret in KNOWN_DEV_SECRETS or len(keys_secret) < 16):
        problems.append(
            "oidc.keys_secret: production needs a strong secret of your own, or none "
            "(the session secret is used; set OAUTH2_KEYS_SECRET)"
        )
    if config.resource_server.type in DUMMY_ADAPTERS:
        problems.append(
            'resource_server.type: "dummy" is the bundled stand-in site; production talks '
            'to your site ("http" with its base_url, or "package.module:Class")'
        )
    if Path(config.client_credentials.file).name == DEMO_CLIENTS_FILE:
        problems.append(
            f"client_credentials.file: {DEMO_CLIENTS_FILE} holds the demo clients, whose "
            "secrets are published; point it at your own clients.json"
        )
    return problems


def problem_lines(error: ValidationError, root: str = "") -> list[str]:
    """One ``key: message`` line per pydantic error; ``root`` names the section checked."""
    lines = []
    for item in error.errors(include_url=False):
        parts = [root] if root else []
        parts += [str(part) for part in item["loc"] if not _is_union_tag(part)]
        where = ".".join(parts)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key" if "." in where else "unknown config section"
        if message.startswith("."):  # a sub-key named by the check itself
            lines.append(f"{where}{message}")
        else:
            lines.append(f"{where}: {message}" if where else message)
    return list(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    # pydantic names the branch of a union it tried (``int``, ``literal['auto']``...).
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def parse_config(data: Mapping[str, Any], env: str) -> Config:
    """Validate merged config data; raise :class:`ConfigError` listing every problem."""
    # The adapter's and the backends' own keys are checked even when ours are not right.
    storage = data.get("storage")
    problems = adapter_problems(data)
    problems += option_problems(storage) if isinstance(storage, dict) else []
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems = problem_lines(error) + problems
    if config is not None:
        problems += cross_checks(config, env)
    if problems or config is None:
        raise ConfigError(problems)
    return config
