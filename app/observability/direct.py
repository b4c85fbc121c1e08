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
each handler's share in whole-line chunks of at most :data:`ATOMIC` bytes, each one write
and one flush (the same bytes, in the same order; no line of one worker cut by another's
on a pipe they share).
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
import select
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
    chunks: list[str],
    record: Callable[[], logging.LogRecord],
) -> None:
    """Write ``chunks`` (whole lines, each chunk at most :data:`ATOMIC` bytes unless one
    line is longer) as ``StreamHandler.emit`` writes a formatted record: under the
    handler's lock, each chunk written then flushed, so each reaches the stream as one
    write; on an error, hand ``handleError`` the ``record()``, as ``emit`` does."""
    with handler.lock:  # type: ignore[union-attr]
        try:
            stream = handler.stream
            flush = getattr(stream, "flush", None) if stream else None  # ``StreamHandler.flush``
            for chunk in chunks:
                stream.write(chunk)
                if flush is not None:
                    flush()
        except RecursionError:  # as ``emit``: see issue 36272 of CPython
            raise
        except Exception:
            handler.handleError(record())


#: Seconds the writer lets lines gather after the first wakes it.
GATHER = 0.05
#: Bytes one write may hold and reach a pipe whole, whatever other workers write to it
#: at the same time (POSIX: a pipe write of at most ``PIPE_BUF`` bytes is atomic).
ATOMIC = select.PIPE_BUF
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
    """Render ``batch`` in order, line by line (one that fails goes to ``handleError``
    alone), and write each handler's run of lines in :func:`chunked` writes."""
    run: list[str] = []
    handler, _, lines, fields, now, _ = batch[0]
    first = (lines, fields, now)  # the run's first line: its record, should a write fail
    for handler_of, kind, lines, fields, now, request_id in batch:
        if handler_of is not handler:
            _emit(handler, run, first)
            handler, run, first = handler_of, [], (lines, fields, now)
        try:
            run.append(lines.line(kind, fields, now, request_id) + handler.terminator)
        except Exception:  # noqa: BLE001 - as a handler's ``format`` failing in ``emit``
            handler.handleError(lines.record(fields, now))
    _emit(handler, run, first)


def _emit(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    run: list[str],
    first: tuple[Lines, dict[str, Any], float],
) -> None:
    if run:
        lines, fields, now = first
        write(handler, chunked(run), lambda: lines.record(fields, now))


def chunked(texts: list[str]) -> list[str]:
    """``texts`` (whole lines) joined into chunks of at most :data:`ATOMIC` bytes in UTF-8
    (a longer line alone): each one write that stays whole on a pipe that several
    workers share, as each line did when every line was its own write."""
    chunks: list[str] = []
    chunk: list[str] = []
    size = 0
    for text in texts:
        length = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        if chunk and size + length > ATOMIC:
            chunks.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(text)
        size += length
    if chunk:
        chunks.append("".join(chunk))
    return chunks


#: This process's writer of request lines.
WRITER = Writer()


def _before_fork() -> None:
    # No batch half written when a process forks: the child's copy of the stream (its
    # buffer's lock) is then as still as its parent's writer was.
    WRITER.writing.acquire()


def _after_fork_in_parent() -> None:
    WRITER.writing.release()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=WRITER.forked
)


def flush() -> None:
    """Write the request lines held now."""
    WRITER.flush()
