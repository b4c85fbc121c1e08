"""Configuration: the original layout, deep-merged, validated once at start.

Files are read from ``$OAUTH2_CONFIG_DIR`` (default ``./config``) in this order:
``default.json``, ``$OAUTH2_ENV.json`` (``OAUTH2_ENV`` defaults to ``development``),
``runtime.json``; later files win key by key. Environment variables win over files:
``OAUTH2_SESSION_SECRET`` and ``OAUTH2__<section>__<key>=<JSON or text>``.
Relative paths in the config resolve against the config folder's parent (the project
root for ``config/``), never the working directory.
This is the only module that knows Flask's and Authlib's config names.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from .clients import GRANT_TYPES
from .storage import StorageConfigError, StorageSpec, parse_storage_config

log = logging.getLogger(__name__)

#: The project: relative paths resolve here when no config folder was read (tests).
ROOT = Path(__file__).resolve().parent.parent

#: Environments that need no ``<env>.json`` of their own.
BUILTIN_ENVS = ("development", "production")

#: The shipped defaults; ``config/default.json`` restates them for operators.
DEFAULTS: dict[str, Any] = {
    "auth_server": {
        "url": "http://127.0.0.1:8081",
        "host": "127.0.0.1",
        "port": 8081,
        "ssl": False,
        "ssl_cert": None,
        "ssl_key": None,
        "session_secret": None,
        "num_workers": "auto",
        "server": "gunicorn",
        "site_name": "Stuff Nation",
        "views": {
            "layout": "layout",
            "login": "login",
            "dialog": "dialog",
            "review": "review",
            "error": "error",
        },
        "max_body_bytes": 65536,
        "transaction_ttl": 600,
        "session_max_age": 43200,
        "require_pkce": False,
        "allow_plain_pkce": False,
        "trusted_proxies": 0,
        "grant_types": ["authorization_code", "implicit", "refresh_token", "client_credentials"],
        "refresh_grace_period": 10,
        "refresh_absolute_lifetime": 7776000,
    },
    "client_credentials": {"file": "./clients.json.example", "allow_wildcard_redirects": False},
    "storage": {"default": "sqlite:///var/oauth2.db", "auto_migrate": True},
    "resource_server": {"type": "dummy", "host": "127.0.0.1", "port": 8084},
    "logging": {"level": "notice", "short_sid": True},
    "limits": {
        "enabled": True,
        "storage": None,
        "token": "60000/minute",
        "token_ip": "1200/minute",
        "login_ip": "60/minute",
        "login_user": "30/minute",
        "api": "6000/minute",
        "api_ip": "120/minute",
        "lockout_after": 5,
        "lockout_base": 2,
        "lockout_max": 900,
        "client_lockout_after": 20,
        "client_lockout_max": 60,
    },
    "audit": {"retention_days": 90},
}

_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "auth_server": {
        "url": (str,),
        "host": (str,),
        "port": (int,),
        "ssl": (bool,),
        "ssl_cert": (str, type(None)),
        "ssl_key": (str, type(None)),
        "session_secret": (str, type(None)),
        "num_workers": (int, str),
        "server": (str,),
        "site_name": (str,),
        "views": (dict,),
        "max_body_bytes": (int,),
        "transaction_ttl": (int,),
        "session_max_age": (int,),
        "require_pkce": (bool,),
        "allow_plain_pkce": (bool,),
        "trusted_proxies": (int,),
        "grant_types": (list,),
        "refresh_grace_period": (int,),
        "refresh_absolute_lifetime": (int,),
    },
    "client_credentials": {"file": (str,), "allow_wildcard_redirects": (bool,)},
    "logging": {"level": (str,), "short_sid": (bool,)},
    "limits": {
        "enabled": (bool,),
        "storage": (str, type(None)),
        "token": (str,),
        "token_ip": (str,),
        "login_ip": (str,),
        "login_user": (str,),
        "api": (str,),
        "api_ip": (str,),
        "lockout_after": (int,),
        "lockout_base": (int, float),
        "lockout_max": (int,),
        "client_lockout_after": (int,),
        "client_lockout_max": (int,),
    },
    "audit": {"retention_days": (int,)},
}

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

#: The original server's published session secret: never acceptable in production.
KNOWN_DEV_SECRETS = {
    "$4$eRDyE/eQ$/F/mHVBpobUbTB7VcaFQ5GfaCNg$",
    "development-only-secret-change-me",  # config/development.json
}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


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


def _env_overrides(environ: os._Environ[str] | dict[str, str]) -> dict[str, Any]:
    over: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("OAUTH2__"):
            continue
        path = [p for p in name[len("OAUTH2__") :].lower().split("__") if p]
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
    """The validated configuration, read once at start."""

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
        self.data = data
        validate(data, env)
        specs = parse_storage_config(data["storage"])
        self.storage_specs = {table: self._local(spec) for table, spec in specs.items()}
        # One key for the audit trail's lifetime: it is the audit table's TTL everywhere.
        days = data["audit"]["retention_days"]
        self.storage_specs["audit"] = replace(self.storage_specs["audit"], ttl=days * 86400)

    @classmethod
    def load(
        cls,
        overrides: dict[str, Any] | None = None,
        config_dir: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> Settings:
        """Read files (unless ``overrides`` is given alone, as tests do) and environment."""
        environ = dict(os.environ if environ is None else environ)
        env = environ.get("OAUTH2_ENV", "development")
        data = copy.deepcopy(DEFAULTS)
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

    def _local(self, spec: StorageSpec) -> StorageSpec:
        """A SQLite spec with its file resolved, so the working directory never matters."""
        path, sep, query = spec.url.partition("?")
        name = path[len("sqlite:///") :]
        if spec.scheme != "sqlite" or not name or name == ":memory:":
            return spec
        return dataclasses.replace(spec, url=f"sqlite:///{self.resolve_path(name)}{sep}{query}")

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    @property
    def auth(self) -> dict[str, Any]:
        return self.data["auth_server"]

    @property
    def issuer(self) -> str:
        return self.auth["url"].rstrip("/")

    @property
    def log_level(self) -> int:
        return LOG_LEVELS[self.data["logging"]["level"].lower()]

    def ttl(self, table: str) -> int | None:
        return self.storage_specs[table].ttl

    def num_workers(self) -> int:
        workers = self.auth["num_workers"]
        return os.cpu_count() or 1 if workers == "auto" else int(workers)

    def flask_config(self) -> dict[str, Any]:
        """Map our keys to Flask's, Flask-WTF's and Authlib's."""
        secret = self.auth["session_secret"]
        if not secret:
            secret = secrets.token_urlsafe(32)
            log.warning(
                "auth_server.session_secret is not set: using a random one, so sessions "
                "end when the server restarts and workers do not share them. "
                "Set OAUTH2_SESSION_SECRET."
            )
        secure = bool(self.auth["ssl"]) or self.issuer.startswith("https://")
        return {
            "SECRET_KEY": secret,
            "MAX_CONTENT_LENGTH": self.auth["max_body_bytes"],
            "MAX_FORM_MEMORY_SIZE": self.auth["max_body_bytes"],
            "SESSION_COOKIE_NAME": "oauth2_session",
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": secure,
            "REMEMBER_COOKIE_SECURE": secure,
            "PERMANENT_SESSION_LIFETIME": self.ttl("session") or 1800,
            "WTF_CSRF_TIME_LIMIT": None,
            "WTF_CSRF_SSL_STRICT": secure,
        }


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{where}: expected {types[0].__name__}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"{where}: expected {types[0].__name__}, got {value!r}")


