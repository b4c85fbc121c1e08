"""Configuration: the original layout, deep-merged, checked once at start by one typed model.

Files are read from ``$OAUTH2_CONFIG_DIR`` (default ``./config``) in this order:
``default.json``, ``$OAUTH2_ENV.json`` (``OAUTH2_ENV`` defaults to ``development``),
``runtime.json``; later files win key by key. Environment variables win over files:
``OAUTH2_SESSION_SECRET`` and ``OAUTH2__<section>__<key>=<JSON or text>``.
Relative paths in the config resolve against the config folder's parent (the project
root for ``config/``), never the working directory.

:class:`Config` (pydantic, strict, unknown keys refused) owns every default, type and range;
:func:`cross_checks` the rules that span keys or depend on the environment. Every problem
is reported at once, one line each, starting with the key it names. This is the only
module that knows Flask's and Authlib's config names.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import secrets
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

from .storage import StorageConfigError, StorageSpec, parse_spec, parse_storage_config

log = logging.getLogger(__name__)

#: The project: relative paths resolve here when no config folder was read (tests).
ROOT = Path(__file__).resolve().parent.parent
#: Environments that need no ``<env>.json`` of their own.
BUILTIN_ENVS = ("development", "production")
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
        # "storage.x.ttl: ..." -> ".ttl: ...": the table's key goes in front (see _problems).
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


class AuthServer(Section):
    url: HttpUrl = "http://127.0.0.1:8081"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8081
    ssl: bool = False
    ssl_cert: str | None = None
    ssl_key: str | None = None
    session_secret: str | None = Field(default=None, repr=False)
    num_workers: Literal["auto"] | Annotated[int, Field(gt=0)] = "auto"
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
    auto_migrate: bool = True
    purge_interval: Seconds = 300


class ResourceServer(BaseModel):
    """The adapter's section: ``type`` here, the rest checked by the adapter itself."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: Annotated[str, StringConstraints(min_length=1)] = "dummy"


class Logging(Section):
    level: Annotated[str, AfterValidator(_log_level)] = "notice"
    short_sid: bool = True


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


class Config(Section):
    """The whole configuration, one section per attribute."""

    auth_server: AuthServer = AuthServer()
    client_credentials: ClientCredentials = ClientCredentials()
    storage: StorageSection = StorageSection()
    resource_server: ResourceServer = ResourceServer()
    logging: Logging = Logging()
    limits: Limits = Limits()
    audit: Audit = Audit()


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
    if env == "production":
        problems += _stand_ins(config)
    return problems


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


def _problems(error: ValidationError) -> list[str]:
    """One ``key: message`` line per pydantic error."""
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"] if not _is_union_tag(part))
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
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_problems(error)) from None
    problems = cross_checks(config, env)
    if problems:
        raise ConfigError(problems)
    return config


