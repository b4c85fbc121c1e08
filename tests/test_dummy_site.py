"""The bundled dummy site: login, profile, avatar, self-verifying tokens, ``main()``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.test import Client, TestResponse

from app.dummy_site import COOKIE, create_dummy_app, create_site, make_token, user_id
from bench import procs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["flask", "served"])
def client(request: pytest.FixtureRequest) -> FlaskClient | Client:
    """The Flask app alone, and as served: behind the plain-WSGI ``/info`` path."""
    if request.param == "flask":
        return create_dummy_app().test_client()
    return Client(create_site(), response_wrapper=TestResponse)


def login(client: FlaskClient | Client, username: str = "alice") -> str:
    response = client.post("/login", data={"username": username, "password": "password"})
    assert response.status_code == 200
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def test_login_with_form_sets_token_and_returns_profile(client: FlaskClient | Client) -> None:
    response = client.post("/login", data={"username": "alice", "password": "password"})
    assert response.status_code == 200
    assert response.json == {
        "id": user_id("alice"),
        "firstName": "alice",
        **{"name": "alice", "given_name": "alice", "email_verified": False},
        "email": f"{user_id('alice')}@users.example.com",  # a stable made-up address
    }
    assert client.get_cookie(COOKIE) is not None


def test_login_with_json(client: FlaskClient | Client) -> None:
    response = client.post("/login", json={"username": "bob", "password": "password"})
    assert response.status_code == 200
    assert response.json is not None and response.json["firstName"] == "bob"


@pytest.mark.parametrize(
    "fields",
    [
        {"username": "alice", "password": "wrong"},
        {"username": "alice"},
        {"username": "", "password": "password"},
        {},
    ],
)
def test_bad_login_is_401(client: FlaskClient | Client, fields: dict[str, str]) -> None:
    response = client.post("/login", data=fields)
    assert response.status_code == 401
    assert response.json == {"error": "invalid credentials"}
    assert client.get_cookie(COOKIE) is None


def test_ids_are_stable_strings_and_distinct() -> None:
    assert user_id("alice") == user_id("alice")
    assert user_id("alice") != user_id("bob")
    assert isinstance(user_id("alice"), str)


def test_info_by_query_and_by_cookie(client: FlaskClient | Client) -> None:
    token = login(client)
    by_cookie = client.get("/info")
    by_query = Client(create_site()).get("/info", query_string={"token": token})
    for response in (by_cookie, by_query):
        assert response.status_code == 200
        assert response.json is not None
        assert response.json["id"] == user_id("alice")
        assert response.json["firstName"] == "alice"
        assert "avatar" in response.json


def test_update_avatar(client: FlaskClient | Client) -> None:
    token = login(client, "carol")
    response = client.post("/update_avatar", data={"token": token, "avatar": "/a/new.png"})
    assert response.json == {"success": 1}
    info = client.get("/info", query_string={"token": token})
    assert info.json is not None and info.json["avatar"] == "/a/new.png"


def test_tokens_verify_in_another_instance(client: FlaskClient | Client) -> None:
    token = login(client)
    for other in (create_dummy_app().test_client(), Client(create_site())):
        assert other.get("/info", query_string={"token": token}).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "YWxpY2U.abc.0000",
        make_token(b"another key", "alice"),
        make_token(b"dummy-site-dev-key", "alice")[:-1] + "x",
    ],
    # Named, not shown: the signed ones are new each run (two xdist workers must agree).
    ids=["empty", "garbage", "malformed", "another-key", "bad-signature"],
)
def test_bad_token_is_401(client: FlaskClient | Client, token: str) -> None:
    assert client.get("/info", query_string={"token": token}).status_code == 401
    response = client.post("/update_avatar", query_string={"token": token})
    assert response.status_code == 401
    assert response.json == {"error": "invalid token"}


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_main_serves_and_stops_on_sigterm(server: str, tmp_path: Path) -> None:
    port = procs.free_port()
    command = [sys.executable, "-m", "app.dummy_site", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--server", server]
    site = procs.start("dummy-site", command, tmp_path, cwd=str(ROOT), port=port, lifetime=None)
    try:
        url = f"http://127.0.0.1:{port}/info"
        response = requests.get(url, timeout=5, headers={"Connection": "close"})
        assert response.status_code == 401
        assert response.headers["Server"].startswith(server)
    finally:
        problems = procs.shut_down([site], grace=15)  # SIGTERM, then every process gone
    assert problems == [] and site.process.returncode == 0, site.log_tail()


@pytest.mark.parametrize("valid", [True, False])
def test_the_plain_info_path_answers_as_flask_does(valid: bool) -> None:
    token = make_token(b"dummy-site-dev-key", "dora") if valid else "garbage.x.y"
    flask_answer = create_dummy_app().test_client().get("/info", query_string={"token": token})
    plain_answer = Client(create_site()).get("/info", query_string={"token": token})
    assert plain_answer.status_code == flask_answer.status_code == (200 if valid else 401)
    assert plain_answer.get_data() == flask_answer.get_data()
    assert plain_answer.headers["Content-Type"] == flask_answer.headers["Content-Type"]


@pytest.mark.parametrize(
    ("username", "email", "verified", "given_name"),
    [
        ("alice", f"{user_id('alice')}@users.example.com", False, "alice"),
        ("dana@mail.example", "dana@mail.example", True, "dana"),
        (
            "not@an address",
            f"{user_id('not@an address')}@users.example.com",
            False,
            "not@an address",
        ),
    ],
)
def test_claims_in_the_login_answer_and_at_claims(
    client: FlaskClient | Client, username: str, email: str, verified: bool, given_name: str
) -> None:
    answer = client.post("/login", data={"username": username, "password": "password"}).json
    token = client.get_cookie(COOKIE)
    assert answer is not None and token is not None
    claims = {
        "name": username,
        "given_name": given_name,
        "email": email,
        "email_verified": verified,
    }
    assert {k: answer[k] for k in claims} == claims
    assert client.get("/claims", query_string={"token": token.value}).json == claims
    assert client.get("/claims", query_string={"token": "forged"}).status_code == 401
