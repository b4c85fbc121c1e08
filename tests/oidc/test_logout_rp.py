"""RP-Initiated Logout (``/logout`` as ``end_session_endpoint``): hints, redirects, the page."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import re
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.oidc.logout import logout_metadata
from app.secrets_hash import token_digest
from tests.conftest import table
from tests.factories import csrf_from, login
from tests.oauth2.conftest import open_app
from tests.oidc.logout_helpers import AFTER, give, id_token, session_of

OTHER_RP = "http://localhost:8080/other-signed-out"


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site) as app:
        give(app, "test", post_logout_redirect_uris=[AFTER])
        give(app, "sp-demo", post_logout_redirect_uris=[OTHER_RP])
        give(app, "reader", post_logout_redirect_uris=[AFTER], subject_type="pairwise")
        yield app


@pytest.fixture
def browser(app):
    """A browser signed in as alice."""
    browser = app.test_client()
    assert login(browser).status_code == 302
    return browser


def signed_in(app, browser) -> bool:
    """Whether the browser's session still exists, in storage as for the pages."""
    cookie = browser.get_cookie("oauth2_session")
    stored = cookie is not None and app.extensions["oauth2"].storage.session.get(
        token_digest(cookie.value)
    )
    return bool(stored) and browser.get("/review").status_code == 200


def hint(app, browser, **over) -> str:
    """A current ID Token of ``test`` for the browser's own session."""
    session = session_of(browser)
    fields = {"sid": session["sid"]} | over
    return id_token(app, session["user_id"], **fields)


def logout(browser, method="GET", **params):
    if method == "GET":
        return browser.get("/logout?" + urlencode(params))
    return browser.post("/logout", data=params)


def refused(response) -> str:
    """Assert a 400 error page (never a redirect); return its text."""
    text = response.get_data(as_text=True)
    assert response.status_code == 400, text[:300]
    assert "Location" not in response.headers
    assert response.mimetype == "text/html"
    assert "cannot be used" in text
    return text


def the_form(html: str) -> str:
    forms = re.findall(r"<form\b[^>]*>.*?</form>", html, re.S)
    assert len(forms) == 1, forms  # the header's sign-out form is left out
    assert 'method="post"' in forms[0] and 'action="/logout"' in forms[0]
    return forms[0]


def hidden_fields(form: str) -> dict[str, str]:
    pairs = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    return {name: value.replace("&amp;", "&") for name, value in pairs}


def confirm(browser, page) -> object:
    """Press the confirmation page's one button."""
    return browser.post("/logout", data=hidden_fields(the_form(page.get_data(as_text=True))))


# -- a current hint for this session: signed out at once ----------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_valid_hint_signs_out_at_once_and_returns_with_state(app, browser, method):
    token = hint(app, browser)
    response = logout(
        browser, method, id_token_hint=token, post_logout_redirect_uri=AFTER, state="st-1"
    )
    assert response.status_code == 302
    assert response.headers["Location"] == AFTER + "?state=st-1"
    assert not signed_in(app, browser)
    event = app.extensions["oauth2"].storage.audit.recent(1)[0]
    assert (event["event"], event["client_id"]) == ("logout", "test")


def test_a_valid_hint_without_state_or_redirect_shows_the_signed_out_page(app, browser):
    token = hint(app, browser)
    response = logout(browser, id_token_hint=token)
    assert response.status_code == 200
    assert "You are signed out" in response.get_data(as_text=True)
    assert not signed_in(app, browser)
    with_uri = logout(browser, id_token_hint=token, post_logout_redirect_uri=AFTER)
    assert with_uri.headers["Location"] == AFTER  # nothing to end, still sent back


def test_client_id_must_be_in_the_hints_audience(app, browser):
    token = hint(app, browser, aud=["test", "sp-demo"], azp="test")
    response = logout(
        browser, id_token_hint=token, client_id="test", post_logout_redirect_uri=AFTER
    )
    assert response.headers["Location"] == AFTER
    assert not signed_in(app, browser)


def test_a_pairwise_subject_names_the_user_too(app, browser):
    from app.oidc.subjects import subject_for

    state = app.extensions["oauth2"]
    session = session_of(browser)
    sub = subject_for(state.clients.get("reader"), session["user_id"], state.keys.pairwise_secret())
    assert sub != session["user_id"]
    token = id_token(app, sub, aud="reader", sid=session["sid"])
    response = logout(browser, id_token_hint=token, post_logout_redirect_uri=AFTER)
    assert response.headers["Location"] == AFTER
    assert not signed_in(app, browser)


