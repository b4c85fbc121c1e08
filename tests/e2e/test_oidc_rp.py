"""A third-party relying party signs a user in: panva's ``openid-client`` (npm), not Authlib.

The RP (``tests/e2e/rp/rp.mjs``) discovers the real server, builds the authorization
request (PKCE, nonce, state), and after the user (scripted here) signs in and allows,
exchanges the code, validating the ID Token against the JWKS, calls UserInfo, refreshes
and builds the RP-initiated logout URL: every check is the library's own.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests

from tests.e2e.conftest import HTTP_TIMEOUT, hidden_inputs
from tests.e2e.test_serve import sign_in_and_allow

RP = Path(__file__).resolve().parent / "rp"
SECRET = "rp-" + "s" * 29
CALLBACK = "http://127.0.0.1:9/callback"
SIGNED_OUT = "http://127.0.0.1:9/signed-out"


def rp_client(client_id: str, **extra: object) -> dict[str, object]:
    """A new-format clients-file entry (RFC 7591 names) for the relying party."""
    return {
        "client_id": client_id,
        "client_name": f"Relying party {client_id}",
        "client_secret_hash": "sha256$" + hashlib.sha256(SECRET.encode()).hexdigest(),
        "redirect_uris": [CALLBACK],
        "post_logout_redirect_uris": [SIGNED_OUT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scopes": ["openid", "profile", "email", "read-only"],
        **extra,
    }


def run_rp(mode: str, **args: object) -> dict:
    node = shutil.which("node")
    assert node, "node is needed for the third-party relying party"
    assert (RP / "node_modules" / "openid-client").is_dir(), "run `make install-test`"
    done = subprocess.run(
        [node, str(RP / "rp.mjs"), mode, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0, f"openid-client {mode} failed: {result} {done.stderr}"
    return result


def sign_out(agent: requests.Session, logout_url: str) -> requests.Response:
    """Follow the RP's logout URL; confirm on the page if the server asks."""
    answer = agent.get(logout_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
    if answer.status_code == 200:  # a confirmation page: one "Sign out" button
        form = hidden_inputs(answer.text)
        assert "Sign out" in answer.text, answer.text
        answer = agent.post(
            urljoin(logout_url, "/logout"), data=form, allow_redirects=False, timeout=HTTP_TIMEOUT
        )
    return answer


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_openid_client_signs_a_user_in_and_out(start_server, alg: str) -> None:
    client_id = f"rp-{alg.lower()}"
    server = start_server([rp_client(client_id, id_token_signed_response_alg=alg)])
    common = {"issuer": server.url, "client_id": client_id, "client_secret": SECRET}
    if alg != "RS256":
        common["alg"] = alg
    username = f"rp-{secrets.token_hex(4)}@example.com"

    started = run_rp("start", redirect_uri=CALLBACK, scope="openid profile email", **common)
    with requests.Session() as agent:
        callback = sign_in_and_allow(agent, started["url"], username)
        assert callback.startswith(CALLBACK + "?"), callback
        finished = run_rp(
            "finish",
            callback=callback,
            verifier=started["verifier"],
            nonce=started["nonce"],
            state=started["state"],
            post_logout_redirect_uri=SIGNED_OUT,
            **common,
        )

        claims = finished["claims"]
        assert finished["header"]["alg"] == alg and finished["header"]["kid"]
        assert claims["iss"] == server.url and claims["aud"] in (client_id, [client_id])
        assert claims["nonce"] == started["nonce"]
        assert claims["auth_time"] <= claims["iat"] and claims["sid"]
        userinfo = finished["userinfo"]
        assert userinfo["sub"] == claims["sub"]
        assert userinfo["email"] == username and "name" in userinfo
        refreshed = finished["refreshed_claims"]
        assert finished["refreshed_access_token"]
        assert refreshed is not None and refreshed["sub"] == claims["sub"]
        assert refreshed["auth_time"] == claims["auth_time"]

        # RP-initiated logout returns to the registered URI with the RP's state...
        answer = sign_out(agent, finished["logout_url"])
        assert answer.status_code in (302, 303), answer.text
        back = urlsplit(answer.headers["Location"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == SIGNED_OUT
        assert parse_qs(back.query)["state"] == ["bye-" + started["state"]]

        # ... and the session is over: prompt=none can no longer sign the user in.
        silent = agent.get(
            f"{server.url}/authorize?"
            + urlencode(
                {
                    "client_id": client_id,
                    "redirect_uri": CALLBACK,
                    "response_type": "code",
                    "scope": "openid",
                    "prompt": "none",
                    "state": "again",
                }
            ),
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        assert silent.status_code == 302, silent.text
        assert parse_qs(urlsplit(silent.headers["Location"]).query)["error"] == ["login_required"]
