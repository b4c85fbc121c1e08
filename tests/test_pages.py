"""Pages: security headers on every page, a strict CSP the pages obey, and their content."""

from __future__ import annotations

import re

import pytest

from tests.conftest import authorize_url, close_app, consent, csrf_from, get_code, hidden, login


def _login_page(client):
    return client.get("/login")


def _consent_page(client):
    login(client)
    return client.get(authorize_url(scope="read-only read-write"))


def _review_empty(client):
    login(client)
    return client.get("/review")


def _review_with_grant(client):
    get_code(client)
    return client.get("/review")


def _bad_client(client):
    return client.get(authorize_url(client_id="no-such-client"))


def _bad_redirect(client):
    return client.get(authorize_url(redirect_uri="https://evil.example/"))


def _not_found(client):
    return client.get("/no/such/page")


def _csrf_failure(client):
    return client.post("/login", data={"username": "alice", "password": "password"})


def _wrong_password(client):
    return login(client, password="wrong")


def _expired_transaction(client):
    page = _consent_page(client)
    html = page.get_data(as_text=True)
    return client.post(
        "/authorize",
        data={"csrf_token": csrf_from(html), "transaction_id": "forged", "allow": "Allow"},
    )


PAGES = [
    (_login_page, 200),
    (_consent_page, 200),
    (_review_empty, 200),
    (_review_with_grant, 200),
    (_bad_client, 400),
    (_bad_redirect, 400),
    (_not_found, 404),
    (_csrf_failure, 400),
    (_wrong_password, 401),
    (_expired_transaction, 400),
]


@pytest.mark.parametrize(("open_page", "status"), PAGES, ids=[p[0].__name__ for p in PAGES])
def test_every_page_refuses_framing_and_has_a_strict_csp(client, open_page, status):
    response = open_page(client)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert response.headers["X-Frame-Options"] == "DENY"
    csp = response.headers["Content-Security-Policy"]
    directives = {d.strip().split()[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    assert "default-src" in directives
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in response.headers["Cache-Control"]


@pytest.mark.parametrize(("open_page", "status"), PAGES, ids=[p[0].__name__ for p in PAGES])
def test_pages_need_no_inline_script_or_style(client, open_page, status):
    html = open_page(client).get_data(as_text=True)
    assert "<html" in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html, re.I), "inline script"
    assert not re.search(r"<style\b", html, re.I), "inline style element"
    assert not re.search(r"\sstyle\s*=", html, re.I), "inline style attribute"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "asset from another origin"


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/.well-known/oauth-authorization-server", {}),
        ("POST", "/token", {}),
        ("GET", "/api/profile", {}),
        ("GET", "/", {}),
        ("GET", "/review", {}),
    ],
)
def test_non_page_answers_refuse_framing_too(client, method, path, headers):
    response = client.open(path, method=method, headers=headers)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_static_files_are_served_by_the_app(client):
    css = client.get("/static/style.css")
    assert css.status_code == 200
    assert css.mimetype == "text/css"
    css.close()
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200
    icon.close()


def test_login_page_is_a_plain_form_with_csrf(client):
    html = client.get("/login").get_data(as_text=True)
    assert re.search(r'<form[^>]*method="post"[^>]*action="/login"', html)
    assert 'name="username"' in html
    assert 'name="password"' in html
    assert 'type="password"' in html
    assert csrf_from(html)


def test_login_page_names_the_partner_it_signs_in_for(client):
    response = client.get(authorize_url(client_id="sp-demo"))
    assert response.status_code == 302
    page = client.get(response.headers["Location"])
    html = page.get_data(as_text=True)
    assert "Demo partner site" in html
    assert hidden(html, "next").startswith("/authorize?")


def test_consent_page_shows_client_scopes_and_user(client):
    html = _consent_page(client).get_data(as_text=True)
    assert "Automated tests" in html
    assert "alice" in html
    assert "Read your profile" in html
    assert "Read your profile and change your avatar" in html
    assert "localhost:8080" in html
    assert re.search(r'<form[^>]*method="post"[^>]*action="/authorize"', html)
    assert hidden(html, "transaction_id")
    assert hidden(html, "scope") == "read-only read-write"
    assert re.search(r'<button[^>]*name="allow"', html)
    assert re.search(r'<button[^>]*name="cancel"[^>]*value="Deny"', html)
    assert csrf_from(html)


def test_consent_escapes_what_it_shows(client):
    login(client)
    response = client.get(authorize_url(state="<script>alert(1)</script>"))
    html = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html


def test_signed_in_pages_offer_a_logout_form(client):
    html = _review_empty(client).get_data(as_text=True)
    form = re.search(r'<form[^>]*action="/logout"[^>]*>(.*?)</form>', html, re.S)
    assert form, "no logout form"
    assert 'method="post"' in form.group(0)
    assert 'name="csrf_token"' in form.group(1)
    assert "No apps have access" in html


def test_signed_out_pages_show_no_logout(client):
    html = client.get("/login").get_data(as_text=True)
    assert 'action="/logout"' not in html


def test_error_page_explains_without_a_trace(client):
    response = _bad_client(client)
    html = response.get_data(as_text=True)
    assert "Error 400" in html
    assert "invalid_client: The client does not exist" in html
    assert "Traceback" not in html
    assert "Location" not in response.headers


def test_each_consent_gets_a_new_transaction_id(client):
    login(client)
    first = hidden(client.get(authorize_url()).get_data(as_text=True), "transaction_id")
    second = hidden(client.get(authorize_url()).get_data(as_text=True), "transaction_id")
    assert first and second and first != second


def test_site_name_from_config_appears_on_pages(tmp_path, dummy_site):
    from app import create_app
    from tests.conftest import base_config

    app = create_app(base_config(tmp_path, dummy_site, auth_server={"site_name": "Acme Web"}))
    try:
        html = app.test_client().get("/login").get_data(as_text=True)
        assert "Acme Web" in html
        assert "Stuff Nation" not in html
    finally:
        close_app(app)


def test_deny_still_leaves_pages_framing_safe(client):
    login(client)
    response = consent(client, authorize_url(), allow=False)
    assert response.status_code == 302
    assert response.headers["X-Frame-Options"] == "DENY"


def test_forms_work_over_tls_where_the_referer_is_checked(tmp_path, dummy_site):
    # Over TLS Flask-WTF demands a same-origin Referer: pages must let browsers send it.
    from app import create_app
    from tests.conftest import base_config

    config = base_config(tmp_path, dummy_site, auth_server={"url": "https://auth.example"})
    app = create_app(config)
    client = app.test_client()
    base = "https://auth.example"
    page = client.get("/login", base_url=base)
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert 'content="same-origin"' in page.get_data(as_text=True)
    sent = login(client, base_url=base, headers={"Referer": f"{base}/login"})
    assert sent.status_code == 302
    assert "Secure" in sent.headers["Set-Cookie"]
    close_app(app)
