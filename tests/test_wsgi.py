"""``wsgi.py``, for WSGI servers that ``serve`` does not start: it logs as ``serve`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, config_folder

#: A request through ``wsgi.app`` in a fresh interpreter, as a WSGI server would load it;
#: ``ROOT_HANDLER`` in the environment gives the root a handler first (a server's own).
PROGRAM = """
import logging, os, sys
if os.environ.get("ROOT_HANDLER"):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("SERVER %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
import wsgi
client = wsgi.app.test_client()
assert client.get("/healthz", headers={"X-Request-Id": "wsgi-1"}).status_code == 200
"""


def load(tmp_path, dummy_site, **env: str) -> str:
    """Run :data:`PROGRAM` on a config folder that asks for JSON lines; its stderr."""
    folder, _ = config_folder(tmp_path, dummy_site, "wsgi", logging={"format": "json"})
    environ = {**os.environ, "OAUTH2_CONFIG_DIR": str(folder), "OAUTH2_ENV": "development"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_request_lines_are_written_in_the_configured_format(tmp_path, dummy_site):
    err = load(tmp_path, dummy_site)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    request = next(line for line in lines if line.get("request_id") == "wsgi-1")
    assert request["logger"] == "oauth2.request" and request["status"] == 200
    assert request["path"] == "/healthz" and request["ts"].endswith("Z")


def test_a_servers_own_root_handler_is_kept(tmp_path, dummy_site):
    err = load(tmp_path, dummy_site, ROOT_HANDLER="1")
    assert "SERVER oauth2.request request" in err
    assert not [line for line in err.splitlines() if line.startswith("{")]
