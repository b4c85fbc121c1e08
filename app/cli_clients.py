"""``oauth2-server clients ...`` on the clients table (the admin API's store).

``add`` writes the clients file as before, unless ``--store``: then the client goes
into the ``clients`` table, where every running instance sees it at once. ``list``
shows both sources; ``show``, ``update``, ``disable``, ``enable``, ``remove`` and
``rotate-secret`` work on stored clients (a file client is edited in the file).
Every change is audited with the actor ``cli``. Exit status: 0 done, 1 no such
client or a file client, 2 refused metadata or configuration, 3 storage unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .audit import audit
from .client_metadata import ClientMetadataError, read_body
from .client_store import (
    MAX_OVERLAP,
    ClientConflict,
    ClientStore,
    describe,
    describe_file,
    editable,
)
from .settings import GRANT_TYPES, Settings

ACTOR = "cli"


@contextmanager
def _app(args: argparse.Namespace) -> Iterator[Any]:
    """The app's state for the configuration, inside an app context (audit needs one)."""
    from . import create_app

    app = create_app(Settings.load(config_dir=args.config_dir))
    state = app.extensions["oauth2"]
    try:
        with app.app_context():
            yield state
    finally:
        state.storage.close()
        state.adapter.close()


def _store(state: Any) -> ClientStore:
    store: ClientStore = state.clients.store
    return store


def _refused(error: ClientMetadataError | ClientConflict) -> int:
    code = error.error if isinstance(error, ClientMetadataError) else "conflict"
    print(f"oauth2-server: {code}: {error}", file=sys.stderr)
    return 2


def _stored(state: Any, client_id: str) -> dict[str, Any] | None:
    """The stored record of ``client_id``; None (said on stderr) if it is not one."""
    if state.clients.file_client(client_id) is not None:
        print(
            f"oauth2-server: client {client_id!r} is in the clients file; edit the file "
            "and reload the server (SIGHUP)",
            file=sys.stderr,
        )
        return None
    record = _store(state).record(client_id)
    if record is None:
        print(f"oauth2-server: no client {client_id!r}", file=sys.stderr)
    return record


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The options' metadata, RFC 7591 names (``--json`` first, options over it)."""
    fields: dict[str, Any] = json.loads(args.json) if getattr(args, "json", None) else {}
    if not isinstance(fields, dict):
        raise ClientMetadataError("--json: expected a JSON object")
    for option, name in (("name", "client_name"), ("redirect_uri", "redirect_uris")):
        if getattr(args, option, None):
            fields[name] = getattr(args, option)
    if getattr(args, "grant_type", None):
        fields["grant_types"] = args.grant_type
    if getattr(args, "scope", None):
        fields["scope"] = " ".join(args.scope)
    if getattr(args, "public", False):
        fields["public"] = True
    from .cli import OIDC_OPTIONS  # the OpenID Connect and DPoP options, RFC 7591 names

    for name in OIDC_OPTIONS:
        value = getattr(args, name, None)
        if value not in (None, False, []):
            fields[name] = value
    return fields


