"""``oauth2-server serve``: granian or gunicorn with the configured workers, plus the dummy site.

Each worker builds the app from the config files, so ``SIGHUP`` to the main process
starts workers with the new log level and clients file, and the old ones finish their
requests once the new ones are ready: nothing is dropped (see :mod:`app.reload`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .adapters import load_adapter
from .clients import ClientRegistry
from .logconfig import log_config
from .reload import Configuration
from .settings import Settings
from .storage import Storage, StorageUnavailable

log = logging.getLogger("oauth2")


def gunicorn_level(level: int) -> str:
    """Gunicorn knows debug/info/warning/error/critical; ``notice`` shows its start-up lines."""
    for name, ceiling in (("debug", 10), ("info", 25), ("warning", 30), ("error", 40)):
        if level <= ceiling:
            return name
    return "critical"


#: gunicorn's access line: address, method, path (no query), protocol, status, bytes, µs.
ACCESS_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)s'


def gunicorn_options(settings: Settings, bind: str | None = None) -> dict[str, Any]:
    """Map our settings to gunicorn's."""
    auth = settings.auth
    options: dict[str, Any] = {
        "bind": [bind or f"{auth.host}:{auth.port}"]
        + ([settings.admin.listen] if settings.admin.listen else []),
        "workers": settings.num_workers(),
        "worker_class": "gthread",
        "threads": auth.threads,
        "keepalive": 30,
        "graceful_timeout": 20,
        "timeout": 60,
        "proc_name": "oauth2-server",
        "control_socket_disable": True,
        "loglevel": gunicorn_level(settings.log_level),
        # The access log (at ``debug``): the path without its query, and no referer: an
        # authorization request's or redirect's query holds codes, states and hints.
        "access_log_format": ACCESS_FORMAT,
        # Our format on gunicorn's loggers; the access log shows only at ``debug``.
        "logconfig_dict": log_config(
            {
                "gunicorn.error": gunicorn_level(settings.log_level).upper(),
                "gunicorn.access": "INFO" if settings.log_level <= logging.DEBUG else "WARNING",
            },
            settings.config.logging.format,
        ),
    }
    if auth.ssl:
        certfile, keyfile = settings.tls_files()
        options.update(certfile=certfile, keyfile=keyfile)
    return options


def start_dummy_site(host: str, port: int) -> subprocess.Popen[bytes]:
    """Start the bundled site in its own process group and wait until it listens.

    Its own group: a Ctrl-C on the terminal reaches only the server, which then stops
    the site (and everything the site started) with :func:`stop`.
    """
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "app.dummy_site", "--host", host, "--port", str(port)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the dummy site exited at start (port {port} in use?)")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    stop(process)
    raise SystemExit(f"the dummy site did not start on {host}:{port}")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the site (its main process stops its workers); after ``grace``, SIGKILL
    whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    # Also when the site's main process is gone: none of its workers may outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def start_purger(settings: Settings) -> threading.Thread | None:
    """Purge expired rows every ``storage.purge_interval`` seconds, off the request path."""
    interval = settings.storage.purge_interval
    if not interval:
        return None

    def loop() -> None:
        storage = Storage(settings.storage_specs)
        while True:
            time.sleep(interval)
            try:
                removed = sum(storage.purge().values())
                log.info("purge: %d expired rows removed", removed)
            except StorageUnavailable as exc:
                log.warning("purge skipped, storage unavailable: %s", exc)

    thread = threading.Thread(target=loop, name="oauth2-purge", daemon=True)
    thread.start()
    return thread


def load_clients(settings: Settings) -> ClientRegistry:
    """Build the adapter (checking its config) and read the clients file, or raise."""
    adapter = load_adapter(settings.resource_server)
    adapter.close()
    return ClientRegistry.from_settings(settings, list(adapter.scopes))


def prepare_keys(settings: Settings) -> None:
    """Make the signing key ring if there is none and check it opens with this
    configuration's secret (a mismatch stops the start, or refuses a reload)."""
    from .oidc.keys import prepare

    try:
        state = prepare(settings)
    except StorageUnavailable as exc:  # workers make or read it once storage answers
        log.warning("oidc keys not checked at start, storage unavailable: %s", exc)
        return
    log.info("oidc keys: %s", " ".join(f"{k}={v}" for k, v in state.items()))


def load_checked(settings: Settings) -> ClientRegistry:
    """On ``SIGHUP``: the clients, once the signing keys are known to open (see
    :func:`prepare_keys`): a changed keys secret keeps the running configuration."""
    clients = load_clients(settings)
    prepare_keys(settings)
    return clients


def bundled_site(settings: Settings) -> tuple[str, int] | None:
    """The ``(host, port)`` of the stand-in site the adapter talks to, if it has one."""
    adapter = load_adapter(settings.resource_server)
    adapter.close()
    return getattr(adapter, "bundled_site", None)


def granian_options(settings: Settings, bind: str | None = None) -> dict[str, Any]:
    """Map our settings to granian's (the same choices as for gunicorn where they exist)."""
    from granian.constants import Interfaces
    from granian.log import LogLevels

    auth = settings.auth
    host, _, port = (bind or f"{auth.host}:{auth.port}").rpartition(":")
    options: dict[str, Any] = {
        "address": host.strip("[]"),
        "port": int(port),
        "interface": Interfaces.WSGI,
        "workers": settings.num_workers(),
        # Python threads per worker, as many as gunicorn's gthread workers use.
        "blocking_threads": auth.threads,
        "log_level": LogLevels(gunicorn_level(settings.log_level)),
        "log_access": settings.log_level <= logging.DEBUG,
        "log_dictconfig": log_config(
            {"_granian": "INFO", "granian.access": "INFO"}, settings.config.logging.format
        ),
        "respawn_failed_workers": True,
        "workers_kill_timeout": 20,
    }
    if auth.ssl:
        from granian.constants import SSLProtocols

        cert, key = settings.tls_files()
        options.update(ssl_cert=cert, ssl_key=key, ssl_protocol_min=SSLProtocols.tls12)
    return options


