"""``SIGHUP``: read the configuration again and switch every worker to it at once.

The main process numbers each configuration (its *generation*). A worker reports its
generation on a pipe once its app is built; on a reload the server starts a full set of
new workers, waits until all of them report, and only then stops the old ones. When the
old ones are gone it logs ``reload complete``: from then on every request is answered
with the new configuration.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import time
from collections import Counter
from typing import Any

from .clients import ClientFileError, ClientRegistry
from .settings import ConfigError, Settings
from .storage import StorageConfigError

log = logging.getLogger("oauth2")

#: Seconds to wait for new workers to build their app before stopping the old ones anyway.
READY_TIMEOUT = 30.0


class Readiness:
    """A pipe on which forked workers report the generation they were built from."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        # A worker never blocks on a full pipe; a lost report only makes a reload wait.
        os.set_blocking(self._write, False)
        self._seen: Counter[int] = Counter()
        self._partial = b""

    def report(self, generation: int) -> None:
        """In a worker: my app is built (a write this short is atomic on a pipe)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"%d\n" % generation)

    def wait(self, generation: int, count: int, timeout: float) -> bool:
        """In the main process: True once ``count`` workers of ``generation`` reported."""
        deadline = time.monotonic() + timeout
        while self._seen[generation] < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                return False
            self._take(os.read(self._read, 4096))
        return True

    def _take(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._seen.update(int(line) for line in lines)


#: Settings that only a restart changes: the listeners and TLS, the workers and their
#: threads, the server, the log format (given to the server at start), the metrics
#: (their shared folder is prepared before the first worker) and the admin listener.
RESTART_ONLY = (
    (
        "auth_server",
        ("host", "port", "ssl", "ssl_cert", "ssl_key", "num_workers", "threads", "server"),
    ),
    ("logging", ("format",)),
    ("metrics", ("enabled",)),
    ("admin", ("listen",)),
)


#: What is held with a restart-only setting, so the running pair still checks out:
#: the scraper's token stays while ``/metrics`` does (it is required with it).
HELD_WITH = {("metrics", "enabled"): (("metrics", "token_hash"),)}


def restart_only_changes(running: Settings, fresh: Settings) -> dict[str, dict[str, Any]]:
    """The :data:`RESTART_ONLY` settings ``fresh`` changes, and what :data:`HELD_WITH`
    them, as the running values to put back (``{"section": {"key": value}}``)."""
    held: dict[str, dict[str, Any]] = {}
    for section, keys in RESTART_ONLY:
        now, then = getattr(running.config, section), getattr(fresh.config, section)
        for key in keys:
            if getattr(now, key) != getattr(then, key):
                for part, name in ((section, key), *HELD_WITH.get((section, key), ())):
                    value = getattr(getattr(running.config, part), name)
                    held.setdefault(part, {})[name] = value
    return held


class Configuration:
    """What workers are built from: the settings, the clients, and their generation."""

    def __init__(self, settings: Settings, clients: ClientRegistry, load_clients) -> None:
        self.settings, self.clients, self.generation = settings, clients, 0
        self._load_clients = load_clients
        self.readiness = Readiness()

    def reload(self) -> None:
        """Read the files again; keep the running configuration if they fail their checks.

        Either way a new generation begins: the server replaces every worker.
        """
        self.generation += 1
        try:
            fresh = Settings.load(config_dir=self.settings.config_dir)
            held = restart_only_changes(self.settings, fresh)
            if held:
                keys = ", ".join(
                    f"{section}.{key}"
                    for section, names in RESTART_ONLY
                    for key in names
                    if key in held.get(section, {})
                )
                try:
                    fresh = Settings.load(held, config_dir=self.settings.config_dir)
                except ConfigError as exc:
                    raise ConfigError(
                        f"{keys} need a restart, and the new configuration does not hold "
                        f"with their running values: {exc}"
                    ) from exc
                log.warning("reload: %s changed; the running value holds until a restart", keys)
            self.settings, self.clients = fresh, self._load_clients(fresh)
        except (ConfigError, ClientFileError, StorageConfigError, ValueError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)

    def build_app(self) -> Any:
        """In a worker: the app of the current configuration, then report it ready."""
        from . import create_app

        app = create_app(self.settings, clients=self.clients)
        settle_heap()
        self.readiness.report(self.generation)
        return app

    def await_workers(self, count: int) -> None:
        """In the main process: wait until ``count`` workers of this generation are ready."""
        if not self.readiness.wait(self.generation, count, READY_TIMEOUT):
            log.warning(
                "reload: new workers not all ready after %.0f s; stopping the old ones anyway",
                READY_TIMEOUT,
            )

    def complete(self, workers: int) -> None:
        """Log that only workers of this generation are left."""
        log.log(
            25,
            "reload complete: generation %d, %d workers, log level %s, %d clients",
            self.generation,
            workers,
            self.settings.config.logging.level,
            len(self.clients),
        )


def settle_heap() -> None:
    """In a worker that has built its app: collect once, then freeze what is left (the
    modules, the app, its templates and keys: ~100,000 objects that live as long as the
    worker) so that the collector's full passes no longer walk it. Request lines held
    under load reach the oldest generation and set off full passes: in process, one
    every 2,000-20,000 gateway requests, each stopping the worker for 64 ms on a slow
    day (3-30 µs a request); over what is not frozen, such a pass is short."""
    gc.collect()
    gc.freeze()
