"""Configuration: the original layout, deep-merged, checked once at start by one typed model.

Files are read from ``$OAUTH2_CONFIG_DIR`` (default ``./config``) in this order:
``default.json``, ``$OAUTH2_ENV.json`` (``OAUTH2_ENV`` defaults to ``development``),
``runtime.json``; later files win key by key. Environment variables win over files:
``OAUTH2_SESSION_SECRET``, ``OAUTH2_KEYS_SECRET`` and ``OAUTH2__<section>__<key>=<JSON or text>``.
Relative paths in the config resolve against the config folder's parent (the project
root for ``config/``), never the working directory. The model is ``app.config_model``.
This is the only module that knows Flask's and Authlib's config names.
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
from typing import Any

from .config_model import (
    DEFAULTS,
    GRANT_TYPES,
    LOG_LEVELS,
    ConfigError,
    defaults_document,
    parse_config,
)
from .storage import StorageSpec, parse_storage_config

__all__ = ["DEFAULTS", "GRANT_TYPES", "ConfigError", "Settings", "defaults_document"]

log = logging.getLogger(__name__)

#: The project: relative paths resolve here when no config folder was read (tests).
ROOT = Path(__file__).resolve().parent.parent
#: Environments that need no ``<env>.json`` of their own.
BUILTIN_ENVS = ("development", "production")


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
    if environ.get("OAUTH2_KEYS_SECRET"):
        over.setdefault("oidc", {})["keys_secret"] = environ["OAUTH2_KEYS_SECRET"]
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
        self.oidc, self.admin = config.oidc, config.admin
        self.registration = config.registration
        self.two_factor = config.two_factor
        self.dpop = config.dpop
        self.token_cache = config.token_cache
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

    @property
    def keys_secret(self) -> str | None:
        """What the signing keys are encrypted with: ``oidc.keys_secret``, else the session
        secret when it is configured (never the random stand-in), else ``None``."""
        return self.oidc.keys_secret or self.auth.session_secret or None

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
