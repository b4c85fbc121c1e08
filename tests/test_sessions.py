"""Server-side sessions: lazy loading, id renewal at login, logout, cookie flags, outages."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from types import SimpleNamespace

import pytest

from app import create_app, sessions
from app.dummy_site import user_id as site_user_id
from app.secrets_hash import token_digest
from app.settings import ConfigError, Settings
from app.storage import StorageUnavailable
from tests.backends import redis_url, require_service
from tests.conftest import authorize_url, base_config, close_app, csrf_from, login

COOKIE = "oauth2_session"
VISITOR = "oauth2_session_visitor"


def sid(client) -> str | None:
    cookie = client.get_cookie(COOKIE)
    return cookie.value if cookie else None


def set_cookie_header(response, name: str = COOKIE) -> str:
    cookies = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(name + "=")]
    assert len(cookies) == 1, response.headers.getlist("Set-Cookie")
    return cookies[0]


def logged_in(app, session_id: str) -> bool:
    """Whether a fresh browser holding only ``session_id`` is signed in."""
    other = app.test_client()
    other.set_cookie(COOKIE, session_id)
    response = other.get("/review")
    assert response.status_code in (200, 302)
    return response.status_code == 200


def raising(*args, **kwargs):
    raise StorageUnavailable("storage is down (test)")


def session_rows(state) -> list[str]:
    """Keys of stored sessions (transactions and lockouts share the table)."""
    url = state.storage.specs["session"].url
    with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
        rows = db.execute("SELECT key FROM oauth2_session").fetchall()
    return [key for (key,) in rows if ":" not in key]


@pytest.mark.parametrize("path", ["/login", "/review", "/login?next=/review", "/nope"])
def test_a_visitor_without_cookies_stores_no_session(client, state, path):
    """Issue 9 item 4: strangers' page views write no session row."""
    assert client.get("/.well-known/oauth-authorization-server").status_code == 200
    assert client.get(path).status_code in (200, 302, 404)
    assert client.get(path).status_code in (200, 302, 404)
    assert sid(client) is None
    assert session_rows(state) == []


def test_the_sign_in_form_works_from_the_visitor_cookie_alone(client, state):
    page = client.get("/login")
    assert client.get_cookie(VISITOR) is not None
    response = client.post(
        "/login",
        data={"username": "alice", "password": "password", "csrf_token": csrf_from(page.text)},
    )
    assert response.status_code == 302
    assert len(session_rows(state)) == 1 and sid(client) is not None
    assert client.get_cookie(VISITOR) is None  # signed in: the stored session took over


def test_a_forged_visitor_cookie_gives_no_csrf_secret(client):
    page = client.get("/login")
    client.set_cookie(VISITOR, client.get_cookie(VISITOR).value[:-2] + "xx")
    response = client.post(
        "/login",
        data={"username": "alice", "password": "password", "csrf_token": csrf_from(page.text)},
    )
    assert response.status_code == 400
    assert sid(client) is None


def test_the_csrf_secret_changes_at_sign_in_and_sign_out(client):
    before = csrf_from(client.get("/login").text)
    assert login(client).status_code == 302
    # The token of the sign-in page no longer signs a form once signed in ...
    assert client.post("/logout", data={"csrf_token": before}).status_code == 400
    during = csrf_from(client.get("/review").text)
    assert during != before
    assert client.post("/logout", data={"csrf_token": during}).status_code == 302
    # ... and the signed-in one no longer works after signing out.
    assert client.post("/login", data={"csrf_token": during, "username": "a"}).status_code == 400


def test_session_is_stored_under_the_hash_of_the_cookie(client, state):
    login(client)
    value = sid(client)
    record = state.storage.session.get(token_digest(value))
    assert record is not None
    assert record["_user_id"]
    assert state.storage.session.get(value) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/.well-known/oauth-authorization-server"),
        ("POST", "/token"),
        ("GET", "/api/profile"),
    ],
)
def test_endpoints_that_never_read_the_session_do_not_load_it(
    client, state, monkeypatch, method, path
):
    login(client)
    calls = []
    original = state.storage.session.get
    monkeypatch.setattr(
        state.storage.session, "get", lambda key: calls.append(key) or original(key)
    )
    client.open(path, method=method)
    assert calls == []
    client.get("/review")
    assert calls == [token_digest(sid(client))]


