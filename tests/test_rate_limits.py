"""The counters behind the limits: batched fixed windows (``app.limits.counters``) and the
growing delays (``app.limits.delays``).

Exact near a limit, batched far from it, shared through Redis, local while the
store is down. Each ``RateLimits`` stands for one worker process.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis

from app.limits import counters as limits
from app.limits.counters import PREFIX, RateLimits
from app.limits.delays import Counters, Delays, TableCounters
from app.storage.sqlite import SQLiteBackend

from .backends import redis_url, require_service

#: ``url`` is the test Redis (the backend markers of tests/conftest.py).
BACKEND_FIXTURES = {"url": "redis"}


@pytest.fixture
def url():
    url = redis_url()
    require_service("redis", url)
    return url


def shared_count(url: str, name: str, key: str, span: int = 3600) -> int:
    window = int(time.time() // span) * span
    with redis.Redis.from_url(url) as client:
        return int(client.get(f"LIMITS:{PREFIX}/{name}/{key}/{window}") or 0)


def process(url: str, rate: str) -> RateLimits:
    return RateLimits({"api": rate}, url)


def test_small_limits_are_exact_across_processes(url):
    key = secrets.token_hex(8)
    workers = [process(url, "10/hour") for _ in range(4)]
    allowed = 0
    for i in range(40):
        if workers[i % 4].hit("api", key) is None:
            allowed += 1
    assert allowed == 10
    assert shared_count(url, "api", key) >= 10


@pytest.mark.parametrize(("amount", "slack"), [(15, 0), (40, 2 * 2)])
def test_concurrent_hits_stay_within_the_batch_bound(url, amount, slack):
    # Under 16 a window nothing is batched: exact. Above, each process may let
    # through at most 1/16 of the limit before it learns the limit was reached.
    key = secrets.token_hex(8)
    workers = [process(url, f"{amount}/hour") for _ in range(2)]
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def run(worker: RateLimits) -> None:
        barrier.wait(10)
        for _ in range(10):
            ok = worker.hit("api", key) is None
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=run, args=(workers[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 80
    assert amount <= results.count(True) <= amount + slack


def test_far_from_the_limit_hits_are_batched_then_sent(url, monkeypatch):
    key = secrets.token_hex(8)
    worker = process(url, "100000/hour")
    sent: list[int] = []
    real_incr = worker.store.incr

    def incr(k, expiry, amount=1):
        sent.append(amount)
        return real_incr(k, expiry, amount=amount)

    monkeypatch.setattr(worker.store, "incr", incr)
    for _ in range(50):
        assert worker.hit("api", key) is None
    assert len(sent) < 5  # the first hit, then at most one trip per 0.1 s
    time.sleep(limits.SYNC_EVERY + 0.02)
    assert worker.hit("api", key) is None  # stale: this one carries what was pending
    assert sum(sent) == 51
    assert shared_count(url, "api", key) == 51


def test_hits_while_another_thread_sends_are_counted_locally(url, monkeypatch):
    # Far from the limit, a send on its way (a slow store) sends no other thread's hit.
    monkeypatch.setattr(limits, "SYNC_EVERY", 60.0)
    key = secrets.token_hex(8)
    worker = process(url, "100000/hour")
    sending, answer = threading.Event(), threading.Event()
    sent: list[int] = []
    real_incr = worker.store.incr

    def slow_incr(k, expiry, amount=1):
        sent.append(amount)
        sending.set()
        answer.wait(10)
        return real_incr(k, expiry, amount=amount)

    monkeypatch.setattr(worker.store, "incr", slow_incr)
    first = threading.Thread(target=worker.hit, args=("api", key))
    first.start()
    assert sending.wait(10)
    assert all(worker.hit("api", key) is None for _ in range(20))
    answer.set()
    first.join(10)
    assert sent == [1]
    assert worker.remaining("api", key)[0] == 100000 - 21  # none lost


def test_limits_are_shared_when_batched_too(url):
    # 64/hour: 1/16 is 4 unsent hits per process at most, exact from 48 on.
    key = secrets.token_hex(8)
    workers = [process(url, "64/hour") for _ in range(3)]
    allowed = sum(workers[i % 3].hit("api", key) is None for i in range(300))
    assert 64 <= allowed <= 64 + 3 * 4
    assert all(w.hit("api", key) is not None for w in workers)


def test_a_spent_counter_refuses_without_asking_the_store(url, monkeypatch):
    key = secrets.token_hex(8)
    worker = process(url, "3/hour")
    assert [worker.hit("api", key) is None for _ in range(4)] == [True, True, True, False]
    calls: list[str] = []
    monkeypatch.setattr(worker.store, "incr", lambda *a, **k: calls.append("incr"))
    monkeypatch.setattr(worker.store, "get", lambda *a, **k: calls.append("get"))
    for _ in range(100):
        refusal = worker.hit("api", key)
        assert refusal is not None and 1 <= refusal.retry <= 3600
    assert worker.spent("api", key) is not None
    assert calls == []


def test_only_the_first_refusal_of_a_window_is_reported(url):
    worker = process(url, "1/hour")
    key = secrets.token_hex(8)
    assert worker.hit("api", key) is None
    refusals = [worker.hit("api", key) for _ in range(5)]
    assert [r.first for r in refusals if r] == [True, False, False, False, False]


def test_store_down_counts_per_process_then_recovers(url, monkeypatch):
    key = secrets.token_hex(8)
    worker = process(url, "5/hour")

    def down(*args, **kwargs):
        raise redis.ConnectionError("store down")

    real_incr = worker.store.incr
    monkeypatch.setattr(worker.store, "incr", down)
    answers = [worker.hit("api", key) is None for _ in range(7)]
    assert answers == [True] * 5 + [False] * 2  # the limit still holds, locally
    monkeypatch.setattr(worker.store, "incr", real_incr)
    monkeypatch.setattr(limits, "STORE_RETRY", 0.0)
    worker._store_down_until = 0.0
    fresh = secrets.token_hex(8)
    assert worker.hit("api", fresh) is None
    assert shared_count(url, "api", fresh) == 1  # back on the shared store


def test_spent_checks_without_counting(url):
    key = secrets.token_hex(8)
    worker = process(url, "2/hour")
    for _ in range(5):
        assert worker.spent("api", key) is None
    assert worker.hit("api", key) is None
    assert worker.hit("api", key) is None
    assert worker.spent("api", key) is not None


def test_memory_store_counts_in_the_process():
    worker = RateLimits({"api": "3/hour"}, "memory://")
    assert worker.store is None
    assert [worker.hit("api", "k") is None for _ in range(4)] == [True, True, True, False]
    other = RateLimits({"api": "3/hour"}, "memory://")
    assert other.hit("api", "k") is None  # another process has its own counters


def test_ended_windows_are_forgotten(monkeypatch):
    worker = RateLimits({"api": "3/second"}, "memory://")
    for i in range(100):
        worker.hit("api", f"k{i}")
    assert len(worker._counters) == 100
    now = time.time() + 5
    monkeypatch.setattr(limits.time, "time", lambda: now)
    worker._prune_at = 0
    worker.hit("api", "fresh")
    assert list(worker._counters) == ["api/fresh"]


def test_a_flood_of_distinct_keys_is_capped(monkeypatch, url):
    monkeypatch.setattr(limits, "MAX_COUNTERS", 50)
    for store in ("memory://", url):
        worker = RateLimits({"api": "1000/hour"}, store)
        for i in range(500):
            worker.hit("api", f"flood-{secrets.token_hex(4)}-{i}")
        assert len(worker._counters) <= 50


def test_a_store_that_never_answers_does_not_hang_requests():
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    accepted: list[socket.socket] = []

    def new_connections() -> int:
        """Connections made to the store since the last call (they wait in the backlog)."""
        silent.setblocking(False)
        count = len(accepted)
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(silent.accept()[0])
        return len(accepted) - count

    try:
        port = silent.getsockname()[1]
        worker = RateLimits({"api": "5/hour"}, f"redis://127.0.0.1:{port}/0")
        assert worker.hit("api", "k") is None  # the store timed out: counted locally
        assert new_connections() >= 1
        answers = [worker.hit("api", "k") is None for _ in range(6)]
        assert answers == [True] * 4 + [False] * 2  # the limit holds per process
        assert new_connections() == 0  # no store trips while it is down
    finally:
        for sock in [*accepted, silent]:
            sock.close()


@pytest.fixture(params=["redis", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], Counters]]:
    """Where one worker process keeps its delay counts: the limiter's Redis, or (the
    limiter in process memory) the session table of one SQLite file the workers share."""
    if request.param == "redis":
        url = request.getfixturevalue("url")
        yield lambda: cast(Counters, RateLimits({}, url).store)
        return
    opened: list[SQLiteBackend] = []

    def open_one() -> Counters:
        opened.append(SQLiteBackend(f"sqlite:///{tmp_path}/shared.db"))
        opened[-1].migrate()
        return TableCounters(opened[-1].table("session", 1800))

    yield open_one
    for worker in opened:
        worker.close()


def delays_of_one_process(store: Counters, free: int = 2) -> Delays:
    return Delays(store, "test", free, 2, 60)


def test_failure_delays_are_shared_across_processes(backend):
    subject = secrets.token_hex(8)
    first, second = delays_of_one_process(backend()), delays_of_one_process(backend())
    assert [first.failed(subject) for _ in range(3)] == [0, 0, 2]
    assert 1 <= second.wait(subject) <= 2  # the other process sees the shut gate
    assert second.reserve(subject).wait >= 1  # and refuses without counting it
    second.succeeded(subject)
    assert first.wait(subject) == 0


def test_reservations_are_atomic_across_processes(backend):
    subject = secrets.token_hex(8)
    workers = [delays_of_one_process(backend(), free=3) for _ in range(4)]
    barrier = threading.Barrier(20)
    granted: list[bool] = []
    lock = threading.Lock()

    def run(worker: Delays) -> None:
        barrier.wait()
        ok = worker.reserve(subject).wait == 0
        with lock:
            granted.append(ok)

    threads = [threading.Thread(target=run, args=(workers[i % 4],)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 3 + 1  # the free ones and the one that shut the gate


class SlowCounters:
    """:class:`Counters` in a dict, whose failure-count reads wait for ``answer``."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.reads: list[str] = []
        self.answer = threading.Event()
        self.lock = threading.Lock()

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + amount
            return self.counts[key]

    def get(self, key: str) -> int:
        if key.endswith("/failures"):
            with self.lock:
                self.reads.append(key)
            self.answer.wait(10)
        return self.counts.get(key, 0)

    def clear(self, key: str) -> None:
        self.counts.pop(key, None)

    def get_expiry(self, key: str) -> float:
        return time.time() + 30


