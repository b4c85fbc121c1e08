"""Signing key rotation across two ``oauth2-server serve`` instances sharing storage.

The ring lives in Postgres (``keys`` on ``default``), the short-lived tables in Redis,
as in ``test_two_instances.py``. Both servers re-read the ring every second here
(``OAUTH2_KEYS_CACHE_SECONDS``; 30 s by default) and publish the JWKS for
``jwks_max_age`` = 1 s, so a rotation may happen 2 s after the next key appeared. A
token signed before ``keys rotate`` (in this process, with the active key read from the
same storage, as an ID Token would be) still validates against the other instance's
JWKS after it, and the key that signs next was in that JWKS before it signed.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from app.oidc.keys import KeyRing
from app.settings import Settings
from app.storage import Storage
from tests.e2e.conftest import SERVER_BIN, clean_env

from .conftest import TIMEOUT, Instance, Launch

pytestmark = pytest.mark.e2e

CACHE = {"OAUTH2_KEYS_CACHE_SECONDS": "1"}
#: Seconds B may take to show what A's rotation wrote (its re-read is every second).
CONVERGE = 10.0


@pytest.fixture
def pair(launch: Launch, shared_redis: str, pg_url: str) -> tuple[Instance, Instance]:
    storage = {
        "session": shared_redis,
        "codes": shared_redis,
        "tokens": shared_redis,
        "refresh_tokens": shared_redis,
        "default": pg_url,
    }
    oidc = {"jwks_max_age": 1}
    a = launch(storage, name="A", env=CACHE, oidc=oidc)
    b = launch(storage, name="B", site_port=a.ports[1], run_site=False, env=CACHE, oidc=oidc)
    return a, b


def jwks(server: Instance) -> dict:
    answer = requests.get(f"{server.url}/jwks.json", timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "public, max-age=1"
    return answer.json()


def kids(server: Instance) -> set[str]:
    return {key["kid"] for key in jwks(server)["keys"]}


def keys_command(
    server: Instance, tmp_path, *argv: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(tmp_path, CACHE)
    env.update({f"OAUTH2__OIDC__{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(  # noqa: S603 - our own command
        [str(SERVER_BIN), "--config-dir", str(server.config_dir), "keys", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_token_signed_before_a_rotation_validates_on_the_other_instance_after_it(
    pair: tuple[Instance, Instance], tmp_path
) -> None:
    a, b = pair
    settings = Settings.load(config_dir=str(a.config_dir), environ={})
    storage = Storage(settings.storage_specs)
    try:
        # Made at start, before any request needed it (only /healthz was asked so far).
        raw = storage.keys.get("ring")
        assert raw is not None and raw["sealed_by"]
        assert all("d" not in entry["jwk"] for entry in raw["keys"])

        ring = KeyRing.from_settings(storage.keys, settings)
        key = ring.signing_key("RS256")
        before = jwt.encode({"alg": "RS256", "kid": key.kid}, {"sub": "alice"}, key)
        upcoming = ring.entries("next")
        assert kids(a) == kids(b) == {e["kid"] for e in ring.entries()}
        assert all("d" not in k for k in jwks(b)["keys"])

        # A rotation waits until the next keys were published jwks_max_age + the re-read.
        ready_at = max(e["created_at"] for e in upcoming) + 1 + 1
        time.sleep(max(0.0, ready_at - time.time()) + 0.2)
        rotated = keys_command(a, tmp_path, "rotate")
        assert rotated.returncode == 0, rotated.stderr

        ring.forget()
        after = {e["state"] + ":" + e["alg"]: e["kid"] for e in ring.entries()}
        # The keys that sign now are the next keys B was publishing before the rotation.
        assert {after["active:RS256"], after["active:ES256"]} == {e["kid"] for e in upcoming}
        assert after["retired:RS256"] == key.kid
        new_next = {after["next:RS256"], after["next:ES256"]}
        assert not new_next & {e["kid"] for e in upcoming}

        # B re-reads the ring: the new next keys appear before they ever sign.
        deadline = time.monotonic() + CONVERGE
        while not new_next <= kids(b):
            assert time.monotonic() < deadline, "B never published the new next keys"
            time.sleep(0.2)
        published = jwks(b)
        assert key.kid in {k["kid"] for k in published["keys"]}  # retired, still published
        assert jwt.decode(before, KeySet.import_key_set(published)).claims["sub"] == "alice"

        # What signs now validates on both instances too.
        now_key = ring.signing_key("RS256")
        assert now_key.kid == after["active:RS256"]
        fresh = jwt.encode({"alg": "RS256", "kid": now_key.kid}, {"sub": "bob"}, now_key)
        for server in (a, b):
            assert jwt.decode(fresh, KeySet.import_key_set(jwks(server))).claims["sub"] == "bob"

        # The keys just made are too new to sign: a second rotation at once is refused. (Its
        # caches are taken to live an hour here, so a slow machine's seconds since the
        # first rotation cannot make the new next keys old enough.)
        again = keys_command(b, tmp_path, "rotate", jwks_max_age="3600")
        assert again.returncode == 1
        assert "--force" in again.stderr
        listed = keys_command(b, tmp_path, "list")
        assert listed.returncode == 0 and key.kid in listed.stdout
        assert not any(
            value in listed.stdout + again.stderr + rotated.stdout
            for entry in ring.ring()["keys"]
            for name, value in entry["jwk"].items()
            if name in ("d", "p", "q", "dp", "dq", "qi")
        )
    finally:
        storage.close()
