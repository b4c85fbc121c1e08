"""Prometheus metrics, correct with several worker processes (gunicorn's or granian's).

``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder of its own before any
worker starts (:func:`~.multiproc.prepare_multiprocess_dir`); each worker's counters and histograms
then live in files there, and every scrape sums them with a fresh
``CollectorRegistry`` + ``MultiProcessCollector`` (:func:`exposition`), whichever worker
answers it. No gauges (a ``live*`` gauge needs a worker-exit hook granian lacks) and no
process/GC collectors (per-process, meaningless summed).

Without the variable (tests, a WSGI server of your own with one process) the metrics
live in this process's :data:`REGISTRY`.

Labels are bounded: the route rule (never the raw path), a known method, the status,
the grant, the client id (registered clients only), a fixed reason, the ``/api``
function name of the adapter.

Buffered: the request path never writes a metric file (in multiprocess mode each
``inc``/``observe`` is a locked write to an mmap'd file, a histogram's two). Its counts go
to plain per-thread accumulators (:class:`BufferedCounter`, :class:`BufferedHistogram`,
:class:`BufferedRequest` for a request's count and time together: a dict look-up and
an add, by the thread that owns them only, so none is lost), and
:func:`flush` adds what each accumulated since the last flush to the ``prometheus_client``
values: every second (a daemon thread of each process, or the request that finds a
flush due), before this process answers a scrape (:func:`exposition`) and at exit. So a
scrape shows its own worker's counts exactly and the other workers' at most ~1 s late
(README "Operating it"); a worker killed outright loses its last second.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as mp

from .exiting import at_exit
from .multiproc import ENV

log = logging.getLogger("oauth2.metrics")

#: This process's registry (single-process use); scrapes in multiprocess mode ignore it.
REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "oauth2_http_requests",
    "HTTP requests answered, by route rule, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "oauth2_http_request_duration_seconds",
    "Time to answer a request, by route rule.",
    ["route"],
    buckets=LATENCY,
    registry=REGISTRY,
)
TOKENS = Counter(
    "oauth2_tokens_issued",
    "Access tokens issued, by grant and client.",
    ["grant", "client_id"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "oauth2_refusals",
    "Requests refused, by reason: invalid_client (bad client authentication), the token "
    "endpoint's errors (invalid_grant...), replay (a used code or refresh token, also "
    "counted as invalid_grant), rate_limited, lockout.",
    ["reason"],
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "oauth2_upstream_duration_seconds",
    "Time the site took to answer an /api call, by function.",
    ["function"],
    buckets=LATENCY,
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "oauth2_upstream_errors",
    "/api calls the site failed, by function and kind (unavailable, timeout, status_5xx).",
    ["function", "kind"],
    registry=REGISTRY,
)

STORAGE_SECONDS = Histogram(
    "oauth2_storage_duration_seconds",
    "Time a storage call took, by table and backend (writes inside a batch are sent, "
    "and timed, with the batch's last call).",
    ["table", "backend"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
STORAGE_ERRORS = Counter(
    "oauth2_storage_errors",
    "Storage calls that failed (StorageUnavailable), by table and backend.",
    ["table", "backend"],
    registry=REGISTRY,
)

#: The table verbs a request uses (``purge`` runs off the request path).
TABLE_VERBS = (
    "put",
    "get",
    "get_with",
    "take",
    "delete",
    "discard",
    "list_by_user",
    "list_by_client",
    "revoke_by_grant",
    "append",
    "recent",
    "incr",
)

#: Audit event -> refusal reason.
REFUSAL_EVENTS = {
    "client_auth_failed": "invalid_client",
    "code_replay": "replay",
    "code_replay_refused": "replay",
    "refresh_reuse": "replay",
    "refresh_reuse_refused": "replay",
    "rate_limited": "rate_limited",
    "client_lockout": "lockout",
    "lockout": "lockout",
    "login_locked": "lockout",
}
#: Token endpoint errors counted as refusals (``invalid_client`` comes from the audit).
TOKEN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)


#: Seconds between flushes of the accumulators into the ``prometheus_client`` values.
FLUSH_EVERY = 1.0


class _Pending(threading.local):
    """This thread's accumulators (``values``: buffered metric -> its running total,
    only ever written by this thread), registered for :func:`flush` on first use."""

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}
        with _FLUSH_LOCK:
            _THREADS.append((threading.current_thread(), self.values, {}))


#: Every thread's (thread, its accumulators, what of them was flushed): :func:`flush`'s.
_THREADS: list[tuple[threading.Thread, dict[Any, Any], dict[Any, Any]]] = []
_FLUSH_LOCK = threading.Lock()
_PENDING = _Pending()
#: When the next flush is due (``time.monotonic``), and this process's flushing thread.
_due = 0.0
_flusher: threading.Thread | None = None


class BufferedCounter:
    """A labelled counter's stand-in on the request path: counts go to this thread's
    accumulator, :func:`flush` adds them to the counter."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    def inc(self, amount: float = 1) -> None:
        values = _PENDING.values
        values[self] = values.get(self, 0) + amount

    def push(self, total: float, flushed: dict[Any, Any]) -> None:
        delta = total - flushed.get(self, 0)
        if delta:
            self.child.inc(delta)
            flushed[self] = total