def test_session_id_is_renewed_at_login_and_the_old_one_stops_working(app, client, state):
    login(client, "bob")
    before = sid(client)
    assert before
    response = login(client)
    assert response.status_code == 302
    after = sid(client)
    assert after and after != before
    assert state.storage.session.get(token_digest(before)) is None
    assert state.storage.session.get(token_digest(after)) is not None
    assert logged_in(app, after) is True
    assert logged_in(app, before) is False


def test_a_cookie_planted_before_login_is_not_the_session_after_login(app, client, state):
    # Session fixation: an attacker's id must not become the victim's signed-in session.
    attacker = app.test_client()
    login(attacker, "mallory")
    planted = sid(attacker)
    client.set_cookie(COOKIE, planted)
    login(client)
    assert sid(client) != planted
    assert logged_in(app, planted) is False
    assert client.get("/review").status_code == 200


def test_logout_deletes_the_session_from_storage(app, client, state):
    login(client)
    page = client.get("/review")
    value = sid(client)
    response = client.post("/logout", data={"csrf_token": csrf_from(page.get_data(as_text=True))})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert state.storage.session.get(token_digest(value)) is None
    header = set_cookie_header(response)
    assert "Expires=Thu, 01 Jan 1970" in header or "Max-Age=0" in header
    assert client.get("/review").status_code == 302
    assert logged_in(app, value) is False


@pytest.mark.parametrize(
    ("method", "data", "status"),
    # Without our CSRF token it is a partner's logout request: the confirmation page.
    [("POST", {}, 200), ("POST", {"csrf_token": "forged"}, 400), ("GET", None, 200)],
)
def test_logout_needs_post_with_csrf(app, client, state, method, data, status):
    login(client)
    value = sid(client)
    response = client.open("/logout", method=method, data=data)
    assert response.status_code == status
    assert state.storage.session.get(token_digest(value)) is not None
    assert logged_in(app, value) is True


def test_cookie_flags(client):
    response = client.get("/login")
    header = set_cookie_header(response, VISITOR)
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/" in header
    assert "Secure" not in header  # plain-HTTP issuer in tests
    login_response = login(client)
    header = set_cookie_header(login_response)
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header


def test_cookie_is_secure_behind_https(tmp_path, dummy_site):
    app = create_app(base_config(tmp_path, dummy_site, auth_server={"url": "https://auth.example"}))
    try:
        response = app.test_client().get("/login", base_url="https://auth.example")
        header = set_cookie_header(response, VISITOR)
        assert "Secure" in header
        assert "HttpOnly" in header
    finally:
        close_app(app)


def test_a_session_made_by_one_worker_holds_on_another(tmp_path, dummy_site, app, client):
    login(client)
    other = create_app(base_config(tmp_path, dummy_site))
    try:
        browser = other.test_client()
        browser.set_cookie(COOKIE, sid(client))
        page = browser.get("/review")
        assert page.status_code == 200
        assert "alice" in page.get_data(as_text=True)
    finally:
        close_app(other)


