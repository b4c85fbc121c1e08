"""``oauth2-server serve`` for real: gunicorn with 2 workers, the dummy site, and a real
OAuth client library (Authlib's ``OAuth2Session``) driving code + PKCE + refresh + revoke.
"""

from __future__ import annotations

import re
import secrets
import signal
import time
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from app.dummy_site import user_id
from tests.factories import make_client

from .conftest import hidden_inputs, submit_login

pytestmark = pytest.mark.e2e

REDIRECT = "http://localhost:8080/"
PUBLIC_REDIRECT = "http://127.0.0.1/callback"
ISO_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ \S+: ")


def sign_in_and_allow(agent: requests.Session, authorize_url: str, username: str) -> str:
    """Play the user: follow the login challenge if any, allow on the consent page.

    Return the ``Location`` the server sends the browser to (the client's redirect URI).
    """
    answer = agent.get(authorize_url, allow_redirects=False, timeout=5)
    if answer.status_code == 302:
        login_url = urljoin(authorize_url, answer.headers["Location"])
        assert urlsplit(login_url).path == "/login"
        answer = submit_login(agent, login_url, username)
        back = urljoin(login_url, answer.headers["Location"])
        assert urlsplit(back).path == "/authorize"
        answer = agent.get(back, allow_redirects=False, timeout=5)
    assert answer.status_code == 200, answer.text
    form = hidden_inputs(answer.text)
    assert form.get("transaction_id") and form.get("csrf_token"), answer.text
    assert "scope" in form
    form["allow"] = "Allow"
    decided = agent.post(
        urljoin(authorize_url, "/authorize"), data=form, allow_redirects=False, timeout=5
    )
    assert decided.status_code == 302, decided.text
    return decided.headers["Location"]