@pytest.mark.parametrize("scoped", [True, False], ids=["its-sectors-sid", "another-sectors-sid"])
def test_a_pairwise_hint_carries_the_sid_its_sector_saw(app, browser, scoped):
    """``reader`` (pairwise) was given its sector's ``sid``: that one ends the session
    at once; another sector's value for the same session is not this session to it."""
    from app.oidc.subjects import session_id_for, subject_for

    state = app.extensions["oauth2"]
    session, secret = session_of(browser), state.keys.pairwise_secret()
    reader = state.clients.get("reader")
    other = dataclasses.replace(reader, redirect_uris=["https://elsewhere.example/cb"])
    sid = session_id_for(reader if scoped else other, session["sid"], secret)
    assert sid != session["sid"]
    sub = subject_for(reader, session["user_id"], secret)
    token = id_token(app, sub, aud="reader", sid=sid)
    response = logout(browser, id_token_hint=token, post_logout_redirect_uri=AFTER)
    if scoped:
        assert response.headers["Location"] == AFTER
        assert not signed_in(app, browser)
    else:
        assert response.status_code == 200  # the confirmation page
        assert signed_in(app, browser)


# -- the confirmation page ----------------------------------------------------------------
def test_without_a_hint_the_user_confirms_on_a_page_with_one_sign_out_button(app, browser):
    page = logout(browser, client_id="test", post_logout_redirect_uri=AFTER, state="s&t")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    form = the_form(html)
    buttons = re.findall(r"<button\b[^>]*>(.*?)</button>", form, re.S)
    assert [b.strip() for b in buttons] == ["Sign out"]
    assert hidden_fields(form) == {
        "csrf_token": csrf_from(html),
        "client_id": "test",
        "post_logout_redirect_uri": AFTER,
        "state": "s&t",
    }
    assert "Sign out?" in html and "test" in html
    assert signed_in(app, browser)  # showing the page ended nothing

    response = confirm(browser, page)
    assert response.status_code == 302
    assert response.headers["Location"] == AFTER + "?state=s%26t"
    assert not signed_in(app, browser)


def test_a_bare_logout_asks_then_lands_on_the_sign_in_page(app, browser):
    page = browser.get("/logout")
    assert hidden_fields(the_form(page.get_data(as_text=True))).keys() == {"csrf_token"}
    response = confirm(browser, page)
    assert response.headers["Location"] == "/login"
    assert not signed_in(app, browser)


def test_a_hint_less_request_without_a_way_back_ends_on_the_signed_out_page(app, browser):
    page = logout(browser, client_id="test")
    response = confirm(browser, page)
    assert response.status_code == 200
    assert "You are signed out" in response.get_data(as_text=True)
    assert not signed_in(app, browser)


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"expires_in": -3600}, id="expired"),
        pytest.param({"sid": "another-session"}, id="another-session"),
        pytest.param({"sub": "someone-else"}, id="another-user"),
    ],
)
def test_an_expired_or_foreign_hint_asks_first_and_is_honoured_after(app, browser, over):
    session = session_of(browser)
    sub = over.pop("sub", session["user_id"])
    token = id_token(app, sub, **({"sid": session["sid"]} | over))
    page = logout(browser, id_token_hint=token, post_logout_redirect_uri=AFTER, state="z")
    assert page.status_code == 200
    assert hidden_fields(the_form(page.get_data(as_text=True)))["id_token_hint"] == token
    assert signed_in(app, browser)
    response = confirm(browser, page)
    assert response.headers["Location"] == AFTER + "?state=z"
    assert not signed_in(app, browser)


def test_a_forged_or_stale_csrf_token_ends_nothing(app, browser):
    stale = csrf_from(browser.get("/logout").get_data(as_text=True))
    response = browser.post("/logout", data={"csrf_token": "forged", "client_id": "test"})
    assert response.status_code == 400
    assert signed_in(app, browser)
    login(browser, "bob")  # a new session: the old page's token no longer signs
    assert browser.post("/logout", data={"csrf_token": stale}).status_code == 400
    assert signed_in(app, browser)


# -- signed-out visitors ------------------------------------------------------------------
def test_a_signed_out_visitor_is_sent_back_at_once(app):
    visitor = app.test_client()
    response = logout(visitor, client_id="test", post_logout_redirect_uri=AFTER, state="v")
    assert response.headers["Location"] == AFTER + "?state=v"
    page = logout(visitor, client_id="test")
    assert page.status_code == 200
    assert "You are signed out" in page.get_data(as_text=True)
    # An old confirmation page, pressed after the session ended elsewhere.
    assert visitor.post("/logout", data={"csrf_token": "old"}).headers["Location"] == "/login"


# -- refusals: a 400 page, never a redirect, still signed in -----------------------------
def _other_key() -> RSAKey:
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    return key


def _tampered(token: str) -> str:
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{signature}"


