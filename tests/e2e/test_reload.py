"""SIGHUP: every worker picks up a changed clients file before the reload is logged
complete; a bad file is refused."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.factories import make_client

pytestmark = pytest.mark.e2e


def cc_token(server, client_id: str, secret: str) -> requests.Response:
    return requests.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    )


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def reloads_completed(server) -> int:
    return server.log_path.read_text(errors="replace").count("reload complete: generation")


@pytest.mark.parametrize("http_server", ["gunicorn", "granian"])
def test_sighup_loads_a_good_clients_file_and_refuses_a_bad_one(start_server, http_server):
    server = start_server(workers=2, config={"auth_server": {"server": http_server}})
    config = json.loads((server.config_dir / "default.json").read_text())
    clients_file = Path(config["client_credentials"]["file"])
    entries = json.loads(clients_file.read_text())
    new = make_client("reloaded", ["https://partner.example/cb"], secret="fresh-secret")
    new["grant_types"] = ["client_credentials"]
    assert cc_token(server, "reloaded", "fresh-secret").status_code == 401

    clients_file.write_text(json.dumps(entries + [new]))
    os.kill(server.process.pid, signal.SIGHUP)
    assert wait_for(lambda: reloads_completed(server) == 1), server.log()
    assert "reload complete: generation 1, 2 workers, log level notice, 4 clients" in server.log()
    # Once the reload is logged complete, no worker answers with the old clients.
    answers = [cc_token(server, "reloaded", "fresh-secret").status_code for _ in range(8)]
    assert answers == [200] * 8

    clients_file.write_text('[{"client_id": "broken"}]')
    os.kill(server.process.pid, signal.SIGHUP)
    assert wait_for(lambda: reloads_completed(server) == 2), server.log()
    assert "reload refused" in server.log()
    assert server.process.poll() is None
    # Every request after the refused reload is still served with the last good clients.
    answers = [cc_token(server, "reloaded", "fresh-secret").status_code for _ in range(6)]
    assert answers == [200] * 6
    assert cc_token(server, "test", "hunter2").status_code == 200
