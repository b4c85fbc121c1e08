"""The ``oauth2-server`` command: serve, manage clients, migrate, purge, read the audit log."""

from __future__ import annotations

import argparse
import json
import logging.config
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import cli_clients
from .audit import fields_line, printable
from .client_metadata import OIDC_FIELDS
from .clients import ClientFileError, append_client
from .logconfig import log_config
from .secrets_hash import hash_random_secret, new_secret
from .settings import GRANT_TYPES, ConfigError, Settings
from .storage import Storage, StorageConfigError, StorageUnavailable


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(config_dir=args.config_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(_settings(args), args.bind)
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    from .adapters import load_adapter

    if args.store:
        return cli_clients.add_to_store(args)
    if not args.redirect_uri:
        raise ConfigError("clients add: --redirect-uri is required for the clients file")
    settings = _settings(args)
    path = args.file or _own_clients_file(settings)
    scopes = list(load_adapter(settings.resource_server).scopes)
    public = args.public or args.token_endpoint_auth_method == "none"  # noqa: S105
    secret = None if public else new_secret(32)
    entry: dict[str, Any] = {
        "client_id": args.client_id or new_secret(12),
        "name": args.name,
        "redirect_uris": args.redirect_uri,
        "grant_types": args.grant_type or ["authorization_code", "refresh_token"],
    }
    if args.scope:
        entry["scopes"] = args.scope
    entry.update(_oidc_entry(args))
    if public:
        entry["public"] = True
    else:
        entry["client_secret_hash"] = hash_random_secret(str(secret))
    from .clients import front_channel_dpop_problem, parse_client

    client = parse_client(
        entry,
        0,
        scopes,
        settings.client_credentials.allow_wildcard_redirects,
        require_https=settings.env == "production",
    )
    problem = front_channel_dpop_problem(client)
    if problem:
        raise ClientFileError(problem)
    append_client(path, entry)
    print(f"client_id:     {entry['client_id']}")
    if secret:
        print(f"client_secret: {secret}")
        print("The secret is shown once and stored only as a hash. Keep it safe.")
    print(f"Added to {path}. Send SIGHUP to the server to load it.")
    return 0


#: ``clients add`` options -> the RFC 7591 / OpenID Connect Registration field they set.
OIDC_OPTIONS = ("response_types", "token_endpoint_auth_method", *OIDC_FIELDS)


def _oidc_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The OpenID Connect fields the options name (unset ones are left to their defaults)."""
    values = {name: getattr(args, name) for name in OIDC_OPTIONS}
    return {name: value for name, value in values.items() if value not in (None, False, [])}


def _own_clients_file(settings: Settings) -> str:
    """The configured clients file, unless it is the tracked example (a checkout's demo)."""
    path = settings.resolve_path(settings.client_credentials.file)
    if path.endswith(".example"):
        raise ConfigError(
            f"client_credentials.file is the example file {path}, which stays as shipped: "
            "set client_credentials.file to your own clients.json (e.g. in config/runtime.json) "
            "or pass --file"
        )
    return path


@contextmanager
def _storage(args: argparse.Namespace) -> Iterator[Storage]:
    """The configured storage, migrated first when ``storage.auto_migrate`` is on."""
    settings = _settings(args)
    storage = Storage(settings.storage_specs)
    try:
        if settings.storage.auto_migrate:
            storage.migrate()
        yield storage
    finally:
        storage.close()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .oidc.keys import prepare

    settings = _settings(args)
    storage = Storage(settings.storage_specs)
    try:
        storage.ping()  # a backend with no schema (Redis) must still be there
        for url, steps in storage.migrate().items():
            print(f"{_redact(url)}: {', '.join(steps) if steps else 'up to date'}")
        keys = prepare(settings, storage)
        print(f"signing keys: ready, {'encrypted' if keys['encrypted'] else 'NOT encrypted'}")
    finally:
        storage.close()
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with _storage(args) as storage:
        for table, count in storage.purge().items():
            print(f"{table}: {count} expired rows removed")
    return 0


def cmd_audit_tail(args: argparse.Namespace) -> int:
    with _storage(args) as storage:
        records = storage.audit.recent(args.lines)
    for record in reversed(records):
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_number(record.pop("at", 0))))
        event = printable(record.pop("event", "?"))
        print(f"{at} {event} {fields_line(record, skip=('key', 'expires_at'))}".rstrip())
    return 0