def _unsigned(token: str) -> str:
    head = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    return f"{head}.{token.split('.')[1]}."


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hs256(app, sub) -> str:
    """Algorithm confusion: HMAC keyed with our public key (PEM), under our ``kid``."""
    keys, issuer = app.extensions["oauth2"].keys, app.extensions["oauth2"].settings.issuer
    key = keys.signing_key("RS256")
    head = _b64(json.dumps({"alg": "HS256", "kid": key.kid}).encode())
    body = _b64(json.dumps({"iss": issuer, "sub": sub, "aud": "test"}).encode())
    mac = hmac.new(key.as_pem(private=False), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{_b64(mac.digest())}"


def _ours_kid_other_key(app, sub) -> str:
    kid = app.extensions["oauth2"].keys.signing_key("RS256").kid
    key = _other_key()
    claims = {"iss": app.extensions["oauth2"].settings.issuer, "sub": sub, "aud": "test"}
    return jwt.encode({"alg": "RS256", "kid": kid}, claims | {"exp": 2**31}, key, ["RS256"])


BAD_HINTS = table(
    [
        ("another-key", lambda app, sub: id_token(app, sub, key=_other_key())),
        ("our-kid-another-key", _ours_kid_other_key),
        ("tampered", lambda app, sub: _tampered(id_token(app, sub))),
        ("alg-none", lambda app, sub: _unsigned(id_token(app, sub))),
        ("another-issuer", lambda app, sub: id_token(app, sub, iss="https://evil.example")),
        ("another-client", lambda app, sub: id_token(app, sub, aud="sp-demo")),
        ("hs256-our-kid", lambda app, sub: _hs256(app, sub)),
        ("unknown-kid", lambda app, sub: _b64(b'{"alg":"RS256","kid":"x"}') + ".e30.AAAA"),
        ("header-not-object", lambda app, sub: _b64(b"[1]") + ".e30.AAAA"),
        ("garbage", lambda app, sub: "garbage"),
        ("three-dots", lambda app, sub: "a.b.c"),
        ("bad-base64", lambda app, sub: "e30.!!!.x"),
        ("not-ascii", lambda app, sub: "\u00e9y.\u202e.z"),
        ("json-not-object", lambda app, sub: "WzFd.WzFd.eA"),
        ("long", lambda app, sub: "a" * 4000),
    ]
)


@pytest.mark.parametrize("make", BAD_HINTS)
def test_a_bad_hint_is_refused_with_a_page(app, browser, make):
    token = make(app, session_of(browser)["user_id"])
    for method in ("GET", "POST"):
        response = logout(
            browser,
            method,
            id_token_hint=token,
            client_id="test",
            post_logout_redirect_uri=AFTER,
            state="x",
        )
        refused(response)
    assert signed_in(app, browser)


@pytest.mark.parametrize(
    "params",
    table(
        [
            ("unregistered", {"client_id": "test", "post_logout_redirect_uri": OTHER_RP}),
            ("other-clients-uri", {"client_id": "test", "post_logout_redirect_uri": OTHER_RP}),
            (
                "login-redirect-uri",
                {"client_id": "test", "post_logout_redirect_uri": "http://localhost:8080/"},
            ),
            ("prefix", {"client_id": "test", "post_logout_redirect_uri": AFTER + "/x"}),
            ("no-client", {"post_logout_redirect_uri": AFTER}),
            ("unknown-client", {"client_id": "nobody"}),
            ("unknown-client-with-uri", {"client_id": "nobody", "post_logout_redirect_uri": AFTER}),
        ]
    ),
)
def test_an_unusable_request_is_refused_with_a_page(app, browser, params):
    refused(logout(browser, **params))
    assert signed_in(app, browser)


def test_an_unregistered_uri_is_refused_with_a_valid_hint_too(app, browser):
    token = hint(app, browser)
    refused(logout(browser, id_token_hint=token, post_logout_redirect_uri=OTHER_RP, state="s"))
    assert signed_in(app, browser)


def test_repeated_or_oddly_encoded_parameters_are_refused(app, browser):
    refused(
        browser.get(f"/logout?client_id=test&client_id=sp-demo&post_logout_redirect_uri={AFTER}")
    )
    refused(browser.post("/logout", json={"client_id": "test"}))
    refused(browser.get("/logout?state=%ff"))
    form = "application/x-www-form-urlencoded"
    refused(browser.post("/logout", data=b"client_id=test&state=%ff", content_type=form))
    refused(browser.post("/logout", data={"client_id": "test", "f": (io.BytesIO(b"x"), "f")}))
    assert signed_in(app, browser)


def test_a_bad_request_from_a_signed_out_visitor_is_refused_too(app):
    refused(logout(app.test_client(), client_id="test", post_logout_redirect_uri=OTHER_RP))


# -- discovery ----------------------------------------------------------------------------
def test_the_discovery_fields_name_the_endpoint_and_back_channel_support():
    from authlib.oidc.rpinitiated.discovery import OpenIDProviderMetadata

    fields = logout_metadata("https://id.example.com")
    assert fields == {
        "end_session_endpoint": "https://id.example.com/logout",
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
    }
    OpenIDProviderMetadata(fields).validate_end_session_endpoint()


def test_a_logout_token_is_not_an_id_token_hint(app, browser):
    """Back-Channel Logout §2.4: a Logout Token (signed with the same keys) carries
    ``events``; sent back as a hint it is refused, and the session stays."""
    event = {"http://schemas.openid.net/event/backchannel-logout": {}}
    token = hint(app, browser, events=event)
    response = logout(browser, id_token_hint=token, post_logout_redirect_uri=AFTER)
    refused(response)
    assert signed_in(app, browser)
