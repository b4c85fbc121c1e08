"""The request line written straight to the standard handler's stream (``direct``): the
same bytes as the record path, and the record path whenever the set-up is not ours."""

from __future__ import annotations

import io
import json
import logging
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
    """What the handler's stream holds once the held request lines are written."""
    direct.HOLDER.flush()
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


_TEXTS = st.one_of(st.none(), st.text(max_size=12), _FIELD_VALUES.filter(lambda v: type(v) is str))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    facts=st.tuples(
        st.text(max_size=8),
        st.text(alphabet="/abc-_.~%\u202e é", max_size=260),
        _TEXTS,
        st.integers(min_value=100, max_value=599),
        st.floats(min_value=0, max_value=1e4),
        _TEXTS,
        _TEXTS,
        _TEXTS,
        st.text(min_size=1, max_size=20),
    ),
    now=st.floats(min_value=0, max_value=4e9),
    json=st.booleans(),
)
def test_a_line_held_as_its_facts_is_the_line_of_its_fields(request_id, facts, now, json):
    """A request's line is held as its facts and its fields made when it is written: the
    path clipped, the time in ms to two places, the user hashed; then the same bytes as
    the formatter's line of those fields."""
    formatter = JsonFormatter() if json else IsoFormatter(FORMAT)
    logger, handler = standalone(formatter)
    records = requestlog._Records(logger)
    records.hashed = lambda user: "h:" + user
    records.emit(facts, now)
    method, path, rule, status, took, client, user, ip, rid = facts
    fields = {
        "method": method,
        "path": path[: requestlog.MAX_PATH],
        "route": rule,
        "status": status,
        "duration_ms": round(took * 1000, 2),
        "client_id": client,
        "user": "h:" + user if user else None,
        "ip": ip,
        "request_id": rid,
    }
    record = records.make(requestlog._Line(fields), now)
    assert written(handler) == formatter.format(record) + "\n"


@pytest.mark.parametrize(
    ("facts", "straight"),
    [
        (("GET", "/api/x", "/api/<path:name>", 200, 0.0012345, "test", "7", "::1", "r1"), True),
        (("POST", "/token", None, 429, 0.5, None, None, None, "r2"), True),
        (("GET", "/a b", None, 404, 0.001, None, None, "127.0.0.1", "r3"), False),  # quoted
        (("GET", "/x!", None, 200, 0.001, None, None, None, "r5"), True),  # "!" is plain
        (("GET", "/x", "", 200, 0.001, None, None, None, "r4"), False),  # an empty string
    ],
)
def test_a_plain_line_is_made_straight_from_its_facts(facts, straight):
    """The common line is made from the request's facts directly (no fields dict), to
    the same text; any line needing quotes goes the fields' way."""
    records = requestlog._Records(logging.getLogger("oauth2.test.straight"))
    records.hashed = lambda user: "h" + user
    made = records.facts_text(facts)
    assert (made is not None) is straight
    text = requestlog.line_text(records.fields(facts))
    if straight:
        assert made == text
    assert records.render((records, direct.TEXT, 0.0, facts, "r")).endswith("request " + text)


_SOME = st.sampled_from(["GET", "/api/x", "a b", "", "!", "é", "r=1", "127.0.0.1", "7"])


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.tuples(
            _SOME, _SOME, st.one_of(st.none(), _SOME), st.integers(100, 599),
            st.floats(min_value=0, max_value=10), st.one_of(st.none(), _SOME),
            st.one_of(st.none(), _SOME), st.one_of(st.none(), _SOME), _SOME,
        ),
        max_size=40,
    ),
    kept=st.integers(min_value=1, max_value=4),
)  # fmt: skip
def test_the_parts_a_worker_keeps_make_the_same_text(lines, kept):
    """One app renders line after line with the parts of lines it keeps (few kept, so
    they are dropped and made again): each line, plain or not, is the text its fields
    make, and a part once seen not plain still sends its line the fields' way."""
    records = requestlog._Records(logging.getLogger("oauth2.test.kept"))
    records.hashed = lambda user: "h" + user
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requestlog, "KEPT_PARTS", kept)
        for facts in lines:
            made = records.facts_text(facts)
            text = requestlog.line_text(records.fields(facts))
            assert made is None or made == text
            rendered = records.render((records, direct.TEXT, 0.0, facts, "r"))
            assert rendered.endswith("request " + text)
        assert len(records._heads) <= kept and len(records._tails) <= kept


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
    direct.HOLDER.flush()
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


def test_held_lines_go_out_together_when_old_or_many_or_elsewhere():
    """Held lines are written in one write: once the oldest is ``seconds`` old (the next
    line or the holder's thread), once 64 KiB are held, before a line for another
    handler, on ``flush``; with 0 seconds each line at once."""
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    first, second = (logging.StreamHandler(Stream()) for _ in range(2))
    holder = direct.Holder(seconds=60)
    holder.write(first, "a", lambda: logging.makeLogRecord({}))
    holder.write(first, "b", lambda: logging.makeLogRecord({}))
    assert writes == []
    holder.write(second, "c", lambda: logging.makeLogRecord({}))  # another handler's
    assert writes == ["a\nb\n"]
    holder.write(second, "x" * direct.HELD_MOST, lambda: logging.makeLogRecord({}))
    assert writes == ["a\nb\n", "c\n", "x" * direct.HELD_MOST + "\n"]  # a long line alone
    holder.write(first, "d", lambda: logging.makeLogRecord({}))
    holder.flush()
    assert writes[-1] == "d\n" and first.stream.getvalue() == "a\nb\nd\n"
    holder.seconds = 0
    holder.write(first, "e", lambda: logging.makeLogRecord({}))
    assert writes[-1] == "e\n"
    holder.seconds = 0.05  # its thread writes what is old enough, no line needed
    holder.write(first, "f", lambda: logging.makeLogRecord({}))
    deadline = time.monotonic() + 5
    while writes[-1] != "f\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes[-1] == "f\n"