#: The HTTP servers ``oauth2-server serve`` can run (``auth_server.server``).
SERVERS = ("gunicorn", "granian")


def validate(data: dict[str, Any], env: str) -> None:
    """Reject unknown sections and keys and values of the wrong type, naming them."""
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    for section, types in _TYPES.items():
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected an object")
        for key, value in data[section].items():
            where = f"{section}.{key}"
            if key not in types:
                raise ConfigError(f"{where}: unknown key")
            _check_type(where, value, types[key])
    _validate_auth_server(data["auth_server"])
    _validate_limits(data["limits"])
    _validate_audit(data)
    if data["logging"]["level"].lower() not in LOG_LEVELS:
        raise ConfigError(
            f"logging.level: unknown level {data['logging']['level']!r} "
            f"(one of {', '.join(LOG_LEVELS)})"
        )
    if not isinstance(data["resource_server"], dict) or not data["resource_server"].get("type"):
        raise ConfigError("resource_server.type: missing")
    try:
        parse_storage_config(data["storage"])
    except StorageConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if env == "production":
        _refuse_stand_ins(data)


def _validate_limits(limits: dict[str, Any]) -> None:
    from limits import parse

    for name in ("token", "token_ip", "login_ip", "login_user", "api", "api_ip"):
        try:
            parse(limits[name])
        except ValueError as exc:
            raise ConfigError(
                f"limits.{name}: {limits[name]!r} is not a rate like 60/minute"
            ) from exc
    for key, floor in (
        ("lockout_after", 1),
        ("lockout_max", 1),
        ("client_lockout_after", 1),
        ("client_lockout_max", 1),
    ):
        if limits[key] < floor:
            raise ConfigError(f"limits.{key}: must be at least {floor}")
    if limits["lockout_base"] <= 1:
        raise ConfigError("limits.lockout_base: must be greater than 1 (delays grow)")


