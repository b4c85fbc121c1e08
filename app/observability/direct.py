"""The request line written straight to the stream of the standard logging set-up.

Issue 14 prices observability at 5% of a request's CPU at most, and handing the line to
``Logger.handle`` as a record (the record, ``callHandlers``, ``Handler.handle`` and its
filter, ``format``, ``emit``, ``flush``) cost more than that alone. When the record would
reach one handler only, a plain ``StreamHandler`` with our ``IsoFormatter`` (our format)
or ``JsonFormatter`` and no filter anywhere (what :func:`app.logconfig.log_config` sets
up for every server), the line that handler would write is rendered from the line's
fields by the formatters' own functions (:func:`~app.logconfig.text_line`,
:func:`~app.logconfig.json_line`) and written as ``emit`` writes it: under the
handler's lock, one write, then the flush. Same bytes, same moment: the line is
written before the response leaves, nothing is held back.

Any other set-up (pytest's capture, a second handler, a filter, another formatter or
format, a disabled logger, a handler's level above the line's) takes the record path.
The set-up is looked at again for every line (:func:`route`, a walk up the loggers as
``callHandlers`` makes), so a change made while serving holds from the next line on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