def wait_for_workers(server, count: int, timeout: float = 10.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    workers = server.workers()
    while len(workers) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = server.workers()
    return workers


@pytest.mark.parametrize("http_server", ["gunicorn", "granian"])
def test_serve_code_pkce_refresh_revoke(start_server, http_server):
    server = start_server(
        [make_client("e2e-public", [PUBLIC_REDIRECT], None, name="E2E public app")],
        config={"auth_server": {"server": http_server}},
    )
    base = server.url

    # serve: two workers plus the dummy site, all children of the server process.
    workers = wait_for_workers(server, 2)
    assert len(workers) == 2, f"expected 2 {http_server} workers, found {workers}\n{server.log()}"
    assert f"with {http_server}, 2 workers" in server.log(), server.log()
    assert len(server.dummy_site()) == 1, server.log()

    with requests.Session() as http:
        metadata = http.get(f"{base}/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["issuer"] == base
    assert metadata["token_endpoint"] == f"{base}/token"
    assert "S256" in metadata["code_challenge_methods_supported"]
    assert metadata["revocation_endpoint"] == f"{base}/revoke"

    username = "e2e-" + secrets.token_hex(4)
    verifier = secrets.token_urlsafe(48)
    with (
        requests.Session() as agent,
        OAuth2Session(
            client_id="test",
            client_secret="hunter2",
            scope="read-only",
            redirect_uri=REDIRECT,
            code_challenge_method="S256",
        ) as oauth,
    ):
        # Front channel: authorization request with an S256 challenge, login, consent.
        url, state = oauth.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier
        )
        assert "code_challenge=" in url and "code_challenge_method=S256" in url
        location = sign_in_and_allow(agent, url, username)
        assert location.startswith(REDIRECT + "?"), location
        params = parse_qs(urlsplit(location).query)
        assert params["state"] == [state] and params["code"][0]

        # Back channel: code + verifier for tokens (client auth by HTTP Basic).
        token = oauth.fetch_token(
            metadata["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
        assert token["token_type"].lower() == "bearer"
        assert token["scope"] == "read-only"
        assert token["refresh_token"] and token["expires_in"] > 0
        first_access, first_refresh = token["access_token"], token["refresh_token"]

        # The gateway proxies to the dummy site as that user.
        profile = oauth.get(f"{base}/api/profile", timeout=5)
        assert profile.status_code == 200, profile.text
        assert profile.json()["id"] == user_id(username)

        # Refresh rotates: new pair; the old access token stops working at once.
        oauth.token = token
        refreshed = oauth.refresh_token(metadata["token_endpoint"])
        new_access, new_refresh = refreshed["access_token"], refreshed["refresh_token"]
        assert new_access != first_access and new_refresh != first_refresh
        assert refreshed["scope"] == "read-only"
        with requests.Session() as raw:
            old = raw.get(
                f"{base}/api/profile",
                timeout=5,
                headers={"Authorization": f"Bearer {first_access}"},
            )
        assert old.status_code == 401
        assert 'error="invalid_token"' in old.headers["WWW-Authenticate"]
        profile = oauth.get(f"{base}/api/profile", timeout=5)
        assert profile.status_code == 200, profile.text

        # Revocation (RFC 7009) of the new access token: /api answers 401 from then on.
        revoked = oauth.revoke_token(
            metadata["revocation_endpoint"], token=new_access, token_type_hint="access_token"
        )
        assert revoked.status_code == 200, revoked.text
        for _ in range(4):  # whichever worker answers, the token is gone for all of them
            gone = oauth.get(f"{base}/api/profile", timeout=5)
            assert gone.status_code == 401, gone.text
            assert 'error="invalid_token"' in gone.headers["WWW-Authenticate"]

        # The rotated-out refresh token is refused.
        with pytest.raises(OAuthError) as stale:
            oauth.refresh_token(metadata["token_endpoint"], refresh_token=first_refresh)
        assert stale.value.error == "invalid_grant"

    # A public client: no secret, PKCE only, against the same server (RFC 8252 loopback
    # redirect on any port); the user's session cookie skips the login this time.
    verifier = secrets.token_urlsafe(48)
    redirect_uri = "http://127.0.0.1:49152/callback"
    with (
        requests.Session() as agent,
        OAuth2Session(
            client_id="e2e-public",
            scope="read-only",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        ) as partner,
    ):
        url, state = partner.create_authorization_url(f"{base}/authorize", code_verifier=verifier)
        location = sign_in_and_allow(agent, url, username)
        assert location.startswith(redirect_uri + "?"), location
        token = partner.fetch_token(
            f"{base}/token", authorization_response=location, code_verifier=verifier
        )
        profile = partner.get(f"{base}/api/profile", timeout=5)
        assert profile.status_code == 200, profile.text
        assert profile.json()["id"] == user_id(username)
        refreshed = partner.refresh_token(f"{base}/token")
        assert refreshed["access_token"] != token["access_token"]
        assert partner.get(f"{base}/api/profile", timeout=5).status_code == 200

        # The code is single-use, and a replay ends every token issued from it.
        with pytest.raises(OAuthError) as replayed:
            partner.fetch_token(
                f"{base}/token", authorization_response=location, code_verifier=verifier
            )
        assert replayed.value.error == "invalid_grant"
        with requests.Session() as raw:
            ended = raw.get(
                f"{base}/api/profile",
                timeout=5,
                headers={"Authorization": f"Bearer {refreshed['access_token']}"},
            )
        assert ended.status_code == 401, ended.text

    # One log format whatever the server: every line (the server's, its workers', the
    # dummy site's) starts with an ISO 8601 UTC timestamp.
    lines = server.log_path.read_text(errors="replace").splitlines()
    assert lines, "the server logged nothing"
    untimed = [line for line in lines if not ISO_LINE.match(line)]
    assert untimed == [], untimed


@pytest.mark.parametrize("http_server", ["gunicorn", "granian"])
def test_a_stopped_server_has_written_every_request_line(start_server, http_server):
    """A server stopped right after answering (SIGTERM) has written every request line,
    from every worker (granian's workers end through multiprocessing, which runs no
    ``atexit`` hook: whatever a worker holds for later must not rely on one)."""
    server = start_server(config={"auth_server": {"server": http_server}})
    wait_for_workers(server, 2)
    sent = [f"stop-{secrets.token_hex(4)}-{n}" for n in range(60)]
    with requests.Session() as agent:
        for rid in sent:
            answer = agent.get(f"{server.url}/healthz", headers={"X-Request-Id": rid}, timeout=5)
            assert answer.status_code == 200
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(20)
    logged = re.findall(r"request_id=(stop-\S+)", server.log_path.read_text())
    assert sorted(logged) == sorted(sent)