class BufferedHistogram:
    """A labelled histogram's stand-in: each thread keeps its bucket counts and sum (the
    bucket chosen as ``Histogram.observe`` does: the first bound ``>=`` the amount)."""

    __slots__ = ("bounds", "child")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds = tuple(child._upper_bounds)  # ends with +Inf

    def observe(self, amount: float) -> None:
        values = _PENDING.values
        cell = values.get(self)
        if cell is None:
            cell = values[self] = [0] * len(self.bounds) + [0.0]
        cell[bisect_left(self.bounds, amount)] += 1
        cell[-1] += amount

    def push(self, cell: list[Any], flushed: dict[Any, Any]) -> None:
        done = flushed.get(self)
        if done is None:
            done = flushed[self] = [0] * len(cell)
        now = list(cell)  # one read of each slot: what is added after waits for the next
        self._add(now, done)
        flushed[self] = now

    def _add(self, now: list[Any], done: list[Any]) -> None:
        """Add to the histogram what its buckets and sum gained from ``done`` to ``now``."""
        buckets = self.child._buckets
        last = len(self.bounds)  # the sum's slot
        for i in range(last):
            if now[i] != done[i]:
                buckets[i].inc(now[i] - done[i])
        if now[last] != done[last]:
            self.child._sum.inc(now[last] - done[last])


def flush() -> None:
    """Add what every thread accumulated since the last flush to the metrics' values
    (their files, in multiprocess mode); a thread gone is dropped once flushed."""
    global _due
    with _FLUSH_LOCK:
        _due = time.monotonic() + FLUSH_EVERY
        _start_flusher()
        for entry in list(_THREADS):
            owner, values, flushed = entry
            alive = owner.is_alive()
            for metric, total in values.copy().items():
                metric.push(total, flushed)
            if not alive:
                _THREADS.remove(entry)


def _start_flusher() -> None:
    """This process's daemon thread flushing every second (so an idle worker's last
    counts reach the files too); started again in a forked worker."""
    global _flusher
    if _flusher is not None and _flusher.is_alive():
        return

    def loop() -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            flush()

    _flusher = threading.Thread(target=loop, name="metrics-flush", daemon=True)
    _flusher.start()
    at_exit(flush)  # this process's exit, a granian worker's too


def _forked() -> None:
    """In a forked child: the parent's accumulators stay the parent's to flush (counted
    once), and its threads and lock are not this process's."""
    global _PENDING, _FLUSH_LOCK, _flusher, _due
    _FLUSH_LOCK = threading.Lock()
    _THREADS.clear()
    _PENDING = _Pending()
    _flusher = None
    _due = 0.0


def _before_fork() -> None:
    # No flush half done (its ``prometheus_client`` lock held) when a worker is forked.
    _FLUSH_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _FLUSH_LOCK.release()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_forked
)
atexit.register(flush)