def _number(value: Any) -> float:
    """A record's time, or 0 for a row that holds something else."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def cmd_defaults(args: argparse.Namespace) -> int:
    from .settings import defaults_document

    print(json.dumps(defaults_document(), indent=4))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from . import create_app
    from .oidc.keys import prepare

    storage = create_app(settings).extensions["oauth2"].storage
    storage.ping()
    keys = prepare(settings, storage)
    files = [str(p) for p in settings.sources]
    print(json.dumps({"ok": True, "env": settings.env, "files": files, "keys": keys}))
    return 0


# -- signing keys -----------------------------------------------------------------------
def _key_ring(settings: Settings, storage: Storage):
    from .oidc.keys import KeyRing

    return KeyRing.from_settings(storage.keys, settings)


def _when(at: Any) -> str:
    if not isinstance(at, (int, float)) or at == float("inf"):
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _storage(args) as storage:
        ring = _key_ring(settings, storage)
        if ring.stored() is None:
            print("no signing keys yet: `oauth2-server serve` (or `db upgrade`) makes them")
            return 0
        now = time.time()
        record = ring.ring()
        print("kid\talg\tstate\tcreated\tactivated\tretired\tpublished_until")
        for entry in sorted(record["keys"], key=_listing_order):
            until = ring.published_until(entry)
            state = entry["state"] if until > now else "expired"
            times = (entry.get("created_at"), entry.get("activated_at"), entry.get("retired_at"))
            columns = [entry["kid"], entry["alg"], state, *map(_when, times), _when(until)]
            print("\t".join(columns))
        if ring.sealer is not None:
            print(f"private keys: encrypted (AES-256-GCM, secret key id {ring.sealer.key_id})")
        else:
            print("private keys: NOT encrypted (no oidc.keys_secret or session secret set)")
    return 0


def _listing_order(entry: dict[str, Any]) -> tuple[str, int, float]:
    order = {"next": 0, "active": 1, "retired": 2}.get(entry["state"], 3)
    return (entry["alg"], order, -float(entry.get("created_at", 0)))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from .oidc.keys import ALGS, RotationRefused

    settings = _settings(args)
    algs = tuple(dict.fromkeys(args.alg)) if args.alg else ALGS
    with _storage(args) as storage:
        ring = _key_ring(settings, storage)
        try:
            done = ring.rotate(algs, force=args.force)
        except RotationRefused as exc:
            print(f"oauth2-server: keys rotate refused: {exc}", file=sys.stderr)
            return 1
        for alg in algs:
            retired = done.retired.get(alg)
            print(f"{alg}: {done.activated[alg]} signs now")
            if retired:
                until = _when(time.time() + ring.retire_after)
                print(f"{alg}: {retired} retired, published until {until}")
            print(f"{alg}: {done.created[alg]} is the next key (published now)")
        for kid in done.pruned:
            print(f"removed {kid} (retired, no token it signed is still valid)")
        storage.audit.append(
            {
                "event": "keys_rotated",
                "at": time.time(),
                "algs": ",".join(algs),
                "activated": ",".join(done.activated.values()),
                "retired": ",".join(done.retired.values()),
                "forced": done.forced,
            }
        )
    print(f"Every server signs with the new keys within {_cache_seconds():.0f} s.")
    return 0


def _cache_seconds() -> float:
    from .oidc import keys

    return keys.CACHE_SECONDS


def cmd_keys_reset(args: argparse.Namespace) -> int:
    from .oidc.keys import RotationRefused

    if not args.yes:
        print(
            "oauth2-server: keys reset replaces every signing key at once: ID Tokens signed "
            "before stop validating (unless --keep-published, which keeps the old public keys "
            "published; never after a compromise). Run it again with --yes.",
            file=sys.stderr,
        )
        return 1
    settings = _settings(args)
    with _storage(args) as storage:
        ring = _key_ring(settings, storage)
        try:
            kids = ring.reset(keep_published=args.keep_published)
        except RotationRefused as exc:
            print(f"oauth2-server: keys reset refused: {exc}", file=sys.stderr)
            return 1
        storage.audit.append(
            {
                "event": "keys_reset",
                "at": time.time(),
                "kids": ",".join(kids),
                "kept_published": bool(args.keep_published),
            }
        )
    print(f"new signing keys: {', '.join(kids)}")
    print(f"Every server signs with them within {_cache_seconds():.0f} s.")
    return 0


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    return (
        (head.split(":", 2)[0] + ":" + head.split(":", 2)[1] + ":***@" + tail)
        if (sep and head.count(":") >= 2)
        else url
    )


def _add_oidc_options(add: argparse.ArgumentParser) -> None:
    """OpenID Connect client metadata (RFC 7591 names, see README's clients file)."""
    from .clients import RESPONSE_TYPE_GRANTS
    from .oidc.keys import ALGS

    oidc = add.add_argument_group("OpenID Connect")
    oidc.add_argument(
        "--response-type", dest="response_types", action="append", choices=RESPONSE_TYPE_GRANTS
    )
    oidc.add_argument(
        "--token-endpoint-auth-method",
        choices=("client_secret_basic", "client_secret_post", "none"),
        help="the one way the client authenticates (none: public)",
    )
    oidc.add_argument(
        "--post-logout-redirect-uri", dest="post_logout_redirect_uris", action="append"
    )
    oidc.add_argument("--id-token-signed-response-alg", choices=ALGS)
    oidc.add_argument("--subject-type", choices=("public", "pairwise"))
    oidc.add_argument("--sector-identifier-uri", help="https URL naming a pairwise sector")
    oidc.add_argument("--backchannel-logout-uri")
    oidc.add_argument("--backchannel-logout-session-required", action="store_true")
    oidc.add_argument("--skip-consent", action="store_true", help="first-party: never ask")
    oidc.add_argument(
        "--require-two-factor", action="store_true", help="its users must use a second factor"
    )
    oidc.add_argument(
        "--dpop-bound-access-tokens", action="store_true", help="its tokens need a DPoP proof"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="oauth2-server", description=__doc__)
    root.add_argument("--config-dir", help="config folder (default $OAUTH2_CONFIG_DIR or ./config)")
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (granian or gunicorn)")
    serve.add_argument("--bind", help="host:port, overriding auth_server.host/port")
    serve.set_defaults(func=cmd_serve)
    clients = sub.add_parser("clients", help="manage clients").add_subparsers(
        dest="clients_command", required=True
    )
    add = clients.add_parser("add", help="register a client; prints its secret once")
    add.add_argument("--name", required=True)
    add.add_argument("--redirect-uri", action="append")
    add.add_argument("--client-id")
    add.add_argument("--grant-type", action="append", choices=GRANT_TYPES)
    add.add_argument("--scope", action="append")
    add.add_argument("--public", action="store_true", help="no secret; PKCE required")
    _add_oidc_options(add)
    add.add_argument("--file", help="clients file (default client_credentials.file)")
    add.add_argument(
        "--store", action="store_true", help="into the clients table (seen at once), not the file"
    )
    add.set_defaults(func=cmd_clients_add)
    cli_clients.add_parsers(clients)
    db = sub.add_parser("db", help="schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    sub.add_parser("purge", help="delete expired rows").set_defaults(func=cmd_purge)
    audit = sub.add_parser("audit", help="audit log").add_subparsers(
        dest="audit_command", required=True
    )
    tail = audit.add_parser("tail", help="show the latest events")
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.set_defaults(func=cmd_audit_tail)
    keys = sub.add_parser("keys", help="OpenID Connect signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("list", help="list the keys (never private material)").set_defaults(
        func=cmd_keys_list
    )
    rotate = keys.add_parser("rotate", help="next key signs, active key retires, a new next")
    rotate.add_argument(
        "--alg", action="append", choices=("RS256", "ES256"), help="only this algorithm"
    )
    rotate.add_argument(
        "--force",
        action="store_true",
        help="rotate even if the next key is newer than oidc.jwks_max_age (relying parties "
        "with a cached JWKS reject tokens until they fetch it again)",
    )
    rotate.set_defaults(func=cmd_keys_rotate)
    reset = keys.add_parser("reset", help="replace every key (a lost keys secret, or a compromise)")
    reset.add_argument("--yes", action="store_true", help="yes, replace them")
    reset.add_argument(
        "--keep-published",
        action="store_true",
        help="keep the old public keys published until their tokens expire (not after a "
        "compromise)",
    )
    reset.set_defaults(func=cmd_keys_reset)
    sub.add_parser("check", help="validate the configuration and exit").set_defaults(func=cmd_check)
    defaults = sub.add_parser(
        "defaults", help="print every setting's default (config/default.json)"
    )
    defaults.set_defaults(func=cmd_defaults)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.config.dictConfig(log_config())
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ClientFileError, StorageConfigError, ValueError) as exc:
        print(f"oauth2-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"oauth2-server: storage unavailable: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
