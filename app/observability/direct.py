"""The request line written straight to the stream of the standard logging set-up.

Issue 14 prices observability at 5% of a request's CPU at most, and handing the line to
``Logger.handle`` as a record (the record, ``callHandlers``, ``Handler.handle`` and its
filter, ``format``, ``emit``, ``flush``) cost more than that alone. When the record would
reach one handler only, a plain ``StreamHandler`` with our ``IsoFormatter`` (our format)
or ``JsonFormatter`` and no filter anywhere (what :func:`app.logconfig.log_config` sets
up for every server), the line that handler would write is rendered from the line's
fields by the formatters' own functions (:func:`~app.logconfig.text_line`,
:func:`~app.logconfig.json_line`) and written as ``emit`` writes it: under the
handler's lock, one write, then the flush. Same bytes.

**Held lines.** A system call a request costs more than its own microseconds: measured
in process, writing the line (one ``write``) made an introspection 10% dearer, a batch of
lines written at once next to nothing. So a line may be held (``logging.requests_held``
seconds, 0.25 by default, 1 at most; 0 writes each line as its request ends):
:class:`Holder` keeps the lines and writes them to their handler's stream together, in
writes of whole lines of at most ``PIPE_BUF`` bytes (workers share a pipe: such a write
is never mixed with another's), once the oldest is that old (the next line, or a daemon
thread a process timed to the oldest line), once 64 KiB are held (a line not yet
rendered counted as :data:`HELD_GUESS` characters), before a line goes to another
handler, and as the process ends (:func:`~.exiting.at_exit`, granian's workers too).

A held line is kept as its facts (:meth:`Holder.hold`) and rendered as the lines are
written: rendered inline, amid a request's other work, a line cost an introspection
about twice what rendering it costs in a loop (measured: ~12 µs against ~4.5), and
rendered in a batch close to the loop's figure (a sixth of the line's cost in process).
A worker killed outright loses what it held, at most that long of lines (as the
metrics' buffered counts). Every other log line is written at once, so a request line
may come after lines logged later than it (its timestamp is its request's).

Any other set-up (pytest's capture, a second handler, a filter, another formatter or
format, a disabled logger, a handler's level above the line's) takes the record path.
The set-up is looked at again for every line (:func:`route`, a walk up the loggers as
``callHandlers`` makes), so a change made while serving holds from the next line on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..logconfig import FORMAT, IsoFormatter, JsonFormatter

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


def _write(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    text: str,
    record: Callable[[], logging.LogRecord],
) -> None:
    with handler.lock:  # type: ignore[union-attr]
        try:
            stream = handler.stream
            stream.write(text)
            if stream and hasattr(stream, "flush"):  # ``StreamHandler.flush``
                stream.flush()
        except RecursionError:  # as ``emit``: see issue 36272 of CPython
            raise
        except Exception:
            with contextlib.suppress(Exception):  # a closed stderr: no request fails on it
                handler.handleError(record())


#: Held lines are written once this many characters are held, whatever their age.
HELD_MOST = 65536
#: The characters a line held unrendered counts for (a request line is 150..300).
HELD_GUESS = 256
#: Held lines go out in writes of at most this many bytes, each whole lines: a pipe
#: (several workers' shared ``stderr``) takes such a write whole, never mixed with another
#: process's (a line longer than it goes alone, as every line did before).
WRITE_MOST = select.PIPE_BUF


class Source(Protocol):
    """What renders a line held unrendered (:meth:`Holder.hold`): the entry is a tuple
    whose first item is its source."""

    def render(self, entry: tuple[Any, ...]) -> str:
        """The line's text (without the terminator)."""

    def record(self, entry: tuple[Any, ...]) -> logging.LogRecord:
        """The record ``handleError`` is handed when writing the line fails."""


class _Text:
    """The source of a line held rendered (:meth:`Holder.write`): ``(_TEXT, line, record)``."""

    @staticmethod
    def render(entry: tuple[Any, ...]) -> str:
        return entry[1]  # type: ignore[no-any-return]

    @staticmethod
    def record(entry: tuple[Any, ...]) -> logging.LogRecord:
        return entry[2]()  # type: ignore[no-any-return]


_TEXT = _Text()

Held = tuple[logging.StreamHandler, list[tuple[Any, ...]]]  # type: ignore[type-arg]


