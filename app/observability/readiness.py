"""``/readyz``: can this process serve? Every storage backend and the site, each bounded.

Each check runs in its own daemon thread and is given ``timeout`` seconds: a backend
that hangs (a black-holed address, a stuck pool) fails its check instead of holding the
load balancer's probe. The answer names every part, never a URL (it may hold a password).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import State

#: Seconds each part may take to answer.
TIMEOUT = 2.0


def kind(backend: object) -> str:
    """``redis``, ``postgres``, ``sqlite``: the backend's class, whatever the URL scheme."""
    return type(backend).__name__.removesuffix("Backend").lower()


def storage_parts(state: State) -> dict[str, tuple[Callable[[], None], list[str]]]:
    """Check name (``storage.<kind>``, or ``storage.<kind>.<first table>`` when two
    backends share a scheme) -> (its ping, the tables it holds)."""
    storage = state.storage
    tables: dict[str, list[str]] = {}
    for name, spec in storage.specs.items():
        tables.setdefault(spec.url, []).append(name)
    kinds = {url: kind(storage.backends[url]) for url in tables}
    schemes = list(kinds.values())
    parts: dict[str, tuple[Callable[[], None], list[str]]] = {}
    for url, names in tables.items():
        scheme = kinds[url]
        key = f"storage.{scheme}" if schemes.count(scheme) == 1 else f"storage.{scheme}.{names[0]}"
        parts[key] = (storage.backends[url].ping, sorted(names))
    return parts


def readiness(state: State, timeout: float = TIMEOUT) -> tuple[bool, dict[str, Any]]:
    """(all ready, check name -> ``{"status": "up"|"down", ...}``), checks run side by side."""
    parts: dict[str, tuple[Callable[[], None], list[str] | None]] = dict(storage_parts(state))
    parts["site"] = (lambda: state.adapter.ready(timeout), None)
    results: dict[str, tuple[str | None, float]] = {}
    started = time.perf_counter()

    def probe(name: str, check: Callable[[], None]) -> None:
        try:
            check()
            results[name] = (None, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            results[name] = (type(exc).__name__, time.perf_counter() - started)

    threads = [
        threading.Thread(target=probe, args=(name, check), name="oauth2-readyz", daemon=True)
        for name, (check, _) in parts.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    checks: dict[str, Any] = {}
    for name, (_, tables) in parts.items():
        why, took = results.get(name, (f"no answer in {timeout:g}s", timeout))
        entry: dict[str, Any] = {"status": "down" if why else "up", "ms": round(took * 1000, 1)}
        if tables is not None:
            entry["tables"] = tables
        if why is not None:
            entry["error"] = why
        checks[name] = entry
    return all(c["status"] == "up" for c in checks.values()), checks