# -- reading files and the environment ----------------------------------------------------
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``over`` merged in, key by key, recursively."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if key == "storage" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            # A table's entry is replaced whole: a URL must not inherit a stale ``type``.
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        elif key == "resource_server" and _other_adapter(merged.get(key), value):
            # Another adapter: the dummy's host and port are not its keys.
            merged[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _other_adapter(base: Any, over: Any) -> bool:
    """True when ``over`` names a different ``resource_server.type`` than ``base``."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return False
    return over.get("type", base.get("type")) != base.get("type")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    return data


def config_files(config_dir: str | os.PathLike[str], env: str) -> list[Path]:
    """Return the config files that exist, in merge order.

    A missing folder, or an ``OAUTH2_ENV`` with no file of its own (a typo), is an error:
    running on defaults alone would hide it.
    """
    folder = Path(config_dir)
    if not folder.is_dir():
        raise ConfigError(
            f"config directory {str(folder)!r} not found: pass --config-dir or set "
            "OAUTH2_CONFIG_DIR to the folder holding default.json"
        )
    if env not in BUILTIN_ENVS and not (folder / f"{env}.json").is_file():
        raise ConfigError(
            f"OAUTH2_ENV={env!r}: no {folder / (env + '.json')}; create it, or set "
            f"OAUTH2_ENV to {' or '.join(BUILTIN_ENVS)}"
        )
    names = ["default.json", f"{env}.json", "runtime.json"]
    return [folder / name for name in names if (folder / name).is_file()]


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    over: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("OAUTH2__"):
            continue
        path = [p for p in name[len("OAUTH2__") :].lower().split("__") if p]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = over
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    if environ.get("OAUTH2_SESSION_SECRET"):
        over.setdefault("auth_server", {})["session_secret"] = environ["OAUTH2_SESSION_SECRET"]
    return over


class Settings:
    """The checked configuration, read once at start; sections are typed attributes."""

    def __init__(
        self,
        data: dict[str, Any],
        env: str = "development",
        sources=(),
        config_dir: str | None = None,
    ) -> None:
        self.env = env
        self.sources = list(sources)
        self.config_dir = config_dir
        self.root = Path(config_dir).resolve().parent if config_dir else ROOT
        self.config = config = parse_config(data, env)
        # The sections as typed attributes (the models are frozen, so these never go stale).
        self.auth, self.limits, self.audit = config.auth_server, config.limits, config.audit
        self.storage, self.client_credentials = config.storage, config.client_credentials
        specs = parse_storage_config(self.storage.model_dump(exclude_none=True))
        # One key for the audit trail's lifetime: it is the audit table's TTL everywhere.
        days = self.audit.retention_days
        specs["audit"] = dataclasses.replace(specs["audit"], ttl=days * 86400)
        self.storage_specs = {table: self._local(spec) for table, spec in specs.items()}

    @classmethod
    def load(
        cls,
        overrides: dict[str, Any] | None = None,
        config_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Read files (unless ``overrides`` is given alone, as tests do) and environment."""
        environ = dict(os.environ if environ is None else environ)
        env = environ.get("OAUTH2_ENV", "development")
        data: dict[str, Any] = {}
        sources: list[Path] = []
        folder = None
        if overrides is None or config_dir is not None:
            folder = config_dir or environ.get("OAUTH2_CONFIG_DIR", "config")
            sources = config_files(folder, env)
            for path in sources:
                data = deep_merge(data, _read_json(path))
        if overrides:
            data = deep_merge(data, overrides)
        data = deep_merge(data, _env_overrides(environ))
        return cls(data, env, sources, folder)

    def resolve_path(self, name: str) -> str:
        """A configured path: as given when absolute, else under :attr:`root`."""
        return str(self.root / name)

    def tls_files(self) -> tuple[str, str]:
        """The certificate and key files (set whenever ``ssl`` is on: :func:`cross_checks`)."""
        cert, key = self.auth.ssl_cert, self.auth.ssl_key
        if not (cert and key):
            raise ConfigError("auth_server.ssl_cert/ssl_key: required when auth_server.ssl is true")
        return self.resolve_path(cert), self.resolve_path(key)

    def _local(self, spec: StorageSpec) -> StorageSpec:
        """A SQLite spec with its file resolved, so the working directory never matters."""
        path, sep, query = spec.url.partition("?")
        name = path[len("sqlite:///") :]
        if spec.scheme != "sqlite" or not name or name == ":memory:":
            return spec
        return dataclasses.replace(spec, url=f"sqlite:///{self.resolve_path(name)}{sep}{query}")

    # -- the sections ---------------------------------------------------------------------
    @property
    def resource_server(self) -> dict[str, Any]:
        """The adapter's section as a dict (the adapter checks its own keys)."""
        return self.config.resource_server.model_dump()

    # -- derived values ---------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return self.auth.url.rstrip("/")

    @property
    def log_level(self) -> int:
        return LOG_LEVELS[self.config.logging.level.lower()]

    def ttl(self, table: str) -> int | None:
        return self.storage_specs[table].ttl

    def num_workers(self) -> int:
        workers = self.auth.num_workers
        return (os.cpu_count() or 1) if workers == "auto" else workers

    def flask_config(self) -> dict[str, Any]:
        """Map our keys to Flask's, Flask-WTF's and Authlib's."""
        secret = self.auth.session_secret
        if not secret:
            secret = secrets.token_urlsafe(32)
            log.warning(
                "auth_server.session_secret is not set: using a random one, so sessions "
                "end when the server restarts and workers do not share them. "
                "Set OAUTH2_SESSION_SECRET."
            )
        secure = self.auth.ssl or self.issuer.startswith("https://")
        return {
            "SECRET_KEY": secret,
            "MAX_CONTENT_LENGTH": self.auth.max_body_bytes,
            "MAX_FORM_MEMORY_SIZE": self.auth.max_body_bytes,
            "SESSION_COOKIE_NAME": "oauth2_session",
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": secure,
            "REMEMBER_COOKIE_SECURE": secure,
            "PERMANENT_SESSION_LIFETIME": self.ttl("session"),
            "WTF_CSRF_TIME_LIMIT": None,
            "WTF_CSRF_SSL_STRICT": secure,
        }