@pytest.mark.parametrize("value", ["garbage", "x" * 300, ""])
def test_unknown_session_ids_are_anonymous(app, client, value):
    client.set_cookie(COOKIE, value)
    response = client.get("/review")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_saving_the_session_during_an_outage_answers_503(client, state, monkeypatch):
    login(client)
    page = client.get("/review")
    monkeypatch.setattr(state.storage.session, "put", raising)
    monkeypatch.setattr(state.storage.session, "discard", raising)
    response = client.post("/logout", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_reading_the_session_during_an_outage_answers_503_and_keeps_the_login(
    app, client, state, monkeypatch
):
    login(client)
    value = sid(client)
    with monkeypatch.context() as patch:
        patch.setattr(state.storage.session, "get", raising)
        response = client.get("/review")
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "Traceback" not in response.get_data(as_text=True)
    # Storage is back: the user is still signed in with the same session.
    assert state.storage.session.get(token_digest(value)) is not None
    assert client.get("/review").status_code == 200


# -- login ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("username", "password", "status", "message"),
    [
        ("alice", "wrong", 401, "Wrong username or password."),
        ("alice", "", 400, "Enter your username and password."),
        ("", "password", 400, "Enter your username and password."),
        ("a" * 300, "password", 400, "Enter your username and password."),
        ("alice", "p" * 300, 400, "Enter your username and password."),
    ],
)
def test_bad_login_shows_the_form_again_with_a_message(
    client, state, username, password, status, message
):
    response = login(client, username=username, password=password)
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert message in html
    assert 'name="username"' in html
    assert 'name="password"' in html
    assert csrf_from(html)
    assert client.get("/review").status_code == 302
    assert state.storage.users.get(site_user_id("alice")) is None


def test_failed_and_good_logins_are_audited(client, state):
    login(client, password="wrong")
    assert state.storage.users.get(site_user_id("alice")) is None
    login(client)
    assert state.storage.users.get(site_user_id("alice"))["name"] == "alice"
    events = [r["event"] for r in state.storage.audit.recent(10)]
    assert events[:2] == ["login", "login_failed"]


def test_login_without_csrf_is_refused(client):
    response = client.post("/login", data={"username": "alice", "password": "password"})
    assert response.status_code == 400
    assert client.get("/review").status_code == 302


@pytest.mark.parametrize(
    "next_url",
    [
        "//evil.com",
        "//evil.com/authorize",
        "https://evil.com",
        "https://evil.com/authorize",
        "http:evil.com",
        "/\\evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "/\t/evil.com",
        "/%0a/evil.com\n",
        "javascript:alert(1)",
        "evil.com",
        "",
    ],
)
def test_next_accepts_only_same_origin_paths(client, next_url):
    response = login(client, next_url=next_url)
    assert response.status_code == 302
    assert response.headers["Location"] == "/review"


def test_next_in_the_query_is_checked_too(client):
    page = client.get("/login?next=//evil.com")
    assert 'name="next" value=""' in page.get_data(as_text=True)
    response = login(client, next_url=None, path="/login?next=//evil.com")
    assert response.status_code == 302
    assert response.headers["Location"] == "/review"


@pytest.mark.parametrize("next_url", ["/authorize?client_id=test&state=x%2Fy", "/review?saved=1"])
def test_next_returns_to_a_same_origin_path(client, next_url):
    response = login(client, next_url=next_url)
    assert response.status_code == 302
    assert response.headers["Location"] == next_url


