"""Resource-server adapters, chosen by ``resource_server.type``: a short name or a dotted path."""

from __future__ import annotations

import importlib
from typing import Any

from .base import ApiRoute, ResourceServer, SiteUser, UpstreamResponse, UpstreamUnavailable

__all__ = [
    "ApiRoute",
    "ResourceServer",
    "SiteUser",
    "UpstreamResponse",
    "UpstreamUnavailable",
    "adapter_class",
    "load_adapter",
]

#: Short name -> "module:Class"; modules are imported only when their adapter is used.
BUILTIN = {
    "dummy": "app.adapters.dummy:DummyAdapter",
    "http": "app.adapters.http:HttpAdapter",
}


def _bad_type(value: str, reason: str) -> ValueError:
    return ValueError(f"resource_server.type: {value!r} {reason}")


def adapter_class(type_name: str) -> type[ResourceServer]:
    """Resolve ``dummy``, ``http`` or ``"pkg.module:ClassName"`` to an adapter class."""
    target = BUILTIN.get(type_name, type_name)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise _bad_type(type_name, "is not 'dummy', 'http' or 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _bad_type(type_name, f"cannot be imported: {exc}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, ResourceServer)):
        raise _bad_type(type_name, "is not a ResourceServer subclass")
    return cls


def load_adapter(config: dict[str, Any]) -> ResourceServer:
    """Build the adapter the ``resource_server`` config section names (default ``dummy``)."""
    return adapter_class(str(config.get("type", "dummy")))(config)
