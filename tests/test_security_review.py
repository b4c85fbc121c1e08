"""Findings of the security review of OpenID Connect and the admin API, one test each.

Each test fails on the code before its fix; the module docstring of the fix names it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from app.client_metadata import ClientMetadataError
from app.client_store import ClientStore
from app.oidc.backchannel import _public_addresses
from app.oidc.consent import Consents
from tests.conftest import basic, bearer, login
from tests.factories import make_token
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
    assert bool(_public_addresses(uri)) is public


def test_a_new_client_on_a_former_file_clients_id_inherits_nothing(client, state):
    """A client removed from the clients file leaves its tokens and its users' remembered
    consent in storage (they stop working while no client has the id). A client made
    over the admin API with that id, perhaps by another party, revived both: the old
    partner's tokens worked again, and the new client got codes without asking."""
    token = make_token(state, client_id="sp-demo", scope="read-only")
    user_id = state.grants.find_access(token["access_token"]).user_id
    consents = Consents.of(state)
    consents.remember(user_id, "sp-demo", ["openid", "read-only"])
    state.clients._clients.pop("sp-demo")  # the operator removed it from the file
    assert client.get("/api/profile", headers=bearer(token["access_token"])).status_code == 401

    body = {"client_id": "sp-demo", "redirect_uris": ["https://new.example/cb"]}
    assert client.post(ADMIN, json=body, headers=_admin(client)).status_code == 201
    assert client.get("/api/profile", headers=bearer(token["access_token"])).status_code == 401
    assert (
        client.post(
            "/token",
            data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
            headers=basic("sp-demo", "x"),
        ).status_code
        == 401
    )
    assert state.grants.find_refresh(token["refresh_token"]) is None
    assert consents.granted(user_id, "sp-demo") == set()


def test_the_admin_api_cannot_grant_skip_consent(client, state):
    """Mass assignment: ``skip_consent`` over the admin API turned an admin token into a
    client that receives any signed-in user's code without a consent page."""
    body = {"client_name": "Silent", "redirect_uris": ["https://evil.example/cb"]}
    refused = client.post(ADMIN, json={**body, "skip_consent": True}, headers=_admin(client))
    assert refused.status_code == 400
    assert "skip_consent" in refused.get_json()["error_description"]
    assert state.clients.store.records() == []
    made = client.post(ADMIN, json=body, headers=_admin(client)).get_json()
    path = f"{ADMIN}/{made['client_id']}"
    for method in ("PATCH", "PUT"):
        response = client.open(
            path, method=method, json={**body, "skip_consent": True}, headers=_admin(client)
        )
        assert response.status_code == 400, method
    assert state.clients.get(made["client_id"]).skip_consent is False
    # a client the operator marked (CLI) keeps it through an unrelated change
    record = state.clients.store.record(made["client_id"])
    state.clients.store.update(record, {**record["metadata"], "skip_consent": True})
    kept = client.patch(
        path, json={"skip_consent": True, "client_name": "X"}, headers=_admin(client)
    )
    assert kept.status_code == 200 and kept.get_json()["skip_consent"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"client_name": "\u202elapyaP"},  # shows as "Paypal" on the consent page
        {"client_name": "Shop \u2066x\u2069"},
        {"disabled": "no"},  # was read as true
        {"disabled": 0},
    ],
)
def test_names_that_reorder_text_and_non_boolean_switches_are_refused(client, state, body):
    full = {"client_name": "Partner", "redirect_uris": ["https://rp.example/cb"], **body}
    response = client.post(ADMIN, json=full, headers=_admin(client))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert state.clients.store.records() == []


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9f"])
def test_control_characters_are_refused_in_next_and_in_redirect_uris(char):
    """C0, DEL and C1 alike: none belongs in a URL (RFC 3986), and a redirect to one is
    at best a confused partner, at worst a header or log trick."""
    from app.clients import valid_redirect_uri
    from app.views.common import safe_next

    assert safe_next(f"/authorize?x=1{char}y", default="/home") == "/home"
    assert not valid_redirect_uri(f"https://rp.example/cb?x={char}")
    # Other characters beyond ASCII are a partner's business (IRIs): accepted.
    assert safe_next("/authorize?x=\u00e9\u00a0", default="/home") == "/authorize?x=\u00e9\u00a0"
    assert valid_redirect_uri("https://rp.example/caf\u00e9")
