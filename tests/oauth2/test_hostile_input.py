"""Hostile input at the OAuth endpoints: the RFC error, never a 500, nothing changed."""

from __future__ import annotations

import pytest

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
