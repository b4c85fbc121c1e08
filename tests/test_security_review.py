"""Findings of the security review of OpenID Connect and the admin API, one test each.

Each test fails on the code before its fix; the module docstring of the fix names it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from app.client_metadata import ClientMetadataError
from app.client_store import ClientStore
from app.oidc.backchannel import _resolves_publicly
from tests.conftest import bearer, login
from tests.oidc.logout_helpers import AFTER, give, id_token, session_of

ADMIN = "/admin/clients"


# -- RP-Initiated Logout: a real ID Token as the only hint ---------------------------------
def test_a_hint_whose_aud_is_a_list_names_its_client(app, client):
    """Our ID Tokens carry ``aud`` as a one-member list; Authlib resolved the client only
    from a string, so a hint-only logout lost its client: the registered
    post_logout_redirect_uri was refused and a current hint still asked to confirm."""
    give(app, "test", post_logout_redirect_uris=[AFTER])
    login(client)
    session = session_of(client)
    hint = id_token(app, session["user_id"], aud=["test"], sid=session["sid"])
    query = urlencode({"id_token_hint": hint, "post_logout_redirect_uri": AFTER, "state": "s"})
    response = client.get("/logout?" + query)
    assert response.status_code == 302, response.get_data(as_text=True)[-400:]
    assert response.headers["Location"] == AFTER + "?state=s"
    assert client.get("/review").status_code == 302  # signed out: sent to sign in


def test_a_hint_for_several_audiences_names_its_azp_only_if_listed(app, client):
    give(app, "test", post_logout_redirect_uris=[AFTER])
    login(client)
    session = session_of(client)
    for azp, status in (("test", 302), ("sp-demo", 400)):
        hint = id_token(app, session["user_id"], aud=["test", "other"], azp=azp, sid="x")
        query = urlencode({"id_token_hint": hint, "post_logout_redirect_uri": AFTER})
        response = client.get("/logout?" + query)
        # sid differs: the user is asked first, but the redirect is known good (200 page)
        # for the listed azp; an azp outside aud names no client: refused (400).
        assert response.status_code == (200 if status == 302 else 400)
        assert "Location" not in response.headers


# -- the admin API: what a stored client may not hold -------------------------------------
def _admin(client):
    from tests.test_admin_api import admin_token

    return bearer(admin_token(client))


def test_a_stored_client_cannot_name_another_partners_pairwise_sector(client, state):
    """The sector_identifier_uri is not fetched; a client made over the admin API naming
    ``a.example`` while redirecting to ``evil.example`` would see a.example's pairwise
    ``sub`` values, so two partners could correlate a user."""
    body = {
        "client_name": "Evil",
        "redirect_uris": ["https://evil.example/cb"],
        "subject_type": "pairwise",
        "sector_identifier_uri": "https://a.example/sector.json",
    }
    response = client.post(ADMIN, json=body, headers=_admin(client))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert "sector_identifier_uri" in response.get_json()["error_description"]
    assert state.clients.store.records() == []
    # its own sector (a parent domain of its redirect hosts) is fine
    body["redirect_uris"] = ["https://app.evil.example/cb", "https://www.evil.example/cb"]
    body["sector_identifier_uri"] = "https://evil.example/sector.json"
    made = client.post(ADMIN, json=body, headers=_admin(client))
    assert made.status_code == 201, made.get_json()
    # ...and a patch cannot move the redirect URIs out of it
    path = f"{ADMIN}/{made.get_json()['client_id']}"
    patched = client.patch(
        path, json={"redirect_uris": ["https://a.example/cb"]}, headers=_admin(client)
    )
    assert patched.status_code == 400
    assert (
        state.clients.store.record(made.get_json()["client_id"])["metadata"]["redirect_uris"]
        == body["redirect_uris"]
    )


@pytest.mark.parametrize(
    "uri",
    [
        "https://127.0.0.1/bc",
        "http://127.0.0.1:6379/",
        "https://localhost/bc",
        "https://10.0.0.5/bc",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/bc",
        "https://[fd00::1]/bc",
        "https://192.168.1.1/bc",
    ],
)
def test_in_production_a_stored_clients_back_channel_may_not_aim_inside(state, uri):
    """The server POSTs Logout Tokens to backchannel_logout_uri: over the admin API, an
    internal address made it a request forgery into the operator's network."""
    store = ClientStore(state.storage.clients, ["read-only"], production=True)
    body = {"redirect_uris": ["https://rp.example/cb"], "backchannel_logout_uri": uri}
    with pytest.raises(ClientMetadataError, match="backchannel_logout_uri"):
        store.create(body)
    assert store.records() == []
    record, _ = store.create({**body, "backchannel_logout_uri": "https://rp.example/bc"})
    with pytest.raises(ClientMetadataError, match="backchannel_logout_uri"):
        store.update(record, {**body})
    assert store.record(record["client_id"])["metadata"]["backchannel_logout_uri"] == (
        "https://rp.example/bc"
    )


@pytest.mark.parametrize(
    ("uri", "public"),
    [
        ("https://93.184.216.34/bc", True),
        ("https://[2606:4700::1111]/bc", True),
        ("https://127.0.0.1/bc", False),
        ("http://localhost:8080/bc", False),
        ("https://10.1.2.3/bc", False),
        ("https://[::ffff:127.0.0.1]/bc", False),
        ("https://host.invalid/bc", False),  # does not resolve: not sent
    ],
)
def test_a_back_channel_address_is_public_only_if_every_address_is(uri, public):
    assert _resolves_publicly(uri) is public
