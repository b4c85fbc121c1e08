"""Request ids, the one structured line per request, and audit lines in the same format."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.logconfig import IsoFormatter, JsonFormatter
from app.observability import requestlog
from tests.conftest import REDIRECT, basic, bearer, exchange, get_code


@contextlib.contextmanager
def captured(level: int) -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """Everything ``oauth2.*`` logs at ``level`` and above, in the JSON format."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("oauth2")
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield out, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@pytest.fixture
def logged() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """Everything ``oauth2.*`` logs at INFO and above, in the JSON format."""
    with captured(logging.INFO) as found:
        yield found


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_safe_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-Id": "lb-7f3a:01.2_x=="})
    assert response.headers["X-Request-Id"] == "lb-7f3a:01.2_x=="


@pytest.mark.parametrize(
    "offered", [None, "", "a b", "x" * 129, "evil\tX-Injected: 1", "é", "<script>"]
)
def test_a_missing_or_unsafe_request_id_is_replaced(client, offered):
    headers = {} if offered is None else {"X-Request-Id": offered}
    response = client.get("/no-such-page", headers=headers)
    assert response.status_code == 404
    made = response.headers["X-Request-Id"]
    assert made != offered
    assert len(made) == 32 and int(made, 16) >= 0
    assert client.get("/healthz").headers["X-Request-Id"] != made  # new for each request


def test_a_flow_logs_one_json_line_per_request_and_never_a_secret(client, logged):
    out, _ = logged
    code = get_code(client, state="st4te-value")
    token = exchange(client, code).get_json()
    access, refresh = token["access_token"], token["refresh_token"]
    assert client.get("/api/profile", headers=bearer(access)).status_code == 200
    refreshed = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        headers={**basic(), "X-Request-Id": "refresh-1"},
    )
    assert refreshed.status_code == 200
    revoked = client.post(
        "/revoke", data={"token": refreshed.get_json()["access_token"]}, headers=basic()
    )
    assert revoked.status_code == 200

    text = out.getvalue()
    for secret in (
        code,
        access,
        refresh,
        refreshed.get_json()["access_token"],
        refreshed.get_json()["refresh_token"],
        "hunter2",
        "st4te-value",
        REDIRECT,
    ):
        assert secret not in text
    found = lines(out)
    requests = [line for line in found if line["logger"] == "oauth2.request"]
    assert len(requests) == len({line["request_id"] for line in requests}) >= 6
    for line in requests:
        assert set(line) >= {
            "ts",
            "level",
            "logger",
            "message",
            "request_id",
            "method",
            "path",
            "route",
            "status",
            "duration_ms",
            "ip",
        }
        assert line["ts"].endswith("Z") and line["level"] == "NOTICE"
        assert line["message"] == "request"
        assert "?" not in line["path"]
    consented = next(
        line for line in requests if line["path"] == "/authorize" and line["method"] == "POST"
    )
    assert consented["client_id"] == "test" and consented["status"] == 302
    api = next(line for line in requests if line["path"] == "/api/profile")
    assert api["route"] == "/api/<path:name>" and api["status"] == 200
    assert api["client_id"] == "test"
    assert len(api["user"]) == 16 and api["user"] != "alice"
    refresh_line = next(line for line in requests if line["request_id"] == "refresh-1")
    assert refresh_line["path"] == "/token" and refresh_line["client_id"] == "test"
    assert refresh_line["user"] == api["user"]  # the same user, the same hash
    # The audit event of that request is a JSON line with the same request id.
    audit = [line for line in found if line["logger"] == "oauth2.audit"]
    refreshed_event = next(line for line in audit if line["message"] == "token_refreshed")
    assert refreshed_event["request_id"] == "refresh-1"
    assert refreshed_event["client_id"] == "test"
    assert all(line.get("request_id") for line in audit)


