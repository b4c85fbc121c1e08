"""The request line written straight to the standard handler's stream (``direct``): the
same bytes as the record path, and the record path whenever the set-up is not ours."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.logconfig import FORMAT, REQUEST_ID, IsoFormatter, JsonFormatter
from app.observability import direct, requestlog

NOTICE = requestlog.NOTICE


def standalone(formatter: logging.Formatter) -> tuple[logging.Logger, logging.StreamHandler]:  # type: ignore[type-arg]
    """A logger (not in the registry) whose parent, a root of its own, has one stream
    handler with ``formatter``: the shape ``log_config`` gives every server."""
    root = logging.Logger("root", logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    root.addHandler(handler)
    logger = logging.Logger("oauth2.request", logging.NOTSET)
    logger.parent = root
    return logger, handler


def written(handler: logging.StreamHandler) -> str:  # type: ignore[type-arg]
    """What ``handler`` holds once the writer wrote the lines held now."""
    direct.flush()
    return handler.stream.getvalue()


@pytest.fixture
def request_id() -> Iterator[str]:
    token = REQUEST_ID.set("rid-1")
    yield "rid-1"
    REQUEST_ID.reset(token)


_FIELD_VALUES = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "a=b", "a b", " x=1", '"', "\\", "\u202e", "é", "lb==", "::1"]),
    st.text(alphabet="/abc-_.~%", min_size=150, max_size=260),  # long paths
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
_FIELDS = st.fixed_dictionaries(
    {
        key: _FIELD_VALUES
        for key in (
            "method",
            "path",
            "route",
            "status",
            "duration_ms",
            "client_id",
            "user",
            "ip",
            "request_id",
        )
    }
)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fields=_FIELDS, now=st.floats(min_value=0, max_value=4e9), json=st.booleans())
def test_the_direct_line_is_the_formatters_line(request_id, fields, now, json):
    """Whatever the values (escaping, non-ASCII, None, long paths): what the direct path
    writes is what the formatter makes of the record, byte for byte."""
    formatter = JsonFormatter() if json else IsoFormatter(FORMAT)
    logger, handler = standalone(formatter)
    records = requestlog._Records(logger)
    assert direct.route(logger, NOTICE) == (handler, direct.JSON if json else direct.TEXT)
    records.emit(dict(fields), now)
    record = records.make(requestlog._Line(dict(fields)), now)
    assert written(handler) == formatter.format(record) + "\n"


class Seen(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return True


def test_what_the_record_path_is_taken_for():
    """Only one plain stream handler with our formatter and nothing filtering is written
    to directly; a handler, filter or formatter changed at run time is seen at once."""
    logger, handler = standalone(IsoFormatter(FORMAT))
    assert direct.route(logger, NOTICE) == (handler, direct.TEXT)
    changes = [
        lambda: logger.addFilter(Seen()),
        lambda: handler.addFilter(Seen()),
        lambda: logger.addHandler(logging.NullHandler()),
        lambda: logger.parent.addHandler(logging.NullHandler()),  # type: ignore[union-attr]
        lambda: setattr(logger, "disabled", True),
        lambda: handler.setLevel(logging.WARNING),
        lambda: handler.setFormatter(logging.Formatter(FORMAT)),
        lambda: handler.setFormatter(IsoFormatter("%(levelname)s %(message)s")),
        lambda: handler.setFormatter(None),  # type: ignore[arg-type]
        lambda: setattr(logger, "propagate", False),  # then no handler: the last resort's
    ]
    for change in changes:
        logger, handler = standalone(IsoFormatter(FORMAT))
        change()
        assert direct.route(logger, NOTICE) is None
    # Not a plain StreamHandler (pytest's capture is a subclass; a file handler).
    logger, handler = standalone(IsoFormatter(FORMAT))
    logger.parent.handlers = [type("Sub", (logging.StreamHandler,), {})()]  # type: ignore[union-attr]
    assert direct.route(logger, NOTICE) is None
    # A non-propagating logger's own handler is the one, whatever its parents have.
    logger, _ = standalone(IsoFormatter(FORMAT))
    own = logging.StreamHandler(io.StringIO())
    own.setFormatter(JsonFormatter())
    logger.addHandler(own)
    logger.propagate = False
    assert direct.route(logger, NOTICE) == (own, direct.JSON)


def test_a_write_error_goes_to_handle_error_with_the_record(request_id):
    logger, handler = standalone(IsoFormatter(FORMAT))
    handler.stream = SimpleNamespace(write=lambda text: 1 / 0)
    failed: list[logging.LogRecord] = []
    handler.handleError = failed.append  # type: ignore[method-assign]
    requestlog._Records(logger).emit({"method": "GET", "path": "/"}, 1.5)
    direct.flush()
    (record,) = failed
    assert record.created == 1.5 and record.getMessage() == "request method=GET path=/"


def only_to(formatter: logging.Formatter, monkeypatch: pytest.MonkeyPatch) -> logging.StreamHandler:  # type: ignore[type-arg]
    """``oauth2.request`` as ``log_config`` sets a server's loggers up: one stream handler
    of ours that alone sees the line (pytest's own capture handlers set aside: they are
    added to every test phase's non-propagating loggers too)."""
    logger = logging.getLogger("oauth2.request")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    return handler


@pytest.mark.parametrize("formatter", [IsoFormatter(FORMAT), JsonFormatter()])
def test_a_request_writes_the_same_line_either_way(client, monkeypatch, formatter):
    """The same request (its clock stopped), written directly and then, a filter added
    while serving, as a record the filter sees: the same line, and each line is written
    as its request ends."""
    clock = SimpleNamespace(time=lambda: 1_764_748_800.1234, perf_counter=lambda: 5.0)
    monkeypatch.setattr(requestlog, "time", clock)
    own_stream = only_to(formatter, monkeypatch)
    path = '/nope/"quoted" x=1/\u202e/é' + "/long" * 60
    headers = {"X-Request-Id": "lb=="}
    assert direct.route(logging.getLogger("oauth2.request"), NOTICE) is not None
    assert client.get(path, headers=headers).status_code == 404
    first = written(own_stream)
    assert first.count("\n") == 1 and "lb==" in first
    seen = Seen()
    own_stream.addFilter(seen)
    assert client.get(path, headers=headers).status_code == 404
    assert written(own_stream) == first * 2
    (record,) = seen.records
    assert record.fields["request_id"] == "lb==" and record.created == clock.time()  # type: ignore[attr-defined]


def test_caplog_still_sees_request_lines(client, caplog):
    with caplog.at_level(logging.INFO, logger="oauth2"):
        response = client.get("/healthz", headers={"X-Request-Id": "cap-1"})
    (record,) = [r for r in caplog.records if r.name == "oauth2.request"]
    assert record.fields["request_id"] == "cap-1" == response.headers["X-Request-Id"]  # type: ignore[attr-defined]
    assert record.getMessage().startswith("request method=GET path=/healthz ")


def test_the_json_line_carries_the_request_id_of_its_request(client, monkeypatch):
    own_stream = only_to(JsonFormatter(), monkeypatch)
    made = client.get("/healthz").headers["X-Request-Id"]
    assert f'"request_id": "{made}"' in written(own_stream)
    assert REQUEST_ID.get() is None  # reset when the request ended


# -- the writer thread: lines leave the request thread, and none is lost ----------------
def text_records() -> tuple[requestlog._Records, logging.StreamHandler]:  # type: ignore[type-arg]
    logger, handler = standalone(IsoFormatter(FORMAT))
    return requestlog._Records(logger), handler


def test_the_writer_thread_writes_held_lines_without_being_asked():
    records, handler = text_records()
    for n in range(50):
        records.emit({"method": "GET", "path": f"/{n}"}, 1.5)
    deadline = time.monotonic() + 5
    while handler.stream.getvalue().count("\n") < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = handler.stream.getvalue().splitlines()
    assert [line.rsplit("path=", 1)[1] for line in lines] == [f"/{n}" for n in range(50)]
    assert direct.WRITER.thread is not None and direct.WRITER.thread.is_alive()


def test_lines_for_two_handlers_keep_their_order_in_each():
    (first, one), (second, two) = text_records(), text_records()
    for n in range(6):
        (first if n % 3 else second).emit({"method": "GET", "path": f"/{n}"}, 1.5)
    assert [x.rsplit("=", 1)[1] for x in written(one).splitlines()] == ["/1", "/2", "/4", "/5"]
    assert [x.rsplit("=", 1)[1] for x in written(two).splitlines()] == ["/0", "/3"]


def test_a_failed_write_is_reported_and_the_writer_goes_on():
    records, handler = text_records()
    stream = handler.stream
    failed: list[logging.LogRecord] = []
    handler.handleError = failed.append  # type: ignore[method-assign]
    handler.stream = SimpleNamespace(write=lambda text: 1 / 0)
    records.emit({"method": "GET", "path": "/lost"}, 1.5)
    direct.flush()
    assert [r.getMessage() for r in failed] == ["request method=GET path=/lost"]
    handler.stream = stream
    records.emit({"method": "GET", "path": "/next"}, 1.5)
    assert written(handler).endswith("path=/next\n")


EXITING = """
import logging, sys
from app.logconfig import FORMAT, IsoFormatter
from app.observability import requestlog
logger = logging.Logger("oauth2.request", logging.NOTSET)
logger.parent = logging.Logger("root", logging.INFO)
handler = logging.StreamHandler(open(sys.argv[1], "w"))
handler.setFormatter(IsoFormatter(FORMAT))
logger.parent.addHandler(handler)
records = requestlog._Records(logger)
for n in range(300):
    records.emit({"method": "GET", "path": f"/{n}"}, 1.5)
"""


def test_lines_held_at_exit_are_written(tmp_path):
    """A process that ends (as a server's worker does when stopped) writes what it held."""
    out = tmp_path / "lines.log"
    subprocess.run([sys.executable, "-c", EXITING, str(out)], check=True, timeout=60)
    assert out.read_text().count("path=/") == 300


def test_a_forked_child_writes_its_own_lines_not_its_parents(tmp_path):
    records, handler = text_records()
    path = tmp_path / "child.log"
    records.emit({"method": "GET", "path": "/parent"}, 1.5)
    pid = os.fork()
    if pid == 0:  # the child: its own stream, its own line, nothing of its parent's
        try:
            handler.stream = open(path, "w")  # noqa: SIM115 - closed by _exit
            records.emit({"method": "GET", "path": "/child"}, 1.5)
            direct.flush()
            handler.stream.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert path.read_text().splitlines()[-1].endswith("path=/child")
    assert path.read_text().count("path=") == 1
    assert written(handler).count("path=/parent") == 1


def test_past_the_bound_a_request_writes_the_lines_itself(monkeypatch):
    """A stream that takes nothing (a full pipe) holds requests up, never memory."""
    monkeypatch.setattr(direct, "HELD_MAX", 5)
    stuck = direct.Writer()
    stuck.thread = threading.Thread()  # a writer thread that never writes
    monkeypatch.setattr(direct, "WRITER", stuck)
    records, handler = text_records()
    for n in range(5):
        records.emit({"method": "GET", "path": f"/{n}"}, 1.5)
    assert len(stuck.held) == 5 and handler.stream.getvalue() == ""
    records.emit({"method": "GET", "path": "/5"}, 1.5)  # the sixth: written by its request
    assert len(stuck.held) == 0
    assert handler.stream.getvalue().count("path=/") == 6


def test_a_batch_goes_out_in_writes_a_shared_pipe_keeps_whole():
    """Several workers share one stderr pipe: each write of the writer is whole lines of
    at most PIPE_BUF bytes, as each line alone was (a longer line goes alone)."""
    records, handler = text_records()
    writes: list[str] = []
    handler.stream = SimpleNamespace(write=writes.append, flush=lambda: None)
    paths = [f"/{'é' * (n % 7)}{'x' * (n * 37 % 180)}" for n in range(300)] + ["/" + "y" * 9000]
    for path in paths:
        records.emit({"method": "GET", "path": path}, 1.5)
    direct.flush()
    assert len(writes) > 10
    for chunk in writes:
        assert chunk.endswith("\n")
        assert len(chunk.encode()) <= direct.ATOMIC or chunk.count("\n") == 1
    lines = "".join(writes).splitlines()
    assert [line.rsplit("path=", 1)[1] for line in lines] == paths


def test_a_line_that_fails_to_render_is_reported_alone(monkeypatch):
    records, handler = text_records()
    failed: list[logging.LogRecord] = []
    handler.handleError = failed.append  # type: ignore[method-assign]
    line = records.line

    def rendering(kind, fields, now, request_id):
        if fields["path"] == "/bad":
            raise ValueError("cannot render")
        return line(kind, fields, now, request_id)

    monkeypatch.setattr(records, "line", rendering)
    for path in ("/a", "/bad", "/b"):
        records.emit({"method": "GET", "path": path}, 1.5)
    assert [x.rsplit("=", 1)[1] for x in written(handler).splitlines()] == ["/a", "/b"]
    assert [r.getMessage() for r in failed] == ["request method=GET path=/bad"]
