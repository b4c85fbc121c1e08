"""Abuse limits: per client on /token, per IP and username on /login, per token on /api.

Limits count in fixed windows; the tests use hourly ones so that no test straddles a
window's end.
"""

from __future__ import annotations

import pytest

from app import create_app

from .conftest import base_config, basic, bearer, csrf_from


def limited_app(tmp_path, dummy_site, **limits):
    config = base_config(tmp_path, dummy_site)
    config["limits"] = {"storage": f"memory://{tmp_path.name}", **limits}
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def make(tmp_path, dummy_site):
    apps = []

    def build(**limits):
        app = limited_app(tmp_path, dummy_site, **limits)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["oauth2"].storage.close()
        app.extensions["oauth2"].adapter.close()


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
    [("token", "lots"), ("api", "1/fortnight"), ("lockout_base", 1), ("enabled", "yes")],
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
