"""A quota is one count across workers: a quota of N lets exactly N of 20 parallel calls
through a real server with two workers (the counts in storage, or in the limiter's Redis)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from limits.storage import storage_from_string

from app.quotas import Quota
from app.quotas.counting import Budget
from tests.backends import redis_url, require_service
from tests.conftest import race
from tests.factories import REDIRECT, SECRET, make_client

from .test_serve import sign_in_and_allow

pytestmark = pytest.mark.e2e

QUOTA = 7
CALLERS = 20


def user_token(server, client_id: str) -> str:
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT}
    with requests.Session() as agent:
        location = sign_in_and_allow(agent, f"{server.url}/authorize?{urlencode(query)}", "alice")
    code = parse_qs(urlsplit(location).query)["code"][0]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    answer = requests.post(f"{server.url}/token", data=data, auth=(client_id, SECRET), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def call_at_once(server, token: str) -> list[requests.Response]:
    def call(go) -> requests.Response:
        go()
        headers = {"Authorization": f"Bearer {token}"}
        return requests.get(f"{server.url}/api/profile", headers=headers, timeout=10)

    return race(CALLERS, call)


def check_exactly_the_quota(answers: list[requests.Response]) -> None:
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * QUOTA + [429] * (CALLERS - QUOTA), statuses
    left = sorted(a.headers["RateLimit"] for a in answers if a.status_code == 200)
    assert [entry.split(";")[1] for entry in left] == [f"r={n}" for n in range(QUOTA)]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)


def metered(client_id: str) -> dict:
    return make_client(client_id, quota={"calls": QUOTA, "per": "day"})


def test_a_quota_of_n_lets_n_through_two_workers_on_storage(start_server):
    client_id = f"metered-{uuid.uuid4().hex[:8]}"
    server = start_server([metered(client_id)], workers=2)
    assert len(server.workers()) == 2
    check_exactly_the_quota(call_at_once(server, user_token(server, client_id)))


@pytest.mark.redis
def test_a_quota_of_n_lets_n_through_two_workers_on_redis(start_server):
    url = redis_url()
    require_service("redis", url)
    client_id = f"metered-{uuid.uuid4().hex[:8]}"
    server = start_server([metered(client_id)], workers=2, config={"limits": {"storage": url}})
    assert len(server.workers()) == 2
    store = storage_from_string(url)
    key = Budget("quota", f"client/{client_id}", Quota(QUOTA, "day")).key(time.time())
    try:
        check_exactly_the_quota(call_at_once(server, user_token(server, client_id)))
        assert store.get(key) == QUOTA  # the count lives in the limiter's Redis
    finally:
        store.clear(key)
