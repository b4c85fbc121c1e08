"""The ``oauth2-server`` command, run in-process against a temporary config folder."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from app import create_app
from app.cli import main
from app.secrets_hash import token_digest
from app.settings import Settings
from app.storage import Storage
from tests.conftest import (
    ROOT,
    authorize_url,
    base_config,
    basic,
    close_app,
    config_folder,
    consent,
    location_params,
    login,
)

CALLBACK = "https://x.example/cb"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("OAUTH2"):
            monkeypatch.delenv(name)


@pytest.fixture
def config_dir(tmp_path, dummy_site) -> Path:
    return config_folder(tmp_path, dummy_site, "cli")[0]


def run(config_dir: Path, *argv: str) -> int:
    return main(["--config-dir", str(config_dir), *argv])


def storage_of(config_dir: Path) -> Storage:
    return Storage(Settings.load(config_dir=str(config_dir), environ={}).storage_specs)


# -- clients add --------------------------------------------------------------------------
def add(config_dir: Path, clients: Path, *extra: str) -> int:
    return run(
        config_dir,
        "clients",
        "add",
        "--name",
        "X",
        "--redirect-uri",
        CALLBACK,
        "--file",
        str(clients),
        *extra,
    )


def printed(out: str, field: str) -> str:
    match = re.search(rf"^{field}:\s+(\S+)$", out, re.M)
    assert match, out
    return match.group(1)


def test_clients_add_prints_the_secret_once_and_stores_only_its_hash(tmp_path, config_dir, capsys):
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients) == 0
    out = capsys.readouterr().out
    client_id, secret = printed(out, "client_id"), printed(out, "client_secret")
    assert len(secret) >= 40
    assert out.count(secret) == 1

    text = clients.read_text()
    assert secret not in text
    [entry] = json.loads(text)
    assert entry["client_id"] == client_id
    assert entry["name"] == "X"
    assert entry["redirect_uris"] == [CALLBACK]
    assert entry["client_secret_hash"].startswith(("sha256$", "pbkdf2-sha256$"))
    assert "client_secret" not in entry
    assert "client_salt" not in entry


def test_printed_secret_authenticates_at_token(tmp_path, dummy_site, config_dir, capsys):
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients) == 0
    out = capsys.readouterr().out
    client_id, secret = printed(out, "client_id"), printed(out, "client_secret")

    app = create_app(base_config(tmp_path, dummy_site, client_credentials={"file": str(clients)}))
    try:
        http = app.test_client()
        login(http)
        response = consent(http, authorize_url(client_id=client_id, redirect_uri=CALLBACK))
        assert response.status_code == 302
        code = location_params(response)["code"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
        wrong = http.post("/token", data=form, headers=basic(client_id, secret + "x"))
        assert wrong.status_code == 401
        assert wrong.get_json()["error"] == "invalid_client"
        token = http.post("/token", data=form, headers=basic(client_id, secret))
        assert token.status_code == 200, token.get_json()
        assert token.get_json()["refresh_token"]
    finally:
        close_app(app)


def test_clients_add_appends_and_keeps_existing_clients(tmp_path, config_dir, capsys):
    clients = tmp_path / "clients.json"
    clients.write_text((ROOT / "clients.json.example").read_text())
    assert add(config_dir, clients, "--client-id", "partner-x") == 0
    ids = [e["client_id"] for e in json.loads(clients.read_text())]
    assert ids == ["sp-demo", "test", "admin", "partner-x"]


def test_clients_add_public_prints_no_secret(tmp_path, config_dir, capsys):
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients, "--public") == 0
    out = capsys.readouterr().out
    assert "client_secret" not in out
    [entry] = json.loads(clients.read_text())
    assert entry["public"] is True
    assert "client_secret_hash" not in entry


def test_clients_add_with_grants_and_scopes(tmp_path, config_dir, capsys):
    clients = tmp_path / "clients.json"
    code = add(config_dir, clients, "--grant-type", "client_credentials", "--scope", "read-only")
    assert code == 0
    [entry] = json.loads(clients.read_text())
    assert entry["grant_types"] == ["client_credentials"]
    assert entry["scopes"] == ["read-only"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--redirect-uri", "*"), "redirect URI"),
        (("--redirect-uri", "not a url"), "invalid redirect URI"),
        (("--scope", "admin"), "scopes"),
        (("--public", "--grant-type", "client_credentials"), "client_credentials"),
    ],
)
def test_clients_add_refuses_bad_clients_and_writes_nothing(
    tmp_path, config_dir, capsys, extra, named
):
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients, "--client-id", "bad-one", *extra) == 2
    err = capsys.readouterr().err
    assert "'bad-one'" in err
    assert named in err
    assert not clients.exists()


def test_clients_add_refuses_a_duplicate_id(tmp_path, config_dir, capsys):
    clients = tmp_path / "clients.json"
    assert add(config_dir, clients, "--client-id", "dup") == 0
    before = clients.read_text()
    assert add(config_dir, clients, "--client-id", "dup") == 2
    assert "'dup'" in capsys.readouterr().err
    assert clients.read_text() == before


def add_to_configured_file(config_dir: Path) -> int:
    return run(config_dir, "clients", "add", "--name", "X", "--redirect-uri", CALLBACK)


def test_clients_add_refuses_to_write_into_the_example_file(config_dir, capsys):
    example = ROOT / "clients.json.example"
    before = example.read_bytes()
    assert add_to_configured_file(config_dir) == 2
    err = capsys.readouterr().err
    assert "client_credentials.file" in err and "--file" in err
    assert example.read_bytes() == before


def test_clients_add_writes_the_configured_file_beside_the_config_folder(
    tmp_path, config_dir, capsys, monkeypatch
):
    (config_dir / "runtime.json").write_text(
        json.dumps({"client_credentials": {"file": "clients.json"}})
    )
    (tmp_path / "clients.json").write_text("[]")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert add_to_configured_file(config_dir) == 0
    client_id = printed(capsys.readouterr().out, "client_id")
    assert [e["client_id"] for e in json.loads((tmp_path / "clients.json").read_text())] == [
        client_id
    ]
    assert list(elsewhere.iterdir()) == []


def test_clients_list(tmp_path, config_dir, capsys):
    assert run(config_dir, "clients", "list") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["sp-demo", "test", "admin"]
    assert all(line.endswith("\tfile") for line in lines)
    assert "Demo partner site" in lines[0]


# -- db upgrade, purge, audit tail, check -------------------------------------------------
def test_db_upgrade_applies_then_reports_up_to_date(tmp_path, config_dir, capsys):
    assert run(config_dir, "db", "upgrade") == 0
    first = capsys.readouterr().out
    assert f"sqlite:///{tmp_path}/cli.db: " in first
    assert "up to date" not in first
    assert (tmp_path / "cli.db").exists()
    assert run(config_dir, "db", "upgrade") == 0
    assert "up to date" in capsys.readouterr().out


def test_purge_removes_expired_rows_only(config_dir, capsys):
    assert run(config_dir, "db", "upgrade") == 0
    storage = storage_of(config_dir)
    try:
        storage.tokens.put(token_digest("old"), {"user_id": "u1", "client_id": "test"}, ttl=-5)
        storage.tokens.put(token_digest("new"), {"user_id": "u1", "client_id": "test"}, ttl=600)
    finally:
        storage.close()
    capsys.readouterr()
    assert run(config_dir, "purge") == 0
    out = capsys.readouterr().out
    assert "tokens: 1 expired rows removed" in out
    assert "codes: 0 expired rows removed" in out
    storage = storage_of(config_dir)
    try:
        assert storage.tokens.get(token_digest("new")) is not None
    finally:
        storage.close()


def test_audit_tail_shows_the_latest_events_oldest_first(config_dir, capsys):
    assert run(config_dir, "db", "upgrade") == 0
    storage = storage_of(config_dir)
    try:
        for n in range(5):
            storage.audit.append({"event": f"event{n}", "at": time.time(), "user_id": f"u{n}"})
    finally:
        storage.close()
    capsys.readouterr()
    assert run(config_dir, "audit", "tail", "-n", "3") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["event2", "event3", "event4"]
    assert "user_id=u4" in lines[-1]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", lines[0])


@pytest.mark.parametrize(
    "forged",
    ["alice\n2026-01-01T00:00:00Z login user_id=admin", "alice\r\x1b[2K", "bob\u2028x\u202e"],
    ids=["newline", "ansi", "unicode"],
)
def test_audit_tail_prints_one_line_per_event_whatever_the_fields_hold(config_dir, capsys, forged):
    assert run(config_dir, "db", "upgrade") == 0
    storage = storage_of(config_dir)
    try:
        storage.audit.append({"event": "login_failed", "at": time.time(), "username": forged})
        storage.audit.append({"event": "x\ny", "at": "not a time", forged: "v"})
    finally:
        storage.close()
    capsys.readouterr()
    assert run(config_dir, "audit", "tail") == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2
    assert out.isascii() and "\x1b" not in out and "\r" not in out
    assert 'username="alice' in out or 'username="bob' in out


def test_audit_tail_records_real_logins(tmp_path, dummy_site, config_dir, capsys):
    app = create_app(Settings.load(config_dir=str(config_dir), environ={}))
    try:
        login(app.test_client(), password="wrong")
    finally:
        close_app(app)
    capsys.readouterr()
    assert run(config_dir, "audit", "tail") == 0
    assert "login_failed username=alice" in capsys.readouterr().out


def test_check_validates_and_reports_the_files(config_dir, capsys):
    assert run(config_dir, "check") == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = report.pop("keys")
    assert report == {"ok": True, "env": "development", "files": [str(config_dir / "default.json")]}
    assert set(keys["active"]) == set(keys["next"]) == {"RS256", "ES256"}


# -- configuration errors -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("runtime", "named"),
    [
        ({"auth_server": {"port": "eighty"}}, "auth_server.port"),
        ({"auth_server": {"bogus": 1}}, "auth_server.bogus"),
        ({"logging": {"level": "loud"}}, "logging.level"),
        ({"storage": {"default": "mysql://db/x"}}, "storage.default"),
        ({"storage": {"tokens": {"url": "sqlite:///x.db", "ttl": "1h"}}}, "storage.tokens.ttl"),
    ],
)
@pytest.mark.parametrize("command", [("check",), ("db", "upgrade"), ("purge",)])
def test_config_errors_exit_2_naming_the_key(config_dir, capsys, runtime, named, command):
    (config_dir / "runtime.json").write_text(json.dumps(runtime))
    assert run(config_dir, *command) == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("runtime", "named"),
    [
        ({"resource_server": {"colour": "blue"}}, "resource_server.colour"),
        ({"resource_server": {"type": "nosuch.module:Adapter"}}, "resource_server.type"),
        ({"client_credentials": {"file": "/nonexistent/clients.json"}}, "client_credentials.file"),
    ],
)
def test_check_builds_the_app_and_names_bad_keys(config_dir, capsys, runtime, named):
    (config_dir / "runtime.json").write_text(json.dumps(runtime))
    assert run(config_dir, "check") == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert "Traceback" not in captured.err


def test_env_config_errors_exit_2_naming_the_key(config_dir, capsys, monkeypatch):
    monkeypatch.setenv("OAUTH2__auth_server__num_workers", "0")
    assert run(config_dir, "check") == 2
    assert "auth_server.num_workers" in capsys.readouterr().err


def test_unreadable_config_file_exits_2_naming_it(config_dir, capsys):
    (config_dir / "runtime.json").write_text("{oops")
    assert run(config_dir, "check") == 2
    assert "runtime.json" in capsys.readouterr().err


def test_oauth2_env_selects_the_file_for_commands(config_dir, capsys, monkeypatch):
    (config_dir / "production.json").write_text(json.dumps({"auth_server": {"port": "x"}}))
    assert run(config_dir, "check") == 0
    monkeypatch.setenv("OAUTH2_ENV", "production")
    assert run(config_dir, "check") == 2
    assert "auth_server.port" in capsys.readouterr().err


@pytest.fixture
def no_server(monkeypatch):
    """``serve`` must stop before starting anything; if it gets that far, fail at once."""
    monkeypatch.setattr("app.serve.serve", lambda *_: pytest.fail("serve started a server"))


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_missing_config_folder_exits_2_naming_the_fix(tmp_path, capsys, no_server, command):
    assert run(tmp_path / "no-such-folder", command) == 2
    assert "pass --config-dir or set OAUTH2_CONFIG_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_unknown_oauth2_env_exits_2_naming_the_fix(
    config_dir, capsys, monkeypatch, no_server, command
):
    monkeypatch.setenv("OAUTH2_ENV", "prodution")
    assert run(config_dir, command) == 2
    err = capsys.readouterr().err
    assert "prodution.json" in err and "development or production" in err


def test_db_upgrade_from_another_folder_creates_nothing_there(
    tmp_path, config_dir, capsys, monkeypatch
):
    (config_dir / "runtime.json").write_text(
        json.dumps({"storage": {"default": "sqlite:///var/x.db"}})
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(config_dir, "db", "upgrade") == 0
    assert (tmp_path / "var" / "x.db").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("argv", [[], ["clients"], ["db"], ["audit"], ["nope"]])
def test_incomplete_commands_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [("check",), ("db", "upgrade"), ("purge",)])
def test_an_unreachable_redis_is_exit_status_3_for_every_command(config_dir, capsys, argv):
    # Redis has no schema to migrate: check and db upgrade must still ask it.
    write_runtime = config_dir / "runtime.json"
    write_runtime.write_text(json.dumps({"storage": {"tokens": "redis://127.0.0.1:1/0"}}))
    assert run(config_dir, *argv) == 3
    assert "storage unavailable" in capsys.readouterr().err


# -- clients on the store ------------------------------------------------------------------
def test_stored_client_lifecycle_from_the_command_line(config_dir, capsys):
    assert (
        run(
            config_dir,
            "clients",
            "add",
            "--store",
            "--name",
            "Job",
            "--client-id",
            "job",
            "--grant-type",
            "client_credentials",
            "--scope",
            "read-only",
        )
        == 0
    )
    out = capsys.readouterr().out
    secret = printed(out, "client_secret")
    assert "every instance sees it now" in out
    assert run(config_dir, "clients", "list") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].split("\t") == ["job", "Job", "confidential", "client_credentials", "api"]
    assert run(config_dir, "clients", "update", "job", "--name", "Nightly job") == 0
    assert json.loads(capsys.readouterr().out)["client_name"] == "Nightly job"
    assert run(config_dir, "clients", "disable", "job") == 0
    assert run(config_dir, "clients", "list") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("\tdisabled")
    assert run(config_dir, "clients", "enable", "job") == 0
    assert run(config_dir, "clients", "rotate-secret", "job", "--overlap", "0") == 0
    new = printed(capsys.readouterr().out, "client_secret")
    assert new != secret
    assert run(config_dir, "clients", "show", "job") == 0
    shown = capsys.readouterr().out
    assert json.loads(shown)["disabled"] is False and new not in shown and "sha256$" not in shown
    assert run(config_dir, "clients", "remove", "job") == 0
    assert run(config_dir, "clients", "show", "job") == 1


@pytest.mark.parametrize(
    ("argv", "status", "said"),
    [
        (("clients", "remove", "test"), 1, "clients file"),
        (("clients", "rotate-secret", "nope"), 1, "no client 'nope'"),
        (
            ("clients", "add", "--store", "--name", "x", "--redirect-uri", "nope"),
            2,
            "invalid_redirect_uri",
        ),
        (
            (
                "clients",
                "add",
                "--store",
                "--name",
                "x",
                "--client-id",
                "test",
                "--grant-type",
                "client_credentials",
            ),
            2,
            "conflict",
        ),
    ],
)
def test_store_commands_refuse_clearly(config_dir, capsys, argv, status, said):
    assert run(config_dir, *argv) == status
    assert said in capsys.readouterr().err
    assert run(config_dir, "clients", "list") == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [
        "sp-demo",
        "test",
        "admin",
    ]


def test_clients_add_store_keeps_the_openid_connect_and_dpop_options(config_dir, capsys):
    """``--store`` takes the same options as the clients file: none is dropped silently,
    and a combination the store refuses is refused (exit status 2), not stored."""
    base = ("clients", "add", "--store", "--name", "Web", "--redirect-uri", CALLBACK)
    assert run(config_dir, *base, "--client-id", "bound", "--dpop-bound-access-tokens") == 0
    capsys.readouterr()
    assert run(config_dir, "clients", "show", "bound") == 0
    assert json.loads(capsys.readouterr().out)["dpop_bound_access_tokens"] is True
    implicit = ("--grant-type", "authorization_code", "--grant-type", "implicit")
    refused = run(
        config_dir, *base, "--client-id", "front", *implicit, "--dpop-bound-access-tokens"
    )
    assert refused == 2
    assert "dpop_bound_access_tokens" in capsys.readouterr().err
    assert run(config_dir, "clients", "show", "front") == 1
