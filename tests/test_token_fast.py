"""Plain token answers (``app.token_app.TokenApp``): a token request's success is sent as
a plain ``Answer`` made without a response object, field for field and byte for byte
what Flask's own path sends; every refusal and error is Flask's path's response, and
what each request counts (budgets, failures, the request line) is the same either way."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask, request_finished
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from app.lean import Answer
from app.paths import TOKEN
from app.storage import StorageUnavailable
from app.token_app import TokenApp
from tests.conftest import REDIRECT, basic, close_app, exchange, get_code
from tests.oauth2.conftest import make_app
from tests.oauth2.dpop_helpers import Prover
from tests.test_token_app import answer, flask_path

FORM = "application/x-www-form-urlencoded"
CC = {"grant_type": "client_credentials"}
#: Budgets and failure counts no test here reaches: the same request sent both ways one
#: after the other must meet the same limits.
LIMITS = {
    "token": "1000000/minute",
    "token_ip": "1000000/minute",
    "lockout_after": 1000000,
    "client_lockout_after": 1000000,
}


@pytest.fixture
def app(tmp_path, dummy_site) -> Iterator[Flask]:
    app = make_app(tmp_path, dummy_site, limits=LIMITS)
    yield app
    close_app(app)


@pytest.fixture
def token_app(app) -> TokenApp:
    return app.extensions["oauth2.token_app"]


@pytest.fixture
def plain(monkeypatch) -> list[str]:
    """What the plain way made of each grant's answer: ``Answer`` or ``Response``."""
    made: list[str] = []
    real = TokenApp._answer

    def spy(self, status, body, headers):
        result = real(self, status, body, headers)
        made.append(type(result).__name__)
        return result

    monkeypatch.setattr(TokenApp, "_answer", spy)
    return made


def both(token_app: Flask, data: Any, headers: dict[str, str], **kw: Any) -> tuple[Any, Any]:
    """The same ``POST /token`` the short way, then Flask's own way."""
    headers = {**headers, "X-Request-Id": "same-id"}
    kw.setdefault("content_type", FORM)
    lean = Client(token_app).post(TOKEN, data=data, headers=headers, **kw)
    flask = flask_path(token_app).post(TOKEN, data=data, headers=headers, **kw)
    return lean, flask


def refresh_tokens(client, count: int) -> list[str]:
    return [exchange(client, get_code(client)).get_json()["refresh_token"] for _ in range(count)]


def test_client_credentials_are_answered_plainly_as_flask_would(token_app, plain):
    lean, flask = both(token_app, urlencode({**CC, "scope": "profile"}), basic())
    assert lean.status_code == 200 and lean.get_json()["access_token"]
    assert plain == ["Answer"]  # Flask's own path does not ask the plain way
    assert answer(lean) == answer(flask)
    assert lean.headers["X-Request-Id"] == "same-id"
    assert lean.headers["Content-Length"] == str(len(lean.get_data()))


def test_a_refresh_and_a_code_are_answered_plainly_as_flask_would(client, token_app, plain):
    first, second = refresh_tokens(client, 2)
    codes = [get_code(client), get_code(client)]
    plain.clear()  # the exchanges above went the plain way too
    lean, flask = both(token_app, {"grant_type": "refresh_token", "refresh_token": first}, basic())
    flask_too = flask_path(token_app).post(
        TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": second},
        headers={**basic(), "X-Request-Id": "same-id"},
    )
    assert lean.status_code == 200 and flask_too.status_code == 200
    assert flask.status_code == 400  # the same token again: taken already
    assert answer(lean) == answer(flask_too)
    data = {"grant_type": "authorization_code", "redirect_uri": REDIRECT}
    sent = [{**data, "code": code} for code in codes]
    lean = Client(token_app).post(TOKEN, data=sent[0], headers={**basic(), "X-Request-Id": "i"})
    flask = flask_path(token_app).post(
        TOKEN, data=sent[1], headers={**basic(), "X-Request-Id": "i"}
    )
    assert lean.status_code == 200, lean.get_json()
    assert answer(lean) == answer(flask)
    assert plain.count("Answer") == 2


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (CC, basic(secret="wrong")),
        (CC, {}),
        ({"grant_type": "password", "username": "alice", "password": "x"}, basic()),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, basic()),
        ({**CC, "scope": "nosuch"}, basic()),
        ({**CC, "client_secret": "hunter2"}, basic()),
        ({}, basic()),
    ],
)
def test_refusals_are_flasks_own_responses(token_app, plain, data, headers):
    lean, flask = both(token_app, urlencode(data), headers)
    assert 400 <= lean.status_code < 500
    assert answer(lean) == answer(flask)
    assert "Answer" not in plain


