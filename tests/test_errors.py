"""Clean answers for 404, 405, 413, storage outages and surprises: JSON or page, never a trace."""

from __future__ import annotations

import io

import pytest

from app import create_app
from app.storage import StorageUnavailable
from tests.conftest import (
    authorize_url,
    base_config,
    basic,
    bearer,
    close_app,
    consent,
    exchange,
    get_code,
    login,
)
from tests.factories import make_code, make_token

LIMIT = 65536


def down(*args, **kwargs):
    raise StorageUnavailable("connection refused (test)")


def boom(*args, **kwargs):
    raise RuntimeError("secret internals /srv/app.py line 42")


def assert_clean(response) -> None:
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "secret internals" not in text
    assert "connection refused" not in text


# -- 404 and 405 --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nope", "/login/extra", "/static/nope.css"])
def test_unknown_pages_get_the_404_page(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Error 404" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/.well-known/nope", "/tokenx"])
def test_unknown_machine_paths_get_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/token", "POST"),
        ("PUT", "/token", "POST"),
        ("GET", "/revoke", "POST"),
        ("GET", "/introspect", "POST"),
        ("PUT", "/logout", "POST"),
        ("DELETE", "/login", "POST"),
        ("PUT", "/authorize", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, path, allowed):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert allowed in response.headers.get("Allow", "")
    assert_clean(response)


def test_405_on_token_is_json(client):
    response = client.get("/token")
    assert response.status_code == 405
    assert response.get_json()["error"] == "invalid_request"


def test_405_on_a_page_is_the_error_page(client):
    response = client.put("/logout")
    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "Error 405" in response.get_data(as_text=True)


# -- 413 ----------------------------------------------------------------------------------
def _big_form(size: int = LIMIT + 1) -> dict[str, str]:
    return {"grant_type": "client_credentials", "pad": "a" * size}


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/token", "form"),
        ("/token", "json"),
        ("/token", "raw"),
        ("/revoke", "form"),
        ("/introspect", "form"),
        ("/login", "form"),
        ("/authorize", "form"),
        ("/logout", "form"),
        ("/review", "form"),
    ],
)
def test_oversized_bodies_get_413_never_500(client, path, kind):
    if kind == "form":
        response = client.post(path, data=_big_form())
    elif kind == "json":
        response = client.post(path, json=_big_form())
    else:
        response = client.post(
            path, data=b"x" * (LIMIT + 1), headers={"Content-Type": "application/octet-stream"}
        )
    assert response.status_code == 413
    assert_clean(response)


def test_413_is_json_for_token(client):
    response = client.post("/token", data=_big_form())
    assert response.status_code == 413
    assert response.is_json


# /api/profile is GET-only: a POST there is 405 before any body is read.
@pytest.mark.parametrize("path", ["/api/update_avatar"])
def test_413_is_json_for_api_calls_with_a_good_token(client, path):
    code = get_code(client, scope="read-only read-write")
    token = exchange(client, code).get_json()["access_token"]
    response = client.post(
        path,
        data=b"x" * (LIMIT + 1),
        headers={"Content-Type": "application/octet-stream", **bearer(token)},
    )
    assert response.status_code == 413
    assert response.is_json
    assert_clean(response)


def test_413_is_the_error_page_for_pages(client):
    response = client.post("/login", data=_big_form())
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert "Error 413" in response.get_data(as_text=True)


def test_413_on_token_with_a_valid_client_issues_nothing(client, state):
    response = client.post("/token", data=_big_form(), headers=basic())
    assert response.status_code == 413
    assert state.storage.tokens.list_by_client("test") == []


@pytest.mark.parametrize("path", ["/token", "/login"])
def test_chunked_body_without_length_is_limited_too(client, path):
    # gunicorn de-chunks the body and sets wsgi.input_terminated, so Werkzeug trusts the
    # server to have limited it (it does not): the app must enforce max_body_bytes itself.
    body = b"grant_type=client_credentials&pad=" + b"a" * (LIMIT + 10)
    response = client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Transfer-Encoding": "chunked",
            **basic(),
        },
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert_clean(response)


