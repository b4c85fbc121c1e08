"""``/metrics`` served by ``oauth2-server serve`` with 2 workers: one scrape sums both."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.secrets_hash import hash_random_secret

from .conftest import HTTP_TIMEOUT

pytestmark = pytest.mark.e2e

TOKEN = "served-metrics-" + "t" * 32
ISO_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def healthz_count(base: str) -> float:
    response = requests.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "oauth2_http_requests_total" and sample.labels["route"] == "/healthz":
                total += sample.value
    return total


def hit(url: str) -> int:
    # A connection each: the workers share the listening socket, so both answer some.
    with requests.Session() as http:
        return http.get(url, headers={"Connection": "close"}, timeout=HTTP_TIMEOUT).status_code


@pytest.mark.parametrize("http_server", ["gunicorn", "granian"])
def test_two_workers_counts_are_summed(start_server, http_server, tmp_path, monkeypatch):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale: from an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    server = start_server(
        config={
            "auth_server": {"server": http_server},
            "metrics": {"enabled": True, "token_hash": hash_random_secret(TOKEN)},
            "logging": {"format": "json", "level": "notice"},
        }
    )
    workers = set(server.workers())
    assert len(workers) == 2, server.log()
    assert not (folder / "counter_1.db").exists()  # serve wiped the folder first

    sent = 0
    counted_by: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # until both workers answered some (nearly always the first)
            statuses = list(pool.map(hit, [f"{server.url}/healthz"] * 40))
            assert statuses == [200] * 40
            sent += 40
            counted_by = {
                int(m.group(1))
                for path in folder.iterdir()
                if (m := re.fullmatch(r"counter_(\d+)\.db", path.name))
            }
            if workers <= counted_by:
                break
    assert workers <= counted_by, f"not both workers answered: {counted_by} vs {workers}"
    # Whichever worker answers the scrape, it reports both workers' requests: its own
    # at once, the other's within a second (each worker flushes its counts every second).
    deadline = time.monotonic() + 5
    while (counted := healthz_count(server.url)) != sent and time.monotonic() < deadline:
        assert counted < sent
        time.sleep(0.2)
    assert counted == sent
    for _ in range(4):
        assert healthz_count(server.url) == sent

    # logging.format json: the server's own lines and ours, one JSON object each, with
    # a timestamp; one request line per request, from both workers (read once all are in).
    def json_entries() -> list[dict]:
        text = server.log_path.read_text()
        whole = text[: text.rfind("\n") + 1]  # not a line still being written
        return [json.loads(line) for line in whole.splitlines() if line.startswith("{")]

    def healthz_lines() -> int:
        return sum(e.get("path") == "/healthz" for e in json_entries())

    deadline = time.monotonic() + 5
    while healthz_lines() < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = json_entries()
    assert all({"ts", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert all(ISO_TS.fullmatch(entry["ts"]) for entry in entries)
    loggers = {entry["logger"] for entry in entries}
    assert {"oauth2", "oauth2.request"} <= loggers, loggers
    assert loggers & {"gunicorn.error", "_granian"}, loggers  # the server's own lines
    served = [e for e in entries if e["logger"] == "oauth2.request" and e["path"] == "/healthz"]
    assert len(served) == sent
    assert len({entry["request_id"] for entry in served}) == sent