#: The demo clients file shipped for ``make run``; its secrets are published.
DEMO_CLIENTS_FILE = "clients.json.example"


def _refuse_stand_ins(data: dict[str, Any]) -> None:
    """Production refuses development stand-ins, naming every one and its fix at once."""
    auth, problems = data["auth_server"], []
    if not auth["url"].startswith("https://"):
        problems.append("auth_server.url: production serves over https (behind TLS or a proxy)")
    secret = auth["session_secret"]
    if not secret or secret in KNOWN_DEV_SECRETS or len(secret) < 16:
        problems.append(
            "auth_server.session_secret: production needs a strong secret of your own "
            "(set OAUTH2_SESSION_SECRET)"
        )
    if data["resource_server"]["type"] in ("dummy", "app.adapters.dummy:DummyAdapter"):
        problems.append(
            'resource_server.type: "dummy" is the bundled stand-in site; production talks '
            'to your site ("http" with its base_url, or "package.module:Class")'
        )
    if Path(data["client_credentials"]["file"]).name == DEMO_CLIENTS_FILE:
        problems.append(
            f"client_credentials.file: {DEMO_CLIENTS_FILE} holds the demo clients, whose "
            "secrets are published; point it at your own clients.json"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def _validate_audit(data: dict[str, Any]) -> None:
    if data["audit"]["retention_days"] < 0:
        raise ConfigError("audit.retention_days: expected whole days >= 0 (0: keep forever)")
    entry = data["storage"].get("audit")
    if isinstance(entry, dict) and entry.get("ttl") is not None:
        raise ConfigError("storage.audit.ttl: set audit.retention_days instead")


def _validate_auth_server(auth: dict[str, Any]) -> None:
    workers = auth["num_workers"]
    if workers != "auto" and not (isinstance(workers, int) and workers > 0):
        raise ConfigError('auth_server.num_workers: expected a positive number or "auto"')
    if not 0 < auth["port"] < 65536:
        raise ConfigError(f"auth_server.port: {auth['port']} is not a TCP port")
    if auth["server"] not in SERVERS:
        raise ConfigError(
            f"auth_server.server: {auth['server']!r} is not one of {', '.join(SERVERS)}"
        )
    if not auth["url"].startswith(("http://", "https://")):
        raise ConfigError("auth_server.url: must start with http:// or https://")
    if auth["ssl"] and not (auth["ssl_cert"] and auth["ssl_key"]):
        raise ConfigError("auth_server.ssl_cert/ssl_key: required when auth_server.ssl is true")
    missing_views = {"layout", "login", "dialog", "review", "error"} - set(auth["views"])
    if missing_views:
        raise ConfigError(f"auth_server.views: missing {', '.join(sorted(missing_views))}")
    for name, template in auth["views"].items():
        if not isinstance(template, str) or not template.replace("-", "_").isidentifier():
            raise ConfigError(f"auth_server.views.{name}: expected a template name")
    unknown_grants = set(auth["grant_types"]) - set(GRANT_TYPES)
    if unknown_grants:
        raise ConfigError(f"auth_server.grant_types: unknown {', '.join(sorted(unknown_grants))}")
    if auth["session_max_age"] < 60:
        raise ConfigError("auth_server.session_max_age: must be at least 60 seconds")
    if auth["max_body_bytes"] < 1024:
        raise ConfigError("auth_server.max_body_bytes: must be at least 1024")
    if not 0 <= auth["refresh_grace_period"] <= 300:
        raise ConfigError("auth_server.refresh_grace_period: expected 0 to 300 seconds (0: off)")
    if auth["refresh_absolute_lifetime"] < 0:
        raise ConfigError("auth_server.refresh_absolute_lifetime: expected seconds >= 0 (0: none)")
