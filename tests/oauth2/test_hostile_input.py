"""Hostile input at the OAuth endpoints: the RFC error, never a 500, nothing changed."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedResponseTypeError
from hypothesis import given
from hypothesis import strategies as st

from app.oauth2.requests import GRAMMAR, checked
from tests.conftest import REDIRECT, basic, login
from tests.oauth2.conftest import unchanged

LONG = "x" * 5000


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"grant_type=client_credentials&scope=" + LONG.encode(), {}),
        (b"grant_type=client_credentials&scope=%ff%fe", {}),
        (b"grant_type=client_credentials&scope=a%00b", {}),
        (b"grant_type=client_credentials&" + b"&".join(b"p%d=1" % i for i in range(40)), {}),
        (b"grant_type=client_credentials&client_id=test&client_secret=hunter2", basic()),
        (b"[1, 2]", {"Content-Type": "application/json"}),
        (b"{not json", {"Content-Type": "application/json"}),
        (b'{"grant_type": {"nested": 1}}', {"Content-Type": "application/json"}),
    ],
    ids=[
        "over-long",
        "bad-utf8",
        "nul",
        "too-many",
        "two-auth-methods",
        "json-list",
        "broken-json",
        "json-nested",
    ],
)
def test_token_endpoint_refuses_hostile_bodies(client, state, body, headers):
    headers = {"Content-Type": "application/x-www-form-urlencoded", **basic(), **headers}
    with unchanged(state):
        response = client.post("/token", data=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    assert "access_token" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "query",
    [f"state={LONG}", "state=%ff", "scope=a%00"],
    ids=["over-long-state", "bad-utf8-state", "nul-scope"],
)
def test_authorize_refuses_hostile_parameters_with_a_page(client, state, query):
    login(client)
    url = f"/authorize?response_type=code&client_id=test&redirect_uri={REDIRECT}&{query}"
    with unchanged(state):
        response = client.get(url)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "invalid_request" in response.get_data(as_text=True)


def test_json_body_with_two_auth_methods_is_refused(client, state):
    with unchanged(state):
        response = client.post(
            "/token",
            json={
                "grant_type": "client_credentials",
                "client_id": "test",
                "client_secret": "hunter2",
            },
            headers=basic(),
        )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


#: Characters Authlib refuses in an error description, in the parameters it quotes there.
QUOTED_BY_AUTHLIB = [
    f"redirect_uri={REDIRECT[:-1]}\\@evil.example/",
    f"redirect_uri={REDIRECT}%22",
    f"redirect_uri={REDIRECT}&response_type=co%22de",
    f"redirect_uri={REDIRECT}&response_type=co%5Cde",
    f"redirect_uri={REDIRECT}&response_type=code%0A",
]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
@pytest.mark.parametrize("query", QUOTED_BY_AUTHLIB)
def test_authorize_refuses_unquotable_values_with_a_page(client, state, query, signed_in):
    if signed_in:
        login(client)
    if "response_type" not in query:
        query += "&response_type=code"
    with unchanged(state):
        response = client.get(f"/authorize?client_id=test&state=xyz&{query}")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "invalid_request" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "text/plain", None], ids=["multipart", "text", "none"]
)
def test_back_channel_refuses_other_body_encodings(client, state, path, content_type):
    """RFC 6749 §3.2: form encoding (and JSON for the original's clients) only."""
    data: dict | bytes = {"grant_type": "client_credentials", "token": "x"}
    if content_type != "multipart/form-data":
        data = b"grant_type=client_credentials&token=x"
    kwargs = {"content_type": content_type} if content_type else {}
    with unchanged(state):
        response = client.post(path, data=data, headers=basic(), **kwargs)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


#: Printable ASCII (what passes the VSCHAR check), the quote and backslash included.
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@given(
    st.dictionaries(
        st.sampled_from(sorted(GRAMMAR)) | st.text(max_size=8),
        st.lists(PRINTABLE | st.text(max_size=30), min_size=1, max_size=2),
        max_size=6,
    )
)
def test_checked_params_never_break_the_errors_authlib_builds_from_them(params):
    """Whatever ``checked`` lets through, Authlib can quote in an error description."""
    try:
        accepted = checked(params, unique=False)
    except InvalidRequestError:
        return
    for key in GRAMMAR:
        for value in accepted.get(key, []):
            InvalidRequestError(f"Redirect URI {value} is not supported by client.")
            UnsupportedResponseTypeError(f"The response type '{value}' is not supported.", value)


def test_an_authorization_requests_uri_is_its_url_read_when_asked(monkeypatch):
    """``ParamsRequest`` given the Werkzeug request: Authlib's transport check sees its
    scheme and host at once (a plain ``http`` host is refused without the insecure
    switch), and ``uri`` is the request's whole URL, worked out when first read."""
    from authlib.oauth2.rfc6749.errors import InsecureTransportError
    from flask import Flask, request

    from app.oauth2.requests import ParamsRequest

    flask = Flask(__name__)
    with flask.test_request_context("https://op.example/authorize?client_id=a%20b&x=%C3%A9"):
        made = ParamsRequest("GET", request, request.headers, {"client_id": ["a b"]})
        assert made.uri == request.url == "https://op.example/authorize?client_id=a%20b&x=é"
        assert made.payload.data == {"client_id": "a b"}
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    with (
        flask.test_request_context("http://op.example/authorize"),
        pytest.raises(InsecureTransportError),
    ):
        ParamsRequest("GET", request, request.headers, {})
