"""OAuth 2.0 authorization server for existing websites: the Flask app factory."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app, session
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from . import admin_listener, context, lean, limits, observability
from .adapters import ResourceServer, load_adapter
from .client_store import ClientStore
from .clients import ClientRegistry
from .oauth2 import OAuth2Server, build_server, token_cache
from .oauth2.grant_store import GrantStore
from .oidc.keys import KeyRing
from .oidc.scopes import known_scopes
from .quotas.counting import Quotas
from .sessions import StoredSessionInterface
from .settings import Settings
from .storage import Storage
from .users import UserStore

ROOT = Path(__file__).resolve().parent.parent


class SessionLoginManager(LoginManager):
    """Flask-Login without reading the session on requests that never opened it."""

    def _update_remember_cookie(self, response):
        if getattr(session, "loaded", True):
            return super()._update_remember_cookie(response)
        return response


login_manager = SessionLoginManager()
csrf = CSRFProtect()


@dataclass
class State:
    """Everything a request needs, built once per process."""

    settings: Settings
    #: The tables themselves (``storage.session``, ``storage.audit``...), per backend.
    storage: Storage
    clients: ClientRegistry
    adapter: ResourceServer
    #: The OAuth records (codes, tokens, grants) in the protocol's words, over ``storage``.
    grants: GrantStore
    users: UserStore
    server: OAuth2Server
    limits: limits.Limits
    #: The OpenID Connect signing keys (``keys`` table), shared by every worker.
    keys: KeyRing
    #: The ``/api`` quotas' counters (``app.quotas``), shared by every worker.
    quotas: Quotas


def _build_state(settings: Settings, clients: ClientRegistry | None = None) -> State:
    storage = Storage(settings.storage_specs)
    if settings.storage.auto_migrate:
        storage.migrate()
    adapter = load_adapter(settings.resource_server)
    if clients is None:
        clients = ClientRegistry.from_settings(settings, list(adapter.scopes))
    clients = clients.with_store(
        ClientStore(
            storage.clients,
            known_scopes(adapter.scopes),  # the adapter's, then OpenID Connect's
            allow_wildcard=settings.client_credentials.allow_wildcard_redirects,
            production=settings.env == "production",
            overlap=settings.admin.secret_overlap,
        )
    )
    keys = KeyRing.from_settings(storage.keys, settings)
    auth = settings.auth
    grants = GrantStore(
        storage,
        grace=auth.refresh_grace_period,
        family_lifetime=auth.refresh_absolute_lifetime,
        cache=token_cache.build(settings.token_cache, storage),
    )
    users = UserStore(storage.users)
    scopes = known_scopes(adapter.scopes)
    server = build_server(settings, clients, grants, users, scopes, keys, adapter.claims_supported)
    limited = limits.build(settings)
    quotas = Quotas.build(limited.rates.store, storage)
    return State(settings, storage, clients, adapter, grants, users, server, limited, keys, quotas)


def create_app(
    config: dict[str, Any] | Settings | None = None, clients: ClientRegistry | None = None
) -> Flask:
    """Build the app from config files (``None``), a dict over the defaults, or Settings.

    ``clients`` is a registry already read (``serve`` reads it once, in the master).
    """
    settings = config if isinstance(config, Settings) else Settings.load(config)
    # TLS is the deployment's job (or ``auth_server.ssl``); Authlib must not refuse plain
    # HTTP on loopback or behind a terminating proxy.
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
    app = lean.PagesApp(
        __name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static")
    )
    app.config.update(settings.flask_config())
    state = _build_state(settings, clients)
    app.extensions["oauth2"] = state
    app.session_interface = StoredSessionInterface(
        state.storage.session,
        state.storage.batch,
        settings.auth.session_max_age,
        users=state.storage.users,
    )
    lean.mount(app)  # /api/ and the back channel on lean apps, behind the wrappers below
    if settings.auth.trusted_proxies:
        hops = settings.auth.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    if settings.admin.listen:
        app.wsgi_app = admin_listener.mark(app.wsgi_app, settings.admin.listen)  # type: ignore[method-assign]
    app.before_request(_limit_streamed_body)
    _init_extensions(app, state)
    _register_blueprints(app)
    observability.init_app(app)
    logging.getLogger("oauth2").setLevel(settings.log_level)
    # Authlib's grants log whole tokens (ID Tokens included) at DEBUG: never let them.
    logging.getLogger("authlib").setLevel(max(logging.INFO, settings.log_level))
    return app


def _init_extensions(app: Flask, state: State) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = None  # the sign-in page says it; a flash would store a session
    login_manager.user_loader(_load_user)
    csrf.init_app(app)
    state.server.init_app(app)
    from . import errors, pages

    errors.init_app(app)
    pages.init_app(app)


def _limit_streamed_body() -> None:
    """Hold a chunked body to ``max_body_bytes`` too (gunicorn passes it on unbounded)."""
    req = context.request()
    if req.environ.get("wsgi.input_terminated") and req.content_length is None:
        limit = req.max_content_length or 0
        if len(req.get_data(cache=True)) >= limit and req.stream.read(1):
            raise RequestEntityTooLarge()


def _load_user(user_id: str):
    # The login manager is shared by every app in the process: look up this app's users,
    # unless the session was read with its user's record.
    users = current_app.extensions["oauth2"].users
    owner = getattr(session, "owner_record", None)
    if owner is not None:
        read, record = owner(user_id)
        if read:
            return users.of(user_id, record) if record is not None else None
    return users.get(user_id)


def _register_blueprints(app: Flask) -> None:
    from .views import (
        account,
        admin,
        auth,
        authorize,
        docs,
        logout,
        register,
        review,
        wellknown,
    )

    # The token, OpenID Connect and api views are served by the lean apps (app.lean).
    views = (auth, logout, authorize, review, admin, wellknown, docs, register)
    for module in (*views, account):
        app.register_blueprint(module.bp)
    csrf.exempt(logout.bp)  # partners' logout requests carry no token; it checks ours itself
    csrf.exempt(admin.bp)  # bearer-authenticated JSON: no cookie, so no cross-site forgery
    csrf.exempt(register.bp)  # the same