def test_not_plain_with_origin_dpop_a_new_hook_or_a_listener(app, token_app, plain):
    origin = {**basic(), "Origin": "https://a.example"}
    lean, flask = both(token_app, urlencode(CC), origin)
    assert lean.status_code == 200 and answer(lean) == answer(flask)
    prover = Prover()  # a proof of its own each way (a replayed one is refused)
    dpop = [{**basic(), "DPoP": prover.proof(), "X-Request-Id": "d"} for _ in range(2)]
    lean = Client(token_app).post(TOKEN, data=CC, headers=dpop[0])
    flask = flask_path(token_app).post(TOKEN, data=CC, headers=dpop[1])
    assert answer(lean) == answer(flask)
    assert plain == []
    seen: list[int] = []

    def listener(sender, response, **_):
        seen.append(response.status_code)

    with request_finished.connected_to(listener, token_app):
        assert Client(token_app).post(TOKEN, data=CC, headers=basic()).status_code == 200
    assert seen == [200] and plain == []
    token_app.after_request_funcs[None].append(lambda response: response)
    try:
        assert Client(token_app).post(TOKEN, data=CC, headers=basic()).status_code == 200
        assert plain == []
    finally:
        token_app.after_request_funcs[None].pop()
    assert Client(token_app).post(TOKEN, data=CC, headers=basic()).status_code == 200
    assert plain == ["Answer"]


def test_budgets_failures_and_the_request_line_count_once(app, token_app, plain, caplog):
    limits = app.extensions["oauth2"].limits
    for _ in range(3):
        assert Client(token_app).post(TOKEN, data=CC, headers=basic(secret="no")).status_code == 401
    assert not limits.client_id.check("test").clean
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oauth2.request"):
        first = Client(token_app).post(TOKEN, data=CC, headers=basic())
        second = Client(token_app).post(TOKEN, data=CC, headers=basic())
    assert plain == ["Answer", "Answer"]
    assert limits.client_id.check("test").clean  # the success forgave the failures
    left = [int(r.headers["RateLimit"].split("r=")[1].split(";")[0]) for r in (first, second)]
    assert left[0] - left[1] == 1
    lines = [r for r in caplog.records if r.name == "oauth2.request"]
    assert [(r.fields["status"], r.fields["route"], r.fields["client_id"]) for r in lines] == [
        (200, TOKEN, "test"),
        (200, TOKEN, "test"),
    ]


def test_a_storage_fault_is_flasks_503(app, token_app, plain, monkeypatch):
    storage = app.extensions["oauth2"].storage

    def down(*args, **kwargs):
        raise StorageUnavailable("down (test)")

    monkeypatch.setattr(type(storage.tokens), "put", down)
    lean, flask = both(token_app, urlencode(CC), basic())
    assert lean.status_code == 503
    assert answer(lean) == answer(flask)
    assert plain == []  # the write failed before the grant answered


PARAMS = st.dictionaries(
    st.sampled_from(
        ["grant_type", "scope", "refresh_token", "code", "client_id", "client_secret", "x"]
    ),
    st.one_of(
        st.sampled_from(
            ["client_credentials", "refresh_token", "profile", "test", "", "a b", "admin"]
        ),
        st.text(max_size=12),
    ),
    max_size=4,
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.sampled_from(
            [basic()["Authorization"], basic(secret="x")["Authorization"], "Basic ###", "Bearer x"]
        ),
        "Origin": st.sampled_from(["https://a.example", "null"]),
        "Content-Type": st.sampled_from([FORM, "application/json", "text/plain", FORM + "; x=1"]),
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=PARAMS, headers=HEADERS, cc=st.booleans())
def test_any_token_request_answers_as_flask_does(token_app, params, headers, cc):
    if cc:
        params = {**params, "grant_type": "client_credentials"}
    content_type = headers.pop("Content-Type", FORM)
    lean, flask = both(token_app, urlencode(params), headers, content_type=content_type)
    assert lean.status_code != 500
    assert answer(lean) == answer(flask)


def test_an_answer_sends_what_its_response_would(app):
    answer_ = Answer(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")], b"{}"
    )
    response = answer_.response(app.response_class)
    assert response.status_code == 200 and response.get_data() == b"{}"
    assert response.headers.to_wsgi_list() == answer_.headers


def test_plain_answers_stand_for_the_token_view_as_it_is(token_app):
    from app.cors import any_origin, public_client_origins
    from app.limits import token_limits
    from app.token_app import _known_token_view
    from app.views import token as views

    assert token_app.plain_hooks is not None
    assert _known_token_view(views.token)

    def token():
        return views._respond("revocation")

    def other():
        return views._respond(None)

    assert not _known_token_view(public_client_origins(token_limits(token)))  # another call
    assert not _known_token_view(public_client_origins(token_limits(other)))  # another scope
    assert not _known_token_view(any_origin(token_limits(views.token.__wrapped__.__wrapped__)))
    assert not _known_token_view(public_client_origins(views.token.__wrapped__.__wrapped__))
    assert not _known_token_view(views.token.__wrapped__)


def test_a_head_is_never_sent_a_plain_body(token_app):
    from werkzeug.test import EnvironBuilder

    from app.lean import Answer as Plain

    sent: list[Any] = []
    environ = EnvironBuilder(method="HEAD", path=TOKEN).get_environ()
    fields = [("Content-Type", "application/json"), ("Content-Length", "2")]
    body = token_app._send(Plain("200 OK", fields, b"{}"), environ, lambda *a: sent.append(a))
    assert b"".join(body) == b"" and sent[0][0] == "200 OK"
