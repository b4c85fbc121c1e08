"""The review page: which partners hold access for me, and taking it back."""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import authorize_url, basic, bearer, consent, location_params
from tests.factories import REDIRECT, csrf_from, login

NAMES = {"test": "Automated tests", "sp-demo": "Demo partner site"}


def grant(http, client_id: str = "test", username: str = "alice", scope: str | None = None) -> dict:
    """Sign in as ``username``, allow ``client_id`` and exchange the code; return tokens."""
    login(http, username=username)
    response = consent(http, authorize_url(client_id=client_id, scope=scope))
    assert response.status_code == 302
    code = location_params(response)["code"]
    token = http.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers=basic(client_id),
    )
    assert token.status_code == 200, token.get_json()
    return token.get_json()


def refresh(http, client_id: str, refresh_token: str):
    return http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers=basic(client_id),
    )


def checkboxes(html: str) -> dict[str, str]:
    """name -> the whole <input> tag, for every checkbox on the page."""
    tags = re.findall(r"<input[^>]*type=\"checkbox\"[^>]*>", html)
    return {re.search(r'name="([^"]+)"', tag).group(1): tag for tag in tags}


def save(http, keep: list[str], query: str = ""):
    page = http.get("/review" + query)
    assert page.status_code == 200
    form = {"csrf_token": csrf_from(page.get_data(as_text=True)), "save": "Save"}
    form.update({client_id: "1" for client_id in keep})
    return http.post("/review" + query, data=form)


@pytest.fixture
def both(client):
    """alice granted both demo clients."""
    return {"test": grant(client, "test"), "sp-demo": grant(client, "sp-demo")}


def test_review_requires_login(client):
    response = client.get("/review")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    token = csrf_from(client.get("/login").get_data(as_text=True))
    anonymous = client.post("/review", data={"csrf_token": token})
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/login")


def test_lists_both_clients_by_name_with_one_checked_box_each(client, both):
    html = client.get("/review").get_data(as_text=True)
    for name in NAMES.values():
        assert name in html
    boxes = checkboxes(html)
    assert set(boxes) == {"test", "sp-demo"}
    for tag in boxes.values():
        assert re.search(r"\schecked\b", tag)
    assert "Read your profile" in html


def test_lists_nothing_before_any_grant(client):
    login(client)
    html = client.get("/review").get_data(as_text=True)
    assert checkboxes(html) == {}
    assert "No apps have access" in html


def test_several_grants_to_one_client_are_one_row(client):
    grant(client, "test")
    grant(client, "test")
    html = client.get("/review").get_data(as_text=True)
    assert list(checkboxes(html)) == ["test"]
    assert html.count("Automated tests") == 1


def test_unchecking_revokes_access_and_refresh_tokens_and_keeps_the_other(client, both):
    response = save(client, keep=["sp-demo"])
    assert response.status_code == 302
    assert response.headers["Location"] == "/review?saved=1"

    gone = client.get("/api/profile", headers=bearer(both["test"]["access_token"]))
    assert gone.status_code == 401
    assert 'error="invalid_token"' in gone.headers["WWW-Authenticate"]
    refused = refresh(client, "test", both["test"]["refresh_token"])
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_grant"

    kept = client.get("/api/profile", headers=bearer(both["sp-demo"]["access_token"]))
    assert kept.status_code == 200
    renewed = refresh(client, "sp-demo", both["sp-demo"]["refresh_token"])
    assert renewed.status_code == 200

    html = client.get("/review").get_data(as_text=True)
    assert set(checkboxes(html)) == {"sp-demo"}
    assert "Automated tests" not in html


def test_unchecking_everything_revokes_everything(client, both):
    assert save(client, keep=[]).status_code == 302
    for client_id, tokens in both.items():
        assert client.get("/api/profile", headers=bearer(tokens["access_token"])).status_code == 401
        assert refresh(client, client_id, tokens["refresh_token"]).status_code == 400
    assert checkboxes(client.get("/review").get_data(as_text=True)) == {}


def test_saving_with_everything_checked_revokes_nothing(client, both):
    assert save(client, keep=["test", "sp-demo"]).status_code == 302
    for tokens in both.values():
        assert client.get("/api/profile", headers=bearer(tokens["access_token"])).status_code == 200


def test_revoking_also_ends_codes_not_yet_exchanged(client):
    login(client)
    response = consent(client, authorize_url())
    code = location_params(response)["code"]
    grant(client, "test")
    save(client, keep=[])
    late = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers=basic(),
    )
    assert late.status_code == 400
    assert late.get_json()["error"] == "invalid_grant"


def test_post_without_csrf_revokes_nothing(client, both):
    response = client.post("/review", data={"sp-demo": "1"})
    assert response.status_code == 400
    tokens = both["test"]
    assert client.get("/api/profile", headers=bearer(tokens["access_token"])).status_code == 200


def test_unchecking_is_audited(client, state, both):
    save(client, keep=["sp-demo"])
    records = [r for r in state.storage.audit.recent(20) if r["event"] == "grant_revoked"]
    assert [r["client_id"] for r in records] == ["test"]


