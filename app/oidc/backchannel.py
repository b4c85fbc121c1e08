"""OpenID Connect Back-Channel Logout 1.0: Logout Tokens, sent off the request path.

https://openid.net/specs/openid-connect-backchannel-1_0.html

When a user signs out, each client that was sent a code or an ID Token in that session
(:func:`app.sessions.relying_parties`) and registered a ``backchannel_logout_uri`` is
sent a Logout Token (§2.4): a JWT signed with the ID Token key, ``typ: logout+jwt``,
``iss``, ``aud``, ``iat``, ``exp``, ``jti``, the back-channel logout ``events`` member,
``sub`` and the session's ``sid``; never a ``nonce``. It is POSTed form-encoded (§2.5);
200 or 204 means delivered.

The user's sign-out never waits on a partner: the view only queues a :class:`Notice`.
A few worker threads per process (started when there is work, gone when idle) build the
token and deliver it, ``oidc.backchannel_timeout`` seconds per attempt and
``oidc.backchannel_retries`` retries with exponential backoff; no redirect is followed
and only http(s) URIs are used. A notice that cannot be queued (the queue is full) is
audited as ``backchannel_dropped``; one that fails its last attempt as
``backchannel_failed`` (client and reason, never the token).

Delivery is at most once, per process: the queue lives in memory, so notices still
queued or being retried are lost if the worker process stops (restart, crash, scale-in).
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from flask import Flask, current_app
from joserfc import jwt

from .. import process
from ..audit import audit
from ..secrets_hash import new_secret
from .subjects import session_id_for, subject_for

log = logging.getLogger("oauth2")

#: The ``events`` member that makes a JWT a Logout Token (§2.4).
EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: A Logout Token's lifetime: long enough for a slow partner, short against replay.
TOKEN_TTL = 120
#: Notices waiting per process; beyond this a sign-out's notice is dropped (audited).
QUEUE_SIZE = 1000
#: Worker threads per process at most (one hanging partner holds one of them).
WORKERS = 4
#: Seconds an idle worker waits for work before it ends.
IDLE_SECONDS = 30.0
#: Seconds before the first retry; each later one waits twice as long as the last.
BACKOFF = 1.0
EXTENSION = "oauth2.backchannel"


@dataclass(frozen=True)
class Notice:
    """One client to tell that a user's session ended."""

    client_id: str
    user_id: str
    sid: str | None