def multiprocess() -> bool:
    return bool(os.environ.get(ENV))


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type: summed over every worker when multiprocess
    (this worker's accumulators flushed first, the others' at most a second old)."""
    flush()
    if multiprocess():
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class BufferedRequest(BufferedHistogram):
    """The stand-in of one (route, method, status) on the request path: one cell a thread
    for both the route's latency histogram and the request counter (the bucket counts,
    the sum, then the count), so an answered request costs one look-up and one add.
    :func:`flush` adds the count to the counter and the rest to the histogram (several
    of these share a route's histogram: each adds what it holds alone)."""

    __slots__ = ("counter",)

    def __init__(self, counter: Any, histogram: Any) -> None:
        super().__init__(histogram)
        self.counter = counter

    def observe(self, amount: float) -> None:
        values = _PENDING.values
        cell = values.get(self)
        if cell is None:
            cell = values[self] = [0] * len(self.bounds) + [0.0, 0]
        cell[bisect_left(self.bounds, amount)] += 1
        cell[-2] += amount
        cell[-1] += 1

    def _add(self, now: list[Any], done: list[Any]) -> None:
        super()._add(now, done)
        if now[-1] != done[-1]:
            self.counter.inc(now[-1] - done[-1])


#: (route, method, status) -> its :class:`BufferedRequest`, made once each (the label
#: look-up costs more than the count; routes, methods and statuses are bounded).
_REQUEST_CELLS: dict[tuple[str | None, str, int], BufferedRequest] = {}


def observe_request(route: str | None, method: str, status: int, seconds: float) -> None:
    cell = _REQUEST_CELLS.get((route, method, status))
    if cell is None:
        cell = _request_cell(route, method, status)
    cell.observe(seconds)
    if time.monotonic() >= _due:
        flush()


def _request_cell(route: str | None, method: str, status: int) -> BufferedRequest:
    label = route or "<unmatched>"
    known = method in METHODS
    labels = (label, method if known else "OTHER", str(status))
    found = _BUFFERED.get((BufferedRequest, labels))
    if found is None:
        found = _BUFFERED.setdefault(
            (BufferedRequest, labels),
            BufferedRequest(REQUESTS.labels(*labels), REQUEST_SECONDS.labels(label)),
        )
    if known:  # any other method is one label: do not keep each spelling
        _REQUEST_CELLS[route, method, status] = found
    return found  # type: ignore[no-any-return]


#: (metric, labels) -> its buffered stand-in: one per labelled child, made once.
_BUFFERED: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _buffered_counter(metric: Counter, *labels: str) -> BufferedCounter:
    found = _BUFFERED.get((metric, labels))
    if found is None:
        found = _BUFFERED.setdefault((metric, labels), BufferedCounter(metric.labels(*labels)))
    return found  # type: ignore[no-any-return]


def _buffered_histogram(metric: Histogram, *labels: str) -> BufferedHistogram:
    found = _BUFFERED.get((metric, labels))
    if found is None:
        found = _BUFFERED.setdefault((metric, labels), BufferedHistogram(metric.labels(*labels)))
    return found  # type: ignore[no-any-return]


#: The ``client_id`` labels of tokens issued to clients without a series of their own:
#: beyond ``max_client_labels``; registered through RFC 7591; no longer registered.
OTHER_CLIENTS = "<other>"
REGISTERED_CLIENTS = "<registered>"
UNKNOWN_CLIENT = "<unknown>"


def observe_event(
    event: str,
    record: Mapping[str, Any],
    client_label: Callable[[str], str],
    max_clients: int = 1000,
) -> None:
    """Count what an audit event says: a token issued, a refusal.

    ``client_label(client_id)`` is the id itself for a client of the operator's (the
    clients file, the admin API), else a shared label (:data:`REGISTERED_CLIENTS`,
    :data:`UNKNOWN_CLIENT`). The first ``max_clients`` of the operator's clients a
    process issues tokens to get a series of their own, the rest share
    :data:`OTHER_CLIENTS`: a series each would grow without end."""
    reason = REFUSAL_EVENTS.get(event)
    if reason is not None:
        _refusal(reason).inc()
    elif event in ("token_issued", "token_refreshed"):
        grant = record.get("grant") or "refresh_token"
        client = str(record.get("client_id") or "")
        issued = _TOKEN_CHILDREN.get((grant, client))
        if issued is None:
            label = client_label(client)
            if label == client and not _take_label(client, max_clients):
                label = OTHER_CLIENTS
            if label != client:  # a shared series, never one per client id
                _buffered_counter(TOKENS, grant, label).inc()
                return
            issued = _TOKEN_CHILDREN[grant, client] = _buffered_counter(TOKENS, grant, client)
        issued.inc()


def _take_label(client: str, max_clients: int) -> bool:
    """Whether ``client`` has (now) a series of its own in this process: it had one, or
    fewer than ``max_clients`` clients have; said once when the cap is first reached."""
    global _CAP_LOGGED
    with _LABEL_LOCK:
        if client in _LABELLED:
            return True
        if len(_LABELLED) < max_clients:
            _LABELLED.add(client)
            return True
        said, _CAP_LOGGED = _CAP_LOGGED, True
    if not said:
        log.warning(
            "metrics: %d clients have their own client_id series in this process; tokens "
            "of further clients are counted under %s (metrics.max_client_labels)",
            max_clients,
            OTHER_CLIENTS,
        )
    return False


def observe_token_error(error: str) -> None:
    if error in TOKEN_ERRORS:
        _refusal(error).inc()


#: Reason -> its labelled refusal counter; (grant, client) -> its own token counter.
_REFUSAL_CHILDREN: dict[str, Any] = {}
_TOKEN_CHILDREN: dict[tuple[str, str], Any] = {}
#: The clients with a series of their own in this process, and whether the cap was said.
_LABELLED: set[str] = set()
_LABEL_LOCK = threading.Lock()
_CAP_LOGGED = False


def _refusal(reason: str) -> Any:
    child = _REFUSAL_CHILDREN.get(reason)
    if child is None:
        child = _REFUSAL_CHILDREN[reason] = _buffered_counter(REFUSALS, reason)
    return child


#: ``/api`` function -> its labelled latency histogram (the adapter's functions: bounded).
_UPSTREAM_CHILDREN: dict[str, Any] = {}


def observe_upstream(
    function: str, seconds: float, status: int | None = None, failure: str | None = None
) -> None:
    """Count an ``/api`` call to the site that took ``seconds``: its time by function,
    and its failure (``failure``, or a 5xx ``status``)."""
    histogram = _UPSTREAM_CHILDREN.get(function)
    if histogram is None:
        histogram = _UPSTREAM_CHILDREN[function] = _buffered_histogram(UPSTREAM_SECONDS, function)
    histogram.observe(seconds)
    if failure is None and status is not None and status >= 500:
        failure = "status_5xx"
    if failure is not None:
        UPSTREAM_ERRORS.labels(function, failure).inc()


def time_storage(storage: Any, kind: Callable[[Any], str]) -> None:
    """Wrap this app's tables' verbs and ``storage.exchange``: each call timed by table
    and backend, each ``StorageUnavailable`` counted (the backends' code is left as is)."""
    from ..storage.base import StorageUnavailable

    def timed(function: Callable[..., Any], seconds: Any, errors: Any) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            except StorageUnavailable:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return call

    owners = {}
    for name, table in storage.tables().items():
        backend = kind(storage.backends[storage.specs[name].url])
        owners[name] = backend
        seconds, errors = (
            _buffered_histogram(STORAGE_SECONDS, name, backend),
            _buffered_counter(STORAGE_ERRORS, name, backend),
        )
        for verb in TABLE_VERBS:
            setattr(table, verb, timed(getattr(table, verb), seconds, errors))
    exchange = storage.exchange

    exchanges: dict[str, Callable[..., Any]] = {}

    def exchanged(take: Any, *args: Any, **kwargs: Any) -> Any:
        name = take[0].name
        wrapped = exchanges.get(name)
        if wrapped is None:
            labels = (name, owners.get(name, "unknown"))
            wrapped = exchanges[name] = timed(
                exchange,
                _buffered_histogram(STORAGE_SECONDS, *labels),
                _buffered_counter(STORAGE_ERRORS, *labels),
            )
        return wrapped(take, *args, **kwargs)

    storage.exchange = exchanged
