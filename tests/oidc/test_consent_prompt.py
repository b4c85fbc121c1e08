"""The sign-in parameters of an authorization request: prompt, max_age, login_hint,
id_token_hint and the accepted ones (OpenID Connect Core 1.0 §3.1.2.1)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from markupsafe import escape

from app.secrets_hash import token_digest
from app.sessions import SIGNED_IN_AT
from app.views import authorize as authorize_view
from tests.conftest import consent, location_params, table
from tests.factories import REDIRECT, login, make_user
from tests.oauth2.conftest import page_detail, redeem, unchanged
from tests.oidc import consent_support as support
from tests.oidc.consent_support import (
    allow,
    code_of,
    foreign_key,
    id_token,
    next_of,
    sign_in_again,
    url,
)

oidc_app, http, st = support.oidc_app, support.http, support.st  # the fixtures


ISSUER = "http://127.0.0.1:8081"


def error_at_client(response, fragment: bool = False) -> dict[str, str]:
    """The parameters of an error redirect to the client; ``state`` and ``iss`` checked."""
    assert response.status_code == 302, (response.status_code, page_detail(response))
    assert response.headers["Location"].startswith(REDIRECT)
    params = location_params(response, fragment)
    assert params["state"] == "xyz"
    assert params["iss"] == ISSUER
    return params


def signed_in_at(oidc_app, http) -> float:
    """The session's sign-in time, read from storage as the server reads it."""
    cookie = http.get_cookie(oidc_app.config["SESSION_COOKIE_NAME"])
    assert cookie is not None
    record = oidc_app.extensions["oauth2"].storage.session.get(token_digest(cookie.value))
    return record[SIGNED_IN_AT]


# -- prompt -----------------------------------------------------------------------------
BAD_PROMPTS = table(
    [
        ("unknown", "sometimes"),
        ("unknown-beside-known", "login bogus"),
        ("none-and-login", "none login"),
        ("none-and-consent", "consent none"),
        ("case", "LOGIN"),
        ("tab", "login\tconsent"),
        ("too-long", "login " * 60),
    ]
)


@pytest.mark.parametrize("value", BAD_PROMPTS)
def test_a_bad_prompt_is_invalid_request_at_the_client(http, st, value):
    login(http)
    with unchanged(st):
        response = http.get(url(prompt=value))
    assert error_at_client(response)["error"] == "invalid_request"


def test_a_bad_prompt_before_sign_in_shows_the_error_page(http):
    response = http.get(url(prompt="bogus"))
    assert response.status_code == 400
    assert "invalid_request" in page_detail(response)
    assert "Location" not in response.headers


def test_a_repeated_prompt_is_invalid_request(http):
    login(http)
    response = http.get(url(prompt="login") + "&prompt=consent")
    assert error_at_client(response)["error"] == "invalid_request"


def test_an_empty_prompt_is_as_if_omitted(http):
    login(http)
    assert http.get(url(prompt="")).status_code == 200  # the consent page


def test_prompt_none_signed_out_is_login_required_at_the_redirect_uri(http, st):
    with unchanged(st):
        response = http.get(url(prompt="none"))
    params = error_at_client(response)
    assert params["error"] == "login_required"
    assert "code" not in params


def test_prompt_none_signed_out_implicit_answers_in_the_fragment(http):
    response = http.get(url(response_type="token", prompt="none"))
    assert error_at_client(response, fragment=True)["error"] == "login_required"
    assert "?" not in response.headers["Location"]


def test_prompt_none_for_an_unregistered_redirect_uri_is_still_a_page(http):
    response = http.get(url(prompt="none", redirect_uri="https://evil.example/"))
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_prompt_none_without_remembered_consent_is_consent_required(http, st):
    login(http)
    with unchanged(st):
        response = http.get(url(prompt="none"))
    assert error_at_client(response)["error"] == "consent_required"


def test_prompt_none_plain_oauth_always_needs_consent(http):
    login(http)
    allow(http, "oidc", "read-only")
    response = http.get(url(scope="read-only", prompt="none"))
    assert error_at_client(response)["error"] == "consent_required"


def test_prompt_none_with_everything_in_place_answers_with_the_code(http):
    login(http)
    allow(http)
    response = http.get(url(prompt="none"))
    code = code_of(response)
    assert location_params(response)["state"] == "xyz"
    token = redeem(http, code, "oidc")
    assert token.status_code == 200, token.get_json()
    assert token.get_json()["scope"] == "openid read-only"


def test_prompt_login_signs_in_again_then_goes_on_without_a_loop(oidc_app, http):
    login(http)
    allow(http)
    before = signed_in_at(oidc_app, http)
    time.sleep(0.01)
    response = http.get(url(prompt="login"))
    assert next_of(response) == url(prompt="login")
    answer = sign_in_again(http, response)
    code_of(answer)  # remembered consent: the code at once, no second sign-in
    assert signed_in_at(oidc_app, http) > before
    # The sign-in counted for that request only: the next prompt=login asks again.
    assert next_of(http.get(url(prompt="login")))


