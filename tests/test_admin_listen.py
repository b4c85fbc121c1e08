"""``admin.listen`` in the app: /admin/ answers only to requests of the admin socket."""

from __future__ import annotations

import pytest

from app import create_app
from app.config_model import ConfigError
from app.settings import Settings
from tests.conftest import base_config, basic, bearer, close_app

LISTEN = "127.0.0.1:9091"


@pytest.fixture
def app(tmp_path, dummy_site):
    config = base_config(
        tmp_path, dummy_site, auth_server={"server": "gunicorn"}, admin={"listen": LISTEN}
    )
    app = create_app(config)
    yield app
    close_app(app)


def token(client) -> dict[str, str]:
    data = {"grant_type": "client_credentials", "scope": "admin"}
    return bearer(
        client.post("/token", data=data, headers=basic("admin")).get_json()["access_token"]
    )


def test_public_address_404(client):
    response = client.get("/admin/clients", headers=token(client))
    assert response.status_code == 404 and response.is_json
    forged = {**token(client), "Host": LISTEN, "X-Forwarded-Host": LISTEN}
    assert client.get("/admin/clients", headers=forged).status_code == 404


def test_admin_address_answers(client):
    headers = token(client)
    response = client.get("/admin/clients", headers=headers, base_url=f"http://{LISTEN}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "admin,server,problem",
    [
        ({"listen": "9091"}, "gunicorn", "admin.listen"),
        ({"listen": "127.0.0.1:99999"}, "gunicorn", "admin.listen"),
        ({"listen": LISTEN}, "granian", "needs auth_server.server"),
        ({"listen": "127.0.0.1:8081"}, "gunicorn", "must differ"),
    ],
)
def test_bad_listen_is_named(tmp_path, dummy_site, admin, server, problem):
    config = base_config(tmp_path, dummy_site, auth_server={"server": server}, admin=admin)
    with pytest.raises(ConfigError, match=problem):
        Settings.load(config)
