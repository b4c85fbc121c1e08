"""Fuzzing every endpoint with arbitrary bytes: never a 5xx, and a refusal changes nothing.

Each example sends one request to one endpoint, anonymously or signed in, with
arbitrary bytes in the query string, the body, and the ``Authorization``, ``Cookie``
and ``Content-Type`` headers (header bytes are decoded as latin-1, as a WSGI server
passes them). Values are drawn from raw bytes, text, and values that get a request past
the first checks (client ids, the redirect URI, a live CSRF token, transaction id and
tokens), so the checks behind those are reached too. A refused request (4xx, or an
error redirect) must leave every table as it was, except the audit trail and the
sign-in lockout counters, which record refusals on purpose.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.limits.counters import PREFIX
from tests.conftest import (
    CHALLENGE,
    REDIRECT,
    VERIFIER,
    authorize_url,
    csrf_from,
    exchange,
    get_code,
    hidden,
    login,
)
from tests.oauth2.conftest import open_app
from tests.oidc.logout_helpers import AFTER, give, id_token, session_of

#: Stand-ins replaced, per example, by live values of the session the request runs in.
LIVE = (b"live.csrf", b"live.txn", b"live.access", b"live.refresh", b"live.code", b"live.hint")

PARAMS = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "response_mode",
    "code_challenge",
    "code_challenge_method",
    "grant_type",
    "code",
    "refresh_token",
    "code_verifier",
    "client_secret",
    "token",
    "token_type_hint",
    "transaction_id",
    "allow",
    "cancel",
    "csrf_token",
    "username",
    "password",
    "next",
    "nonce",
    "prompt",
    "max_age",
    "login_hint",
    "access_token",
    "id_token_hint",
    "post_logout_redirect_uri",
    "logout_hint",
    "ui_locales",
    "display",
]

WORDS = [
    "test",
    "sp-demo",
    "spa",
    "code-only",
    "reader",
    REDIRECT,
    AFTER,
    "code",
    "token",
    "code token",
    "read-only",
    "read-write",
    "read-only read-write",
    "openid",
    "openid profile email read-only",
    "id_token",
    "id_token token",
    "n-0S6_WzA2Mj",
    "alice",
    "password",
    "hunter2",
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "S256",
    "plain",
    "query",
    "fragment",
    "access_token",
    "Allow",
    "Deny",
    "/review",
    "/authorize?response_type=code&client_id=test",
    VERIFIER,
    CHALLENGE,
    "",
    " ",
    '"',
    "\\",
    "\x00",
    "\u202e",
    "%ff",
    "none",
    "login",
    "consent",
    "none login",
    "select_account",
    "0",
    "-1",
    "1e3",
    "openid",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
    "a.b.c",
]

ENDPOINTS = [
    ("GET", "/authorize"),
    ("POST", "/authorize"),
    ("POST", "/token"),
    ("POST", "/revoke"),
    ("POST", "/introspect"),
    ("GET", "/api/profile"),
    ("POST", "/api/update_avatar"),
    ("GET", "/api/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/review"),
    ("POST", "/review"),
    ("POST", "/logout"),
    ("GET", "/userinfo"),
    ("POST", "/userinfo"),
    ("GET", "/jwks.json"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/logout"),
]

CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data; boundary=x",
    "text/plain",
    "application/x-www-form-urlencoded; charset=latin-1",
]

value_bytes = st.one_of(
    st.sampled_from(WORDS).map(str.encode),
    st.sampled_from(LIVE),
    st.binary(max_size=48),
    st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
#: Requests that succeed as they stand, per endpoint; examples start from one and change
#: a little, so the checks behind the first ones are reached as well.
AUTHORIZE = [
    f"response_type=code&client_id=test&redirect_uri={REDIRECT}&state=xyz&scope=read-only",
    f"response_type=token&client_id=sp-demo&redirect_uri={REDIRECT}&state=xyz",
    f"response_type=code&client_id=spa&redirect_uri={REDIRECT}&code_challenge={CHALLENGE}"
    "&code_challenge_method=S256",
    f"response_type=code&client_id=test&redirect_uri={REDIRECT}&scope=openid+profile&nonce=n",
    f"response_type=id_token+token&client_id=sp-demo&redirect_uri={REDIRECT}&scope=openid&nonce=n",
    f"response_type=code&client_id=test&redirect_uri={REDIRECT}&state=xyz&prompt=none"
    "&max_age=0&login_hint=alice&ui_locales=en",
    f"response_type=token&client_id=sp-demo&redirect_uri={REDIRECT}&prompt=login"
    "&id_token_hint=a.b.c&display=page",
]
TOKEN = [
    f"grant_type=authorization_code&code=live.code&redirect_uri={REDIRECT}",
    f"grant_type=authorization_code&code=live.code&redirect_uri={REDIRECT}&client_id=test"
    "&client_secret=hunter2",
    "grant_type=refresh_token&refresh_token=live.refresh",
    "grant_type=client_credentials&scope=read-only",
]
TOKEN_HINT = ["token=live.access&token_type_hint=access_token", "token=live.refresh"]
GOOD = {
    ("GET", "/authorize"): AUTHORIZE,
    ("POST", "/authorize"): [
        "transaction_id=live.txn&csrf_token=live.csrf&scope=read-only&allow=Allow",
        "transaction_id=live.txn&csrf_token=live.csrf&cancel=Deny",
    ],
    ("POST", "/token"): TOKEN,
    ("POST", "/revoke"): TOKEN_HINT,
    ("POST", "/introspect"): TOKEN_HINT,
    ("POST", "/login"): ["username=alice&password=password&csrf_token=live.csrf&next=/review"],
    ("GET", "/login"): ["next=" + quote(authorize_url(), safe="")],
    ("GET", "/review"): [f"client_id=test&redirect_uri={REDIRECT}"],
    ("POST", "/review"): ["csrf_token=live.csrf&test=on", "csrf_token=live.csrf"],
    ("POST", "/logout"): [
        "csrf_token=live.csrf",
        f"csrf_token=live.csrf&client_id=test&post_logout_redirect_uri={AFTER}&state=xyz",
        f"id_token_hint=live.hint&post_logout_redirect_uri={AFTER}&state=xyz",
    ],
    ("GET", "/logout"): [
        f"client_id=test&post_logout_redirect_uri={AFTER}&state=xyz",
        f"id_token_hint=live.hint&client_id=test&post_logout_redirect_uri={AFTER}&state=xyz",
    ],
    ("POST", "/userinfo"): ["access_token=live.access"],
}
key_bytes = st.sampled_from(PARAMS).map(str.encode) | st.binary(max_size=12)


def good_pairs(method: str, path: str) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    queries = GOOD.get((method, path), ["x=1"])
    return st.sampled_from(queries).map(
        lambda q: [tuple(p.encode().split(b"=", 1)) for p in q.split("&")]
    )


@st.composite
def pairs(draw, method: str, path: str) -> list[tuple[bytes, bytes]]:
    """A good request with a few parameters replaced, added, repeated or dropped."""
    items = list(draw(good_pairs(method, path)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, max(len(items) - 1, 0)))
        change = draw(st.sampled_from(["replace", "add", "repeat", "drop"]))
        if change == "replace" and items:
            items[where] = (items[where][0], draw(value_bytes))
        elif change == "add":
            items.append((draw(key_bytes), draw(value_bytes)))
        elif change == "repeat" and items:
            items.append((items[where][0], draw(value_bytes)))
        elif items:
            items.pop(where)
    return items


def form_encoded(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"&".join(
        quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in items
    )


def json_encoded(items: list[tuple[bytes, bytes]]) -> bytes:
    body = {k.decode("latin-1"): v.decode("latin-1") for k, v in items}
    return json.dumps(body).encode()


def raw_encoded(items: list[tuple[bytes, bytes]]) -> bytes:
    """Pairs joined without percent-encoding: raw bytes, as a careless client sends them."""
    return b"&".join(k + b"=" + v for k, v in items)


FORM, JSON = b"application/x-www-form-urlencoded", b"application/json"


@st.composite
def encoded(draw, method: str, path: str) -> tuple[bytes, bytes | None]:
    """Parameters in some encoding, and the content type that goes with it (mostly)."""
    items = draw(pairs(method, path))
    shape = draw(st.sampled_from(["form", "form", "form", "json", "raw", "bytes"]))
    if shape == "json":
        body, content_type = json_encoded(items), JSON
    elif shape == "bytes":
        body, content_type = draw(st.binary(max_size=200)), FORM
    else:
        body = form_encoded(items) if shape == "form" else raw_encoded(items)
        content_type = FORM
    if draw(st.sampled_from([False, False, False, True])):
        types = st.sampled_from(CONTENT_TYPES).map(str.encode)
        content_type = draw(st.none() | types | st.binary(max_size=30))
    return body, content_type


def header_value(raw: bytes) -> str:
    """Bytes as a WSGI server hands a header on: latin-1, one line."""
    return raw.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1")


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


authorization = st.one_of(
    st.none(),
    st.sampled_from([b"Basic " + _b64(b"test:hunter2"), b"Basic " + _b64(b"reader:hunter2")]),
    st.just(b"Bearer live.access"),
    st.tuples(value_bytes, value_bytes).map(lambda p: b"Basic " + _b64(p[0] + b":" + p[1])),
    st.binary(max_size=40).map(lambda b: b"Basic " + _b64(b)),
    value_bytes.map(lambda v: b"Bearer " + v),
    st.tuples(st.binary(min_size=1, max_size=8), value_bytes).map(lambda p: p[0] + b" " + p[1]),
    st.binary(max_size=60),
)


@dataclass
class Request:
    signed_in: bool
    query: bytes
    body: bytes
    content_type: bytes | None
    authorization: bytes | None
    cookie: bytes
    api_name: bytes


@st.composite
def requests(draw, method: str, path: str) -> Request:
    """One request to ``path``: parameters in the query (GET) or the body (POST)."""
    params, content_type = draw(encoded(method, path))
    stray_query = draw(st.sampled_from([False, False, False, False, True]))
    stray, _ = draw(encoded(method, path)) if stray_query else (b"", None)
    return Request(
        signed_in=draw(st.booleans()),
        query=params if method == "GET" else stray,
        body=params if method == "POST" else b"",
        content_type=content_type if method == "POST" else None,
        authorization=draw(authorization),
        cookie=draw(st.just(b"") | st.binary(max_size=40)),
        api_name=draw(st.sampled_from([b"profile", b"update_avatar", b"nope"]) | st.binary()),
    )


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, dummy_site) -> Iterator:
    """One app on SQLite for the module, rate limits set far above what fuzzing sends."""
    path = tmp_path_factory.mktemp("fuzz")
    with open_app(
        path,
        dummy_site,
        limits={
            **{k: "100000/minute" for k in ("token", "token_ip", "login_ip", "login_user", "api")},
            "lockout_after": 100000,
        },
    ) as app:
        give(app, "test", post_logout_redirect_uris=[AFTER])
        yield app


def snapshot(app) -> dict[str, frozenset]:
    """Every key of every table but ``audit``, lockouts and failure counts left out."""
    url = app.extensions["oauth2"].storage.specs["tokens"].url
    tables = (
        "session",
        "codes",
        "tokens",
        "refresh_tokens",
        "users",
        "clients",
        "consents",
        "factors",
    )
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
        return {
            table: frozenset(
                key
                for (key,) in db.execute(f"SELECT key FROM oauth2_{table}")  # noqa: S608
                if not key.startswith(("lock:", PREFIX))
            )
            for table in tables
        }


def live_values(app, req: Request) -> tuple[dict[bytes, bytes], str]:
    """A browser's state for one example: its cookies and the live values it could send."""
    browser = app.test_client()
    if req.signed_in:
        login(browser, "fuzzer")
        page = browser.get(authorize_url()).get_data(as_text=True)
    else:
        page = browser.get("/login").get_data(as_text=True)
    values = {
        b"live.csrf": csrf_from(page).encode(),
        b"live.txn": (hidden(page, "transaction_id") or "").encode(),
    }
    sent = req.query + req.body + (req.authorization or b"")
    if b"live.hint" in sent:  # an ID Token of this browser's session (or of a stranger)
        session = session_of(browser) if req.signed_in else {"user_id": "fuzzer", "sid": None}
        values[b"live.hint"] = id_token(app, session["user_id"], sid=session["sid"]).encode()
    if b"live.access" in sent or b"live.refresh" in sent:
        code = get_code(app.test_client(), scope="openid profile read-only")
        tokens = exchange(app.test_client(), code).get_json()
        values[b"live.access"] = tokens["access_token"].encode()
        values[b"live.refresh"] = tokens["refresh_token"].encode()
    if b"live.code" in sent:
        values[b"live.code"] = get_code(app.test_client()).encode()
    cookies = "; ".join(f"{c.key}={c.value}" for c in browser._cookies.values())
    return values, cookies