def serve(settings: Settings, bind: str | None = None) -> None:
    """Prepare storage, start the dummy site if configured, then run the HTTP server."""
    # The main process logs in the configured format and level too (workers set the
    # level in create_app; the format comes with the server's log config).
    logging.config.dictConfig(log_config(fmt=settings.config.logging.format))
    logging.getLogger("oauth2").setLevel(settings.log_level)
    clients = load_clients(settings)  # a bad adapter or clients file stops us here, clearly
    if settings.config.metrics.enabled:
        # Before any worker (or prometheus_client) starts: each worker writes its counts
        # there and every scrape sums them (app.observability.metrics).
        from .observability.multiproc import prepare_multiprocess_dir

        log.info("metrics: worker counts in %s", prepare_multiprocess_dir())
    if settings.storage.auto_migrate:
        storage = Storage(settings.storage_specs)
        storage.migrate()
        storage.close()
    prepare_keys(settings)  # before workers fork: none of them makes the ring on a request
    bundled = bundled_site(settings)
    if bundled is not None and not os.environ.get("OAUTH2_NO_DUMMY_SITE"):
        site = start_dummy_site(*bundled)
        atexit.register(stop, site, 3.0)  # a stand-in: no need to wait long for it

    configuration = Configuration(settings, clients, load_checked)
    server = settings.auth.server
    log.log(25, "serving %s with %s, %d workers", settings.issuer, server, settings.num_workers())
    if server == "granian":
        _serve_granian(settings, bind, configuration)
    else:
        _serve_gunicorn(settings, bind, configuration)


def _serve_granian(settings: Settings, bind: str | None, config: Configuration) -> None:
    """granian: a Rust HTTP server running the WSGI app in worker processes.

    Workers are forked from this process, so each builds the app from ``config``. On
    ``SIGHUP`` granian would replace the workers one at a time, a few seconds apart, old
    and new answering side by side meanwhile; this subclass starts all new workers, waits
    until each has built its app, then stops the old ones together. It overrides
    granian's ``_reload`` (2.x, pinned by the lock; tests/e2e/test_reload.py checks it).
    """
    from granian.server import Server

    class Granian(Server):  # type: ignore[misc,valid-type]
        def _reload(self, spawn_target, target_loader) -> None:
            log.info("SIGHUP: starting new workers before stopping the old ones")
            self.reload_signal = False
            self.respawned_wrks.clear()
            self.main_loop_interrupt.clear()
            self._env_loader(self.env_files)
            self._call_hooks(self.hooks_reload)
            old: list[Any] = self.wrks  # type: ignore[has-type]
            self.wrks = []  # type: ignore[var-annotated]
            self._spawn_workers(spawn_target, target_loader)
            config.await_workers(self.workers)
            for worker in old:
                worker.terminate()
            for worker in old:
                worker.join(self.workers_kill_timeout)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
            config.complete(len(self.wrks))

    server = Granian("app:create_app", **granian_options(settings, bind))
    server.on_startup(lambda: start_purger(settings))
    server.on_reload(config.reload)
    server.serve(target_loader=lambda: granian_worker(config.build_app), wrap_loader=False)


def granian_worker(build: Callable[[], Any]) -> Any:
    """Build the app in a granian worker that leaves the terminal's signals to its main.

    Ctrl-C signals the terminal's whole process group; a worker hit by SIGINT and then
    by its main process's own stop signal may not stop (granian's and gunicorn's alike),
    and the main waits out its kill timeout. In a group of its own, a worker gets only
    the main's signal.
    """
    os.setpgid(0, 0)
    return build()


def _serve_gunicorn(settings: Settings, bind: str | None, config: Configuration) -> None:
    """gunicorn: on ``SIGHUP`` its master spawns new workers and at once stops the old
    ones; this arbiter waits for the new ones to build their app first, and logs
    ``reload complete`` once gunicorn has seen the old ones exit."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    class ReloadArbiter(Arbiter):  # type: ignore[misc]
        awaiting = False

        def reload(self) -> None:
            last_age, self.awaiting = self.worker_age, True
            super().reload()  # returns once the old workers exited (or graceful_timeout)
            if all(worker.age > last_age for worker in self.WORKERS.values()):
                config.complete(len(self.WORKERS))
            else:
                log.warning("reload: old workers still running after the graceful timeout")

        def manage_workers(self) -> None:
            if self.awaiting:  # reload() spawned the new workers; it stops the old ones next
                self.awaiting = False
                config.await_workers(self.num_workers)
            super().manage_workers()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in gunicorn_options(settings, bind).items():
                if value is not None and name in self.cfg.settings:
                    self.cfg.set(name, value)
            # In the master, once workers are up: requests never wait on a purge.
            self.cfg.set("when_ready", lambda _arbiter: start_purger(settings))
            self.cfg.set("on_reload", lambda _arbiter: config.reload())
            # Workers leave the terminal's signals (Ctrl-C) to the master, as granian's do.
            self.cfg.set("post_fork", lambda _arbiter, _worker: os.setpgid(0, 0))

        def load(self):
            return config.build_app()

        def run(self) -> None:
            ReloadArbiter(self).run()

    Server().run()
