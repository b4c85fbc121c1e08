"""The README's DPoP example (``examples/dpop_client.py``) run against a live server.

The server asks for nonces, so the script's retry is exercised too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from .test_serve import REDIRECT, sign_in_and_allow

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "dpop_client.py"


def test_the_readme_shows_the_script_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```python\n" + SCRIPT.read_text(encoding="utf-8") + "```" in readme


def test_the_readme_example_gets_a_bound_token_and_calls_the_api(start_server) -> None:
    server = start_server(workers=1, config={"dpop": {"nonce": True}})
    authorize = (
        f"{server.url}/authorize?response_type=code&client_id=test&scope=read-only"
        f"&redirect_uri={REDIRECT}&state=s"
    )
    with requests.Session() as agent:
        location = sign_in_and_allow(agent, authorize, "alice")
    code = parse_qs(urlsplit(location).query)["code"][0]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), server.url, "test", "hunter2", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "token_type: DPoP" in run.stdout
    assert 'profile: {"' in run.stdout and '"id"' in run.stdout