def add_to_store(args: argparse.Namespace) -> int:
    """``clients add --store``: create the client in the clients table."""
    with _app(args) as state:
        try:
            fields = read_body(_metadata(args))
            if args.client_id and state.clients.file_client(args.client_id):
                raise ClientConflict(f"client_id {args.client_id!r} is taken by the clients file")
            record, secret = _store(state).create(
                fields, args.client_id, state.storage, state.grants.revoke_grant
            )
        except (ClientMetadataError, ClientConflict) as error:
            return _refused(error)
        audit("admin_client_created", actor=ACTOR, client_id=record["client_id"])
    print(f"client_id:     {record['client_id']}")
    if secret:
        print(f"client_secret: {secret}")
        print("The secret is shown once and stored only as a hash. Keep it safe.")
    print("Stored in the clients table: every instance sees it now.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _app(args) as state:
        shown = [describe_file(c) for c in state.clients.all()]
        shown += [describe(r) for r in _store(state).records()]
    for client in shown:
        kind = "public" if client["public"] else "confidential"
        state_ = "disabled" if client["disabled"] else client["source"]
        grants = ",".join(client["grant_types"])
        print(f"{client['client_id']}\t{client['client_name']}\t{kind}\t{grants}\t{state_}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _app(args) as state:
        file_client = state.clients.file_client(args.client_id)
        record = None if file_client else _store(state).record(args.client_id)
    if file_client is None and record is None:
        print(f"oauth2-server: no client {args.client_id!r}", file=sys.stderr)
        return 1
    shown = describe_file(file_client) if file_client else describe(record or {})
    print(json.dumps(shown, indent=2))
    return 0


def _change(args: argparse.Namespace, change: Callable[[Any, dict[str, Any]], Any]) -> int:
    """Apply ``change(state, record)`` to a stored client; print what it returns."""
    with _app(args) as state:
        record = _stored(state, args.client_id)
        if record is None:
            return 1
        try:
            out = change(state, record)
        except (ClientMetadataError, ClientConflict) as error:
            return _refused(error)
    if out is not None:
        print(out)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    def update(state: Any, record: dict[str, Any]) -> str:
        patch = read_body(_metadata(args), record["metadata"], allow_null=True)
        merged = editable(record)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        updated = _store(state).update(record, merged)
        audit("admin_client_patched", actor=ACTOR, client_id=args.client_id)
        return json.dumps(describe(updated), indent=2)

    return _change(args, update)


def _switch(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        def switch(state: Any, record: dict[str, Any]) -> str:
            _store(state).set_disabled(record, disabled)
            event = "admin_client_disabled" if disabled else "admin_client_enabled"
            audit(event, actor=ACTOR, client_id=args.client_id)
            return f"{args.client_id}: {'disabled' if disabled else 'enabled'}"

        return _change(args, switch)

    return command


def cmd_remove(args: argparse.Namespace) -> int:
    def remove(state: Any, record: dict[str, Any]) -> str:
        with state.grants.ending():  # the token cache: one announcement for every grant
            revoked = _store(state).remove(args.client_id, state.storage, state.grants.revoke_grant)
        audit("admin_client_deleted", actor=ACTOR, client_id=args.client_id, revoked=revoked)
        return f"{args.client_id}: removed, with {revoked} live token(s) and its consents"

    return _change(args, remove)


def cmd_rotate(args: argparse.Namespace) -> int:
    if args.overlap is not None and not 0 <= args.overlap <= MAX_OVERLAP:
        print(f"oauth2-server: --overlap: 0 to {MAX_OVERLAP} seconds", file=sys.stderr)
        return 2

    def rotate(state: Any, record: dict[str, Any]) -> str:
        updated, secret = _store(state).rotate(record, args.overlap)
        audit("admin_secret_rotated", actor=ACTOR, client_id=args.client_id, overlap=args.overlap)
        until = describe(updated).get("previous_secret_expires_at")
        note = f"The previous secret works until {until} (UNIX time)." if until else ""
        return f"client_secret: {secret}\nThe secret is shown once. {note}".rstrip()

    return _change(args, rotate)


def _metadata_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--redirect-uri", action="append")
    parser.add_argument("--grant-type", action="append", choices=GRANT_TYPES)
    parser.add_argument("--scope", action="append")
    parser.add_argument("--json", help="metadata as a JSON object (RFC 7591 names)")


def add_parsers(clients: Any) -> None:
    """The stored-client subcommands, under ``oauth2-server clients``."""
    clients.add_parser("list", help="list clients (file and stored)").set_defaults(func=cmd_list)
    show = clients.add_parser("show", help="show one client as JSON")
    show.add_argument("client_id")
    show.set_defaults(func=cmd_show)
    update = clients.add_parser("update", help="change a stored client (a merge patch)")
    update.add_argument("client_id")
    _metadata_options(update)
    update.set_defaults(func=cmd_update)
    for name, disabled in (("disable", True), ("enable", False)):
        switch = clients.add_parser(name, help=f"{name} a stored client (tokens kept)")
        switch.add_argument("client_id")
        switch.set_defaults(func=_switch(disabled))
    remove = clients.add_parser("remove", help="delete a stored client, its tokens, consents")
    remove.add_argument("client_id")
    remove.set_defaults(func=cmd_remove)
    rotate = clients.add_parser("rotate-secret", help="a new secret, shown once")
    rotate.add_argument("client_id")
    rotate.add_argument("--overlap", type=int, help="seconds the old one still works")
    rotate.set_defaults(func=cmd_rotate)