# -- returning to the client --------------------------------------------------------------
GOOD_WAYS_BACK = [
    "?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F",
    "?client_id=sp-demo&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F",
]
BAD_WAYS_BACK = [
    "?client_id=test&redirect_uri=https%3A%2F%2Fevil.example%2F",
    "?client_id=nope&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F",
    "?client_id=test",
    "?redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F",
    "?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F%23x",
    "?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2Fother",
    "?client_id=test&client_id=sp-demo&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F",
    "?client_id=&redirect_uri=",
]


@pytest.mark.parametrize("query", GOOD_WAYS_BACK)
def test_returns_to_the_client_via_a_registered_redirect_uri(client, both, query):
    html = client.get("/review" + query).get_data(as_text=True)
    assert "returned to the app" in html
    response = save(client, keep=["test", "sp-demo"], query=query)
    assert response.status_code == 302
    assert response.headers["Location"] == REDIRECT


def test_without_a_way_back_saving_stays_on_the_page(client, both):
    response = save(client, keep=["test", "sp-demo"])
    assert response.headers["Location"] == "/review?saved=1"


@pytest.mark.parametrize("query", BAD_WAYS_BACK)
def test_an_unknown_client_or_unregistered_uri_is_the_400_page(client, both, query):
    page = client.get("/review?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F")
    form = {"csrf_token": csrf_from(page.get_data(as_text=True)), "save": "Save"}
    response = client.get("/review" + query)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "cannot be used" in response.get_data(as_text=True)
    posted = client.post("/review" + query, data=form)  # unchecks both: must change nothing
    assert posted.status_code == 400
    assert set(NAMES) <= set(checkboxes(client.get("/review").get_data(as_text=True)))


@pytest.mark.parametrize("query", BAD_WAYS_BACK[:2])
def test_a_bad_way_back_is_refused_before_sign_in(client, query):
    response = client.get("/review" + query)
    assert response.status_code == 400


def test_return_to_works_with_no_grants_at_all(client):
    login(client)
    query = "?client_id=test&redirect_uri=http%3A%2F%2Flocalhost%3A8080%2F"
    html = client.get("/review" + query).get_data(as_text=True)
    assert 'action="/review?client_id=test&amp;redirect_uri=' in html
    response = save(client, keep=[], query=query)
    assert response.headers["Location"] == REDIRECT


# -- other users --------------------------------------------------------------------------
def test_another_users_grants_are_never_listed_nor_revocable(app):
    alice, bob = app.test_client(), app.test_client()
    bob_tokens = grant(bob, "test", username="bob")
    alice_tokens = grant(alice, "sp-demo", username="alice")

    html = alice.get("/review").get_data(as_text=True)
    assert set(checkboxes(html)) == {"sp-demo"}
    assert "Automated tests" not in html

    # alice submits a form naming bob's client, then one leaving everything unchecked.
    assert save(alice, keep=["test", "sp-demo"]).status_code == 302
    assert save(alice, keep=[]).status_code == 302

    assert (
        alice.get("/api/profile", headers=bearer(alice_tokens["access_token"])).status_code == 401
    )
    assert bob.get("/api/profile", headers=bearer(bob_tokens["access_token"])).status_code == 200
    assert refresh(bob, "test", bob_tokens["refresh_token"]).status_code == 200
    assert set(checkboxes(bob.get("/review").get_data(as_text=True))) == {"test"}


def test_same_client_for_two_users_revoked_for_one_only(app):
    alice, bob = app.test_client(), app.test_client()
    alice_tokens = grant(alice, "test", username="alice")
    bob_tokens = grant(bob, "test", username="bob")
    save(alice, keep=[])
    assert (
        alice.get("/api/profile", headers=bearer(alice_tokens["access_token"])).status_code == 401
    )
    assert bob.get("/api/profile", headers=bearer(bob_tokens["access_token"])).status_code == 200


def test_implicit_grants_are_listed_and_revocable(client):
    login(client)
    response = consent(client, authorize_url(client_id="sp-demo", response_type="token"))
    token = location_params(response, fragment=True)["access_token"]
    assert set(checkboxes(client.get("/review").get_data(as_text=True))) == {"sp-demo"}
    save(client, keep=[])
    assert client.get("/api/profile", headers=bearer(token)).status_code == 401


# -- any way back: a page or the 400 page, never a 5xx, and a refused POST revokes nothing ----
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ids=st.lists(
        st.sampled_from(["test", "sp-demo", "nope", ""]) | st.text(max_size=12), max_size=2
    ),
    uris=st.lists(
        st.sampled_from([REDIRECT, REDIRECT + "x", "*"]) | st.text(max_size=20), max_size=2
    ),
)
def test_any_way_back_is_the_page_or_the_400_page(client, both, ids, uris):
    query = "?" + urlencode([("client_id", i) for i in ids] + [("redirect_uri", u) for u in uris])
    page = client.get("/review?client_id=test&redirect_uri=" + quote(REDIRECT, safe=""))
    form = {"csrf_token": csrf_from(page.get_data(as_text=True)), "save": "Save"}
    response = client.get("/review" + query)
    assert response.status_code in (200, 400)
    posted = client.post("/review" + query, data={**form, **dict.fromkeys(NAMES, "1")})
    assert posted.status_code == (302 if response.status_code == 200 else 400)
    if response.status_code == 400:
        client.post("/review" + query, data=form)  # unchecks both: refused, revokes nothing
    assert set(NAMES) <= set(checkboxes(client.get("/review").get_data(as_text=True)))
