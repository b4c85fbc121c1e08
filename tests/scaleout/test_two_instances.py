"""Two ``oauth2-server serve`` instances sharing Redis and Postgres act as one server.

The production layout of the original: Redis for ``session``, ``codes``, ``tokens`` and
``refresh_tokens``; Postgres for ``users``, ``audit``, ``clients`` and ``default``. Both
instances have one worker, the same session secret and the same dummy site (A runs it,
B is told not to start its own), like two machines behind a load balancer without
sticky sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.e2e.conftest import children, hidden_inputs

from .conftest import Instance, Launch

pytestmark = pytest.mark.e2e

REDIRECT = "http://localhost:8080/"
COOKIE = "oauth2_session"
TIMEOUT = 10


@pytest.fixture
def pair(launch: Launch, shared_redis: str, pg_url: str) -> tuple[Instance, Instance]:
    storage = {
        "session": shared_redis,
        "codes": shared_redis,
        "tokens": shared_redis,
        "refresh_tokens": shared_redis,
        "users": pg_url,
        "audit": pg_url,
        "clients": pg_url,
        "default": pg_url,
    }
    a = launch(storage, name="A")
    site_port = a.ports[1]
    b = launch(storage, name="B", site_port=site_port, run_site=False)
    return a, b


@pytest.fixture
def agent() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def backend() -> Iterator[requests.Session]:
    """The partner's back end: no browser cookies."""
    with requests.Session() as session:
        session.auth = ("test", "hunter2")
        yield session


def authorize_path(state: str = "s1") -> str:
    query = {
        "response_type": "code",
        "client_id": "test",
        "redirect_uri": REDIRECT,
        "scope": "read-only",
        "state": state,
    }
    return "/authorize?" + urlencode(query)


def log_in(agent: requests.Session, server: Instance, next_path: str = "") -> None:
    page = agent.get(f"{server.url}/login", timeout=TIMEOUT)
    assert page.status_code == 200
    form = hidden_inputs(page.text) | {"username": "alice", "password": "password"}
    form["next"] = next_path
    answer = agent.post(f"{server.url}/login", data=form, allow_redirects=False, timeout=TIMEOUT)
    assert answer.status_code == 302, answer.text


def consent_page(agent: requests.Session, server: Instance, state: str = "s1") -> dict[str, str]:
    page = agent.get(server.url + authorize_path(state), allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, (page.status_code, page.headers.get("Location"))
    form = hidden_inputs(page.text)
    assert form.get("transaction_id"), page.text
    return form


def allow(agent: requests.Session, server: Instance, form: dict[str, str]) -> str:
    answer = agent.post(
        f"{server.url}/authorize",
        data=form | {"allow": "Allow"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT)
    return parse_qs(urlsplit(location).query)["code"][0]


def redeem(backend: requests.Session, server: Instance, code: str) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    return backend.post(f"{server.url}/token", data=data, timeout=TIMEOUT)


def profile(server: Instance, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(f"{server.url}/api/profile", headers=headers, timeout=TIMEOUT).status_code


def active(backend: requests.Session, server: Instance, token: str) -> bool:
    answer = backend.post(f"{server.url}/introspect", data={"token": token}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()["active"]


def dummy_sites(instance: Instance) -> list[str]:
    return [cmd for cmd in children(instance.process.pid).values() if "app.dummy_site" in cmd]


def test_code_from_a_is_redeemed_on_b_and_revocation_on_a_holds_on_b(
    pair: tuple[Instance, Instance], agent: requests.Session, backend: requests.Session
) -> None:
    a, b = pair
    assert len(dummy_sites(a)) == 1
    assert dummy_sites(b) == []
    log_in(agent, a)
    code = allow(agent, a, consent_page(agent, a))

    tokens = redeem(backend, b, code)
    assert tokens.status_code == 200, tokens.text
    access, refresh = tokens.json()["access_token"], tokens.json()["refresh_token"]
    # Single use across instances: A refuses the code B redeemed.
    replay = redeem(backend, a, code)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"

    # The replay revoked the grant (RFC 6749 §4.1.2): get a fresh one, this time via B.
    code = allow(agent, b, consent_page(agent, b, "s2"))
    tokens = redeem(backend, a, code)
    assert tokens.status_code == 200, tokens.text
    access, refresh = tokens.json()["access_token"], tokens.json()["refresh_token"]
    assert profile(a, access) == 200
    assert profile(b, access) == 200

    # A token revoked via A is refused by B at once (no cache anywhere).
    revoked = backend.post(f"{a.url}/revoke", data={"token": access}, timeout=TIMEOUT)
    assert revoked.status_code == 200
    assert profile(b, access) == 401
    assert active(backend, b, access) is False
    # Revoking the access token ended its refresh token as well, on every instance.
    again = backend.post(
        f"{b.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        timeout=TIMEOUT,
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_refresh_rotated_on_b_ends_the_old_pair_on_a(
    pair: tuple[Instance, Instance], agent: requests.Session, backend: requests.Session
) -> None:
    a, b = pair
    log_in(agent, a)
    first = redeem(backend, a, allow(agent, a, consent_page(agent, a))).json()
    rotated = backend.post(
        f"{b.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        timeout=TIMEOUT,
    )
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert profile(a, first["access_token"]) == 401
    assert profile(a, second["access_token"]) == 200
    assert active(backend, a, first["refresh_token"]) is False


def test_login_on_a_holds_on_b_and_logout_on_a_ends_it_on_b(
    pair: tuple[Instance, Instance], agent: requests.Session, backend: requests.Session
) -> None:
    a, b = pair
    log_in(agent, a)
    sid = agent.cookies.get(COOKIE)
    assert sid

    # A browser that only ever talks to B, carrying the cookie A set.
    with requests.Session() as other:
        other.cookies.set(COOKIE, sid)
        form = consent_page(other, b)
        # The transaction opened on B can be answered on A.
        with requests.Session() as third:
            third.cookies.set(COOKIE, sid)
            code = allow(third, a, form)
        assert redeem(backend, b, code).status_code == 200

        review = other.get(f"{b.url}/review", allow_redirects=False, timeout=TIMEOUT)
        assert review.status_code == 200
        assert 'name="test"' in review.text

        # Sign out on A (the logout form posts the CSRF token of any page).
        page = agent.get(f"{a.url}/review", timeout=TIMEOUT)
        token = hidden_inputs(page.text)["csrf_token"]
        out = agent.post(
            f"{a.url}/logout", data={"csrf_token": token}, allow_redirects=False, timeout=TIMEOUT
        )
        assert out.status_code == 302

        # B sends the same cookie to the login page now.
        after = other.get(b.url + authorize_path(), allow_redirects=False, timeout=TIMEOUT)
        assert after.status_code == 302
        assert urlsplit(after.headers["Location"]).path == "/login"
        review = other.get(f"{b.url}/review", allow_redirects=False, timeout=TIMEOUT)
        assert review.status_code == 302