def test_body_under_the_limit_is_processed(client):
    # Under the body limit, in parameters each within the per-value bound (4096).
    data = {"grant_type": "client_credentials"}
    data.update({f"pad{i}": "a" * 4000 for i in range((LIMIT - 1000) // 4010)})
    response = client.post("/token", data=data, headers=basic())
    assert response.status_code == 200
    assert response.get_json()["access_token"]


def test_limit_follows_max_body_bytes(tmp_path, dummy_site):
    app = create_app(base_config(tmp_path, dummy_site, auth_server={"max_body_bytes": 2048}))
    try:
        http = app.test_client()
        small = {"grant_type": "client_credentials", "pad": "a" * 1000}
        assert http.post("/token", data=small, headers=basic()).status_code == 200
        big = {"grant_type": "client_credentials", "pad": "a" * 3000}
        assert http.post("/token", data=big, headers=basic()).status_code == 413
    finally:
        close_app(app)


# -- storage outages ----------------------------------------------------------------------
def test_token_endpoint_answers_503_json_when_storage_is_down(client, state, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(state.storage.tokens, "put", down)
        response = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert_clean(response)
    again = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert again.status_code == 200


def test_code_exchange_answers_503_and_the_code_still_works_after(client, state, monkeypatch):
    code = make_code(state)
    with monkeypatch.context() as patch:
        patch.setattr(state.storage.codes, "get", down)
        response = exchange(client, code)
        assert response.status_code == 503
        assert response.get_json()["error"] == "temporarily_unavailable"
    assert exchange(client, code).status_code == 200


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/profile"), ("POST", "/revoke")])
def test_api_and_revoke_answer_503_json(client, state, monkeypatch, method, path):
    token = make_token(state)["access_token"]
    monkeypatch.setattr(state.storage.tokens, "get", down)
    if path == "/revoke":
        response = client.post(path, data={"token": token}, headers=basic())
    else:
        response = client.open(path, method=method, headers=bearer(token))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.is_json
    assert_clean(response)


def test_api_recovers_when_storage_returns(client, state, monkeypatch):
    token = make_token(state)["access_token"]
    with monkeypatch.context() as patch:
        patch.setattr(state.storage.tokens, "get", down)
        assert client.get("/api/profile", headers=bearer(token)).status_code == 503
    assert client.get("/api/profile", headers=bearer(token)).status_code == 200


def test_review_page_answers_the_503_page(client, state, monkeypatch):
    login(client)
    monkeypatch.setattr(state.storage.tokens, "list_by_user", down)
    response = client.get("/review")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.mimetype == "text/html"
    assert "Error 503" in response.get_data(as_text=True)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert_clean(response)


def test_login_answers_the_503_page(client, state, monkeypatch):
    monkeypatch.setattr(state.storage.users, "put", down)
    response = login(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.mimetype == "text/html"
    assert_clean(response)


def test_consent_answers_the_503_page_and_issues_nothing(client, state, monkeypatch):
    login(client)
    monkeypatch.setattr(state.storage.codes, "put", down)
    response = consent(client, authorize_url())
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "Location" not in response.headers
    assert_clean(response)


def test_readiness_reports_an_outage_liveness_does_not(client, state, monkeypatch):
    assert client.get("/readyz").status_code == 200
    for backend in state.storage.backends.values():
        monkeypatch.setattr(backend, "ping", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["checks"]["storage.sqlite"]["status"] == "down"
    assert client.get("/healthz").status_code == 200


# -- surprises ----------------------------------------------------------------------------
def test_unexpected_errors_on_api_are_json_500_without_details(client, state, monkeypatch):
    token = make_token(state)["access_token"]
    monkeypatch.setattr(state.storage.tokens, "get", boom)
    response = client.get("/api/profile", headers=bearer(token))
    assert response.status_code == 500
    assert response.get_json() == {"error": "server_error", "error_description": "Internal error."}
    assert_clean(response)


def test_unexpected_errors_on_pages_are_the_500_page(client, state, monkeypatch):
    login(client)
    monkeypatch.setattr(state.storage.tokens, "list_by_user", boom)
    response = client.get("/review")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "Error 500" in response.get_data(as_text=True)
    assert_clean(response)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"text"', b'{"grant_type": ["a"]}', b"\xff\xfe"],
)
def test_malformed_json_token_bodies_are_400(client, body):
    response = client.post(
        "/token", data=body, headers={"Content-Type": "application/json", **basic()}
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/login", "text/html"),
        ("GET", "/review", "text/html"),
        ("GET", "/authorize", "text/html"),
        ("POST", "/token", "application/json"),
        ("GET", "/api/profile", "application/json"),
    ],
)
def test_raw_non_utf8_query_bytes_are_400_never_500(client, method, path, kind):
    """A WSGI server passes raw query bytes on as latin-1; Werkzeug cannot decode them."""
    response = client.open(path, method=method, environ_overrides={"QUERY_STRING": "next=\x80"})
    assert response.status_code == 400
    assert response.mimetype == kind
