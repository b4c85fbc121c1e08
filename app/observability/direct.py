"""The request line written straight to the stream of the standard logging set-up.

Issue 14 prices observability at 5% of a request's CPU at most, and handing the line to
``Logger.handle`` as a record (the record, ``callHandlers``, ``Handler.handle`` and its
filter, ``format``, ``emit``, ``flush``) cost more than that alone. When the record would
reach one handler only, a plain ``StreamHandler`` with our ``IsoFormatter`` (our format)
or ``JsonFormatter`` and no filter anywhere (what :func:`app.logconfig.log_config` sets
up for every server), the line that handler would write is rendered from the line's
fields by the formatters' own functions (:func:`~app.logconfig.text_line`,
:func:`~app.logconfig.json_line`) and written as ``emit`` writes it: under the
handler's lock, one write, then the flush.

The request thread does not render or write the line itself: it hands the line's
fields to the process's :data:`WRITER`, a thread that wakes when lines come, lets them
gather for :data:`GATHER` seconds, then renders them one after the other and writes
each handler's share in one write and one flush (the same bytes, in the same order).
A request then costs a queue append instead of a cold rendering and a system call,
which is most of what the line cost (``bench/README.md``); the line appears within
about 50 ms of its response. What is held is written at exit (:mod:`.exiting`) and by
:func:`flush`; a process killed outright (``SIGKILL``) loses at most those 50 ms of
request lines (the audit trail is stored, not logged, and loses nothing).

Any other set-up (pytest's capture, a second handler, a filter, another formatter or
format, a disabled logger, a handler's level above the line's) takes the record path.
The set-up is looked at again for every line (:func:`route`, a walk up the loggers as
``callHandlers`` makes), so a change made while serving holds from the next line on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..logconfig import FORMAT, REQUEST_ID, IsoFormatter, JsonFormatter
from .exiting import at_exit

#: How :func:`route`'s handler formats: our text format, or JSON.
TEXT = "text"
JSON = "json"

Route = tuple[logging.StreamHandler, str]  # type: ignore[type-arg]


def route(logger: logging.Logger, level: int) -> Route | None:
    """The handler that alone would write a ``level`` record of ``logger`` and its format,
    when nothing else would see the record (a filter, another handler); else None."""
    if logger.disabled or logger.filters:
        return None
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        handlers = current.handlers
        if handlers:
            if found is not None or len(handlers) != 1:
                return None
            found = handlers[0]
        current = current.parent if current.propagate else None
    if type(found) is not logging.StreamHandler or found.filters or found.level > level:
        return None
    formatter = found.formatter
    kind = type(formatter)
    if kind is JsonFormatter:
        return found, JSON
    if kind is IsoFormatter and formatter._fmt == FORMAT:  # type: ignore[union-attr]
        return found, TEXT
    return None


def write(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    line: str,
    record: Callable[[], logging.LogRecord],
) -> None:
    """Write ``line`` as ``StreamHandler.emit`` writes a formatted record; on an error,
    hand ``handleError`` the line's ``record()``, as ``emit`` does."""
    with handler.lock:  # type: ignore[union-attr]
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            if stream and hasattr(stream, "flush"):  # ``StreamHandler.flush``
                stream.flush()
        except RecursionError:  # as ``emit``: see issue 36272 of CPython
            raise
        except Exception:
            handler.handleError(record())


#: Seconds the writer lets lines gather after the first wakes it.
GATHER = 0.05
#: Lines held at most: past that, a request writes them itself, so a stream that does not
#: take them (a full pipe nobody reads) holds requests up as it did, instead of memory.
HELD_MAX = 10_000


class Lines(Protocol):
    """What made a held line: renders it, or makes its record (for ``handleError``)."""

    def line(
        self, kind: str, fields: dict[str, Any], now: float, request_id: str | None
    ) -> str: ...

    def record(self, fields: dict[str, Any], now: float) -> logging.LogRecord: ...


#: A held line: its handler, its format, what renders it, its fields, its time and the
#: request id current when it was put (a JSON line carries it).
Held = tuple[logging.StreamHandler, str, Lines, dict[str, Any], float, str | None]  # type: ignore[type-arg]


class Writer:
    """One process's request lines on their way to their handlers: :meth:`put` by the
    request threads, written by this writer's thread (started with the first line, again
    in a forked child, which drops what its parent held)."""

    def __init__(self) -> None:
        self.forked()

    def forked(self) -> None:
        """A fresh start (a forked child's too: its parent writes what it held, and a lock
        its parent's writer held at the fork would never be let go here)."""
        self.held: deque[Held] = deque()
        self.wake = threading.Event()
        self.writing = threading.Lock()  # one drain at a time: the thread's, or flush's
        self.thread: threading.Thread | None = None

    def put(self, route: Route, lines: Lines, fields: dict[str, Any], now: float) -> None:
        """Hold a line for ``route``'s handler; it is written within :data:`GATHER` s."""
        if self.thread is None:
            self._start()
        held = self.held
        held.append((route[0], route[1], lines, fields, now, REQUEST_ID.get()))
        if len(held) > HELD_MAX:
            self.flush()
        elif not self.wake.is_set():
            self.wake.set()

    def flush(self) -> None:
        """Write every line held now (at exit, and for whoever must read them at once)."""
        with self.writing:
            batch: list[Held] = []
            held = self.held
            while held:
                batch.append(held.popleft())
            if batch:
                _write(batch)

    def _start(self) -> None:
        with self.writing:
            if self.thread is not None:
                return
            self.thread = threading.Thread(
                target=self._run, name="oauth2-request-lines", daemon=True
            )
            self.thread.start()
            at_exit(self.flush)  # this process's exit, whichever way it ends

    def _run(self) -> None:
        wake = self.wake
        while True:
            wake.wait()
            time.sleep(GATHER)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the next lines must still be written
                logging.getLogger(__name__).exception("writing request lines failed")
            wake.clear()
            if self.held:  # came while this batch was written
                wake.set()


def _write(batch: list[Held]) -> None:
    """Render ``batch`` in order and write each handler's lines at once, as ``emit``
    would write them one by one (an error: ``handleError`` with the first line's record)."""
    handler, _, lines, fields, now, _ = batch[0]
    texts: list[str] = []
    for held in batch:
        if held[0] is not handler:
            _emit(handler, texts, lines, fields, now)
            handler, _, lines, fields, now, _ = held
            texts = []
        texts.append(held[2].line(held[1], held[3], held[4], held[5]))
    _emit(handler, texts, lines, fields, now)


def _emit(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    texts: list[str],
    lines: Lines,
    fields: dict[str, Any],
    now: float,
) -> None:
    end = handler.terminator
    write(handler, end.join(texts), lambda: lines.record(fields, now))


#: This process's writer of request lines.
WRITER = Writer()
os.register_at_fork(after_in_child=WRITER.forked)


def flush() -> None:
    """Write the request lines held now."""
    WRITER.flush()
