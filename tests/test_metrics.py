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
    # Every series is of the jobs picked (two deployments in one Prometheus stay apart).
    selectors = [s for expr in exprs for s in re.findall(r"\boauth2_\w+(\{[^}]*\})?", expr)]
    assert selectors and all(s.startswith('{job=~"$job"') for s in selectors), selectors
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= variables


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


def test_buffered_counts_are_exact_after_a_flush_with_many_threads():
    """Eight threads counting while another flushes over and over: after the last flush
    the counter and the histogram hold every count (none lost, none twice)."""
    import threading

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from app.observability import metrics

    registry = CollectorRegistry()
    counter = metrics.BufferedCounter(Counter("t", "t", ["a"], registry=registry).labels("x"))
    histogram = metrics.BufferedHistogram(
        Histogram("h", "h", ["a"], buckets=(0.1, 1.0), registry=registry).labels("x")
    )
    # Two (route, method, status) cells sharing their route's histogram, as requests' do.
    answered = Counter("r", "r", ["status"], registry=registry)
    shared = Histogram("s", "s", ["a"], buckets=(0.1, 1.0), registry=registry).labels("x")
    cells = [metrics.BufferedRequest(answered.labels(code), shared) for code in ("200", "500")]
    threads, rounds, done = 8, 5000, threading.Event()

    def count() -> None:
        for i in range(rounds):
            counter.inc()
            histogram.observe((0.05, 0.5, 5.0)[i % 3])
            cells[i % 2].observe((0.05, 0.5, 5.0)[i % 3])

    def flushing() -> None:
        while not done.is_set():
            metrics.flush()

    flusher = threading.Thread(target=flushing)
    flusher.start()
    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    flusher.join()
    metrics.flush()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"a": "x", **labels})

    total = threads * rounds
    assert sample("t_total") == total
    assert sample("h_count") == total
    small, middle, large = (threads * len(range(k, rounds, 3)) for k in range(3))
    assert sample("h_bucket", le="0.1") == small
    assert sample("h_bucket", le="1.0") == small + middle
    assert sample("h_bucket", le="+Inf") == total
    assert sample("h_sum") == pytest.approx(small * 0.05 + middle * 0.5 + large * 5.0)
    assert registry.get_sample_value("r_total", {"status": "200"}) == threads * len(
        range(0, rounds, 2)
    )
    assert registry.get_sample_value("r_total", {"status": "500"}) == threads * len(
        range(1, rounds, 2)
    )
    for suffix, value in (("count", total), ("sum", sample("h_sum"))):
        assert sample("s_" + suffix) == pytest.approx(value)
    assert sample("s_bucket", le="0.1") == small
    assert sample("s_bucket", le="1.0") == small + middle
    # The dead threads' accumulators, flushed, are let go.
    assert not any(owner in workers for owner, _, _ in metrics._THREADS)


def test_counts_wait_for_a_flush_at_most_a_second():
    """Between flushes the counter's value is behind; the flushing thread catches up."""
    import time

    from prometheus_client import CollectorRegistry, Counter

    from app.observability import metrics

    registry = CollectorRegistry()
    counter = metrics.BufferedCounter(Counter("w", "w", registry=registry))
    metrics.flush()  # starts the flushing thread
    counter.inc(3)
    deadline = time.monotonic() + 3 * metrics.FLUSH_EVERY
    while registry.get_sample_value("w_total") != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.get_sample_value("w_total") == 3


_WORKER = """
import os, sys
from app.observability import metrics
cell = metrics._request_cell("/w", "GET", 200)
for _ in range(int(sys.argv[1])):
    cell.observe(0.003)
if sys.argv[2] == "fork":
    # A worker forked with counts pending: they stay the parent's (counted once).
    pid = os.fork()
    if pid == 0:
        cell.observe(0.003)
        metrics.flush()
        os._exit(0)
    os.waitpid(pid, 0)
if sys.argv[2] == "scrape":
    # This worker's own counts, just made and not flushed yet, are in its scrape.
    sys.stdout.write(metrics.exposition()[0].decode())
# else: exits with its counts pending: flushed at exit
"""


def test_a_multiprocess_scrape_sums_the_workers_flushed_counts(tmp_path):
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = tmp_path / "metrics"
    folder.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(folder))

    def worker(count: int, mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, str(count), mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    worker(5, "exit")
    worker(7, "fork")
    scraped = worker(11, "scrape")
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }
    route = frozenset({("route", "/w"), ("method", "GET"), ("status", "200")})
    assert found["oauth2_http_requests_total", route] == 5 + 7 + 1 + 11
    seconds = frozenset({("route", "/w")})
    assert found["oauth2_http_request_duration_seconds_count", seconds] == 5 + 7 + 1 + 11
    # And read afterwards, as any worker's scrape would: the same sums.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    labels = {"route": "/w", "method": "GET", "status": "200"}
    assert registry.get_sample_value("oauth2_http_requests_total", labels) == 24
    assert (
        registry.get_sample_value(
            "oauth2_http_request_duration_seconds_bucket", {"route": "/w", "le": "0.005"}
        )
        == 24
    )


