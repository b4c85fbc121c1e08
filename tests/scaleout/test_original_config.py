"""The Node original's ``config/default.json`` runs this server against Redis and Postgres.

The file (``../shared/fixtures/seed-config-default.json``) is used as it is, except for
what this machine forces on it. Exactly these keys change, and nothing else (the test
asserts the list, so this comment cannot drift):

* ``auth_server.url``, ``auth_server.port``: 8081 may be taken (``make run``, other
  tests); a free port instead.
* ``resource_server.port``: the same for the dummy site's 8084.
* ``storage.{default,session,codes,tokens,refresh_tokens}.port``: the original's Redis
  is 127.0.0.1:6379 with databases 0, 1 and 2, which other people's tests and servers
  share. The test starts a ``redis-server`` of its own on a spare port instead, so the
  database numbers (0, 1, 2), host, TTLs and empty ``options`` stay as the original has them.
* ``storage.audit.options.database``: ``oauth2`` does not exist here; ``test`` (the
  database of ``DATABASE_URL``) does. ``host``, ``port`` and ``user`` change only if
  ``DATABASE_URL`` names others than the original's 127.0.0.1, "5432" and postgres.
* ``storage.audit.options.ssl``: ``true`` means TLS is required (libpq ``sslmode=require``,
  as node-postgres insists on TLS), and the local server has none; ``false`` here.

Unchanged on purpose: the published development
``session_secret`` (refused only when ``OAUTH2_ENV`` is production), ``num_workers:
"auto"``, ``client_credentials.file`` ``./clients.json.example`` (relative to the config
folder's parent, where the original's project has it: the test puts a copy of the example
beside each config folder) and ``resource_server.user_agent``.
Not in the file at all: the Postgres schema. The server gets ``PGOPTIONS=-csearch_path=...``
in its environment (libpq reads it), so its tables live in a schema of this test's own.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import requests
from psycopg import sql

from bench.procs import free_ports
from tests.backends import database_url, postgres_schema
from tests.e2e.conftest import ROOT, SERVER_BIN

from .conftest import TIMEOUT, Launch, RedisServer, clean_env

pytestmark = pytest.mark.e2e
#: ``schema`` is in the test PostgreSQL (the backend markers of tests/conftest.py).
BACKEND_FIXTURES = {"schema": "postgres"}

SEED = ROOT.parent / "shared" / "fixtures" / "seed-config-default.json"
REDIS_TABLES = ("default", "session", "codes", "tokens", "refresh_tokens")


def set_key(config: dict[str, Any], path: str, value: Any, changed: list[str]) -> None:
    """Set the dotted ``path``; note it in ``changed`` if the value differs."""
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    assert last in node, f"{path} is not in the original file"
    if node[last] != value:
        node[last] = value
        changed.append(path)


def adapt(seed: dict[str, Any], redis_port: int) -> tuple[dict[str, Any], list[str]]:
    """The original config, changed only where this machine requires; and what changed."""
    config, changed = copy.deepcopy(seed), list[str]()
    port, site_port = free_ports(2)
    set_key(config, "auth_server.url", f"http://127.0.0.1:{port}", changed)
    set_key(config, "auth_server.port", port, changed)
    set_key(config, "resource_server.port", site_port, changed)
    for table in REDIS_TABLES:
        set_key(config, f"storage.{table}.port", redis_port, changed)
    pg = urlsplit(database_url())
    options = config["storage"]["audit"]["options"]
    set_key(config, "storage.audit.options.database", pg.path.lstrip("/"), changed)
    set_key(config, "storage.audit.options.ssl", False, changed)
    if pg.hostname != options["host"]:
        set_key(config, "storage.audit.options.host", pg.hostname, changed)
    if str(pg.port or 5432) != str(options["port"]):
        set_key(config, "storage.audit.options.port", pg.port or 5432, changed)
    if (pg.username or "postgres") != options["user"]:
        set_key(config, "storage.audit.options.user", pg.username, changed)
    return config, changed


@pytest.fixture
def seed() -> dict[str, Any]:
    if not SEED.is_file():
        message = f"{SEED} is not there (the shared fixtures live beside the repository)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return json.loads(SEED.read_text())


@pytest.fixture
def schema() -> Iterator[str]:
    with postgres_schema(database_url()) as name:
        yield name


def test_only_the_documented_keys_change(seed: dict[str, Any]) -> None:
    _, changed = adapt(seed, 1)
    documented = {
        "auth_server.url",
        "auth_server.port",
        "resource_server.port",
        *(f"storage.{t}.port" for t in REDIS_TABLES),
        "storage.audit.options.database",
        "storage.audit.options.ssl",
    }
    optional = {f"storage.audit.options.{k}" for k in ("host", "port", "user")}
    assert documented <= set(changed) <= documented | optional, changed
    assert seed["storage"]["audit"]["options"]["ssl"] is True


def test_the_original_config_checks_serves_and_issues_tokens(
    seed: dict[str, Any],
    own_redis: RedisServer,
    schema: str,
    launch: Launch,
    tmp_path: Path,
) -> None:
    config, _ = adapt(seed, own_redis.port)
    env = {"PGOPTIONS": f"-csearch_path={schema}"}
    folder = tmp_path / "check"
    folder.mkdir()
    (folder / "default.json").write_text(json.dumps(config, indent=2))
    # Beside the config folders of ``check`` and of the launched instance, as in a checkout.
    for home in (tmp_path, tmp_path / "instance-original"):
        home.mkdir(exist_ok=True)
        shutil.copy(ROOT / "clients.json.example", home)
    check = subprocess.run(
        [str(SERVER_BIN), "--config-dir", str(folder), "check"],
        cwd=tmp_path,  # not the project: relative paths must still resolve
        env=clean_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout.strip().splitlines()[-1])["ok"] is True

    server = launch({}, name="original", config=config, env=env)
    issued = requests.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials"},
        auth=("test", "hunter2"),
        timeout=TIMEOUT,
    )
    assert issued.status_code == 200, issued.text
    token = issued.json()
    assert token["token_type"] == "Bearer"
    about = requests.post(
        f"{server.url}/introspect",
        data={"token": token["access_token"]},
        auth=("test", "hunter2"),
        timeout=TIMEOUT,
    )
    assert about.status_code == 200, about.text
    assert about.json()["active"] is True
    assert about.json()["client_id"] == "test"

    # The records are where the original puts them: tokens in Redis database 1 with the
    # original's 7200 s lifetime, the audit trail in Postgres.
    with redis.Redis(port=own_redis.port, db=1, decode_responses=True) as tokens_db:
        keys = list(tokens_db.scan_iter(match="oauth2:tokens:{*}"))
        assert len(keys) == 1, keys
        assert 0 < tokens_db.ttl(keys[0]) <= 7200
    with psycopg.connect(database_url()) as conn:
        events = [
            json.loads(row[0])["event"]
            for row in conn.execute(
                sql.SQL("SELECT data FROM {}.oauth2_audit").format(sql.Identifier(schema))
            )
        ]
    assert "token_issued" in events
