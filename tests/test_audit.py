"""The audit trail: bounded fields, a retention period, lines nobody can forge."""

from __future__ import annotations

import base64
import logging
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import create_app
from app.audit import HIDDEN, MAX_FIELD, bounded, fields_line, printable
from app.settings import ConfigError, Settings
from tests.conftest import base_config, close_app, login

FORGED = "alice\n2026-01-01T00:00:00Z login user_id=admin"


def test_failed_client_authentication_audits_a_bounded_client_id(client, state):
    long_id = "x" * 4000
    raw = base64.b64encode(f"{long_id}:secret".encode()).decode()
    client.post(
        "/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    record = state.storage.audit.recent(1)[0]
    assert record["event"] == "client_auth_failed"
    assert len(record["client_id"]) <= MAX_FIELD
    assert record["client_id"].startswith("x" * 40)


def test_bounded_keeps_short_values_and_tells_long_ones_apart():
    assert bounded("test") == "test"
    assert bounded(7) == 7
    assert bounded("a" * 100) != bounded("a" * 101)
    assert len(bounded("a" * 100)) == MAX_FIELD


def test_retention_days_is_the_audit_tables_lifetime(tmp_path, dummy_site):
    settings = Settings.load(base_config(tmp_path, dummy_site), environ={})
    assert settings.storage_specs["audit"].ttl == 90 * 86400
    kept = Settings.load(base_config(tmp_path, dummy_site, audit={"retention_days": 0}), environ={})
    assert kept.storage_specs["audit"].ttl == 0


def test_an_app_expires_its_audit_rows_after_the_retention(tmp_path, dummy_site):
    app = create_app(base_config(tmp_path, dummy_site, audit={"retention_days": 7}))
    try:
        assert app.extensions["oauth2"].storage.audit.ttl == 7 * 86400
    finally:
        close_app(app)


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"audit": {"retention_days": -1}}, "audit.retention_days"),
        ({"audit": {"retention_days": "90"}}, "audit.retention_days"),
        ({"audit": {"keep": 1}}, "audit.keep"),
    ],
)
def test_bad_audit_settings_name_the_key(tmp_path, dummy_site, over, key):
    with pytest.raises(ConfigError, match=key):
        Settings.load(base_config(tmp_path, dummy_site, **over), environ={})


def test_an_audit_ttl_in_storage_is_refused_for_the_one_key(tmp_path, dummy_site):
    config = base_config(tmp_path, dummy_site)
    config["storage"]["audit"] = {"url": config["storage"]["default"], "ttl": 60}
    with pytest.raises(ConfigError, match="audit.retention_days"):
        Settings.load(config, environ={})


# -- rendering for logs and ``audit tail`` ----------------------------------------------
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("alice", "alice"),
        ("a b", '"a b"'),
        ("a=b", '"a=b"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("a\nb", '"a\\x0ab"'),
        ("a\x1b[31mb", '"a\\x1b[31mb"'),
        ("a\u202eb", '"a\\u202eb"'),
        ("a\u2028b", '"a\\u2028b"'),
        ("", '""'),
    ],
    ids=[
        "plain",
        "space",
        "equals",
        "quote",
        "backslash",
        "newline",
        "ansi",
        "bidi",
        "lsep",
        "empty",
    ],
)
def test_printable_quotes_and_escapes(value, shown):
    assert printable(value) == shown


@given(st.dictionaries(st.text(), st.text() | st.integers() | st.none(), max_size=5))
def test_a_fields_line_shows_nothing_hidden_and_one_pair_per_field(fields):
    line = fields_line(fields)
    assert not any(unicodedata.category(c) in HIDDEN for c in line)
    shown = [k for k, v in fields.items() if v is not None]
    assert line == " ".join(f"{printable(k)}={printable(fields[k])}" for k in shown)
    for key in shown:  # each token is one pair: no unquoted space or '=' inside
        token = printable(fields[key])
        assert token.startswith('"') or not any(c in token for c in ' ="')


def test_forged_username_cannot_forge_an_audit_tail_line(client, state, caplog):
    with caplog.at_level(logging.INFO, logger="oauth2.audit"):
        login(client, username=FORGED, password="wrong")
    record = state.storage.audit.recent(1)[0]
    assert record["username"] == FORGED[:MAX_FIELD]  # stored as given, bounded
    logged = [r.getMessage() for r in caplog.records if r.name == "oauth2.audit"]
    assert logged and all("\n" not in line for line in logged)
