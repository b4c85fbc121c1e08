"""Reload bookkeeping (the servers themselves are driven in tests/e2e/test_reload.py)
and the one log format."""

from __future__ import annotations

import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from app.logconfig import FORMAT, IsoFormatter
from app.reload import Readiness


def test_wait_is_true_once_every_worker_of_the_generation_reported():
    readiness = Readiness()
    readiness.report(0)
    readiness.report(1)
    assert readiness.wait(1, 2, timeout=0) is False  # one of two so far
    readiness.report(1)
    assert readiness.wait(1, 2, timeout=5) is True
    assert readiness.wait(0, 1, timeout=0) is True


def test_wait_gives_up_after_the_timeout_when_nobody_reports():
    assert Readiness().wait(3, 1, timeout=0) is False


@given(
    reports=st.lists(st.integers(0, 10**6), max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_reports_count_the_same_however_the_pipe_splits_them(reports, cuts):
    readiness = Readiness()
    data = b"".join(b"%d\n" % generation for generation in reports)
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in zip(edges, edges[1:], strict=False):
        readiness._take(data[start:end])
    assert readiness._seen == {g: reports.count(g) for g in set(reports)}


def test_log_lines_start_with_an_iso_utc_timestamp():
    record = logging.LogRecord("oauth2", 25, __file__, 1, "reload complete", None, None)
    record.created = 1_796_169_600.25  # 2026-12-02T00:00:00.250Z
    record.levelname = "NOTICE"
    line = IsoFormatter(FORMAT).format(record)
    assert line == "2026-12-02T00:00:00.250Z NOTICE oauth2: reload complete"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line)


def test_a_reload_holds_what_only_a_restart_changes(tmp_path, dummy_site, caplog):
    """A reload applies what it can (the log level here) and keeps the running value of
    what the running server cannot take (its port, the log format given to the server,
    the metrics' folder made at start, the admin listener), saying which."""
    import json

    from app.reload import Configuration
    from app.serve import load_checked
    from app.settings import Settings
    from tests.conftest import config_folder

    folder, config = config_folder(
        tmp_path,
        dummy_site,
        "reload",
        auth_server={"port": 8181},
        logging={"level": "notice", "format": "text"},
    )
    settings = Settings.load(config_dir=str(folder), environ={})
    configuration = Configuration(settings, load_checked(settings), load_checked)
    config["auth_server"]["port"] = 8282
    config["logging"] = {"level": "debug", "format": "json"}
    config["metrics"] = {"enabled": True, "token_hash": "sha256$" + "0" * 64}
    (folder / "default.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="oauth2"):
        configuration.reload()
    fresh = configuration.settings
    assert fresh is not settings and fresh.config.logging.level == "debug"
    assert fresh.auth.port == 8181
    assert fresh.config.logging.format == "text"
    assert fresh.config.metrics.enabled is False
    assert fresh.config.metrics.token_hash is None  # held with it
    assert (
        "reload: auth_server.port, logging.format, metrics.enabled changed; "
        "the running value holds until a restart"
    ) in caplog.text

    # Metrics on with a token, then both dropped: held together, the pair still checks
    # out (metrics on needs a token), so the rest of the reload applies.
    token = "sha256$" + "1" * 64
    config["metrics"] = {"enabled": True, "token_hash": token}
    config["auth_server"]["port"] = 8181
    (folder / "default.json").write_text(json.dumps(config))
    on = Settings.load(config_dir=str(folder), environ={})
    configuration = Configuration(on, load_checked(on), load_checked)
    config["metrics"] = {"enabled": False}
    config["logging"] = {"level": "info", "format": "text"}
    (folder / "default.json").write_text(json.dumps(config))
    configuration.reload()
    held = configuration.settings
    assert held is not on and held.config.logging.level == "info"
    assert (held.config.metrics.enabled, held.config.metrics.token_hash) == (True, token)
