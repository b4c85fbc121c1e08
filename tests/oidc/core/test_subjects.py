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


def sids_in_one_session(client, *clients: tuple[str, str]) -> tuple[str, list[str]]:
    """Sign in once, then a code flow with each (client, redirect URI); return the
    session's own id and the ``sid`` of each ID Token."""
    from app.sessions import SID
    from tests.conftest import authorize_url, consent, location_params
    from tests.factories import login
    from tests.oauth2.conftest import redeem

    login(client)
    found = []
    for client_id, redirect_uri in clients:
        url = authorize_url(client_id=client_id, redirect_uri=redirect_uri, scope="openid")
        code = location_params(consent(client, url))["code"]
        tokens = redeem(client, code, client_id, redirect_uri=redirect_uri).get_json()
        found.append(decode(client, tokens["id_token"]).claims["sid"])
    with client.session_transaction() as session:
        return session[SID], found


def test_the_session_id_is_scoped_by_sector_like_the_pairwise_sub(client):
    """One ``sid`` for every partner would let partners in different sectors join their
    pairwise ``sub`` values on it: a pairwise client's ``sid`` is its sector's own."""
    from app.oidc.subjects import SECTORED_SID

    own, (a, a2, b, public) = sids_in_one_session(
        client,
        ("pw-a", PAIRWISE),
        ("pw-a2", "https://a.example/other"),
        ("pw-b", "https://b.example/cb"),
        ("test", "http://localhost:8080/"),
    )
    assert own.startswith(SECTORED_SID)
    assert public == own  # a public client sees the user's id anyway
    assert a == a2  # one sector, one value (as its sub)
    assert len({a, b, own}) == 3


def test_a_session_made_before_scoping_keeps_one_sid_for_everyone(app):
    """A session id without the prefix (made before this release) is every partner's
    ``sid`` until the session ends, so its ID Tokens and Logout Tokens agree."""
    from app.oidc.subjects import session_id_for

    state = app.extensions["oauth2"]
    pairwise, secret = state.clients.get("pw-a"), state.keys.pairwise_secret()
    assert session_id_for(pairwise, "old-session-id", secret) == "old-session-id"
    scoped = session_id_for(pairwise, "s.new-session-id", secret)
    assert scoped != "s.new-session-id"
    assert session_id_for(state.clients.get("test"), "s.new-session-id", secret) == (
        "s.new-session-id"
    )


def test_a_session_made_before_scoping_gives_its_own_sid_through_a_flow(client):
    """An unprefixed session id (a session from the release before) reaches a pairwise
    client's ID Token as it is: its earlier tokens carried that value too."""
    from app.sessions import SID
    from tests.conftest import authorize_url, consent, location_params
    from tests.factories import login
    from tests.oauth2.conftest import redeem

    login(client)
    with client.session_transaction() as session:
        session[SID] = "made-before-scoping"
    url = authorize_url(client_id="pw-a", redirect_uri=PAIRWISE, scope="openid")
    code = location_params(consent(client, url))["code"]
    tokens = redeem(client, code, "pw-a", redirect_uri=PAIRWISE).get_json()
    assert decode(client, tokens["id_token"]).claims["sid"] == "made-before-scoping"
