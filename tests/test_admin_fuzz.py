"""Property: any JSON body to the admin API's writes gets an answer below 500, and a
refusal (4xx) leaves the clients table exactly as it was."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.client_metadata import ALIASES, FIELDS
from tests.conftest import basic, bearer
from tests.factories import REDIRECT

KEYS = [*FIELDS, *ALIASES, "public", "domain", "disabled", "client_id", "client_secret"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            REDIRECT,
            "https://p.example/cb",
            "*",
            "client_credentials",
            "authorization_code",
            "implicit",
            "refresh_token",
            "code",
            "token",
            "none",
            "client_secret_post",
            "read-only",
            "read-only read-write",
            "admin",
            "10.0.0.0/8",
            "60/minute",
            "test",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Good bodies with a field or two changed, so that writes that succeed are explored too.
VALID = [
    {"client_name": "Job", "grant_types": ["client_credentials"], "scope": "read-only"},
    {"client_name": "Web", "redirect_uris": [REDIRECT]},
    {"name": "Alby", "domain": REDIRECT, "public": True},
]
near_valid = st.builds(
    lambda base, change: {**base, **change},
    st.sampled_from(VALID),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=2),
)
bodies = (
    near_valid
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), json_values, max_size=8)
    | json_values
)


def rows(state) -> list[tuple]:
    url = state.storage.specs["clients"].url
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
        return sorted(db.execute("SELECT key, data FROM oauth2_clients"))


@pytest.fixture
def admin_headers(client):
    data = {"grant_type": "client_credentials", "scope": "admin"}
    token = client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    return bearer(token)


@given(body=bodies, target=st.sampled_from(["POST new", "PUT", "PATCH", "PUT file", "PATCH file"]))
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_json_body_is_never_a_5xx_and_a_refusal_changes_nothing(
    client, state, admin_headers, body, target
):
    existing = state.clients.store.records()
    if not existing:
        made = {"client_name": "Fuzzed", "redirect_uris": [REDIRECT]}
        client.post("/admin/clients", json=made, headers=admin_headers)
        existing = state.clients.store.records()
    client_id = "test" if target.endswith("file") else existing[0]["client_id"]
    method, _, _ = target.partition(" ")
    path = "/admin/clients" if target == "POST new" else f"/admin/clients/{client_id}"
    before = rows(state)
    response = client.open(path, method=method, json=body, headers=admin_headers)
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    if response.status_code >= 400:
        assert response.get_json()["error"]
        assert rows(state) == before
