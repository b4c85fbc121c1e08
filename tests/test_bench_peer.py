"""The bench's node-oidc-provider peer stays in step with our bench (no Node started).

``bench/peer/peer.json`` describes the peer's client, scopes and lifetimes, and which of
its scenarios each of ours is compared with; ``bench/run.py`` and the peer's JavaScript
both read it. These checks fail when our bench's side moves and the peer's does not:
the client and lifetime checked by asking our app for the very token the bench asks for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import create_app
from app.config_model import OIDC, AuthServer
from app.storage import DEFAULT_TTLS
from bench import flow, loader, nodepeer, run
from tests.conftest import base_config, close_app

ROOT = Path(__file__).resolve().parent.parent


def test_every_token_scenario_of_ours_has_a_counterpart_the_peer_can_run():
    assert set(nodepeer.COUNTERPARTS) | set(nodepeer.WITHOUT_COUNTERPART) == set(run.LABELS)
    assert not set(nodepeer.COUNTERPARTS) & set(nodepeer.WITHOUT_COUNTERPART)
    assert set(nodepeer.COUNTERPARTS.values()) == set(nodepeer.SCENARIOS) == set(run.PEER_LABELS)
    peer = nodepeer.Peer(None, 1, "redis://127.0.0.1:1/13", {}, "at", "uat")  # type: ignore[arg-type]
    peer.refresh_file = peer.refresh_warm_file = Path("pool.txt")
    for scenario in set(nodepeer.SCENARIOS) - set(nodepeer.FLOWS):
        load, _warm = peer.loads(scenario)
        assert load.path in nodepeer.CONFIG["paths"].values()


def test_the_peer_uses_our_bench_client_scopes_and_lifetimes():
    assert nodepeer.basic() == run.basic_test()
    client = nodepeer.CONFIG["client"]
    assert (client["client_id"], client["client_secret"]) == (flow.CLIENT, flow.SECRET)
    assert client["redirect_uris"] == [flow.REDIRECT]
    assert nodepeer.CONFIG["scopes"]["token"] == loader.SCOPE
    assert nodepeer.CONFIG["scopes"]["userinfo"] == run.USERINFO_SCOPE
    ttl = nodepeer.CONFIG["ttl"]
    assert ttl["RefreshToken"] == DEFAULT_TTLS["refresh_tokens"] == loader.REFRESH_TTL
    assert ttl["AccessToken"] == ttl["ClientCredentials"] == DEFAULT_TTLS["tokens"]
    assert ttl["AuthorizationCode"] == DEFAULT_TTLS["codes"]
    assert ttl["Session"] == DEFAULT_TTLS["session"]
    assert ttl["Interaction"] == AuthServer().transaction_ttl
    assert ttl["IdToken"] == OIDC().id_token_ttl


def test_our_bench_server_gives_the_peer_client_a_token_of_the_peer_lifetime(tmp_path, dummy_site):
    """The bench serves ``clients.json.example``: the peer's client and secret get a
    client-credentials token there, living as long as the peer's tokens do."""
    config = base_config(
        tmp_path, dummy_site, client_credentials={"file": str(ROOT / "clients.json.example")}
    )
    app = create_app(config)
    try:
        answer = app.test_client().post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": nodepeer.basic()},
        )
    finally:
        close_app(app)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    ttl = nodepeer.CONFIG["ttl"]
    assert answer.json["expires_in"] == ttl["ClientCredentials"] == ttl["AccessToken"]


def test_the_peer_packages_are_pinned_exactly_and_locked():
    pinned = nodepeer.pinned_versions()
    assert set(pinned) == {"oidc-provider", "ioredis"}
    lock = json.loads((nodepeer.DIR / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == pinned
    for name, version in pinned.items():
        assert version[0].isdigit(), f"{name}: {version} is a range, not a version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_missing_npm_packages_stop_the_bench_loudly(tmp_path, monkeypatch):
    (tmp_path / "package.json").write_text((nodepeer.DIR / "package.json").read_text())
    monkeypatch.setattr(nodepeer, "DIR", tmp_path)
    with pytest.raises(SystemExit, match=r"node_modules/.*missing.*npm ci --prefix bench/peer"):
        nodepeer.check_installed()


def test_the_peer_store_is_the_next_database_of_the_bench_redis(monkeypatch):
    monkeypatch.delenv("BENCH_PEER_REDIS_URL", raising=False)
    assert nodepeer.redis_url("redis://127.0.0.1:6379/12") == "redis://127.0.0.1:6379/13"
    monkeypatch.setenv("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6400/3")
    assert nodepeer.redis_url("redis://127.0.0.1:6379/12") == "redis://127.0.0.1:6400/3"


def test_the_bench_serves_with_metrics_on_and_scrapes_them_with_its_token(tmp_path, dummy_site):
    """Issue 14's targets hold with limits *and metrics* on: the bench's config turns
    ``/metrics`` on behind a token whose hash it carries, and the variant rows change only
    their own setting."""
    config = run.server_config(8080, 8084, {"default": "sqlite:///:memory:"})
    plain_sections = set(config)
    assert config["metrics"]["enabled"] is True
    uncached = run.server_config(
        8080, 8084, {"default": "sqlite:///:memory:"}, extra=run.VARIANT_CONFIG["no-token-cache"][0]
    )
    assert uncached["token_cache"] == {"enabled": False}
    assert set(uncached) - plain_sections == {"token_cache"}
    bare = run.server_config(8080, 8084, {}, extra=run.VARIANT_CONFIG["no-observability"][0])
    assert bare["metrics"]["enabled"] is False and bare["logging"]["requests"] is False
    assert bare["logging"]["level"] == config["logging"]["level"]  # merged, not replaced
    app = create_app(
        base_config(tmp_path, dummy_site, metrics=config["metrics"], limits=config["limits"])
    )
    try:
        client = app.test_client()
        assert client.post("/token", data={"grant_type": "client_credentials"}).status_code == 401
        refused = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {run.METRICS_TOKEN}"})
    finally:
        close_app(app)
    assert refused.status_code in (401, 403, 404)
    assert scraped.status_code == 200
    assert 'oauth2_http_requests_total{method="POST",route="/token",status="401"}' in scraped.text
