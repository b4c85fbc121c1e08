"""Back-Channel Logout: Logout Tokens reach partners off the request path, failures audited."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from app.oidc import backchannel
from app.oidc.backchannel import EVENT, BackchannelSender, Notice, logout_token
from app.oidc.subjects import session_id_for, subject_for
from tests.factories import csrf_from, login
from tests.oauth2.conftest import open_app
from tests.oidc.logout_helpers import AFTER, give, id_token, note, session_of

#: Seconds any wait of these tests may take before it counts as a failure (never a timing).
WAIT = 15


@dataclass
class Receiver:
    """A partner's back-channel logout URI: a real HTTP server in a thread."""

    url: str
    status: int = 200
    bodies: list[dict[str, list[str]]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    #: Set, each request waits for ``release`` after setting ``arrived``.
    hang: bool = False
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    #: Set by the test once its sign-out answered; each hanging reply notes if it was.
    answered: threading.Event = field(default_factory=threading.Event)
    replied_after_answer: list[bool] = field(default_factory=list)

    def tokens(self) -> list[str]:
        return [body["logout_token"][0] for body in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_port}/backchannel")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            receiver.content_types.append(self.headers.get("Content-Type", ""))
            receiver.bodies.append(parse_qs(self.rfile.read(length).decode()))
            if receiver.hang:
                receiver.arrived.set()
                receiver.release.wait(WAIT)
                receiver.replied_after_answer.append(receiver.answered.is_set())
            self.send_response(receiver.status)
            if receiver.status == 302:
                self.send_header("Location", receiver.url + "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def app(tmp_path, dummy_site, receiver):
    with open_app(
        tmp_path, dummy_site, oidc={"backchannel_timeout": 2, "backchannel_retries": 2}
    ) as app:
        give(app, "test", post_logout_redirect_uris=[AFTER], backchannel_logout_uri=receiver.url)
        give(
            app,
            "reader",
            backchannel_logout_uri=receiver.url + "?rp=reader",
            subject_type="pairwise",
            id_token_signed_response_alg="ES256",
        )
        sender(app).backoff = 0.01
        yield app
        assert sender(app).wait_idle(WAIT)


def sender(app) -> BackchannelSender:
    return app.extensions[backchannel.EXTENSION]


@pytest.fixture
def browser(app):
    """Alice, signed in, who used ``test``, ``reader`` and ``sp-demo`` (no back channel)."""
    browser = app.test_client()
    assert login(browser).status_code == 302
    note(browser, "test", "reader", "sp-demo")
    return browser


def sign_out(browser):
    """The header's sign-out form."""
    token = csrf_from(browser.get("/review").get_data(as_text=True))
    response = browser.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302
    return response


def verified(app, token: str) -> tuple[dict, dict]:
    """Verify a Logout Token against the published JWKS; return (header, claims)."""
    jwks = KeySet.import_key_set(app.extensions["oauth2"].keys.public_jwks())
    decoded = jwt.decode(token, jwks, algorithms=["RS256", "ES256"])
    return dict(decoded.header), dict(decoded.claims)


def audited(app, event: str) -> list[dict]:
    return [r for r in app.extensions["oauth2"].storage.audit.recent(100) if r["event"] == event]


# -- delivery -----------------------------------------------------------------------------
def test_signing_out_sends_each_partner_a_verifiable_logout_token(app, browser, receiver):
    session = session_of(browser)
    before = time.time()
    sign_out(browser)
    assert sender(app).wait_idle(WAIT)

    assert len(receiver.bodies) == 2  # test and reader; sp-demo registered no URI
    assert receiver.content_types == ["application/x-www-form-urlencoded"] * 2
    state = app.extensions["oauth2"]
    by_client = {}
    for token in receiver.tokens():
        header, claims = verified(app, token)
        by_client[claims["aud"]] = (header, claims)
        assert header["typ"] == "logout+jwt"
        assert header["kid"] in {k["kid"] for k in state.keys.public_jwks()["keys"]}
        assert claims["iss"] == state.settings.issuer
        assert claims["events"] == {EVENT: {}}
        client = state.clients.get(claims["aud"])
        scoped = session_id_for(client, session["sid"], state.keys.pairwise_secret())
        assert claims["sid"] == scoped  # a pairwise client's by its sector (reader)
        assert "nonce" not in claims
        assert before - 1 <= claims["iat"] <= time.time() + 1
        assert 60 <= claims["exp"] - claims["iat"] <= 300
        assert len(claims["jti"]) >= 16
    assert set(by_client) == {"test", "reader"}
    assert by_client["test"][1]["sub"] == session["user_id"]
    pairwise = subject_for(
        state.clients.get("reader"), session["user_id"], state.keys.pairwise_secret()
    )
    assert by_client["reader"][1]["sub"] == pairwise != session["user_id"]
    assert by_client["test"][1]["sid"] == session["sid"] != by_client["reader"][1]["sid"]
    assert by_client["test"][0]["alg"] == "RS256"
    assert by_client["reader"][0]["alg"] == "ES256"
    assert by_client["test"][1]["jti"] != by_client["reader"][1]["jti"]
    assert audited(app, "backchannel_failed") == []


def test_rp_initiated_logout_sends_them_too(app, browser, receiver):
    session = session_of(browser)
    hint = id_token(app, session["user_id"], sid=session["sid"])
    response = browser.get("/logout?" + urlencode({"id_token_hint": hint}))
    assert response.status_code == 200
    assert sender(app).wait_idle(WAIT)
    assert sorted(verified(app, t)[1]["aud"] for t in receiver.tokens()) == ["reader", "test"]


def test_no_partner_is_told_when_nothing_ended(app, browser, receiver):
    assert browser.get("/logout?client_id=test").status_code == 200  # the question only
    assert browser.get("/logout?client_id=test&post_logout_redirect_uri=nope").status_code == 400
    assert sender(app).wait_idle(WAIT)
    assert receiver.bodies == []


# -- failures -----------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "reason"), [(500, "HTTP 500"), (302, "HTTP 302")])
def test_a_failing_partner_is_retried_then_audited(app, browser, receiver, status, reason):
    receiver.status = status
    give(app, "reader", backchannel_logout_uri=None)
    sign_out(browser)
    assert sender(app).wait_idle(WAIT)
    assert len(receiver.bodies) == 3  # the first attempt and backchannel_retries=2
    assert len(set(receiver.tokens())) == 1  # the same token each time; never redirected
    [failure] = audited(app, "backchannel_failed")
    assert failure["client_id"] == "test"
    assert failure["reason"] == reason
    assert failure["attempts"] == 3
    assert receiver.tokens()[0] not in str(failure)


def test_an_unreachable_partner_is_audited(app, browser, receiver):
    give(app, "test", backchannel_logout_uri="http://127.0.0.1:9/closed")  # discard port
    give(app, "reader", backchannel_logout_uri="ftp://127.0.0.1/x")
    sign_out(browser)
    assert sender(app).wait_idle(WAIT)
    reasons = {r["client_id"]: r["reason"] for r in audited(app, "backchannel_failed")}
    assert reasons["reader"] == "not an http(s) URI"
    assert reasons["test"] in ("NewConnectionError", "ConnectTimeoutError", "ProtocolError")
    assert receiver.bodies == []


def test_a_hanging_partner_never_holds_up_the_sign_out(app, browser, receiver):
    receiver.hang = True
    sender(app).timeout = WAIT * 2  # the partner, not our timeout, decides when it ends
    give(app, "reader", backchannel_logout_uri=None)
    response = sign_out(browser)
    receiver.answered.set()
    assert response.headers["Location"] == "/login"
    assert browser.get("/review").status_code == 302  # the session is over
    assert receiver.arrived.wait(WAIT), "the logout token never reached the partner"
    receiver.release.set()
    assert sender(app).wait_idle(WAIT)
    # The partner held the request until after the user had their answer.
    assert receiver.replied_after_answer == [True]


def test_a_full_queue_drops_and_audits(app):
    with app.test_request_context():
        small = BackchannelSender(app, timeout=1, retries=0, queue_size=1, workers=0)
        small.send([Notice("test", "alice", "s1"), Notice("reader", "alice", "s1")])
    [dropped] = audited(app, "backchannel_dropped")
    assert (dropped["client_id"], dropped["reason"]) == ("reader", "queue full")
    assert small.queue.qsize() == 1


def test_idle_workers_end(app, browser, receiver):
    sender(app).idle = 0.05
    sign_out(browser)
    assert sender(app).wait_idle(WAIT)
    deadline = time.monotonic() + WAIT
    while sender(app)._threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender(app)._threads == []


def test_logout_token_claims_without_a_session_id(app):
    state = app.extensions["oauth2"]
    with app.app_context():
        token = logout_token(
            state.clients.get("test"), "u1", None, issuer="https://op", keys=state.keys, alg="RS256"
        )
    header, claims = verified(app, token)
    assert "sid" not in claims and claims["sub"] == "u1" and claims["aud"] == "test"
    assert claims["iss"] == "https://op"


def listening_pair() -> tuple[ThreadingHTTPServer, ThreadingHTTPServer, list[tuple[str, str]]]:
    """Two servers on one port, at 127.0.0.2 (standing for a public address) and at
    127.0.0.1 (the inside), and the (address, Host header) of each POST they receive."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.server.server_address[0], self.headers.get("Host", "")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    for _ in range(20):
        outside = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        try:
            inside = ThreadingHTTPServer(("127.0.0.1", outside.server_port), Handler)
        except OSError:  # that port is taken on 127.0.0.1: another one
            outside.server_close()
            continue
        for server in (outside, inside):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return outside, inside, seen
    raise AssertionError("no port free on both addresses")


def sign_out_of_a_stored_client(app, browser, uri: str, servers) -> None:
    """Alice signs out, having used only a stored client whose back-channel URI is
    ``uri``, in production (stored clients' hosts checked); then ``servers`` stop."""
    record, _ = app.extensions["oauth2"].clients.store.create(
        {"redirect_uris": ["https://rp.example/cb"], "backchannel_logout_uri": uri}
    )
    note(browser, record["client_id"])
    for client_id in ("test", "reader"):
        give(app, client_id, backchannel_logout_uri=None)
    sender(app).public_only = True  # as in production
    try:
        sign_out(browser)
        assert sender(app).wait_idle(WAIT)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_in_production_a_stored_client_is_sent_to_the_address_that_was_checked(
    app, browser, monkeypatch
):
    """DNS rebinding: the partner's name resolves to a public address for the check, then
    to one inside the network. The token goes to the address checked, naming the host."""
    import socket

    outside, inside, seen = listening_pair()
    port = outside.server_port
    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host, *args, **kwargs):
        if host != "rp-rebind.test":
            return real(host, *args, **kwargs)
        asked.append(host)
        address = "127.0.0.2" if len(asked) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(backchannel, "_is_public", lambda address: address == "127.0.0.2")
    sign_out_of_a_stored_client(
        app, browser, f"http://rp-rebind.test:{port}/bc?x=1", (outside, inside)
    )
    assert seen == [("127.0.0.2", f"rp-rebind.test:{port}")]
    assert asked == ["rp-rebind.test"]  # resolved once, for the check
    assert audited(app, "backchannel_failed") == []


def test_a_pinned_delivery_tries_each_address_and_names_the_host_as_urllib3_would(
    app, browser, monkeypatch
):
    """The checked addresses are tried in turn (the first refuses the connection), and an
    internationalised name is sent in its ASCII form, without a trailing dot."""
    import socket

    outside, inside, seen = listening_pair()
    port = outside.server_port
    real = socket.getaddrinfo

    def resolving(host, *args, **kwargs):
        if host not in ("b\u00fccher-rp.test.", "xn--bcher-rp-65a.test."):
            return real(host, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in ("127.0.0.3", "127.0.0.2")  # nothing listens on the first
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolving)
    public = ("127.0.0.2", "127.0.0.3")
    monkeypatch.setattr(backchannel, "_is_public", lambda address: address in public)
    sign_out_of_a_stored_client(
        app, browser, f"http://b\u00fccher-rp.test.:{port}/bc", (outside, inside)
    )
    assert seen == [("127.0.0.2", f"xn--bcher-rp-65a.test:{port}")]
    assert audited(app, "backchannel_failed") == []


def test_in_production_a_stored_clients_uri_must_resolve_to_a_public_address(
    app, browser, receiver
):
    """A stored client (admin API) naming a host that resolves inside the network is not
    sent anything (a request forgery); the operator's file clients are trusted."""
    state = app.extensions["oauth2"]
    record, _ = state.clients.store.create(
        {"redirect_uris": ["https://rp.example/cb"], "backchannel_logout_uri": receiver.url}
    )
    note(browser, record["client_id"])
    give(app, "reader", backchannel_logout_uri=None)
    sender(app).public_only = True  # as in production
    sign_out(browser)
    assert sender(app).wait_idle(WAIT)
    assert [verified(app, t)[1]["aud"] for t in receiver.tokens()] == ["test"]
    [failure] = audited(app, "backchannel_failed")
    assert (failure["client_id"], failure["reason"]) == (record["client_id"], "not public")