def test_clients_beyond_the_label_cap_share_one_series(monkeypatch, caplog):
    """Past ``metrics.max_client_labels`` of the operator's clients, tokens are counted
    under ``<other>``, once warned, and the clients labelled before keep their series;
    registered and gone clients share their own labels, never one series each."""
    from app.observability import metrics

    monkeypatch.setattr(metrics, "_LABELLED", set())
    monkeypatch.setattr(metrics, "_TOKEN_CHILDREN", {})
    monkeypatch.setattr(metrics, "_CAP_LOGGED", False)

    def issued(client: str, grant: str = "client_credentials") -> float:
        metrics.flush()
        labels = {"grant": grant, "client_id": client}
        return metrics.REGISTRY.get_sample_value("oauth2_tokens_issued_total", labels) or 0.0

    def label(client: str) -> str:
        if client.startswith("dyn-"):
            return metrics.REGISTERED_CLIENTS
        return metrics.UNKNOWN_CLIENT if client.startswith("gone-") else client

    names = [f"cap-client-{i}" for i in range(5)]
    shared = [metrics.OTHER_CLIENTS, metrics.REGISTERED_CLIENTS, metrics.UNKNOWN_CLIENT]
    before = {name: issued(name) for name in [*names, *shared, "dyn-1", "gone-1"]}
    # The first once more after the cap was reached; two registered clients; a gone one.
    for name in [*names, names[0], "dyn-1", "dyn-2", "gone-1"]:
        record = {"grant": "client_credentials", "client_id": name}
        metrics.observe_event("token_issued", record, label, 2)
    assert [issued(n) - before[n] for n in names] == [2, 1, 0, 0, 0]
    assert [issued(n) - before[n] for n in shared] == [3, 2, 1]
    assert issued("dyn-1") == before["dyn-1"] == 0
    assert issued("gone-1") == before["gone-1"] == 0
    assert set(names[:2]) == metrics._LABELLED
    assert len(metrics._TOKEN_CHILDREN) == 2  # nothing kept per client past the cap
    warnings = [r for r in caplog.records if "max_client_labels" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per token


def test_the_label_cap_holds_under_threads(monkeypatch):
    """Sixteen threads labelling new clients at once: the cap is never passed."""
    import threading

    from app.observability import metrics

    monkeypatch.setattr(metrics, "_LABELLED", set())
    monkeypatch.setattr(metrics, "_TOKEN_CHILDREN", {})
    monkeypatch.setattr(metrics, "_CAP_LOGGED", True)
    start = threading.Barrier(16)

    def issue(thread: int) -> None:
        start.wait()
        for i in range(50):
            record = {"grant": "implicit", "client_id": f"t{thread}-{i}"}
            metrics.observe_event("token_issued", record, str, 10)

    threads = [threading.Thread(target=issue, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(metrics._LABELLED) == 10
    assert len(metrics._TOKEN_CHILDREN) == 10


def test_a_registered_client_is_counted_under_the_shared_label(
    tmp_path, dummy_site, closing, monkeypatch
):
    """RFC 7591 clients are made by anyone holding an initial access token: none of them
    gets a series (nor a slot under the cap) of its own."""
    from app.observability import metrics

    monkeypatch.setattr(metrics, "_LABELLED", set())
    monkeypatch.setattr(metrics, "_TOKEN_CHILDREN", {})
    initial = "initial-" + "i" * 40
    config = base_config(
        tmp_path,
        dummy_site,
        metrics={"enabled": True, "token_hash": hash_random_secret(TOKEN)},
        registration={"enabled": True, "initial_access_token_hash": hash_random_secret(initial)},
    )
    client = closing(create_app(config)).test_client()
    made = client.post(
        "/register",
        json={"client_name": "Anyone", "grant_types": ["client_credentials"], "scope": "read-only"},
        headers=bearer(initial),
    )
    assert made.status_code == 201, made.get_data(as_text=True)
    registered = made.get_json()
    before = scrape(client)
    answer = client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers=basic(registered["client_id"], registered["client_secret"]),
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    after = scrape(client)

    def moved(**labels: str) -> float:
        name = "oauth2_tokens_issued_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(grant="client_credentials", client_id=metrics.REGISTERED_CLIENTS) == 1
    assert moved(grant="client_credentials", client_id=registered["client_id"]) == 0
    assert registered["client_id"] not in metrics._LABELLED


def test_the_label_cap_is_a_setting(tmp_path, dummy_site, closing, monkeypatch):
    from app.observability import metrics

    monkeypatch.setattr(metrics, "_LABELLED", set())
    monkeypatch.setattr(metrics, "_TOKEN_CHILDREN", {})
    config = base_config(
        tmp_path,
        dummy_site,
        metrics={
            "enabled": True,
            "token_hash": hash_random_secret(TOKEN),
            "max_client_labels": 0,
        },
    )
    client = closing(create_app(config)).test_client()
    before = scrape(client)
    answer = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert answer.status_code == 200
    after = scrape(client)

    def moved(**labels: str) -> float:
        name = "oauth2_tokens_issued_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(grant="client_credentials", client_id=metrics.OTHER_CLIENTS) == 1
    assert moved(grant="client_credentials", client_id="test") == 0


@pytest.mark.parametrize("bad", [-1, 100001, "many"])
def test_a_bad_label_cap_is_refused_at_start(tmp_path, dummy_site, bad):
    metrics_section = {"enabled": True, "token_hash": hash_random_secret(TOKEN)}
    with pytest.raises(ConfigError, match="max_client_labels"):
        create_app(
            base_config(tmp_path, dummy_site, metrics={**metrics_section, "max_client_labels": bad})
        )


def test_only_count_files_are_cleared_from_the_operators_folder(tmp_path, monkeypatch):
    """An earlier run's counts go; nothing else in the folder named is touched (it used to
    be removed whole, whatever else it held)."""
    from app.observability.multiproc import ENV, prepare_multiprocess_dir

    folder = tmp_path / "metrics"
    (folder / "sub").mkdir(parents=True)
    for name in ("counter_123.db", "histogram_9.db", "gauge_livesum_77.db"):
        (folder / name).write_bytes(b"x")
    (folder / "keep.txt").write_text("not ours")
    (folder / "notes.db").write_text("not prometheus_client's")
    monkeypatch.setenv(ENV, str(folder))
    assert prepare_multiprocess_dir() == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt", "notes.db", "sub"]