def test_the_next_line_writes_lines_old_enough(monkeypatch):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(direct.time, "monotonic", lambda: clock.now)
    handler = logging.StreamHandler(io.StringIO())
    holder = direct.Holder(seconds=10)
    holder._started = True  # no thread: only the next line writes them
    holder.write(handler, "g", lambda: logging.makeLogRecord({}))
    clock.now += 9.9
    holder.write(handler, "h", lambda: logging.makeLogRecord({}))
    assert handler.stream.getvalue() == ""
    clock.now += 0.1
    holder.write(handler, "i", lambda: logging.makeLogRecord({}))
    assert handler.stream.getvalue() == "g\nh\ni\n"


def test_a_held_write_error_goes_to_handle_error_with_the_first_record():
    handler = logging.StreamHandler(SimpleNamespace(write=lambda text: 1 / 0))
    failed: list[logging.LogRecord] = []
    handler.handleError = failed.append  # type: ignore[method-assign]
    holder = direct.Holder(seconds=60)
    holder.write(handler, "a", lambda: logging.makeLogRecord({"msg": "first"}))
    holder.write(handler, "b", lambda: logging.makeLogRecord({"msg": "second"}))
    holder.flush()
    assert [record.getMessage() for record in failed] == ["first"]


def test_held_lines_go_out_whole_in_pipe_sized_writes_in_their_order():
    """Several threads' lines: every line written once, whole, in the order each thread
    sent its own; every write of several lines fits a pipe's atomic write."""
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return super().write(text)

    handler = logging.StreamHandler(Stream())
    holder = direct.Holder(seconds=0.01)

    def send(name: str) -> None:
        for n in range(300):
            holder.write(
                handler, f"{name}-{n:03d} " + "é" * (n % 50), lambda: logging.makeLogRecord({})
            )

    threads = [threading.Thread(target=send, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    holder.flush()
    lines = "".join(writes).splitlines()
    assert sorted(lines) == sorted(
        f"{x}-{n:03d} " + "é" * (n % 50) for x in "abcd" for n in range(300)
    )
    for name in "abcd":
        own = [line.split()[0] for line in lines if line.startswith(name)]
        assert own == sorted(own)
    assert all(text.endswith("\n") for text in writes)
    assert all(len(text.encode()) <= direct.WRITE_MOST for text in writes if text.count("\n") > 1)


def test_a_broken_stream_fails_no_request_and_the_thread_writes_on(monkeypatch):
    handler = logging.StreamHandler(SimpleNamespace(write=lambda text: 1 / 0))

    def failing(record: logging.LogRecord) -> None:
        raise ValueError("stderr is closed")

    handler.handleError = failing  # type: ignore[method-assign]
    holder = direct.Holder(seconds=0.01)
    holder.write(handler, "a", lambda: logging.makeLogRecord({}))
    time.sleep(0.05)
    holder.write(handler, "b", lambda: logging.makeLogRecord({}))  # no error raised here
    holder.flush()
    good = logging.StreamHandler(io.StringIO())
    holder.write(good, "c", lambda: logging.makeLogRecord({}))
    deadline = time.monotonic() + 5
    while good.stream.getvalue() != "c\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert good.stream.getvalue() == "c\n"  # written by the thread, still running


def test_a_held_line_is_rendered_later_with_its_own_request_id(monkeypatch):
    """Lines are held as their facts and rendered when written: the JSON line names the
    request it was held for, whatever request is being served when it is written."""
    monkeypatch.setattr(direct.HOLDER, "seconds", 60)
    logger, handler = standalone(JsonFormatter())
    records = requestlog._Records(logger)
    for rid in ("rid-a", "rid-b"):
        token = REQUEST_ID.set(rid)
        records.emit({"method": "GET", "path": "/" + rid}, 2.0)
        REQUEST_ID.reset(token)
    assert handler.stream.getvalue() == ""  # held, not rendered nor written
    token = REQUEST_ID.set("rid-later")
    try:
        lines = written(handler).splitlines()
    finally:
        REQUEST_ID.reset(token)
    assert [json.loads(line)["request_id"] for line in lines] == ["rid-a", "rid-b"]


def test_a_line_that_fails_to_render_is_reported_and_the_others_are_written():
    class Broken:
        def render(self, entry: tuple) -> str:  # type: ignore[type-arg]
            raise ValueError("cannot render")

        def record(self, entry: tuple) -> logging.LogRecord:  # type: ignore[type-arg]
            return logging.makeLogRecord({"msg": entry[1]})

    handler = logging.StreamHandler(io.StringIO())
    failed: list[logging.LogRecord] = []
    handler.handleError = failed.append  # type: ignore[method-assign]
    holder = direct.Holder(seconds=60)
    holder.write(handler, "a", lambda: logging.makeLogRecord({}))
    holder.hold(handler, (Broken(), "broken"))
    holder.write(handler, "b", lambda: logging.makeLogRecord({}))
    holder.flush()
    assert handler.stream.getvalue() == "a\nb\n"
    assert [record.getMessage() for record in failed] == ["broken"]