def checks_at_once(delays: Delays, subject: str, store: SlowCounters, threads: int) -> list:
    """``threads`` checks of ``subject`` while the store is slow; their answers."""
    store.answer.clear()
    before = len(store.reads)
    answers: list = []
    workers = [
        threading.Thread(target=lambda: answers.append(delays.check(subject)))
        for _ in range(threads)
    ]
    workers[0].start()
    deadline = time.monotonic() + 10
    while len(store.reads) == before and time.monotonic() < deadline:
        time.sleep(0.001)  # the first one is reading
    for worker in workers[1:]:
        worker.start()
    time.sleep(0.05)  # the others ask, or answer from what the process knows
    store.answer.set()
    for worker in workers:
        worker.join(10)
    return [answers, len(store.reads) - before]


def test_only_a_clean_subject_is_taken_as_clean_while_one_thread_rereads_it(monkeypatch):
    store, now = SlowCounters(), [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    delays = delays_of_one_process(store)
    store.answer.set()
    assert delays.check("partner").clean  # read once: clean
    now[0] += 1  # due for a fresh look: one thread reads, the others keep the clean view
    answers, reads = checks_at_once(delays, "partner", store, 4)
    assert reads == 1 and all(answer.clean and not answer.wait for answer in answers)
    # Not seen yet, or seen failing: every thread asks the store (a shut gate stops each).
    answers, reads = checks_at_once(delays, "stranger", store, 4)
    assert reads == 4
    for _ in range(3):
        delays.failed("victim")
    answers, reads = checks_at_once(delays, "victim", store, 4)
    assert reads == 4 and all(answer.wait >= 1 for answer in answers)
