"""Findings of the security review of OpenID Connect and the admin API, one test each.

Each test fails on the code before its fix; the module docstring of the fix names it.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tests.conftest import login
from tests.oidc.logout_helpers import AFTER, give, id_token, session_of


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