def logout_token(
    client, user_id: str, sid: str | None, *, issuer: str, keys, alg: str, now: float | None = None
) -> str:
    """A signed Logout Token (§2.4) telling ``client`` that this session of the user ended."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client.client_id,
        "iat": issued,
        "exp": issued + TOKEN_TTL,
        "jti": new_secret(16),
        "sub": subject_for(client, user_id, keys.pairwise_secret()),
        "events": {EVENT: {}},
    }
    if sid:
        claims["sid"] = session_id_for(client, sid, keys.pairwise_secret())
    key = keys.signing_key(alg)
    header = {"alg": alg, "kid": key.kid, "typ": "logout+jwt"}
    return jwt.encode(header, claims, key, algorithms=[alg])


class BackchannelSender:
    """A bounded queue of notices and the few threads of this process that deliver them."""

    def __init__(
        self,
        app: Flask,
        *,
        timeout: float,
        retries: int,
        backoff: float = BACKOFF,
        queue_size: int = QUEUE_SIZE,
        workers: int = WORKERS,
        idle: float = IDLE_SECONDS,
        public_only: bool = False,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.workers = workers
        self.idle = idle
        self.queue: queue.Queue[Notice] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pid = process.pid()
        self._http = urllib3.PoolManager(num_pools=16, maxsize=workers)
        #: Production: a stored client's URI must resolve to public addresses only.
        self.public_only = public_only

    # -- the request side -------------------------------------------------------------
    def send(self, notices: list[Notice]) -> None:
        """Queue ``notices`` without waiting; audit any the full queue cannot take."""
        for notice in notices:
            try:
                self.queue.put_nowait(notice)
            except queue.Full:
                audit("backchannel_dropped", client_id=notice.client_id, reason="queue full")
        if notices:
            self._start_workers()

    def _start_workers(self) -> None:
        with self._lock:
            if self._pid != process.pid():  # forked: the parent's threads and sockets are not ours
                self._pid, self._threads = process.pid(), []
                self._http = urllib3.PoolManager(num_pools=16, maxsize=self.workers)
            wanted = min(self.workers, max(self.queue.qsize(), 1))
            while len(self._threads) < wanted:
                thread = threading.Thread(target=self._run, name="backchannel-logout", daemon=True)
                self._threads.append(thread)
                thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued notice was delivered or given up; False on timeout."""
        done = self.queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self.queue.unfinished_tasks == 0, timeout)

    # -- the worker side --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                notice = self.queue.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:  # end only if no notice arrived meanwhile
                    if self.queue.empty():
                        self._threads.remove(threading.current_thread())
                        return
                continue
            try:
                with self.app.app_context():
                    self._deliver(notice)
            except Exception:  # a worker must survive anything one notice does
                log.exception("back-channel logout to %s failed", notice.client_id)
            finally:
                self.queue.task_done()

    def _deliver(self, notice: Notice) -> None:
        state = current_app.extensions["oauth2"]
        client = state.clients.get(notice.client_id)
        uri = client.backchannel_logout_uri if client else None
        if not uri:
            return  # the client went away or no longer asks to be told
        if urlsplit(uri).scheme not in ("http", "https"):
            audit("backchannel_failed", client_id=notice.client_id, reason="not an http(s) URI")
            return
        pinned: list[str] | None = None
        if self.public_only and _stored(client):
            pinned = _public_addresses(uri)
            if not pinned:
                audit("backchannel_failed", client_id=notice.client_id, reason="not public")
                return
        alg = client.id_token_signed_response_alg or state.settings.oidc.default_alg
        token = logout_token(
            client,
            notice.user_id,
            notice.sid,
            issuer=state.settings.issuer,
            keys=state.keys,
            alg=alg,
        )
        body = urlencode({"logout_token": token})
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            reason = self._post(uri, body, pinned)
            if not reason:
                log.debug("back-channel logout delivered to %s", notice.client_id)
                return
        audit(
            "backchannel_failed",
            client_id=notice.client_id,
            reason=reason,
            attempts=self.retries + 1,
        )

    def _post(self, uri: str, body: str, pinned: list[str] | None = None) -> str:
        """POST one Logout Token; return why it failed, or ``""`` when delivered.

        With ``pinned`` (the addresses the URI's host was found to resolve to), the
        connection goes to one of them, tried in turn as a name's addresses are, not to
        whatever the name resolves to by then (DNS rebinding); the request still names the
        host (``Host``, TLS SNI) and its certificate is checked against the host's name."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        options: dict[str, Any] = {
            "body": body,
            "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout),
            "retries": False,
            "redirect": False,
            "preload_content": False,
        }
        try:
            if pinned is None:
                response = self._http.request("POST", uri, headers=headers, **options)
            else:
                response = self._post_pinned(uri, pinned, headers, options)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return type(exc).__name__
        response.close()  # the body is not needed, however long a partner makes it
        return "" if response.status in (200, 204) else f"HTTP {response.status}"

    def _post_pinned(
        self, uri: str, addresses: list[str], headers: dict[str, str], options: dict[str, Any]
    ) -> Any:
        """POST to the first of ``addresses`` that takes a connection, as ``uri``'s host.

        The host as urllib3 sends it: its IDNA (ASCII) form, without a trailing dot, so an
        internationalised name matches its certificate as on an unpinned request."""
        url = urllib3.util.parse_url(uri)
        host = (url.host or "").strip("[]").rstrip(".")
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        headers = {**headers, "Host": f"{shown}:{url.port}" if url.port else shown}
        names = {"server_hostname": host, "assert_hostname": host} if tls else None
        failed: Exception | None = None
        for address in addresses:
            pool = self._http.connection_from_host(address, port, url.scheme, pool_kwargs=names)
            try:
                return pool.urlopen("POST", url.request_uri, headers=headers, **options)
            except urllib3.exceptions.ConnectTimeoutError as exc:  # none taken: the next one
                failed = exc
        assert failed is not None  # noqa: S101 - addresses is never empty
        raise failed


def init_app(app: Flask) -> None:
    """Give ``app`` its sender (threads start only when a sign-out queues a notice)."""
    settings = app.extensions["oauth2"].settings
    oidc = settings.oidc
    app.extensions[EXTENSION] = BackchannelSender(
        app,
        timeout=oidc.backchannel_timeout,
        retries=oidc.backchannel_retries,
        public_only=settings.env == "production",
    )


def _stored(client) -> bool:
    """Whether ``client`` lives in the ``clients`` table (not the operator's file)."""
    from ..client_store import StoredClient

    return isinstance(client, StoredClient)


def _public_addresses(uri: str) -> list[str]:
    """The addresses of ``uri``'s host to connect to, if every address it resolves to is
    globally routable, else none (a stored client, made over the admin API, must not aim
    the server at its own network). The delivery connects to one of those returned, so a
    name that resolves elsewhere by the time of the connection (DNS rebinding) is not
    followed there."""
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(parts.hostname or "", port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError, UnicodeError):
        return []
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))
    if not addresses or not all(_is_public(a) for a in addresses):
        return []
    return addresses


def _is_public(address: str) -> bool:
    """Whether ``address`` is globally routable."""
    return ipaddress.ip_address(address).is_global


def sender() -> BackchannelSender:
    """The current app's sender."""
    found: BackchannelSender = current_app.extensions[EXTENSION]
    return found


def notify(user_id: str, sid: str | None, client_ids: list[str]) -> None:
    """Queue a Logout Token for each of ``client_ids`` that registered a back-channel URI."""
    clients = current_app.extensions["oauth2"].clients
    wanted = [
        Notice(client_id, user_id, sid)
        for client_id in client_ids
        if (client := clients.get(client_id)) is not None and client.backchannel_logout_uri
    ]
    sender().send(wanted)
