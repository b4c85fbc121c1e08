"""Subject identifiers (OpenID Connect Core §8): the same ``sub`` for one client everywhere;
pairwise values differ per sector and are stable."""

from __future__ import annotations

from tests.conftest import basic, bearer
from tests.oidc.core_helpers import decode, open_rp_app, tokens_for

PAIRWISE = "https://a.example/cb"


def sub_of(client, client_id: str, redirect_uri: str) -> dict[str, str]:
    """The ``sub`` of the ID Token, UserInfo and introspection for one code flow."""
    tokens = tokens_for(client, client_id=client_id, redirect_uri=redirect_uri)
    info = client.get("/userinfo", headers=bearer(tokens["access_token"])).get_json()
    introspected = client.post(
        "/introspect", data={"token": tokens["access_token"]}, headers=basic(client_id)
    ).get_json()
    return {
        "id_token": decode(client, tokens["id_token"]).claims["sub"],
        "userinfo": info["sub"],
        "introspection": introspected["sub"],
    }


def test_public_sub_is_the_site_user_id_everywhere(app, client):
    subs = sub_of(client, "test", "http://localhost:8080/")
    user_id = app.extensions["oauth2"].adapter.login("alice", "password").id
    assert set(subs.values()) == {user_id}


def test_pairwise_sub_is_one_value_per_client_everywhere_and_stable(client):
    first = sub_of(client, "pw-a", PAIRWISE)
    assert len(set(first.values())) == 1
    assert sub_of(client, "pw-a", PAIRWISE) == first


def test_pairwise_sub_differs_between_sectors_and_from_the_user_id(app, client):
    a = sub_of(client, "pw-a", PAIRWISE)["id_token"]
    b = sub_of(client, "pw-b", "https://b.example/cb")["id_token"]
    public = sub_of(client, "test", "http://localhost:8080/")["id_token"]
    assert len({a, b, public}) == 3


def test_one_sector_one_pairwise_sub(client):
    """Clients of one sector (redirect host, or sector_identifier_uri's host) share it."""
    a = sub_of(client, "pw-a", PAIRWISE)["id_token"]
    assert sub_of(client, "pw-a2", "https://a.example/other")["id_token"] == a
    assert sub_of(client, "pw-sector", "https://d.example/cb")["id_token"] == a


def test_pairwise_sub_survives_a_restart(tmp_path, dummy_site):
    """The pairwise secret is in storage: a new process derives the same values."""
    with open_rp_app(tmp_path, dummy_site) as app:
        first = sub_of(app.test_client(), "pw-a", PAIRWISE)["id_token"]
    with open_rp_app(tmp_path, dummy_site) as app:
        assert sub_of(app.test_client(), "pw-a", PAIRWISE)["id_token"] == first
