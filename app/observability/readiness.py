"""``/readyz``: can this process serve? Every storage backend and the site, each bounded.

Each part's check runs on a thread of that part's own, kept for the process's life, and
is given ``timeout`` seconds: a backend that hangs (a black-holed address, a stuck pool)
fails its check instead of holding the load balancer's probe. The threads are kept so
the per-thread handles a check opens (the site's libcurl handle and its kept-alive
connection, a SQLite connection) are made once and reused; a thread per probe left one
of each behind every time. A part runs one check at a time: a probe that finds its
part's check still running (a hung backend, or a flood of probes) waits for that one's
answer instead of starting another, so probes never pile up threads or calls on a
backend. The answer names every part, never a URL (it may hold a password).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import State

#: Seconds each part may take to answer.
TIMEOUT = 2.0

#: What a check answers: why it failed (``None``: it passed), and the seconds it took.
Outcome = tuple[str | None, float]


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


class _Lane:
    """One part's thread (of one backend or adapter) and the check it last started."""

    def __init__(self, name: str, owner: object) -> None:
        self.owner = owner  # kept: the key's id is this object's while the lane lives
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], Future[Outcome]]] = (
            queue.SimpleQueue()
        )
        self.running: Future[Outcome] | None = None
        self.ended = False  # set before the answer of the check that ended the thread
        self.thread = threading.Thread(target=self._run, name=f"oauth2-readyz {name}", daemon=True)
        self.thread.start()

    def submit(self, check: Callable[[], None]) -> Future[Outcome]:
        running = self.running
        if running is not None and not running.done():
            return running  # a check is on its way: share its answer
        answer: Future[Outcome] = Future()
        self.running = answer
        self.jobs.put((check, answer))
        return answer

    def _run(self) -> None:
        while True:
            check, answer = self.jobs.get()
            started = time.perf_counter()
            try:
                check()
                answer.set_result((None, time.perf_counter() - started))
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                answer.set_result((type(exc).__name__, time.perf_counter() - started))
            except BaseException as exc:  # the thread ends: a new one takes the next check
                self.ended = True
                answer.set_result((type(exc).__name__, time.perf_counter() - started))
                raise
            del check, answer  # hold no app between checks


class Prober:
    """This process's check threads: one for each part of each backend or adapter asked
    (a serving process has one of each; tests and reloads in one process, more), made
    when first asked for, made again if one ended."""

    def __init__(self) -> None:
        self._forked()

    def _forked(self) -> None:
        """(Also in a forked child: the parent's threads are not there, and its lock may
        have been held by one of them.)"""
        self._lock = threading.Lock()
        self._lanes: dict[tuple[str, int], _Lane] = {}

    def submit(self, name: str, owner: object, check: Callable[[], None]) -> Future[Outcome]:
        """Run ``check`` (which asks ``owner``) on the thread of ``name`` and ``owner``,
        or share the answer of the check already running there."""
        with self._lock:
            key = (name, id(owner))
            lane = self._lanes.get(key)
            if lane is None or lane.ended:
                lane = self._lanes[key] = _Lane(name, owner)
            return lane.submit(check)

    def threads(self) -> list[threading.Thread]:
        """The check threads this process has made (for tests)."""
        with self._lock:
            return [lane.thread for lane in self._lanes.values()]

    def running(self, name: str, owner: object) -> Future[Outcome] | None:
        """The check last started for ``name`` of ``owner`` (for tests)."""
        with self._lock:
            lane = self._lanes.get((name, id(owner)))
            return lane.running if lane is not None else None


PROBER = Prober()
os.register_at_fork(after_in_child=PROBER._forked)


def readiness(state: State, timeout: float = TIMEOUT) -> tuple[bool, dict[str, Any]]:
    """(all ready, check name -> ``{"status": "up"|"down", ...}``), checks run side by side."""
    parts: dict[str, tuple[object, Callable[[], None], list[str] | None]] = {
        name: (getattr(ping, "__self__", ping), ping, tables)
        for name, (ping, tables) in storage_parts(state).items()
    }
    adapter = state.adapter
    parts["site"] = (adapter, lambda: adapter.ready(timeout), None)
    answers = {name: PROBER.submit(name, owner, check) for name, (owner, check, _) in parts.items()}
    deadline = time.monotonic() + timeout
    checks: dict[str, Any] = {}
    for name, (_, _, tables) in parts.items():
        try:
            why, took = answers[name].result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            why, took = f"no answer in {timeout:g}s", timeout
        entry: dict[str, Any] = {"status": "down" if why else "up", "ms": round(took * 1000, 1)}
        if tables is not None:
            entry["tables"] = tables
        if why is not None:
            entry["error"] = why
        checks[name] = entry
    return all(c["status"] == "up" for c in checks.values()), checks