def test_prompt_login_signed_out_asks_for_one_sign_in_only(http):
    response = http.get(url(prompt="login"))
    page = sign_in_again(http, response)
    assert page.status_code == 200
    assert "Allow access?" in page.get_data(as_text=True)


def test_prompt_login_not_followed_by_a_sign_in_asks_again(http):
    login(http)
    first = http.get(url(prompt="login"))
    assert next_of(first)
    assert next_of(http.get(url(prompt="login")))  # came back without signing in


def test_prompt_login_under_another_request_does_not_count(http):
    login(http)
    next_of(http.get(url(prompt="login", state="one")))
    login(http, next_url=url(prompt="login", state="one"))
    # A sign-in for request "one" does not answer request "two".
    assert next_of(http.get(url(prompt="login", state="two")))


def test_prompt_select_account_shows_the_sign_in_page(http):
    login(http)
    allow(http)
    response = http.get(url(prompt="select_account"))
    # Choosing another account: bob signs in; alice's consent is not his.
    page = sign_in_again(http, response, username="bob")
    assert page.status_code == 200
    assert "Hi bob" in page.get_data(as_text=True)


def test_prompt_consent_shows_the_page_even_when_remembered(http):
    login(http)
    allow(http)
    page = http.get(url(prompt="consent"))
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Allow access?" in text and "Read your profile" in text


def test_prompt_login_consent_signs_in_then_asks(http):
    login(http)
    allow(http)
    page = sign_in_again(http, http.get(url(prompt="login consent")))
    assert page.status_code == 200
    assert "Allow access?" in page.get_data(as_text=True)


# -- max_age ----------------------------------------------------------------------------
BAD_MAX_AGES = table(
    [
        ("negative", "-1"),
        ("exponent", "1e3"),
        ("word", "abc"),
        ("fraction", "1.5"),
        ("huge", "9" * 30),
        ("beyond-int32", str(2**31)),
        ("space", " 5"),
        ("hex", "0x10"),
        ("arabic-digits", "\u0663"),
        ("plus", "+5"),
    ]
)


@pytest.mark.parametrize("value", BAD_MAX_AGES)
def test_max_age_garbage_is_invalid_request(http, st, value):
    login(http)
    with unchanged(st):
        response = http.get(url(max_age=value))
    assert error_at_client(response)["error"] == "invalid_request"


def test_max_age_garbage_before_sign_in_is_a_page_never_a_500(http):
    response = http.get(url(max_age="abc"))
    assert response.status_code == 400


def test_a_recent_enough_sign_in_satisfies_max_age(http):
    login(http)
    allow(http)
    code_of(http.get(url(max_age="3600")))


