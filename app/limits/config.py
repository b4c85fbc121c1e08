"""The limits built from the ``limits`` settings, on the store they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from ..storage import open_table
from .counters import RateLimits
from .delays import Counters, Delays, TableCounters

#: The named fixed-window budgets (``limits.<name>`` is its rate).
RATES = ("token", "token_ip", "login_ip", "login_user", "api", "api_ip")


@dataclass
class Limits:
    """Every limit of one process: budgets and failure delays."""

    enabled: bool
    rates: RateLimits
    login: Delays  # failed sign-ins per username
    otp: Delays  # failed second-step codes per user id
    client_id: Delays  # failed client authentications per claimed client id
    client_ip: Delays  # failed client authentications per IP


def storage_config(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The limiter storage's URI and driver options (a Redis table's, if it is one)."""
    configured = settings.limits.storage
    if configured:
        return configured, {}
    for spec in settings.storage_specs.values():
        if spec.scheme in ("redis", "rediss"):
            options = {k: v for k, v in spec.options.items() if k != "key_prefix"}
            return spec.url, options
    return "memory://", {}


def build(settings: Settings) -> Limits:
    """The limits of one process (built after its :class:`~app.storage.Storage`)."""
    config = settings.limits
    uri, options = storage_config(settings)
    rates = RateLimits(
        {name: getattr(config, name) for name in RATES}, uri, config.enabled, options
    )
    store: Counters
    if rates.store is not None:
        store = rates.store
    else:  # the limiter counts in process memory: share the failures through storage
        store = TableCounters(open_table("session", settings.storage_specs["session"]))
    on, base = config.enabled, config.lockout_base
    after, ceiling = config.lockout_after, config.lockout_max
    return Limits(
        enabled=on,
        rates=rates,
        login=Delays(store, "login", after, base, ceiling, on),
        otp=Delays(store, "otp", after, base, ceiling, on),
        client_id=Delays(
            store, "client", config.client_lockout_after, base, config.client_lockout_max, on
        ),
        client_ip=Delays(store, "client-ip", after, base, ceiling, on),
    )
