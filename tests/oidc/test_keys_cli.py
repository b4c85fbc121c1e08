"""``oauth2-server keys``, the keys secret setting, and start-up: what operators see.

Run in-process against a config folder on SQLite; the ring's behaviour on every backend
is in ``tests/storage/test_key_ring.py``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from joserfc import jwt

from app import create_app
from app.cli import main
from app.config_model import ConfigError
from app.oidc.keys import KeyRing, prepare
from app.settings import Settings
from app.storage import Storage
from tests.conftest import close_app

ROOT = Path(__file__).resolve().parents[2]
SESSION_SECRET = "keys-cli-session-secret-" + "s" * 16
PRIVATE = ("d", "p", "q", "dp", "dq", "qi")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("OAUTH2"):
            monkeypatch.delenv(name)


@pytest.fixture
def config_dir(tmp_path, dummy_site) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    host, port = dummy_site
    default = {
        "auth_server": {"session_secret": SESSION_SECRET},
        "storage": {"default": f"sqlite:///{tmp_path}/keys.db"},
        "resource_server": {"type": "dummy", "host": host, "port": port},
        "client_credentials": {"file": str(ROOT / "clients.json.example")},
    }
    (folder / "default.json").write_text(json.dumps(default))
    return folder


def run(config_dir: Path, *argv: str) -> int:
    return main(["--config-dir", str(config_dir), *argv])


def settings_of(config_dir: Path, **environ: str) -> Settings:
    return Settings.load(config_dir=str(config_dir), environ=environ)


def open_ring(config_dir: Path, **environ: str) -> tuple[KeyRing, Storage]:
    settings = settings_of(config_dir, **environ)
    storage = Storage(settings.storage_specs)
    return KeyRing.from_settings(storage.keys, settings), storage


def private_values(config_dir: Path) -> list[str]:
    ring, storage = open_ring(config_dir)
    try:
        return [e["jwk"][m] for e in ring.ring()["keys"] for m in PRIVATE if m in e["jwk"]]
    finally:
        storage.close()


def rows(out: str) -> list[dict[str, str]]:
    lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
    header, *body = lines
    return [dict(zip(header, line, strict=True)) for line in body]


def test_db_upgrade_makes_the_ring_encrypted_and_list_shows_no_private_member(config_dir, capsys):
    assert run(config_dir, "db", "upgrade") == 0
    assert "signing keys: ready, encrypted" in capsys.readouterr().out
    secrets = private_values(config_dir)
    assert len(secrets) == 2 * 6 + 2  # two RSA keys (six members), two EC keys (d)

    assert run(config_dir, "keys", "list") == 0
    out = capsys.readouterr().out
    listed = rows(out)
    assert sorted((row["alg"], row["state"]) for row in listed) == [
        ("ES256", "active"),
        ("ES256", "next"),
        ("RS256", "active"),
        ("RS256", "next"),
    ]
    assert "private keys: encrypted" in out
    assert not any(value in out for value in secrets)
    assert SESSION_SECRET not in out


def test_rotate_refuses_a_next_key_published_too_briefly_then_force(config_dir, capsys):
    assert run(config_dir, "db", "upgrade") == 0
    capsys.readouterr()
    before = {(row["alg"], row["state"]): row["kid"] for row in list_keys(config_dir, capsys)}

    assert run(config_dir, "keys", "rotate") == 1
    captured = capsys.readouterr()
    assert "keys rotate refused" in captured.err and "--force" in captured.err
    assert "630 s" in captured.err  # jwks_max_age (600) + the workers' re-read (30)
    assert {(r["alg"], r["state"]): r["kid"] for r in list_keys(config_dir, capsys)} == before

    secrets = private_values(config_dir)
    assert run(config_dir, "keys", "rotate", "--force", "--alg", "RS256") == 0
    out = capsys.readouterr().out
    assert f"RS256: {before['RS256', 'next']} signs now" in out
    assert f"RS256: {before['RS256', 'active']} retired" in out
    assert "ES256" not in out
    assert not any(value in out for value in secrets)
    after = {(r["alg"], r["state"]): r["kid"] for r in list_keys(config_dir, capsys)}
    assert after["RS256", "active"] == before["RS256", "next"]
    assert after["RS256", "retired"] == before["RS256", "active"]
    assert after["RS256", "next"] not in before.values()
    assert after["ES256", "active"] == before["ES256", "active"]

    # The rotation is audited, by kid; no key material.
    assert run(config_dir, "audit", "tail") == 0
    trail = capsys.readouterr().out
    assert "keys_rotated" in trail and before["RS256", "next"] in trail and "forced=True" in trail
    assert not any(value in trail for value in secrets + private_values(config_dir))


def list_keys(config_dir: Path, capsys) -> list[dict[str, str]]:
    assert run(config_dir, "keys", "list") == 0
    return rows(capsys.readouterr().out)


def test_another_secret_stops_check_and_names_the_fix(config_dir, capsys, monkeypatch):
    assert run(config_dir, "check") == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["keys"]["encrypted"] is True
    active = report["keys"]["active"]["RS256"]

    # The operator changes the session secret, which the keys were encrypted with.
    monkeypatch.setenv("OAUTH2_SESSION_SECRET", "a-brand-new-session-secret-0123456")
    assert run(config_dir, "check") == 2
    err = capsys.readouterr().err
    assert "oidc.keys_secret: the signing keys in storage were encrypted with another" in err
    assert "keys reset" in err and "a-brand-new" not in err and SESSION_SECRET not in err
    assert run(config_dir, "keys", "list") == 2
    capsys.readouterr()

    # Fix one: the previous secret as the keys secret.
    monkeypatch.setenv("OAUTH2_KEYS_SECRET", SESSION_SECRET)
    assert run(config_dir, "check") == 0
    assert json.loads(capsys.readouterr().out)["keys"]["active"]["RS256"] == active

    # Fix two: a new ring (asks for --yes first).
    monkeypatch.delenv("OAUTH2_KEYS_SECRET")
    assert run(config_dir, "keys", "reset") == 1
    assert "--yes" in capsys.readouterr().err
    assert run(config_dir, "keys", "reset", "--yes") == 0
    capsys.readouterr()
    assert run(config_dir, "check") == 0
    assert json.loads(capsys.readouterr().out)["keys"]["active"]["RS256"] != active


def test_no_secret_stores_the_keys_in_the_clear_and_says_so(tmp_path, caplog):
    settings = Settings.load({"storage": {"default": f"sqlite:///{tmp_path}/plain.db"}})
    assert settings.keys_secret is None
    storage = Storage(settings.storage_specs)
    try:
        storage.migrate()
        with caplog.at_level(logging.WARNING, logger="oauth2"):
            state = prepare(settings, storage)
        assert state["encrypted"] is False
        assert "stored unencrypted" in caplog.text
        assert "d" in storage.keys.get("ring")["keys"][0]["jwk"]  # type: ignore[index]
    finally:
        storage.close()


def test_keys_secret_setting_env_and_repr():
    settings = Settings.load({}, environ={"OAUTH2_KEYS_SECRET": "k" * 32})
    assert settings.oidc.keys_secret == "k" * 32
    assert settings.keys_secret == "k" * 32
    assert "k" * 32 not in repr(settings.oidc) and "k" * 32 not in repr(settings.config)
    session_only = Settings.load({"auth_server": {"session_secret": "s" * 32}}, environ={})
    assert session_only.keys_secret == "s" * 32


PRODUCTION = {
    "auth_server": {"url": "https://id.example", "session_secret": "p" * 32},
    "resource_server": {
        "type": "http",
        "base_url": "https://site.example",
        "scopes": {"read": "Read"},
    },
    "client_credentials": {"file": "/etc/oauth2/clients.json"},
}


def test_production_uses_the_session_secret_and_refuses_a_weak_keys_secret():
    env = {"OAUTH2_ENV": "production"}
    # A production config of today starts: its session secret encrypts the keys.
    assert Settings.load(PRODUCTION, environ=env).keys_secret == "p" * 32
    with pytest.raises(ConfigError) as caught:
        Settings.load(PRODUCTION, environ={**env, "OAUTH2_KEYS_SECRET": "short"})
    assert any(line.startswith("oidc.keys_secret: ") for line in caught.value.problems)


def test_logs_at_debug_hold_no_private_key_material(config_dir, caplog, dummy_site):
    settings = settings_of(config_dir)
    with caplog.at_level(logging.DEBUG):
        app = create_app(settings)  # migrates
        try:
            prepare(settings, app.extensions["oauth2"].storage)
            client = app.test_client()
            answer = client.get("/jwks.json")
            app.extensions["oauth2"].keys.signing_key("RS256")
        finally:
            close_app(app)
    secrets = private_values(config_dir)
    assert not any(value in caplog.text for value in secrets)
    assert SESSION_SECRET not in caplog.text
    # The JWKS: public halves only, every published key, cacheable for jwks_max_age.
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "public, max-age=600"
    published = answer.get_json()["keys"]
    assert len(published) == 4
    assert all(set(key) & set(PRIVATE) == set() for key in published)
    assert not any(value in answer.get_data(as_text=True) for value in secrets)


def test_a_token_signed_with_the_active_key_verifies_against_the_jwks(config_dir):
    assert run(config_dir, "db", "upgrade") == 0
    ring, storage = open_ring(config_dir)
    try:
        key = ring.signing_key("ES256")
        token = jwt.encode({"alg": "ES256", "kid": key.kid}, {"sub": "u1"}, key)
        assert ring.verify(token).claims["sub"] == "u1"
        assert repr(ring).count("key_id") == 1 and SESSION_SECRET not in repr(ring)
    finally:
        storage.close()


def test_a_reload_with_another_keys_secret_is_refused(config_dir, monkeypatch):
    from app.reload import Configuration
    from app.serve import load_checked

    settings = settings_of(config_dir)
    assert run(config_dir, "db", "upgrade") == 0
    configuration = Configuration(settings, load_checked(settings), load_checked)
    monkeypatch.setenv("OAUTH2_KEYS_SECRET", "a-keys-secret-nobody-used-" + "z" * 10)
    configuration.reload()  # logs "reload refused" and keeps the running configuration
    assert configuration.settings is settings
    monkeypatch.setenv("OAUTH2_KEYS_SECRET", SESSION_SECRET)
    configuration.reload()
    assert configuration.settings.keys_secret == SESSION_SECRET