def later(monkeypatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(authorize_view, "time", SimpleNamespace(time=lambda: real() + seconds))


def test_an_older_sign_in_than_max_age_signs_in_again(http, monkeypatch):
    login(http)
    allow(http)
    later(monkeypatch, 120)
    response = http.get(url(max_age="60"))
    assert next_of(response)
    code_of(sign_in_again(http, response))


def test_an_older_sign_in_than_max_age_under_prompt_none_is_login_required(http, monkeypatch):
    login(http)
    allow(http)
    later(monkeypatch, 120)
    response = http.get(url(max_age="60", prompt="none"))
    assert error_at_client(response)["error"] == "login_required"


def test_max_age_zero_always_signs_in_again_and_then_goes_on(http):
    login(http)
    allow(http)
    response = http.get(url(max_age="0"))
    assert next_of(response)
    code_of(sign_in_again(http, response))
    assert next_of(http.get(url(max_age="0")))  # and again next time


# -- login_hint -------------------------------------------------------------------------
def test_login_hint_fills_in_the_username(http):
    response = http.get(url(login_hint="carol@example.com"))
    page = http.get(response.headers["Location"]).get_data(as_text=True)
    assert 'value="carol@example.com"' in page


def test_login_hint_is_escaped(http):
    hint = '"><script>alert(1)</script>'
    response = http.get(url(login_hint=hint))
    page = http.get(response.headers["Location"]).get_data(as_text=True)
    assert "<script>alert(1)" not in page
    assert f'value="{escape(hint)}"' in page


def test_without_login_hint_the_username_is_empty(http):
    page = http.get(http.get(url()).headers["Location"]).get_data(as_text=True)
    assert 'name="username"' in page and "value=" not in page.split('name="username"')[1][:200]


@pytest.mark.parametrize("hint", ["x" * 257, "alice\x01", "alice\nbob"])
def test_a_bad_login_hint_is_invalid_request(http, hint):
    login(http)
    assert error_at_client(http.get(url(login_hint=hint)))["error"] == "invalid_request"


# -- id_token_hint ----------------------------------------------------------------------
def test_id_token_hint_for_the_signed_in_user_answers_prompt_none(http, st):
    login(http)
    allow(http)
    hint = id_token(st, make_user(st).id)
    code_of(http.get(url(prompt="none", id_token_hint=hint)))


def test_an_expired_id_token_hint_is_still_a_hint(http, st):
    login(http)
    allow(http)
    hint = id_token(st, make_user(st).id, exp=int(time.time()) - 86400)
    code_of(http.get(url(prompt="none", id_token_hint=hint)))


def test_id_token_hint_for_another_user_under_prompt_none_is_login_required(http, st):
    login(http)
    allow(http)
    hint = id_token(st, make_user(st, "bob").id)
    response = http.get(url(prompt="none", id_token_hint=hint))
    assert error_at_client(response)["error"] == "login_required"


def test_id_token_hint_for_another_user_shows_the_sign_in_page(http, st):
    login(http, username="bob")
    hint = id_token(st, make_user(st).id)  # alice's
    response = http.get(url(id_token_hint=hint))
    page = sign_in_again(http, response, username="alice")
    assert "Allow access?" in page.get_data(as_text=True)
    assert "alice" in page.get_data(as_text=True)


def test_id_token_hint_with_a_pairwise_subject(http, st):
    st.clients.get("oidc").subject_type = "pairwise"
    login(http)
    allow(http)
    alice = make_user(st).id
    public = http.get(url(prompt="none", id_token_hint=id_token(st, alice)))
    assert error_at_client(public)["error"] == "login_required"  # not what "oidc" sees
    from app.oidc.subjects import subject_for

    sub = subject_for(st.clients.get("oidc"), alice, st.keys.pairwise_secret())
    code_of(http.get(url(prompt="none", id_token_hint=id_token(st, sub))))


def _hints(state):
    alice = make_user(state).id
    return {
        "another-key": id_token(state, alice, key=foreign_key()),
        "another-client": id_token(state, alice, aud="other"),
        "another-issuer": id_token(state, alice, iss="https://elsewhere.example"),
        "no-sub": id_token(state, "", aud=["other", "oidc"]),
        "garbage": "not.a.token",
        "two-parts": "abc.def",
        "encrypted-shape": "a.b.c.d.e",
        "unsigned": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
        "tampered": id_token(state, alice)[:-4] + "AAAA",
        "logout-token": id_token(
            state, alice, events={"http://schemas.openid.net/event/backchannel-logout": {}}
        ),
    }


HINT_CASES = [
    "another-key",
    "another-client",
    "another-issuer",
    "no-sub",
    "garbage",
    "two-parts",
    "encrypted-shape",
    "unsigned",
    "tampered",
    "logout-token",
]


@pytest.mark.parametrize("case", HINT_CASES)
@pytest.mark.parametrize("prompt", [None, "none"])
def test_a_bad_id_token_hint_is_invalid_request(http, st, case, prompt):
    login(http)
    allow(http)
    extra = {"prompt": prompt} if prompt else {}
    with unchanged(st):
        response = http.get(url(id_token_hint=_hints(st)[case], **extra))
    assert error_at_client(response)["error"] == "invalid_request"


def test_a_hint_naming_the_client_among_audiences_is_accepted(http, st):
    login(http)
    allow(http)
    hint = id_token(st, make_user(st).id, aud=["other", "oidc"])
    code_of(http.get(url(prompt="none", id_token_hint=hint)))


# -- accepted parameters ----------------------------------------------------------------
def test_locales_acr_values_and_display_are_accepted(http):
    login(http)
    extra = {
        "ui_locales": "en-GB fr",
        "claims_locales": "en",
        "acr_values": "urn:mace:incommon:iap:silver 1",
        "display": "page",
    }
    page = http.get(url(**extra))
    assert page.status_code == 200
    assert "Allow access?" in page.get_data(as_text=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("display", "hologram"),
        ("ui_locales", "en\x01"),
        ("ui_locales", "x" * 300),
        ("claims_locales", "en_GB!"),
        ("acr_values", "a\tb"),
    ],
)
def test_malformed_accepted_parameters_are_invalid_request(http, name, value):
    login(http)
    assert error_at_client(http.get(url(**{name: value})))["error"] == "invalid_request"


def test_the_code_flow_works_end_to_end_with_every_parameter(http):
    login(http)
    extra = {"prompt": "consent", "max_age": "600", "login_hint": "alice", "ui_locales": "en"}
    response = consent(http, url(**extra))
    token = redeem(http, location_params(response)["code"], "oidc")
    assert token.status_code == 200, token.get_json()
    assert token.get_json()["scope"] == "openid read-only"