class Holder:
    """Request lines held up to ``seconds`` and written to their handler together
    (see the module's doc); one a process (:data:`HOLDER`). Lines are taken and written
    under one lock, so a process writes them in the order they came."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        # Reentrant: a write's ``handleError`` may log through a stream that comes back here.
        self._lock = threading.RLock()
        self._handler: logging.StreamHandler | None = None  # type: ignore[type-arg]
        self._lines: list[tuple[Any, ...]] = []
        self._size = 0
        self._since = 0.0
        #: Whether this process has the flushing thread and the exit hook (a forked child
        #: has neither: :meth:`_forked` clears it, so no line asks the system its pid).
        self._started = False
        os.register_at_fork(
            before=self._lock.acquire,
            after_in_parent=self._lock.release,
            after_in_child=self._forked,
        )

    def write(
        self,
        handler: logging.StreamHandler,  # type: ignore[type-arg]
        line: str,
        record: Callable[[], logging.LogRecord],
    ) -> None:
        """Hold ``line`` for ``handler`` (or write it now, when nothing is held for long);
        on an error writing, ``handleError`` is handed the failed write's first record."""
        self._hold(handler, (_TEXT, line, record), len(line))

    def hold(
        self,
        handler: logging.StreamHandler,  # type: ignore[type-arg]
        entry: tuple[Any, ...],
    ) -> None:
        """:meth:`write` for a line not rendered yet: ``entry[0]`` (a :class:`Source`)
        renders ``entry`` when the line is written (now, when nothing is held for long)."""
        self._hold(handler, entry, HELD_GUESS)

    def _hold(
        self,
        handler: logging.StreamHandler,  # type: ignore[type-arg]
        entry: tuple[Any, ...],
        size: int,
    ) -> None:
        if self.seconds <= 0:
            with self._lock:
                if self._lines:
                    _write_held(self._take())
                _write_held((handler, [entry]))
            return
        if not self._started:
            self._start()
        now = time.monotonic()
        with self._lock:
            if self._lines and handler is not self._handler:
                _write_held(self._take())  # what another handler held goes out first
            if not self._lines:
                self._handler, self._since = handler, now
            self._lines.append(entry)
            self._size += size
            if self._size >= HELD_MOST or now - self._since >= self.seconds:
                _write_held(self._take())

    def flush(self) -> None:
        """Write what is held now."""
        with self._lock:
            if self._lines:
                _write_held(self._take())

    def _take(self) -> Held:
        handler = self._handler
        assert handler is not None  # noqa: S101 - held lines have one
        lines = self._lines
        self._lines, self._size = [], 0
        return handler, lines

    def _start(self) -> None:
        """In this process (a worker, say): the thread that writes held lines once they
        are old enough, and the exit hook; marked started once both are."""
        from .exiting import at_exit

        with self._lock:
            if self._started:
                return
            threading.Thread(target=self._flushing, name="request-lines", daemon=True).start()
            at_exit(self.flush)
            self._started = True

    def _flushing(self) -> None:
        while True:
            wait = min(max(self.seconds, 0.01), 0.5)
            try:
                with self._lock:
                    if self._lines:
                        due = self._since + self.seconds - time.monotonic()
                        if due <= 0:
                            _write_held(self._take())
                        else:
                            wait = due
            except Exception:  # noqa: BLE001, S110 - the thread must outlive any stream
                pass
            time.sleep(min(max(wait, 0.005), 0.5))

    def _forked(self) -> None:
        """In a forked child: the parent's held lines are the parent's to write, its
        thread and lock are not this process's."""
        self._lock = threading.RLock()
        self._lines, self._size, self._handler = [], 0, None
        self._started = False


def _write_held(held: Held) -> None:
    """Render held lines and write them in writes of at most :data:`WRITE_MOST` bytes,
    whole lines each. A line that fails to render is handed to ``handleError`` (its
    record) and left out; a failed write hands it the write's first line's record."""
    handler, entries = held
    terminator = handler.terminator
    chunk: list[str] = []
    first: tuple[Any, ...] = ()
    size = 0
    for entry in entries:
        try:
            line = entry[0].render(entry) + terminator
            length = len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))
        except Exception:  # noqa: BLE001 - no line may stop the others
            _failed(handler, entry)
            continue
        if chunk and size + length > WRITE_MOST:
            _write(handler, "".join(chunk), functools.partial(_record, first))
            chunk, size = [], 0
        if not chunk:
            first = entry
        chunk.append(line)
        size += length
    if chunk:
        _write(handler, "".join(chunk), functools.partial(_record, first))


def _record(entry: tuple[Any, ...]) -> logging.LogRecord:
    return entry[0].record(entry)  # type: ignore[no-any-return]


def _failed(handler: logging.StreamHandler, entry: tuple[Any, ...]) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(Exception):  # as :func:`_write`: no request fails on it
        handler.handleError(_record(entry))


#: This process's holder of request lines (its ``seconds`` set from the configuration).
HOLDER = Holder()
