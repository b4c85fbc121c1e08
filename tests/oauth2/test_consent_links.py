"""The consent page shows the client's logo, site and policy links, and loads nothing else."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import authorize_url, close_app, login
from tests.factories import make_client
from tests.oauth2.conftest import make_app

LINKS = {
    "client_uri": "https://partner.example/",
    "policy_uri": "https://partner.example/privacy?x=1&y=2",
    "tos_uri": "https://partner.example/terms",
}
CLIENTS = [
    make_client(
        "linked", name="Partner & Co", logo_uri="https://cdn.partner.example/logo.png", **LINKS
    ),
    make_client("plain-logo", name="Plain", logo_uri="http://partner.example/logo.png"),
    make_client("loop-logo", name="Loop", logo_uri="http://127.0.0.1:9000/logo.png"),
    make_client("bare", name="Bare"),
]


@pytest.fixture
def app(tmp_path, dummy_site):
    app = make_app(tmp_path, dummy_site, CLIENTS)
    yield app
    close_app(app)


def dialog(client, client_id: str):
    login(client)
    page = client.get(authorize_url(client_id=client_id, scope="read-only"))
    assert page.status_code == 200, page.get_data(as_text=True)
    return page


def images(page) -> list[tuple[str, str]]:
    return [
        (html.unescape(src), html.unescape(alt))
        for src, alt in re.findall(r'<img src="([^"]*)" alt="([^"]*)"', page.get_data(as_text=True))
    ]


def img_src(page) -> str:
    csp = page.headers["Content-Security-Policy"]
    return next(d for d in csp.split("; ") if d.startswith("img-src"))


def test_logo_with_alt_text_and_only_its_origin_allowed(client):
    page = dialog(client, "linked")
    assert images(page) == [("https://cdn.partner.example/logo.png", "Partner & Co logo")]
    assert img_src(page) == "img-src 'self' https://cdn.partner.example"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_links_name_the_client(client):
    text = dialog(client, "linked").get_data(as_text=True)
    found = [
        (html.unescape(h), html.unescape(t))
        for h, t in re.findall(r'<a href="([^"]*)" rel="noopener noreferrer">([^<]*)</a>', text)
    ]
    assert found == [
        (LINKS["client_uri"], "Partner & Co's website"),
        (LINKS["policy_uri"], "Partner & Co's privacy policy"),
        (LINKS["tos_uri"], "Partner & Co's terms of service"),
    ]


def test_plain_http_logo_is_not_loaded(client):
    page = dialog(client, "plain-logo")
    assert images(page) == []
    assert img_src(page) == "img-src 'self'"


def test_loopback_http_logo_is_loaded(client):
    page = dialog(client, "loop-logo")
    assert images(page) == [("http://127.0.0.1:9000/logo.png", "Loop logo")]
    assert img_src(page) == "img-src 'self' http://127.0.0.1:9000"


def test_a_client_without_links_shows_none(client):
    page = dialog(client, "bare")
    assert images(page) == []
    assert "client-links" not in page.get_data(as_text=True)
    assert img_src(page) == "img-src 'self'"


@pytest.mark.parametrize(
    "uri,shown",
    [
        ("https://cdn.example/logo.png", True),
        ("https://[2001:db8::1]:8443/l.png", True),
        ("http://localhost:3000/l.png", True),
        ("http://cdn.example/logo.png", False),
        ("https://a;script-src/x.png", False),
        ("https://a'b/x.png", False),
        ("https://user@cdn.example/x.png", False),
        ("javascript:alert(1)", False),
        ("data:image/png;base64,AAAA", False),
        ("https://cdn.example/a b.png", False),
    ],
)
def test_which_logos_a_page_may_load(uri, shown):
    from app.client_policy import shown_image

    assert (shown_image(uri) == uri) is shown
