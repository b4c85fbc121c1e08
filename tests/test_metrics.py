"""``/metrics``: access (off, token, admin listener) and the counters a flow moves."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.config_model import ConfigError
from app.secrets_hash import hash_random_secret
from bench import procs
from tests.conftest import REDIRECT, base_config, basic, bearer, exchange, get_code
from tests.factories import make_token

TOKEN = "metrics-" + "s" * 40


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path, dummy_site, closing):
    config = base_config(
        tmp_path, dummy_site, metrics={"enabled": True, "token_hash": hash_random_secret(TOKEN)}
    )
    return closing(create_app(config)).test_client()


def test_off_by_default(client):
    assert client.get("/metrics").status_code == 404


def test_never_public(tmp_path, dummy_site):
    with pytest.raises(ConfigError, match="metrics.enabled: needs metrics.token_hash"):
        create_app(base_config(tmp_path, dummy_site, metrics={"enabled": True}))


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
def test_the_token_is_required(metered, header):
    headers = {} if header is None else {"Authorization": header}
    response = metered.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "oauth2_" not in response.get_data(as_text=True)


def test_only_on_the_admin_listener_when_one_is_set(tmp_path, dummy_site, closing):
    config = base_config(
        tmp_path,
        dummy_site,
        metrics={"enabled": True},
        admin={"listen": "127.0.0.1:9091"},
        auth_server={"server": "gunicorn"},
    )
    app = closing(create_app(config))
    public = app.test_client().get("/metrics")
    assert public.status_code == 404
    internal = app.test_client().get("/metrics", base_url="http://127.0.0.1:9091")
    assert internal.status_code == 200
    assert "oauth2_http_requests_total" in internal.get_data(as_text=True)


def test_a_flow_moves_the_counters(metered):
    before = scrape(metered)
    code = get_code(metered)
    token = exchange(metered, code).get_json()
    assert metered.get("/api/profile", headers=bearer(token["access_token"])).status_code == 200
    assert exchange(metered, code).status_code == 400  # the code again: replay
    bad = metered.post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic(secret="wrong")
    )
    assert bad.status_code == 401
    wrong_grant = metered.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "nope"},
        headers=basic(),
    )
    assert wrong_grant.status_code == 400
    after = scrape(metered)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("oauth2_http_requests_total", route="/token", method="POST", status="200") == 1
    assert moved("oauth2_http_requests_total", route="/token", method="POST", status="400") == 2
    assert (
        moved("oauth2_http_requests_total", route="/api/<path:name>", method="GET", status="200")
        == 1
    )
    assert moved("oauth2_http_request_duration_seconds_count", route="/token") == 4
    assert moved("oauth2_tokens_issued_total", grant="authorization_code", client_id="test") == 1
    assert moved("oauth2_refusals_total", reason="invalid_client") == 1
    assert moved("oauth2_refusals_total", reason="invalid_grant") == 2
    assert moved("oauth2_refusals_total", reason="replay") == 1
    assert moved("oauth2_upstream_duration_seconds_count", function="profile") == 1
    assert moved("oauth2_storage_duration_seconds_count", table="tokens", backend="sqlite") >= 1
    assert moved("oauth2_storage_duration_seconds_count", table="codes", backend="sqlite") >= 2
    assert moved("oauth2_storage_errors_total", table="tokens", backend="sqlite") == 0
    # Not the raw path: an unknown page is one label, whatever its path.
    metered.get("/nope/" + "x" * 50)
    assert any(
        labels == frozenset({("route", "<unmatched>"), ("method", "GET"), ("status", "404")})
        for (name, labels) in scrape(metered)
        if name == "oauth2_http_requests_total"
    )
    assert REDIRECT not in str(after)


def test_site_failures_are_counted_by_function(metered, monkeypatch):
    state = metered.application.extensions["oauth2"]
    code = get_code(metered)
    access = exchange(metered, code).get_json()["access_token"]
    before = scrape(metered)

    # The site goes away: its address now refuses connections.
    monkeypatch.setattr(state.adapter, "base_url", f"http://127.0.0.1:{procs.free_port()}")
    assert metered.get("/api/profile", headers=bearer(access)).status_code == 502
    after = scrape(metered)
    errors = "oauth2_upstream_errors_total"
    assert (
        value(after, errors, function="profile", kind="unavailable")
        - value(before, errors, function="profile", kind="unavailable")
        == 1
    )


def test_the_grafana_dashboard_names_only_metrics_we_export():
    import json
    import re
    from pathlib import Path

    from app.observability.metrics import REGISTRY

    dashboard = json.loads((Path(__file__).parents[1] / "ops/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\boauth2_\w+", expr)}
    families = {family.name: family.type for family in REGISTRY.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {
        name + suffix for name, kind in families.items() for suffix in suffixes.get(kind, ("",))
    }
    assert used, "the dashboard queries nothing"
    assert used <= exported, used - exported
    # Every family has a panel.
    assert {name for name in families if any(name in n for n in used)} == set(families)


def test_storage_failures_are_counted_by_table(metered, monkeypatch):
    from app.storage.base import StorageUnavailable

    state = metered.application.extensions["oauth2"]
    access = make_token(state)["access_token"]
    before = scrape(metered)

    def down(*args, **kwargs):
        raise StorageUnavailable("down")

    for backend in state.storage.backends.values():
        monkeypatch.setattr(backend, "execute", down)
    assert metered.get("/api/profile", headers=bearer(access)).status_code == 503
    monkeypatch.undo()
    after = scrape(metered)
    errors = "oauth2_storage_errors_total"
    labels = {"table": "tokens", "backend": "sqlite"}
    assert value(after, errors, **labels) - value(before, errors, **labels) == 1