def test_the_text_format_carries_the_same_fields(client, logged):
    out, handler = logged
    handler.setFormatter(IsoFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    client.get("/healthz?secret=abc", headers={"X-Request-Id": "t-1"})
    line = out.getvalue().splitlines()[-1]
    assert " NOTICE oauth2.request: request method=GET path=/healthz route=/healthz " in line
    assert "status=200" in line and "request_id=t-1" in line
    assert "abc" not in line


def test_request_lines_can_be_turned_off(tmp_path, dummy_site, closing, logged):
    from app import create_app
    from tests.conftest import base_config

    out, _ = logged
    app = closing(create_app(base_config(tmp_path, dummy_site, logging={"requests": False})))
    response = app.test_client().get("/healthz")
    assert response.headers["X-Request-Id"]
    assert "oauth2.request" not in out.getvalue()


def test_the_text_line_is_the_fields_line_of_its_fields(client, logged):
    """The cheap path renders what ``fields_line`` of the line's fields renders: odd
    paths, ids with ``=`` and every value escaped alike."""
    from app.audit import fields_line

    out, handler = logged
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("oauth2.request").addHandler(keep)
    try:
        handler.setFormatter(IsoFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        client.get('/nope/"quoted" x=1/\u202e', headers={"X-Request-Id": "lb=="})
    finally:
        logging.getLogger("oauth2.request").removeHandler(keep)
    (record,) = records
    assert record.getMessage() == "request " + fields_line(record.fields)  # type: ignore[attr-defined]
    line = out.getvalue().splitlines()[-1]
    assert line.endswith(" NOTICE oauth2.request: " + record.getMessage())
    assert 'request_id="lb=="' in line and "\u202e" not in line
    assert record.levelname == "NOTICE" and record.name == "oauth2.request"
    assert record.process and record.thread and record.created <= time.time()


def test_made_ids_are_uuid4_hex(client):
    made = client.get("/healthz").headers["X-Request-Id"]
    assert uuid.UUID(hex=made).version == 4 and uuid.UUID(hex=made).hex == made


def test_ids_read_in_batches_are_each_uuid4_and_never_repeat():
    """Ids come from one read of the random source per batch: across batches every one
    is a version 4 UUID's hex, and none repeats."""
    made = [requestlog.new_id() for _ in range(requestlog.IDS_AT_ONCE * 3 + 7)]
    assert len(set(made)) == len(made)
    for rid in made:
        parsed = uuid.UUID(hex=rid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == rid


def test_a_forked_worker_makes_its_own_ids_not_its_parents():
    """A worker forked while its parent holds unread ids of a batch makes fresh ones: the
    parent's next ids never show up in the child."""
    requestlog.new_id()  # a batch is open in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(requestlog.new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parents = [requestlog.new_id() for _ in range(8)]
    childs = [child[at : at + 32] for at in range(0, len(child), 32)]
    assert len(childs) == 8 and not set(childs) & set(parents)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_iso_time_renders_as_datetime_does(created):
    from datetime import UTC, datetime

    from app.logconfig import iso_time

    moment = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert iso_time(created) == moment[:-6] + "Z"


def test_the_json_line_is_what_json_dumps_made(client, logged):
    out, _ = logged
    client.get("/healthz", headers={"X-Request-Id": "j-1"})
    line = out.getvalue().splitlines()[-1]
    entry = json.loads(line)
    assert line == json.dumps(entry, default=str)
    assert list(entry)[:5] == ["ts", "level", "logger", "message", "request_id"]
    assert entry["request_id"] == "j-1" and entry["route"] == "/healthz"


_VALUES = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "a=b", "a b", '"', "\\", "\u202e", "lb==", "/api/<path:name>"]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(suppress_health_check=[HealthCheck.too_slow])  # a loaded machine's generation
@given(st.dictionaries(st.sampled_from(["method", "path", "route", "user", "ip"]), _VALUES))
def test_the_line_renders_as_fields_line(fields):
    """The line's own rendering (plain values without a ``printable`` call each) is
    ``fields_line``'s, byte for byte, whatever the values."""
    from app.audit import fields_line
    from app.observability.requestlog import _Line

    assert str(_Line(fields)) == fields_line(fields)


def test_the_user_hash_is_kept_per_user(client, logged, monkeypatch):
    """The user's hash is worked out once per user (then kept, bounded), and each line
    still names the user by the same keyed hash."""
    from app.observability import requestlog

    out, _ = logged
    made: list[str] = []
    real = requestlog.user_hash
    monkeypatch.setattr(
        requestlog, "user_hash", lambda user, key=None: made.append(user) or real(user, key)
    )
    # The hooks were registered with the app: a new app takes the patched function.
    from app import create_app

    app = create_app(client.application.extensions["oauth2"].settings)
    tester = app.test_client()
    code = get_code(tester)
    access = exchange(tester, code).get_json()["access_token"]
    for _ in range(3):
        assert tester.get("/api/profile", headers=bearer(access)).status_code == 200
    users = [
        line["user"]
        for line in lines(out)
        if line["logger"] == "oauth2.request" and line.get("path") == "/api/profile"
    ]
    assert len(users) == 3 and len(set(users)) == 1
    assert users[0] == real(made[0], str(app.secret_key).encode())
    named = [line for line in lines(out) if line.get("user") == users[0]]
    # Once per app (the main one, the token app's and the gateway's), not once a line.
    assert made == [made[0]] * 3 and len(named) >= 6
    # The consent page's line names the user from the signed-in session (its cookie).
    pages = [line for line in lines(out) if line.get("path") == "/authorize"]
    assert pages and all(line.get("user") == users[0] for line in pages)


def test_a_session_that_cannot_be_saved_is_logged_and_counted_as_its_503(
    tmp_path, dummy_site, closing, logged, monkeypatch
):
    """The session is saved after the ``after_request`` hooks, and a failed save turns
    the answer into a 503: the line and the request count must say 503, not the view's 302."""
    from app import create_app
    from app.secrets_hash import hash_random_secret
    from app.storage import StorageUnavailable
    from tests.conftest import base_config
    from tests.factories import csrf_from, login
    from tests.test_metrics import TOKEN, scrape, value

    out, _ = logged
    metrics = {"enabled": True, "token_hash": hash_random_secret(TOKEN)}
    app = closing(create_app(base_config(tmp_path, dummy_site, metrics=metrics)))
    client = app.test_client()
    login(client)
    page = client.get("/review")
    state = app.extensions["oauth2"]
    before = scrape(client)

    def down(*args, **kwargs):
        raise StorageUnavailable("storage is down (test)")

    monkeypatch.setattr(state.storage.session, "put", down)
    monkeypatch.setattr(state.storage.session, "discard", down)
    response = client.post(
        "/logout", data={"csrf_token": csrf_from(page.text)}, headers={"X-Request-Id": "out-1"}
    )
    assert response.status_code == 503
    assert response.headers["X-Request-Id"] == "out-1"
    monkeypatch.undo()
    after = scrape(client)
    labels = {"route": "/logout", "method": "POST"}
    counted = {
        status: value(after, "oauth2_http_requests_total", status=status, **labels)
        - value(before, "oauth2_http_requests_total", status=status, **labels)
        for status in ("302", "503")
    }
    assert counted == {"302": 0, "503": 1}
    [line] = [
        line
        for line in lines(out)
        if line["logger"] == "oauth2.request" and line.get("request_id") == "out-1"
    ]
    assert line["status"] == 503 and line["path"] == "/logout"


def test_an_answer_that_fails_to_finalize_is_logged_once_as_its_500(
    tmp_path, dummy_site, closing, logged
):
    """A hook that raises makes Flask answer its 500 (whose own finalizing fails again
    and is let go): the one line says 500, not the view's status, and not twice."""
    from flask import request

    from app import create_app
    from tests.conftest import base_config

    out, _ = logged
    app = closing(create_app(base_config(tmp_path, dummy_site)))

    @app.after_request
    def failing(response):
        if request.path == "/login":
            raise RuntimeError("a hook failed (test)")
        return response

    response = app.test_client().get("/login", headers={"X-Request-Id": "fin-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-Id"] == "fin-1"
    found = [
        line
        for line in lines(out)
        if line["logger"] == "oauth2.request" and line.get("request_id") == "fin-1"
    ]
    assert [(line["path"], line["status"]) for line in found] == [("/login", 500)]


def test_passing_probes_can_go_without_lines(tmp_path, dummy_site, closing, logged, monkeypatch):
    """``logging.probe_lines: false``: no line for a passing ``/healthz`` or ``/readyz``,
    a line for a failing one, and every other request's line as before."""
    from app import create_app
    from tests.conftest import base_config

    out, _ = logged
    config = base_config(tmp_path, dummy_site, logging={"probe_lines": False})
    app = closing(create_app(config))
    client = app.test_client()
    assert client.get("/healthz", headers={"X-Request-Id": "probe-1"}).status_code == 200
    assert client.get("/readyz", headers={"X-Request-Id": "probe-2"}).status_code == 200
    state = app.extensions["oauth2"]

    def down(timeout: float) -> None:
        raise OSError("the site is down (test)")

    monkeypatch.setattr(state.adapter, "ready", down)
    assert client.get("/readyz", headers={"X-Request-Id": "probe-3"}).status_code == 503
    assert client.get("/login", headers={"X-Request-Id": "page-1"}).status_code == 200
    found = {
        line["request_id"]: line["status"]
        for line in lines(out)
        if line["logger"] == "oauth2.request"
    }
    assert found == {"probe-3": 503, "page-1": 200}


def test_events_that_call_for_a_look_are_logged_at_the_default_level(client):
    """At ``notice`` (the default) a replayed code's event is logged, as a WARNING in our
    format; an ordinary event (a token issued) is not."""
    with captured(requestlog.NOTICE) as (out, _):
        code = get_code(client)
        assert exchange(client, code).status_code == 200
        assert exchange(client, code).status_code == 400  # the code again: its grant revoked
    audit = [line for line in lines(out) if line["logger"] == "oauth2.audit"]
    assert [(line["level"], line["message"]) for line in audit] == [("WARNING", "code_replay")]
    assert audit[0]["client_id"] == "test" and audit[0]["request_id"]
