"""Clients made through the admin API or the CLI, kept in the ``clients`` table.

One record per client, under its ``client_id``::

    {"client_id", "metadata": {RFC 7591 names}, "secrets": [{"hash", "expires_at"}],
     "disabled", "source": "api", "created_at", "updated_at", "rev",
     "user_id": "@clients"}

Beside each, one index record per origin a public client lists in ``allowed_origins``
(CORS at ``/token`` and ``/revoke``), under ``origin:<origin> <client_id>``::

    {"user_id": "@origin:<origin>", "origin_client": client_id}

so that a preflight, which names no client, finds the clients of an origin with one
``list_by_user`` read. The index may say more than the records, never less: an entry
is written before the record that needs it and removed after the record that dropped
it, and each client it names is checked against its record (enabled, still listing
the origin) before the origin is answered.

Secrets are kept as hashes only; the newest has no expiry, a rotated one works until
its ``expires_at`` (the overlap). ``user_id`` is the same marker on every record, so the
table's ``list_by_user`` index lists the clients (the storage contract has no scan).

Every instance reads the record on each lookup, so a change made anywhere counts on
the next request; what is kept in the process is only the client built from a record,
reused while the record's ``rev`` is unchanged, and, within one request, the answer
(the token endpoint asks about its client several times).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any

from flask import has_request_context, request

from .client_metadata import (
    CLIENT_ID,
    FIELDS,
    ClientMetadataError,
    client_id_problem,
    complete,
    file_entry,
    is_public,
    stored_client_problem,
)
from .client_policy import LINK_FIELDS, POLICY_FIELDS
from .clients import (
    ADMIN_SCOPE,
    RESPONSE_TYPE_GRANTS,
    Client,
    ClientFileError,
    admin_scope_problem,
    front_channel_dpop_problem,
    parse_client,
)
from .clients import _origin as canonical_origin
from .secrets_hash import hash_random_secret, new_secret, verify_secret
from .storage import Storage, Table

#: The ``user_id`` index value every client record carries (see the module's doc).
LISTED = "@clients"
#: A chosen ``client_id`` is claimed by a counter under this prefix (``:`` is never in an id).
CLAIM = "claim:"
#: Index records of ``allowed_origins``: key prefix, and the ``user_id`` prefix they list by.
ORIGIN = "origin:"
ORIGIN_LISTED = "@origin:"
#: Clients of one origin a preflight checks at most (each one read of its record).
MAX_ORIGIN_CLIENTS = 20
#: Longest overlap a rotation may ask for: 30 days (as ``admin.secret_overlap``).
MAX_OVERLAP = 2592000
#: Secrets a client holds at most: the newest and those still in their overlap.
MAX_SECRETS = 5
#: Clients built from records kept per process (each checked against its record's ``rev``).
CACHE_SIZE = 4096
_MEMO = "oauth2.stored_clients"
#: The same memo for a request served without Flask's request context (the gateway's
#: fast path, :mod:`app.gateway`): set for the request by :func:`request_memo`.
_REQUEST_MEMO: ContextVar[dict[str, Any] | None] = ContextVar("stored_clients", default=None)


@contextlib.contextmanager
def request_memo(environ: dict[str, Any]) -> Iterator[None]:
    """Look each stored client up once inside (a request served outside Flask's context),
    in the request's own memo: Flask's path, if the request goes on there, reads it too."""
    token = _REQUEST_MEMO.set(environ.setdefault(_MEMO, {}))
    try:
        yield
    finally:
        _REQUEST_MEMO.reset(token)


class ClientConflict(ValueError):
    """The client id is taken (by the clients file or the store)."""


@dataclass
class StoredClient(Client):
    """A client of the ``clients`` table: several secrets during a rotation, and a switch."""

    secrets: list[tuple[str, float | None]] = field(default_factory=list)
    disabled: bool = False
    #: How it was made: ``api`` (the admin API, the CLI) or ``registration`` (RFC 7591).
    source: str = "api"

    def check_client_secret(self, client_secret: str) -> bool:
        """Any secret still in force; every one is checked, so timing tells nothing."""
        now, ok = time.time(), False
        for digest, expires_at in self.secrets:
            matches = verify_secret(digest, client_secret)
            ok |= matches and (expires_at is None or expires_at > now)
        return ok


class ClientStore:
    """The ``clients`` table in the words of the admin API."""

    def __init__(
        self,
        table: Table,
        user_scopes: list[str],
        *,
        allow_wildcard: bool = False,
        production: bool = False,
        overlap: int = 86400,
    ) -> None:
        self.table = table
        self.user_scopes = list(user_scopes)
        self.allow_wildcard = allow_wildcard
        self.production = production
        #: Seconds a rotated secret keeps working by default.
        self.overlap = overlap
        self._built: dict[str, tuple[str, StoredClient]] = {}

    # -- lookups --------------------------------------------------------------------------
    def active(self, client_id: str) -> StoredClient | None:
        """The client if it exists and is not disabled; asked of storage once per request."""
        memo = _REQUEST_MEMO.get()
        if memo is None and has_request_context():
            memo = request.environ.setdefault(_MEMO, {})
        if memo is not None and client_id in memo:
            return memo[client_id]
        found = self.find(client_id)
        answer = found if found is not None and not found.disabled else None
        if memo is not None:
            memo[client_id] = answer
        return answer

    def find(self, client_id: str) -> StoredClient | None:
        """The client, disabled or not; never stale (the record is read every time)."""
        if not CLIENT_ID.fullmatch(client_id):
            return None  # no stored client has such an id: spare the round trip
        record = self.table.get(client_id)
        return None if record is None else self.client(record)

    def record(self, client_id: str) -> dict[str, Any] | None:
        return self.table.get(client_id) if CLIENT_ID.fullmatch(client_id) else None

    def records(self) -> list[dict[str, Any]]:
        """Every stored client's record, by ``client_id``."""
        return sorted(self.table.list_by_user(LISTED), key=lambda r: r["client_id"])

    def public_origin(self, origin: str) -> bool:
        """True when an enabled stored public client lists ``origin`` (a preflight's
        question): one index read, then the record of each client the index names."""
        if len(origin) > 300 or canonical_origin(origin) != origin:
            return False  # not an origin any client could have listed: spare the reads
        listed = self.table.list_by_user(ORIGIN_LISTED + origin)
        ids = sorted({str(r.get("origin_client")) for r in listed})[:MAX_ORIGIN_CLIENTS]
        for client_id in ids:
            client = self.active(client_id)
            if client is not None and client.allows_origin(origin):
                return True
        return False

    def client(self, record: dict[str, Any]) -> StoredClient:
        """The client a record describes, built once per ``rev``."""
        client_id, rev = record["client_id"], record.get("rev", "")
        cached = self._built.get(client_id)
        if cached is not None and cached[0] == rev:
            return cached[1]
        built = self._build(client_id, record["metadata"], record)
        if len(self._built) >= CACHE_SIZE:
            self._built.clear()
        self._built[client_id] = (rev, built)
        return built

    def _build(self, client_id: str, meta: dict[str, Any], record: dict[str, Any]) -> StoredClient:
        """Check ``meta`` the way the clients file is checked; raise ClientMetadataError."""
        secrets = [(s["hash"], s.get("expires_at")) for s in record.get("secrets", [])]
        entry = file_entry(client_id, meta, secrets[0][0] if secrets else None)
        try:
            client = parse_client(
                entry,
                0,
                [*self.user_scopes, ADMIN_SCOPE],
                self.allow_wildcard,
                require_https=self.production,
            )
        except ClientFileError as exc:
            # "client 'x'.scopes: ..." -> "scopes: ...": the id may be one just made up.
            text = str(exc).removeprefix(f"client {client_id!r}").lstrip(".: ")
            code = "invalid_redirect_uri" if "redirect" in text else "invalid_client_metadata"
            raise ClientMetadataError(text, code) from None
        problem = admin_scope_problem(client)
        if problem:
            raise ClientMetadataError(problem)
        client.token_endpoint_auth_method = meta["token_endpoint_auth_method"]
        if record.get("source") == "registration":
            client.logo_uri = None  # registered by a third party: never loaded on our pages
        values = {f.name: getattr(client, f.name) for f in fields(Client)}
        return StoredClient(
            **values,
            secrets=secrets,
            disabled=bool(record.get("disabled")),
            source=str(record.get("source") or "api"),
        )

    def check(self, fields_: dict[str, Any]) -> None:
        """Refuse (ClientMetadataError) what :meth:`create` would refuse; write nothing."""
        meta = complete(fields_, self.user_scopes)
        placeholder = [] if is_public(meta) else [{"hash": hash_random_secret("-")}]
        self._check_stored(meta, self._build("checked", meta, {"secrets": placeholder}))

    # -- writes ---------------------------------------------------------------------------
    def create(
        self,
        fields_: dict[str, Any],
        client_id: str | None = None,
        storage: Storage | None = None,
        revoke_grant: Any = None,
        *,
        source: str = "api",
        extra: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """Store a new client; return its record and its secret (None for a public one).

        With ``storage`` and ``revoke_grant``, a chosen ``client_id`` starts clean: tokens,
        codes and remembered consent still kept under that id (a client removed from the
        clients file leaves them) are revoked first, so the new client, perhaps another
        party's, inherits neither the old one's tokens nor its users' consent.
        ``source``: ``api`` (admin API, CLI) or ``registration`` (RFC 7591); ``extra``:
        more fields of the record (the registration access token's hash).
        """
        if client_id is not None and (problem := client_id_problem(client_id)):
            raise ClientMetadataError(problem)
        if not isinstance(fields_.get("disabled", False), bool):
            raise ClientMetadataError("disabled: expected true or false")
        chosen = client_id is not None
        client_id = client_id or new_secret(12)
        meta = complete(fields_, self.user_scopes)
        secret = None if is_public(meta) else new_secret(32)
        now = time.time()
        record: dict[str, Any] = {
            "client_id": client_id,
            "metadata": meta,
            "secrets": [] if secret is None else [{"hash": hash_random_secret(secret)}],
            "disabled": bool(fields_.get("disabled", False)),
            "source": source,
            "created_at": now,
            **(extra or {}),
        }
        # Refuses bad metadata before anything is written.
        self._check_stored(meta, self._build(client_id, meta, record))
        if self.table.incr(CLAIM + client_id, ttl=0) != 1:
            raise ClientConflict(f"client_id {client_id!r} is taken")
        if chosen and storage is not None:
            self._purge(client_id, storage, revoke_grant)
        self._index(client_id, add=_origins(meta))
        return self._write(record), secret

    def update(
        self, record: dict[str, Any], fields_: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Replace the metadata (and the ``disabled`` switch, if given) with ``fields_``."""
        meta = complete(fields_, self.user_scopes)
        if is_public(meta) != is_public(record["metadata"]):
            raise ClientMetadataError(
                "token_endpoint_auth_method: a client cannot change between public and "
                "confidential; create a new client"
            )
        disabled = fields_.get("disabled", record.get("disabled", False))
        if not isinstance(disabled, bool):
            raise ClientMetadataError("disabled: expected true or false")
        updated = {**record, "metadata": meta, "disabled": disabled, **(extra or {})}
        built = self._build(record["client_id"], meta, updated)
        if meta != record["metadata"]:  # a switch alone (``disabled``) meets no newer rule
            self._check_stored(meta, built)
        before, after = _origins(record["metadata"]), _origins(meta)
        self._index(record["client_id"], add=[o for o in after if o not in before])
        written = self._write(updated)
        self._index(record["client_id"], drop=[o for o in before if o not in after])
        return written

    def _check_stored(self, meta: dict[str, Any], client: Client) -> None:
        """Refuse what only the clients file may hold, and rules newer than some records
        (on writes only: a record stored before a rule existed still loads)."""
        problem = stored_client_problem(meta, self.production)
        if problem is None and (found := front_channel_dpop_problem(client)):
            problem = found.removeprefix(f"client {client.client_id!r}.")
        if problem:
            raise ClientMetadataError(problem)

    def set_disabled(self, record: dict[str, Any], disabled: bool) -> dict[str, Any]:
        return self._write({**record, "disabled": disabled})

    def rotate(
        self, record: dict[str, Any], overlap: int | None = None
    ) -> tuple[dict[str, Any], str]:
        """A new secret; the ones before it work ``overlap`` seconds more (at most)."""
        if is_public(record["metadata"]):
            raise ClientMetadataError("a public client has no secret to rotate")
        now, secret = time.time(), new_secret(32)
        until = now + (self.overlap if overlap is None else overlap)
        kept = []
        for old in record.get("secrets", []):
            expires_at = old.get("expires_at")
            expires_at = until if expires_at is None else min(expires_at, until)
            if expires_at > now:
                kept.append({"hash": old["hash"], "expires_at": expires_at})
        secrets = [{"hash": hash_random_secret(secret)}, *kept][:MAX_SECRETS]
        return self._write({**record, "secrets": secrets}), secret

    def remove(self, client_id: str, storage: Storage, revoke_grant: Any) -> int | None:
        """Delete the client, every code and token it holds and every consent to it.

        It is disabled first, so its tokens stop at once even if a later step fails
        (the delete can be repeated). Return how many tokens were live, or None.
        """
        record = self.record(client_id)
        if record is None:
            return None
        self.set_disabled(record, True)
        revoked = self._purge(client_id, storage, revoke_grant)
        self.table.delete(client_id)
        self._index(client_id, drop=_origins(record["metadata"]))
        self.table.delete(CLAIM + client_id)
        self._built.pop(client_id, None)
        return revoked

    @staticmethod
    def _purge(client_id: str, storage: Storage, revoke_grant: Any) -> int:
        """Revoke every code and token of ``client_id`` and forget every consent to it;
        return how many tokens were live."""
        revoked = 0
        for table in (storage.tokens, storage.refresh_tokens, storage.codes):
            grant_ids = {r.get("grant_id") for r in table.list_by_client(client_id)}
            revoked += sum(revoke_grant(g) for g in grant_ids if g)
        for consent in storage.consents.list_by_client(client_id):
            storage.consents.delete(consent["key"])
        return revoked

    def _index(self, client_id: str, add: Sequence[str] = (), drop: Sequence[str] = ()) -> None:
        """Add and remove the origin index records of ``client_id`` (see the module's doc)."""
        for origin in add:
            record = {"user_id": ORIGIN_LISTED + origin, "origin_client": client_id}
            self.table.put(f"{ORIGIN}{origin} {client_id}", record, ttl=0)
        for origin in drop:
            self.table.delete(f"{ORIGIN}{origin} {client_id}")

    def _write(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in record.items() if k not in ("key", "expires_at")}
        record.update(user_id=LISTED, updated_at=time.time(), rev=new_secret(8))
        self.table.put(record["client_id"], record, ttl=0)
        return record


def _origins(meta: dict[str, Any]) -> list[str]:
    """The origins a public client's metadata lists (a confidential one's: none)."""
    origins = meta.get("allowed_origins") or []
    return [o for o in origins if isinstance(o, str)] if is_public(meta) else []


# -- what the admin API and the CLI show: never a secret, never a hash ----------------------
def describe(record: dict[str, Any]) -> dict[str, Any]:
    """A stored client as JSON: RFC 7591 names, getAlby's beside them, and its state."""
    meta = record["metadata"]
    now = time.time()
    overlap = [
        s["expires_at"]
        for s in record.get("secrets", [])
        if s.get("expires_at") is not None and s["expires_at"] > now
    ]
    out = _shown(record["client_id"], meta)
    out.update(
        source=record.get("source", "api"),
        read_only=False,
        disabled=bool(record.get("disabled")),
        created_at=int(record.get("created_at", 0)),
        updated_at=int(record.get("updated_at", 0)),
        client_id_issued_at=int(record.get("created_at", 0)),
    )
    if not is_public(meta):
        out["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: 0, it does not expire
    if overlap:
        out["previous_secret_expires_at"] = int(max(overlap))
    return out


def describe_file(client: Client) -> dict[str, Any]:
    """A clients-file client as JSON, marked read-only."""
    method = client.token_endpoint_auth_method or (
        "none" if client.public else "client_secret_basic"
    )
    meta: dict[str, Any] = {
        "client_name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": client.response_types
        or [rt for rt, g in RESPONSE_TYPE_GRANTS.items() if g in client.grant_types],
        "token_endpoint_auth_method": method,
        "scope": " ".join(client.scopes),
    }
    if client.ip_allowlist:
        meta["ip_allowlist"] = list(client.ip_allowlist)
    if client.allowed_origins:
        meta["allowed_origins"] = list(client.allowed_origins)
    if client.rate_limit:
        meta["rate_limit"] = client.rate_limit
    if client.quotas:
        meta.update(client.quotas.to_json())
    for name in (*LINK_FIELDS, *POLICY_FIELDS):
        if getattr(client, name) is not None:
            meta[name] = getattr(client, name)
    out = _shown(client.client_id, meta)
    out.update(source="file", read_only=True, disabled=False)
    return out


def _shown(client_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    out = {"client_id": client_id, **{k: meta[k] for k in FIELDS if k in meta}}
    out["name"] = meta.get("client_name") or client_id
    if "client_uri" in meta:
        out["url"] = meta["client_uri"]
    if "logo_uri" in meta:
        out["imageUrl"] = meta["logo_uri"]
    out["public"] = is_public(meta)
    return out


def editable(record: dict[str, Any]) -> dict[str, Any]:
    """The record's metadata and switch, as a merge patch starts from."""
    return {**record["metadata"], "disabled": bool(record.get("disabled"))}