def with_live(raw: bytes, values: dict[bytes, bytes]) -> bytes:
    for stand_in, value in values.items():
        raw = raw.replace(stand_in, value)
    return raw


def refused(response) -> bool:
    """A 4xx, or an error sent to the client's redirect URI (a denial aside)."""
    location = response.headers.get("Location", "")
    if "error=access_denied" in location:
        return False
    return response.status_code >= 400 or "error=" in location


def send(app, method: str, path: str, req: Request):
    """Send ``req`` as a WSGI server would pass it on: header and query bytes as latin-1."""
    values, cookies = live_values(app, req)
    environ = {
        "QUERY_STRING": with_live(req.query, values).decode("latin-1"),
        "HTTP_COOKIE": header_value(cookies.encode() + b"; " + req.cookie),
    }
    if req.authorization is not None:
        environ["HTTP_AUTHORIZATION"] = header_value(with_live(req.authorization, values))
    if req.content_type is not None:
        environ["CONTENT_TYPE"] = header_value(req.content_type)
    if path == "/api/":
        path += quote_from_bytes(req.api_name)
    before = snapshot(app)
    response = app.test_client(use_cookies=False).open(
        path,
        method=method,
        data=with_live(req.body, values) if method == "POST" else None,
        environ_overrides=environ,
    )
    return before, response


@pytest.mark.parametrize(("method", "path"), ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_no_input_gets_a_5xx_or_changes_anything_when_refused(fuzz_app, method, path):
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(req=requests(method, path))
    def check(req: Request) -> None:
        before, response = send(fuzz_app, method, path, req)
        assert response.status_code < 500, response.get_data(as_text=True)[:500]
        if refused(response):
            after = snapshot(fuzz_app)
            assert after == before, {
                t: before[t] ^ after[t] for t in before if before[t] != after[t]
            }

    check()
