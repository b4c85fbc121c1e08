"""``admin.listen``: gunicorn serves the admin API on a second, internal address only."""

from __future__ import annotations

import requests

from bench import procs
from tests.e2e.conftest import HTTP_TIMEOUT


def test_admin_routes_answer_only_on_the_admin_address(start_server):
    admin_port = procs.free_port()
    server = start_server(
        workers=1,
        config={
            "auth_server": {"server": "gunicorn"},
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
        },
    )
    data = {"grant_type": "client_credentials", "scope": "admin"}
    token = requests.post(
        f"{server.url}/token", data=data, auth=("admin", "hunter2"), timeout=HTTP_TIMEOUT
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    public = requests.get(f"{server.url}/admin/clients", headers=headers, timeout=HTTP_TIMEOUT)
    assert public.status_code == 404
    # Claiming the admin address in forwarded or Host headers changes nothing.
    forged = {
        **headers,
        "Host": f"127.0.0.1:{admin_port}",
        "X-Forwarded-Host": f"127.0.0.1:{admin_port}",
    }
    assert (
        requests.get(
            f"{server.url}/admin/clients", headers=forged, timeout=HTTP_TIMEOUT
        ).status_code
        == 404
    )
    internal = f"http://127.0.0.1:{admin_port}/admin/clients"
    answer = requests.get(internal, headers=headers, timeout=HTTP_TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert any(c["client_id"] == "admin" for c in answer.json()["clients"])
    assert requests.get(internal, timeout=HTTP_TIMEOUT).status_code == 401