def test_authorize_while_logged_out_goes_through_login_and_back(client):
    from tests.conftest import authorize_url

    url = authorize_url()
    challenge = client.get(url)
    assert challenge.status_code == 302
    location = challenge.headers["Location"]
    assert location.startswith("/login?next=")
    page = client.get(location)
    html = page.get_data(as_text=True)
    next_url = html.split('name="next" value="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert next_url == url
    response = login(client, next_url=next_url)
    assert response.headers["Location"] == url
    assert client.get(url).status_code == 200


def test_the_dummy_site_down_gives_a_502_page(tmp_path):
    import socket

    from app import create_app
    from tests.conftest import base_config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = ("127.0.0.1", sock.getsockname()[1])
    app = create_app(base_config(tmp_path, closed))
    try:
        response = login(app.test_client())
        assert response.status_code == 502
        assert response.mimetype == "text/html"
        assert "Traceback" not in response.get_data(as_text=True)
    finally:
        close_app(app)


def test_a_failed_save_leaves_the_cookie_alone(client, state, monkeypatch):
    page = client.get("/login")
    monkeypatch.setattr(state.storage.session, "put", raising)
    form = {"username": "alice", "password": "password", "csrf_token": csrf_from(page.text)}
    response = client.post("/login", data=form)  # signing in starts a stored session
    assert response.status_code == 503
    assert "Set-Cookie" not in response.headers


def test_a_logout_that_cannot_be_saved_keeps_the_cookie(app, client, state, monkeypatch):
    login(client)
    page = client.get("/review")
    value = sid(client)
    monkeypatch.setattr(state.storage.session, "discard", raising)
    monkeypatch.setattr(state.storage.session, "delete", raising)
    response = client.post("/logout", data={"csrf_token": csrf_from(page.get_data(as_text=True))})
    assert response.status_code == 503
    assert "Set-Cookie" not in response.headers  # the browser keeps the session it has
    monkeypatch.undo()
    assert sid(client) == value and logged_in(app, value) is True


# -- absolute lifetime ---------------------------------------------------------------------
def at(monkeypatch, seconds_from_now: float) -> None:
    """Move the sessions' clock (sign-in time, absolute lifetime) forward."""
    moved = time.time() + seconds_from_now
    monkeypatch.setattr(sessions, "time", SimpleNamespace(time=lambda: moved))


def test_a_session_ends_its_max_age_after_sign_in_however_active(app, client, state, monkeypatch):
    login(client)
    value = sid(client)
    max_age = state.settings.auth.session_max_age
    assert max_age == 12 * 3600
    at(monkeypatch, max_age - 60)
    assert client.get("/review").status_code == 200  # active all along: still signed in
    at(monkeypatch, max_age)
    response = client.get("/review")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert state.storage.session.get(token_digest(value)) is None  # the row is gone too
    assert sid(client) is None


def test_session_max_age_is_configurable(tmp_path, dummy_site, monkeypatch):
    app = create_app(base_config(tmp_path, dummy_site, auth_server={"session_max_age": 600}))
    try:
        client = app.test_client()
        login(client)
        at(monkeypatch, 600)
        assert client.get("/review").status_code == 302
    finally:
        close_app(app)


@pytest.mark.parametrize("value", [0, 59, "1h"])
def test_a_bad_session_max_age_is_refused_by_name(tmp_path, dummy_site, value):
    with pytest.raises(ConfigError, match="auth_server.session_max_age"):
        Settings.load(base_config(tmp_path, dummy_site, auth_server={"session_max_age": value}))


def test_the_first_form_after_sign_in_writes_no_session(app, client, monkeypatch):
    # Sign-in stores the new CSRF secret with the new session: the consent page that
    # follows signs its token with it and stores nothing but its transaction.
    login(client)
    stored = app.extensions["oauth2"].storage.session
    session_key = token_digest(sid(client))
    written: list[str] = []
    put = stored.put
    monkeypatch.setattr(
        stored, "put", lambda key, *a, **k: (written.append(key), put(key, *a, **k))
    )
    page = client.get(authorize_url())
    assert page.status_code == 200 and csrf_from(page.text)
    assert session_key not in written and len(written) == 1  # the consent transaction
    assert "Set-Cookie" not in page.headers


@pytest.fixture(params=["sqlite", "redis"])
def stored_on(request, tmp_path, dummy_site):
    """An app whose every table is on SQLite, or on one Redis."""
    config = base_config(tmp_path, dummy_site)
    if request.param == "redis":
        require_service("redis", redis_url())
        config["storage"] = {"default": redis_url()}
    app = create_app(config)
    yield request.param, app
    close_app(app)


def test_a_signed_in_page_reads_the_user_with_the_session_on_one_redis(stored_on, monkeypatch):
    """One Redis: the session and its user's record in one round trip, the user loader
    reads nothing more; elsewhere the user is read as before. A user removed meanwhile
    is signed out either way."""
    backend, app = stored_on
    state = app.extensions["oauth2"]
    browser = app.test_client()
    login(browser)
    users = state.storage.users
    reads = []
    get = users.get
    monkeypatch.setattr(users, "get", lambda key: (reads.append(key), get(key))[1])
    page = browser.get("/review")
    assert page.status_code == 200 and "alice" in page.get_data(as_text=True)
    user_id = site_user_id("alice")
    assert reads == ([] if backend == "redis" else [user_id])
    users.delete(user_id)
    assert browser.get("/review").status_code == 302  # to the sign-in page
