"""Abuse limits: per client on /token, per IP and username on /login, per token on /api.

Limits count in fixed windows; the tests use hourly ones so that no test straddles a
window's end.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.clients import ClientFileError

from .backends import redis_url, require_service
from .conftest import base_config, basic, bearer, csrf_from, race
from .factories import SECRET, make_client

ROOT = Path(__file__).resolve().parent.parent


def limited_app(tmp_path, dummy_site, **limits):
    config = base_config(tmp_path, dummy_site)
    config["limits"] = {"storage": f"memory://{tmp_path.name}", **limits}
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def make(tmp_path, dummy_site, closing):
    def build(**limits):
        return closing(limited_app(tmp_path, dummy_site, **limits))

    return build


def cc(client, auth=None):
    return client.post("/token", data={"grant_type": "client_credentials"}, headers=auth or basic())


def test_token_limit_is_per_client_with_retry_after(make):
    client = make(token="3/hour").test_client()
    assert [cc(client).status_code for _ in range(3)] == [200, 200, 200]
    refused = cc(client)
    assert refused.status_code == 429
    assert refused.get_json()["error"] == "too_many_requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Another client has its own budget.
    assert cc(client, basic("sp-demo", "hunter2")).status_code in (400, 401)
    assert cc(client, basic("sp-demo", "hunter2")).status_code != 429


def test_rate_limit_hits_are_audited(make):
    app = make(token="1/hour")
    client = app.test_client()
    cc(client)
    cc(client)
    events = [r["event"] for r in app.extensions["oauth2"].storage.audit.recent(20)]
    assert "rate_limited" in events


def login_once(client, username, password):
    page = client.get("/login")
    return client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf_from(page.get_data(as_text=True)),
        },
    )


def test_login_lockout_grows_and_names_the_wait(make):
    app = make(lockout_after=2, lockout_base=4, lockout_max=900)
    client = app.test_client()
    assert login_once(client, "mallory", "nope").status_code == 401
    assert login_once(client, "mallory", "nope").status_code == 401
    third = login_once(client, "mallory", "nope")  # third failure earns 4 s
    assert third.status_code == 401
    locked = login_once(client, "mallory", "password")  # even the right password waits
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 4
    assert locked.headers["RateLimit-Policy"] == '"login";q=2'
    assert locked.headers["RateLimit"].startswith('"login";r=0;t=')
    assert "Too many failed attempts" in locked.get_data(as_text=True)
    # Another username is not affected.
    assert login_once(client, "alice", "password").status_code == 302
    events = [r["event"] for r in app.extensions["oauth2"].storage.audit.recent(50)]
    assert "lockout" in events and "login_locked" in events


def test_login_lockout_clears_after_success(make):
    app = make(lockout_after=1)
    lockout = app.extensions["oauth2"].limits.login
    assert lockout.reserve("bob") == (0, 0)
    assert lockout.reserve("bob") == (0, 2)  # the second attempt shuts the gate for 2 s
    assert lockout.reserve("bob").wait > 0
    lockout.succeeded("bob")
    assert lockout.reserve("bob") == (0, 0)
    lockout.succeeded("bob")  # at once again: the reservation between is cleared too
    assert [lockout.reserve("bob") for _ in range(2)] == [(0, 0), (0, 2)]


def test_login_limit_per_username(make):
    client = make(login_user="2/hour", lockout_after=100).test_client()
    assert login_once(client, "carol", "x").status_code == 401
    assert login_once(client, "carol", "x").status_code == 401
    assert login_once(client, "carol", "x").status_code == 429


def test_api_limit_per_token(make):
    app = make(api="2/hour")
    client = app.test_client()
    token = cc(client).get_json()["access_token"]
    answers = [client.get("/api/profile", headers=bearer(token)).status_code for _ in range(3)]
    assert answers[:2] == [403, 403]  # a client token: no user, but counted
    assert answers[2] == 429
    body = client.get("/api/profile", headers=bearer(token)).get_json()
    assert body == {"success": 0, "error": "too many requests"}


def test_limits_can_be_switched_off(make):
    client = make(enabled=False, token="1/hour").test_client()
    assert [cc(client).status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("token", "lots"),
        ("api", "1/fortnight"),
        ("api_ip", "many"),
        ("lockout_base", 1),
        ("client_lockout_after", 0),
        ("client_lockout_max", 0),
        ("enabled", "yes"),
    ],
)
def test_bad_limit_settings_fail_at_start_naming_the_key(tmp_path, dummy_site, key, value):
    from app.settings import ConfigError

    config = base_config(tmp_path, dummy_site)
    config["limits"] = {key: value}
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        create_app(config)


def test_failed_auth_does_not_spend_the_claimed_clients_budget(make):
    client = make(token="2/hour", token_ip="100/hour").test_client()
    for _ in range(5):
        assert cc(client, basic("test", "wrong")).status_code == 401
    assert [cc(client).status_code for _ in range(2)] == [200, 200]
    assert cc(client).status_code == 429


def test_the_per_ip_limit_counts_failures_too(make):
    client = make(token_ip="3/hour").test_client()
    answers = [cc(client, basic("test", "wrong")).status_code for _ in range(4)]
    assert answers == [401, 401, 401, 429]


def test_each_token_endpoint_has_its_own_budget(make):
    client = make(token="2/hour").test_client()
    assert [cc(client).status_code for _ in range(2)] == [200, 200]
    assert cc(client).status_code == 429
    answer = client.post("/introspect", data={"token": "x"}, headers=basic())
    assert answer.status_code == 200  # /introspect counts apart from /token


def test_a_flood_is_audited_once_per_window(make):
    app = make(token_ip="1/hour")
    client = app.test_client()
    junk = {"grant_type": "nonsense"}
    answers = [client.post("/token", data=junk).status_code for _ in range(6)]
    assert answers == [400] + [429] * 5
    events = [r["event"] for r in app.extensions["oauth2"].storage.audit.recent(50)]
    assert events.count("rate_limited") == 1


def test_requests_failing_before_client_auth_do_not_spend_its_budget(make):
    client = make(token="2/hour", token_ip="100/hour").test_client()
    bad = basic("test", "not-the-secret")
    for _ in range(5):
        in_query = client.post("/token?grant_type=client_credentials", headers=bad)
        assert in_query.status_code == 400  # refused before any client authentication
        unknown = client.post("/token", data={"grant_type": "nonsense"}, headers=bad)
        assert unknown.status_code in (400, 401)
    assert [cc(client).status_code for _ in range(2)] == [200, 200]
    assert cc(client).status_code == 429


def test_an_authenticated_client_spends_its_budget_on_failures_too(make):
    client = make(token="2/hour", token_ip="100/hour").test_client()
    grant = {"grant_type": "authorization_code", "code": "no-such-code", "redirect_uri": "x"}
    answers = [client.post("/token", data=grant, headers=basic()).status_code for _ in range(2)]
    assert answers == [400, 400]
    assert cc(client).status_code == 429


# -- client authentication: a total Basic parser, failures throttled -------------------------
def raw_basic(payload: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(payload).decode()}


BAD_BASIC = [
    raw_basic(b"\xff\xfe"),
    raw_basic(b"test:\xed\xa0\x80"),  # an encoded lone surrogate
    raw_basic(b"\xed\xa0\x80:hunter2"),
    raw_basic(b"test"),  # no colon
    {"Authorization": "Basic %%%not-base64"},
    {"Authorization": "Basic \u00e9\u00e9=="},  # not ASCII
    {"Authorization": "Basic"},
]


@pytest.mark.parametrize("endpoint", ["/token", "/revoke", "/introspect"])
@pytest.mark.parametrize("headers", BAD_BASIC)
def test_a_malformed_basic_header_is_invalid_client_not_500(make, endpoint, headers):
    client = make().test_client()
    data = {"grant_type": "client_credentials", "token": "x"}
    answer = client.post(endpoint, data=data, headers=headers)
    assert answer.status_code in (400, 401)
    assert answer.get_json()["error"] in ("invalid_client", "invalid_request")


def test_basic_credentials_are_form_urlencoded_inside():
    from werkzeug.datastructures import Headers

    from app.oauth2.client_auth import basic_credentials

    assert basic_credentials(Headers(raw_basic(b"a%3Ab:c%20d"))) == ("a:b", "c d")
    assert basic_credentials(Headers(raw_basic(b"id:"))) == ("id", "")
    assert basic_credentials(Headers(raw_basic(b"\xff:x"))) == (None, None)


def test_basic_credentials_are_read_once_a_request_for_the_header_they_came_from():
    """The request's environ keeps what its header said; a different header (the same
    environ) is read afresh, and nothing outlives the environ."""
    import base64

    from werkzeug.datastructures import EnvironHeaders

    from app.oauth2.client_auth import basic_credentials

    environ = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"a:b").decode()}
    headers = EnvironHeaders(environ)
    assert basic_credentials(headers) == basic_credentials(headers) == ("a", "b")
    assert any(isinstance(v, tuple) for v in environ.values())
    environ["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(b"c:d").decode()
    assert basic_credentials(headers) == ("c", "d")
    del environ["HTTP_AUTHORIZATION"]
    assert basic_credentials(headers) == (None, None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=40), scheme=st.sampled_from(["Basic", "Bearer", "bAsIc", "\xe9"]))
def test_any_authorization_header_is_never_a_5xx_and_issues_nothing(
    tmp_path_factory, dummy_site, value, scheme
):
    app = _fuzz_app(tmp_path_factory, dummy_site)
    n = next(_ADDRESSES)
    client = from_ip(app, f"198.18.{n // 256 % 256}.{n % 256}")  # past the per-IP delays
    header = scheme + " " + value.decode("latin-1").replace("\r", "").replace("\n", "")
    tokens = app.extensions["oauth2"].storage.tokens
    before = len(tokens.list_by_client("test"))
    issued = 0
    for path in ("/token", "/revoke", "/introspect"):
        data = {"grant_type": "client_credentials", "token": "x"}
        answer = client.post(path, data=data, headers={"Authorization": header})
        assert answer.status_code < 500
        issued += path == "/token" and answer.status_code == 200
    assert client.get("/api/profile", headers={"Authorization": header}).status_code < 500
    assert len(tokens.list_by_client("test")) == before + issued  # a refusal stores nothing


_FUZZ: dict[str, object] = {}
_ADDRESSES = itertools.count(1)


def _fuzz_app(tmp_path_factory, dummy_site):
    if "app" not in _FUZZ:
        _FUZZ["app"] = limited_app(tmp_path_factory.mktemp("fuzz"), dummy_site)
    return _FUZZ["app"]


def from_ip(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_guessing_a_secret_is_throttled_and_other_ips_are_not(make):
    app = make()
    attacker = from_ip(app, "203.0.113.7")
    answers = [cc(attacker, basic("test", f"guess{i}")).status_code for i in range(200)]
    assert answers[:5] == [401] * 5  # lockout_after free failures
    assert answers.count(429) >= 180  # then one guess per growing delay
    refused = cc(attacker)  # even the right secret waits
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"] == '"client-ip";q=5'
    assert refused.headers["RateLimit"] == f'"client-ip";r=0;t={refused.headers["Retry-After"]}'
    # Another partner on another IP is not touched by the attacker's IP's delays.
    assert cc(from_ip(app, "198.51.100.2"), basic("sp-demo", "hunter2")).status_code != 429


def test_the_claimed_client_is_throttled_only_after_many_failures(make):
    app = make(client_lockout_after=3, client_lockout_max=60)
    for i in range(4):  # four strangers' IPs, one failure each: the fourth shuts the gate
        assert cc(from_ip(app, f"192.0.2.{i}"), basic("test", "wrong")).status_code == 401
    partner = cc(from_ip(app, "198.51.100.9"))
    assert partner.status_code == 429 and 1 <= int(partner.headers["Retry-After"]) <= 2
    assert cc(from_ip(app, "198.51.100.9"), basic("sp-demo", "hunter2")).status_code != 429


def test_a_success_resets_the_claimed_clients_failures(make):
    app = make(client_lockout_after=3)
    for round_ in range(3):
        for i in range(3):
            answer = cc(from_ip(app, f"192.0.2.{round_ * 3 + i}"), basic("test", "wrong"))
            assert answer.status_code == 401
        assert cc(from_ip(app, "198.51.100.9")).status_code == 200


def test_ipv6_callers_share_their_64(make):
    app = make(lockout_after=2)
    for i in range(3):
        cc(from_ip(app, f"2001:db8:1:2::{i + 1}"), basic("test", "wrong"))
    assert cc(from_ip(app, "2001:db8:1:2:ffff::9")).status_code == 429
    assert cc(from_ip(app, "2001:db8:1:3::1")).status_code == 200


def test_a_busy_partner_gets_no_429_with_default_limits(make):
    client = make().test_client()
    answers = [cc(client).status_code for _ in range(700)]  # over the old 600/minute
    assert set(answers) == {200}


def test_token_responses_carry_the_ratelimit_fields(make):
    client = make(token="5/hour").test_client()
    answer = cc(client)
    assert answer.headers["RateLimit-Policy"] == '"token";q=5;w=3600'
    assert answer.headers["RateLimit"].startswith('"token";r=4;t=')
    for _ in range(4):
        cc(client)
    refused = cc(client)
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert refused.headers["RateLimit"].startswith('"token";r=0;t=')


def test_a_client_may_have_its_own_rate(tmp_path, dummy_site):
    import json

    entries = json.loads((ROOT / "clients.json.example").read_text())
    for entry in entries:
        if entry["client_id"] == "test":
            entry["rate_limit"] = "2/hour"
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(entries))
    config = base_config(tmp_path, dummy_site)
    config["client_credentials"] = {"file": str(path)}
    config["limits"] = {"storage": "memory://"}
    client = create_app(config).test_client()
    assert [cc(client).status_code for _ in range(3)] == [200, 200, 429]
    path.write_text(json.dumps([{**entries[0], "rate_limit": "lots"}]))
    with pytest.raises(ClientFileError, match="rate_limit"):
        create_app(config)


# -- /api: bearer parsing and bad tokens per IP -------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["B\u00e9arer x", "\u00e9 abc", "Bearer", "Bearer a b", "Bearer \u00e9\u00e9", "Bearer =abc"],
)
def test_a_malformed_authorization_at_api_is_401_not_500(make, value):
    answer = make().test_client().get("/api/profile", headers={"Authorization": value})
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_random_bearer_tokens_are_limited_per_ip(make):
    app = make(api_ip="5/hour")
    guesser = from_ip(app, "203.0.113.9")
    answers = [
        guesser.get("/api/profile", headers=bearer(secrets.token_urlsafe(16))).status_code
        for _ in range(8)
    ]
    assert answers == [401] * 5 + [429] * 3
    token = cc(from_ip(app, "198.51.100.1")).get_json()["access_token"]
    good = from_ip(app, "198.51.100.1").get("/api/profile", headers=bearer(token))
    assert good.status_code == 403  # a client token reaches the view: not limited
    assert good.headers["RateLimit-Policy"].startswith('"api";q=')


def test_a_dpop_token_spends_its_own_budget_not_its_ips(make):
    """RFC 9449 §7.1: ``Authorization: DPoP`` calls count on the token, once accepted."""
    from tests.oauth2.dpop_helpers import Prover

    app = make(api_ip="2/hour", api="100/hour")
    client, prover = from_ip(app, "198.51.100.7"), Prover()
    token = cc(client, {**basic(), **prover.headers()}).get_json()
    assert token["token_type"] == "DPoP"
    raw = token["access_token"]
    for _ in range(4):
        headers = {"Authorization": f"DPoP {raw}", **prover.headers("GET", "/api/profile", raw)}
        answer = client.get("/api/profile", headers=headers)
        assert answer.status_code == 403  # a client token reaches the view: not limited
        assert answer.headers["RateLimit-Policy"].startswith('"api";q=100')
    refused = {"Authorization": f"DPoP {raw}", "DPoP": "garbage"}
    assert [client.get("/api/profile", headers=refused).status_code for _ in range(3)] == [
        401,
        401,
        429,
    ]


# -- sign-in lockout: reserved before the site is asked --------------------------------------
def test_a_lockout_earned_at_one_instance_holds_at_another(make):
    # Two instances on one SQLite file, the limiter in process memory (`make run`'s
    # workers): the failure counts live in the shared session table.
    one, other = make(lockout_after=2, lockout_base=60), make(lockout_after=2, lockout_base=60)
    assert [login_once(one.test_client(), "mallory", "nope").status_code for _ in range(3)] == [
        401
    ] * 3
    locked = login_once(other.test_client(), "mallory", "password")
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_parallel_wrong_passwords_reach_the_site_at_most_lockout_after_plus_one(
    tmp_path, dummy_site, backend, monkeypatch
):
    """Across two instances (workers) of one deployment, the lockout holds as in one."""
    config = base_config(tmp_path, dummy_site)
    if backend == "redis":
        url = redis_url()
        require_service("redis", url)
        config["storage"] = {"default": config["storage"]["default"], "session": url}
        config["limits"] = {"lockout_after": 3}
    else:
        config["limits"] = {"storage": "memory://", "lockout_after": 3}
    apps = [create_app(config), create_app(config)]
    apps[0].extensions["oauth2"].limits.login.succeeded(user := f"victim-{secrets.token_hex(4)}")
    calls, lock = [], threading.Lock()

    def slow_login(username, password):
        with lock:
            calls.append(username)
        time.sleep(0.2)  # a slow site: every attempt is in flight at once
        return None

    for app in apps:
        monkeypatch.setattr(app.extensions["oauth2"].adapter, "login", slow_login)
        app.config["WTF_CSRF_ENABLED"] = False
    turns = itertools.cycle(apps)

    def attempt(go) -> int:
        with lock:
            client = next(turns).test_client()
        go()
        return client.post("/login", data={"username": user, "password": "wrong"}).status_code

    statuses = race(26, attempt)
    assert len(calls) <= 3 + 1
    assert statuses.count(429) >= 26 - 4
    for app in apps:
        app.extensions["oauth2"].storage.close()


# -- found by review: ids as authentication reads them, mapped IPv4, public clients --------
def app_with_clients(tmp_path, dummy_site, entries, **limits):
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps(entries))
    config = base_config(tmp_path, dummy_site, client_credentials={"file": str(clients)})
    config["limits"] = {"storage": f"memory://{tmp_path.name}", **limits}
    app = create_app(config)
    app.config["TESTING"] = True
    return app


def test_a_json_number_client_id_is_throttled_as_its_text(tmp_path, dummy_site):
    numeric = make_client("12345", grant_types=["client_credentials"])
    app = app_with_clients(tmp_path, dummy_site, [numeric], client_lockout_after=3)
    try:
        body = {"grant_type": "client_credentials", "client_id": 12345}
        for i in range(4):  # strangers' IPs, the secret in a JSON body with a numeric id
            guess = from_ip(app, f"192.0.2.{i}").post("/token", json=body | {"client_secret": "x"})
            assert guess.status_code == 401
        right = from_ip(app, "198.51.100.9").post("/token", json=body | {"client_secret": SECRET})
        assert right.status_code == 429  # the gate the guesses shut holds for JSON too
    finally:
        app.extensions["oauth2"].storage.close()


def test_ipv4_mapped_callers_are_their_ipv4_address(make):
    app = make(lockout_after=2)
    for _ in range(3):
        cc(from_ip(app, "::ffff:203.0.113.7"), basic("test", "wrong"))
    assert cc(from_ip(app, "::ffff:203.0.113.7")).status_code == 429
    # Another IPv4 caller on a dual-stack listener is not in the attacker's "/64".
    assert cc(from_ip(app, "::ffff:198.51.100.9")).status_code == 200


def test_ip_allowlists_match_ipv4_mapped_callers(tmp_path, dummy_site):
    entry = make_client("net", grant_types=["client_credentials"], ip_allowlist=["198.51.100.0/24"])
    app = app_with_clients(tmp_path, dummy_site, [entry])
    try:
        assert cc(from_ip(app, "::ffff:198.51.100.9"), basic("net", SECRET)).status_code == 200
        assert cc(from_ip(app, "::ffff:203.0.113.7"), basic("net", SECRET)).status_code == 401
    finally:
        app.extensions["oauth2"].storage.close()


def test_strangers_cannot_lock_a_public_client_out(tmp_path, dummy_site):
    spa = make_client("spa", secret=None)
    app = app_with_clients(tmp_path, dummy_site, [spa], client_lockout_after=3)
    try:
        bogus = {"grant_type": "refresh_token", "client_id": "spa", "client_secret": "x"}
        for i in range(10):  # from ten /64s: each failure is the stranger's own
            answer = from_ip(app, f"2001:db8:{i}::1").post("/token", data=bogus)
            assert answer.status_code == 401
        user = from_ip(app, "192.0.2.50").post(
            "/token", data={"grant_type": "refresh_token", "client_id": "spa", "refresh_token": "r"}
        )
        assert user.status_code == 400  # invalid_grant for a made-up token, not 429
        assert user.get_json()["error"] == "invalid_grant"
    finally:
        app.extensions["oauth2"].storage.close()
