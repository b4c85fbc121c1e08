"""Two ``oauth2-server serve`` instances sharing Redis and Postgres act as one server.

The production layout of the original: Redis for ``session``, ``codes``, ``tokens`` and
``refresh_tokens``; Postgres for ``users``, ``audit``, ``clients`` and ``default``. Both
instances have one worker, the same session secret and the same dummy site (A runs it,
B is told not to start its own), like two machines behind a load balancer without
sticky sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from bench.procs import children
from tests.e2e.conftest import hidden_inputs

from .conftest import (
    COOKIE,
    REDIRECT,
    TIMEOUT,
    Instance,
    active,
    allow,
    authorize_path,
    consent_page,
    launcher,
    log_in,
    profile,
    redeem,
)

pytestmark = pytest.mark.e2e


# The two servers are the module's: started once for its tests, not once per test. Each
# test signs in with an agent of its own and ends only the grants, sessions and clients it
# made itself, so what one test does cannot reach another.
@pytest.fixture(scope="module")
def pair(
    module_redis: str, module_pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Instance, Instance]]:
    shared_redis, pg_url = module_redis, module_pg_url
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
    with launcher(tmp_path_factory.mktemp("pair")) as launch:
        a = launch(storage, name="A")
        site_port = a.ports[1]
        b = launch(storage, name="B", site_port=site_port, run_site=False)
        yield a, b


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


def token_status(server: Instance, client_id: str, secret: str) -> int:
    data = {"grant_type": "client_credentials"}
    answer = requests.post(
        f"{server.url}/token", data=data, auth=(client_id, secret), timeout=TIMEOUT
    )
    return answer.status_code


SPA_ORIGIN = "https://spa.example"


def cors_origin(instance: Instance, origin: str) -> str | None:
    """What a preflight of ``/token`` from ``origin`` is allowed by ``instance``."""
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    answer = requests.options(f"{instance.url}/token", headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 204
    return answer.headers.get("Access-Control-Allow-Origin")


def test_a_client_made_rotated_disabled_and_deleted_on_a_counts_on_b_at_once(
    pair: tuple[Instance, Instance], agent: requests.Session
) -> None:
    a, b = pair
    admin = requests.Session()
    grant = {"grant_type": "client_credentials", "scope": "admin"}
    issued = admin.post(f"{a.url}/token", data=grant, auth=("admin", "hunter2"), timeout=TIMEOUT)
    admin.headers["Authorization"] = f"Bearer {issued.json()['access_token']}"
    metadata = {
        "client_name": "Made on A",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "scope": "read-only",
    }
    made = admin.post(f"{a.url}/admin/clients", json=metadata, timeout=TIMEOUT)
    assert made.status_code == 201, made.text
    client_id, secret = made.json()["client_id"], made.json()["client_secret"]
    # A single-page app's public client beside it: B answers its origin's preflight.
    assert cors_origin(b, SPA_ORIGIN) is None
    spa = {"redirect_uris": [REDIRECT], "public": True, "allowed_origins": [SPA_ORIGIN]}
    made_spa = admin.post(f"{a.url}/admin/clients", json=spa, timeout=TIMEOUT)
    assert made_spa.status_code == 201, made_spa.text
    spa_path = f"{a.url}/admin/clients/{made_spa.json()['client_id']}"
    assert cors_origin(b, SPA_ORIGIN) == SPA_ORIGIN

    # Created on A: B runs a user's code flow for it on the next request.
    log_in(agent, b)
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT}
    page = agent.get(f"{b.url}/authorize", params=query, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    code = allow(agent, b, hidden_inputs(page.text))
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    tokens = requests.post(f"{b.url}/token", data=data, auth=(client_id, secret), timeout=TIMEOUT)
    assert tokens.status_code == 200, tokens.text
    access = tokens.json()["access_token"]
    assert profile(a, access) == 200

    # Rotated on A without overlap: B refuses the old secret and takes the new one.
    path = f"{a.url}/admin/clients/{client_id}"
    rotated = admin.post(f"{path}/secret", json={"overlap": 0}, timeout=TIMEOUT)
    new = rotated.json()["client_secret"]
    assert token_status(b, client_id, secret) == 401
    assert token_status(b, client_id, new) == 200

    # Disabled on A: its token stops on B; enabled again, it works again.
    assert admin.patch(path, json={"disabled": True}, timeout=TIMEOUT).status_code == 200
    assert profile(b, access) == 401
    assert admin.patch(path, json={"disabled": False}, timeout=TIMEOUT).status_code == 200
    assert profile(b, access) == 200
    assert admin.patch(spa_path, json={"disabled": True}, timeout=TIMEOUT).status_code == 200
    assert cors_origin(b, SPA_ORIGIN) is None
    assert admin.patch(spa_path, json={"disabled": False}, timeout=TIMEOUT).status_code == 200
    assert cors_origin(b, SPA_ORIGIN) == SPA_ORIGIN

    # Deleted on A: gone on B, its token with it.
    assert admin.delete(path, timeout=TIMEOUT).status_code == 204
    assert profile(b, access) == 401
    on_b = requests.get(
        f"{b.url}/admin/clients/{client_id}", headers=admin.headers, timeout=TIMEOUT
    )
    assert on_b.status_code == 404
    assert admin.delete(spa_path, timeout=TIMEOUT).status_code == 204
    assert cors_origin(b, SPA_ORIGIN) is None
    admin.close()
