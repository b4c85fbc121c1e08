"""DPoP across two ``oauth2-server serve`` instances behind one URL (RFC 9449 §11.1, §9).

Both share Redis and one issuer, as behind a load balancer: a proof used on one is
refused on the other, a token bound on one is checked on the other, and a nonce handed
out by one is accepted by the other (nonces are derived from the shared secret).
"""

from __future__ import annotations

import pytest
import requests

from tests.oauth2.dpop_helpers import Prover

from .conftest import TIMEOUT, Instance, Launch

pytestmark = pytest.mark.e2e

#: The one external URL both instances answer for (``auth_server.url``).
ISSUER = "http://auth.example.test"


@pytest.fixture
def pair(launch: Launch, shared_redis: str) -> tuple[Instance, Instance]:
    over = {"auth_server": {"url": ISSUER}, "dpop": {"nonce": True}}
    a = launch({"default": shared_redis}, name="A", **over)
    b = launch({"default": shared_redis}, name="B", site_port=a.ports[1], run_site=False, **over)
    return a, b


def proof(prover: Prover, method: str, path: str, token: str | None = None, **claims) -> str:
    return prover.proof(method, path, token, htu=ISSUER + path, **claims)


def token_request(server: Instance, dpop: str) -> requests.Response:
    data = {"grant_type": "client_credentials", "scope": "read-only"}
    headers = {"DPoP": dpop}
    return requests.post(
        f"{server.url}/token", data=data, headers=headers, auth=("test", "hunter2"), timeout=TIMEOUT
    )


def test_proofs_nonces_and_bound_tokens_hold_across_instances(pair) -> None:
    a, b = pair
    prover = Prover()
    asked = token_request(a, proof(prover, "POST", "/token"))
    assert asked.status_code == 400 and asked.json()["error"] == "use_dpop_nonce"
    nonce = asked.headers["DPoP-Nonce"]

    # A's nonce is good on B; the proof is then used up on both.
    first = proof(prover, "POST", "/token", nonce=nonce)
    issued = token_request(b, first)
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "DPoP"
    replayed = token_request(a, first)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_dpop_proof"

    # The token bound on B passes on A with a proof (403: a client-only token reaches the
    # scope and user checks, which come after the proof's). A refused call uses nothing
    # up, so B answers the same proof alike (the replay across instances is shown at
    # /token above).
    token = issued.json()["access_token"]
    resource = {"Authorization": f"DPoP {token}"}
    call = proof(prover, "GET", "/api/profile", token, nonce=nonce)
    on_a = requests.get(f"{a.url}/api/profile", headers={**resource, "DPoP": call}, timeout=TIMEOUT)
    assert on_a.status_code == 403, on_a.text
    on_b = requests.get(f"{b.url}/api/profile", headers={**resource, "DPoP": call}, timeout=TIMEOUT)
    assert on_b.status_code == 403, on_b.text
    as_bearer = requests.get(
        f"{b.url}/api/profile", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert as_bearer.status_code == 401
