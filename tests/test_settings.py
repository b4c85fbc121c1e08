"""Configuration: file layering, environment overrides, validation that names the key."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.settings import DEFAULTS, ConfigError, Settings, defaults_document
from app.storage.sqlite import sqlite_path

ROOT = Path(__file__).resolve().parents[1]
STRONG = "a-strong-secret-" + "q" * 24


def write(folder: Path, name: str, data) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A config folder whose default.json has what every test needs."""
    folder = tmp_path / "config"
    folder.mkdir()
    write(
        folder,
        "default.json",
        {
            "auth_server": {"port": 9000, "site_name": "From default"},
            "storage": {"default": f"sqlite:///{tmp_path}/settings.db"},
        },
    )
    return folder


def load(folder: Path, **environ: str) -> Settings:
    return Settings.load(config_dir=str(folder), environ=environ)


# -- layering -----------------------------------------------------------------------------
def test_files_merge_in_order_default_env_runtime(folder):
    write(folder, "development.json", {"auth_server": {"site_name": "From development"}})
    write(folder, "runtime.json", {"logging": {"level": "debug"}})
    settings = load(folder)
    assert settings.auth.port == 9000
    assert settings.auth.site_name == "From development"
    assert settings.config.logging.level == "debug"
    assert settings.log_level == logging.DEBUG
    assert [p.name for p in settings.sources] == [
        "default.json",
        "development.json",
        "runtime.json",
    ]


def test_runtime_wins_over_the_environment_file(folder):
    write(folder, "development.json", {"auth_server": {"site_name": "From development"}})
    write(folder, "runtime.json", {"auth_server": {"site_name": "From runtime"}})
    assert load(folder).auth.site_name == "From runtime"


def test_oauth2_env_chooses_the_environment_file(folder):
    write(folder, "development.json", {"auth_server": {"site_name": "From development"}})
    write(folder, "staging.json", {"auth_server": {"site_name": "From staging"}})
    settings = load(folder, OAUTH2_ENV="staging")
    assert settings.env == "staging"
    assert settings.auth.site_name == "From staging"
    assert [p.name for p in settings.sources] == ["default.json", "staging.json"]


def test_config_folder_comes_from_oauth2_config_dir(folder):
    settings = Settings.load(environ={"OAUTH2_CONFIG_DIR": str(folder)})
    assert settings.auth.port == 9000
    assert settings.config_dir == str(folder)


def test_merge_is_deep_and_keeps_sibling_keys(folder):
    write(folder, "runtime.json", {"auth_server": {"views": {"login": "my-login"}}})
    views = load(folder).auth.views
    assert views.login == "my-login"
    assert views.dialog == "dialog"
    assert views.error == "error"


def test_unset_keys_keep_the_shipped_defaults(folder):
    settings = load(folder)
    assert settings.auth.max_body_bytes == DEFAULTS["auth_server"]["max_body_bytes"] == 65536
    assert settings.auth.url == "http://127.0.0.1:8081"


def test_storage_table_entry_is_replaced_whole(folder, tmp_path):
    write(folder, "development.json", {"storage": {"tokens": {"type": "Redis", "ttl": 60}}})
    write(folder, "runtime.json", {"storage": {"tokens": f"sqlite:///{tmp_path}/t.db"}})
    settings = load(folder)
    assert settings.storage_specs["tokens"].url == f"sqlite:///{tmp_path}/t.db"
    assert settings.storage_specs["codes"].url == f"sqlite:///{tmp_path}/settings.db"


def test_a_different_adapter_type_does_not_inherit_the_dummy_keys(folder):
    # The shipped defaults describe the dummy adapter (host, port); an http adapter's
    # section must not inherit them, or the adapter refuses them as unknown keys.
    http = {"type": "http", "base_url": "http://127.0.0.1:9", "scopes": {"read": "Read"}}
    write(folder, "runtime.json", {"resource_server": http})
    section = load(folder).resource_server
    assert section == http

    from app.adapters import load_adapter

    adapter = load_adapter(section)
    try:
        assert adapter.base_url == "http://127.0.0.1:9"
    finally:
        adapter.close()


def test_the_shipped_config_folder_loads():
    settings = Settings.load(config_dir=str(ROOT / "config"), environ={})
    assert settings.auth.port == 8081
    assert settings.resource_server["type"] == "dummy"


def test_overrides_alone_read_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "default.json", {"auth_server": {"port": 1}})
    settings = Settings.load({"storage": {"default": f"sqlite:///{tmp_path}/x.db"}}, environ={})
    assert settings.sources == []
    assert settings.auth.port == 8081


# -- config folder, environment name and relative paths -----------------------------------
def test_a_missing_config_folder_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="--config-dir or set OAUTH2_CONFIG_DIR"):
        Settings.load(config_dir=str(tmp_path / "no-such-folder"), environ={})


def test_an_environment_without_its_file_is_an_error_naming_it(folder):
    with pytest.raises(ConfigError, match=r"OAUTH2_ENV='prodution': no .*prodution\.json"):
        load(folder, OAUTH2_ENV="prodution")


@pytest.mark.parametrize("env", ["development", "production"])
def test_the_builtin_environments_need_no_file_of_their_own(folder, env):
    # Set in the environment (not a file): what production asks of a configuration.
    own = {
        "OAUTH2__auth_server__url": json.dumps("https://auth.example"),
        "OAUTH2__client_credentials__file": "clients.json",
        "OAUTH2__resource_server": json.dumps(
            {"type": "http", "base_url": "https://site.example", "scopes": {"read": "Read"}}
        ),
    }
    settings = load(folder, OAUTH2_ENV=env, OAUTH2_SESSION_SECRET=STRONG, **own)
    assert settings.env == env
    assert [p.name for p in settings.sources] == ["default.json"]


def test_relative_paths_resolve_against_the_config_folders_parent(folder, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(folder, "runtime.json", {"storage": {"default": "sqlite:///var/oauth2.db?timeout=5"}})
    settings = load(folder)
    assert settings.root == tmp_path
    assert settings.storage_specs["codes"].url == f"sqlite:///{tmp_path}/var/oauth2.db?timeout=5"
    assert settings.resolve_path("./clients.json") == str(tmp_path / "clients.json")
    assert settings.resolve_path("/etc/tls/key.pem") == "/etc/tls/key.pem"


def test_relative_paths_resolve_against_the_project_when_no_folder_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.load({"storage": {"default": "sqlite:///var/x.db"}}, environ={})
    assert settings.storage_specs["tokens"].url == f"sqlite:///{ROOT}/var/x.db"


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "redis://127.0.0.1:6379/1"])
def test_urls_without_a_relative_file_are_kept(folder, url):
    write(folder, "runtime.json", {"storage": {"default": url}})
    assert load(folder).storage_specs["session"].url == url


@given(
    name=st.text(st.characters(blacklist_characters="\x00?/"), min_size=1).filter(
        lambda n: n not in (".", "..", ":memory:")
    )
)
def test_any_relative_sqlite_file_lands_under_the_root(name):
    settings = Settings.load({"storage": {"default": f"sqlite:///{name}"}}, environ={})
    path = Path(sqlite_path(settings.storage_specs["tokens"].url))
    assert path.is_absolute() and path.parent == ROOT


# -- environment --------------------------------------------------------------------------
def test_session_secret_from_the_environment_wins(folder):
    write(folder, "runtime.json", {"auth_server": {"session_secret": "from-the-file-" + "x" * 9}})
    settings = load(folder, OAUTH2_SESSION_SECRET=STRONG)
    assert settings.auth.session_secret == STRONG
    assert settings.flask_config()["SECRET_KEY"] == STRONG


@pytest.mark.parametrize(
    ("name", "raw", "section", "key", "value"),
    [
        ("OAUTH2__auth_server__port", "9999", "auth_server", "port", 9999),
        ("OAUTH2__AUTH_SERVER__PORT", "9998", "auth_server", "port", 9998),
        ("OAUTH2__auth_server__ssl", "false", "auth_server", "ssl", False),
        (
            "OAUTH2__auth_server__site_name",
            "Plain words",
            "auth_server",
            "site_name",
            "Plain words",
        ),
        ("OAUTH2__logging__level", "debug", "logging", "level", "debug"),
        (
            "OAUTH2__client_credentials__file",
            "/etc/clients.json",
            "client_credentials",
            "file",
            "/etc/clients.json",
        ),
    ],
)
def test_env_overrides_by_section_and_key(folder, name, raw, section, key, value):
    write(folder, "runtime.json", {"auth_server": {"port": 7000}})
    settings = load(folder, **{name: raw})
    assert getattr(getattr(settings.config, section), key) == value


def test_env_override_of_a_nested_storage_entry(folder, tmp_path):
    url = f"sqlite:///{tmp_path}/env.db"
    settings = load(folder, OAUTH2__storage__codes=url)
    assert settings.storage_specs["codes"].url == url
    assert settings.storage_specs["tokens"].url == f"sqlite:///{tmp_path}/settings.db"


def test_other_environment_variables_are_ignored(folder):
    settings = load(folder, OAUTH2_SOMETHING="1", HOME="/root", OAUTH2_="x")
    assert settings.auth.port == 9000


# -- validation ---------------------------------------------------------------------------
BAD_VALUES = [
    ({"nosuch": {}}, "nosuch"),
    ({"auth_server": {"bogus": 1}}, "auth_server.bogus"),
    ({"client_credentials": {"fiel": "x.json"}}, "client_credentials.fiel"),
    ({"logging": {"lvl": "debug"}}, "logging.lvl"),
    ({"storage": {"tokenz": "sqlite:///x.db"}}, "tokenz"),
    ({"auth_server": {"port": "8081"}}, "auth_server.port"),
    ({"auth_server": {"port": 70000}}, "auth_server.port"),
    ({"auth_server": {"port": 0}}, "auth_server.port"),
    ({"auth_server": {"port": True}}, "auth_server.port"),
    ({"auth_server": {"ssl": "yes"}}, "auth_server.ssl"),
    ({"auth_server": {"ssl": True}}, "auth_server.ssl_cert"),
    ({"auth_server": {"url": "ftp://auth.example"}}, "auth_server.url"),
    ({"auth_server": {"url": 8081}}, "auth_server.url"),
    ({"auth_server": {"num_workers": 0}}, "auth_server.num_workers"),
    ({"auth_server": {"num_workers": "many"}}, "auth_server.num_workers"),
    ({"auth_server": {"num_workers": True}}, "auth_server.num_workers"),
    ({"auth_server": {"server": "uwsgi"}}, "auth_server.server"),
    ({"auth_server": {"views": {"login": 5}}}, "auth_server.views.login"),
    ({"auth_server": {"views": "login"}}, "auth_server.views"),
    ({"auth_server": {"grant_types": ["password"]}}, "auth_server.grant_types"),
    ({"auth_server": {"max_body_bytes": 10}}, "auth_server.max_body_bytes"),
    ({"auth_server": {"max_body_bytes": "64k"}}, "auth_server.max_body_bytes"),
    ({"auth_server": {"refresh_grace_period": -1}}, "auth_server.refresh_grace_period"),
    ({"auth_server": {"refresh_grace_period": 3600}}, "auth_server.refresh_grace_period"),
    ({"auth_server": {"refresh_absolute_lifetime": -1}}, "auth_server.refresh_absolute_lifetime"),
    (
        {"auth_server": {"refresh_absolute_lifetime": "90d"}},
        "auth_server.refresh_absolute_lifetime",
    ),
    ({"auth_server": {"session_secret": 12345}}, "auth_server.session_secret"),
    ({"auth_server": []}, "auth_server"),
    (
        {"client_credentials": {"allow_wildcard_redirects": "yes"}},
        "client_credentials.allow_wildcard_redirects",
    ),
    ({"client_credentials": {"file": None}}, "client_credentials.file"),
    ({"logging": {"level": "loud"}}, "logging.level"),
    ({"logging": {"level": 7}}, "logging.level"),
    ({"resource_server": {"type": ""}}, "resource_server.type"),
    ({"storage": {"default": "mysql://db/x"}}, "storage.default"),
    ({"storage": {"tokens": {"url": "sqlite:///x.db", "ttl": -1}}}, "storage.tokens.ttl"),
    ({"storage": {"codes": {"type": "Mongo"}}}, "storage.codes.type"),
    ({"storage": {"session": 42}}, "storage.session"),
    (
        {"storage": {"session": {"url": "sqlite:///x.db", "options": [1]}}},
        "storage.session.options",
    ),
]


@pytest.mark.parametrize(("runtime", "named"), BAD_VALUES)
def test_bad_files_fail_naming_the_key(folder, runtime, named):
    write(folder, "runtime.json", runtime)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(folder)


@pytest.mark.parametrize(
    ("name", "raw", "named"),
    [
        ("OAUTH2__auth_server__port", "abc", "auth_server.port"),
        ("OAUTH2__auth_server__ssl", "maybe", "auth_server.ssl"),
        ("OAUTH2__auth_server__typo", "1", "auth_server.typo"),
        ("OAUTH2__logging__level", "shouting", "logging.level"),
    ],
)
def test_bad_environment_values_fail_naming_the_key(folder, name, raw, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(folder, **{name: raw})


@pytest.mark.parametrize(
    ("name", "content"),
    [("default.json", "{not json"), ("development.json", "[1, 2]"), ("runtime.json", "")],
)
def test_unreadable_files_fail_naming_the_file(folder, name, content):
    write(folder, name, content)
    with pytest.raises(ConfigError, match=re.escape(name)):
        load(folder)


def test_config_error_is_a_value_error_with_the_key_first(folder):
    write(folder, "runtime.json", {"auth_server": {"port": "x"}})
    with pytest.raises(ValueError, match=r"^auth_server\.port: "):
        load(folder)


# -- secrets and what they map to ---------------------------------------------------------
def _dev_secret() -> str:
    return json.loads((ROOT / "config/development.json").read_text())["auth_server"][
        "session_secret"
    ]


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "",
        "short",
        "$4$eRDyE/eQ$/F/mHVBpobUbTB7VcaFQ5GfaCNg$",  # the original server's published secret
        pytest.param(_dev_secret(), id="shipped-development-secret"),
    ],
)
def test_production_refuses_weak_session_secrets(folder, secret):
    write(
        folder,
        "production.json",
        {"auth_server": {"session_secret": secret, "url": "https://auth.example.com"}},
    )
    with pytest.raises(ConfigError, match=re.escape("auth_server.session_secret")):
        load(folder, OAUTH2_ENV="production")


def test_production_refuses_a_plain_http_url(folder):
    write(folder, "production.json", {"auth_server": {"session_secret": STRONG}})
    with pytest.raises(ConfigError, match=re.escape("auth_server.url")):
        load(folder, OAUTH2_ENV="production")


#: What production needs beside the URL and secret: a real site and the operator's clients.
OWN_SITE = {
    "resource_server": {
        "type": "http",
        "base_url": "https://www.example.com",
        "scopes": {"read": "Read"},
    },
    "client_credentials": {"file": "/etc/oauth2/clients.json"},
}


def test_production_accepts_a_strong_secret_from_the_environment(folder):
    write(
        folder, "production.json", {"auth_server": {"url": "https://auth.example.com"}, **OWN_SITE}
    )
    settings = load(folder, OAUTH2_ENV="production", OAUTH2_SESSION_SECRET=STRONG)
    assert settings.env == "production"
    assert settings.flask_config()["SECRET_KEY"] == STRONG


def test_development_without_a_secret_uses_a_random_one_and_warns(folder, caplog):
    settings = load(folder)
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        first = settings.flask_config()["SECRET_KEY"]
    second = settings.flask_config()["SECRET_KEY"]
    assert len(first) >= 32
    assert first != second
    assert "auth_server.session_secret" in caplog.text


def test_flask_config_maps_our_keys(folder):
    write(folder, "runtime.json", {"auth_server": {"max_body_bytes": 4096}})
    config = load(folder, OAUTH2_SESSION_SECRET=STRONG).flask_config()
    assert config["MAX_CONTENT_LENGTH"] == 4096
    assert config["SESSION_COOKIE_HTTPONLY"] is True
    assert config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert config["SESSION_COOKIE_SECURE"] is False
    assert config["PERMANENT_SESSION_LIFETIME"] == 1800


@pytest.mark.parametrize(
    "auth",
    [{"url": "https://auth.example"}, {"ssl": True, "ssl_cert": "c.pem", "ssl_key": "k.pem"}],
)
def test_cookies_are_secure_behind_https(folder, auth):
    write(folder, "runtime.json", {"auth_server": auth})
    config = load(folder, OAUTH2_SESSION_SECRET=STRONG).flask_config()
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["WTF_CSRF_SSL_STRICT"] is True


def test_num_workers(folder):
    assert load(folder).num_workers() == (os.cpu_count() or 1)
    write(folder, "runtime.json", {"auth_server": {"num_workers": 3}})
    assert load(folder).num_workers() == 3


def test_issuer_has_no_trailing_slash(folder):
    write(folder, "runtime.json", {"auth_server": {"url": "https://auth.example/"}})
    assert load(folder).issuer == "https://auth.example"


def test_storage_ttls_default_to_the_originals(folder):
    settings = load(folder)
    assert settings.ttl("codes") == 60
    assert settings.ttl("tokens") == 7200
    assert settings.ttl("session") == 1800


def test_production_refuses_every_development_stand_in_at_once(folder):
    write(folder, "production.json", {})
    with pytest.raises(ConfigError) as caught:
        load(folder, OAUTH2_ENV="production")
    keys = [line.split(":")[0] for line in str(caught.value).splitlines()]
    assert keys == [
        "auth_server.url",
        "auth_server.session_secret",
        "resource_server.type",
        "client_credentials.file",
    ]
    assert "clients.json.example holds the demo clients" in str(caught.value)


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"resource_server": {"type": "dummy"}}, "resource_server.type"),
        ({"resource_server": {"type": "app.adapters.dummy:DummyAdapter"}}, "resource_server.type"),
        ({"client_credentials": {"file": "./clients.json.example"}}, "client_credentials.file"),
    ],
)
def test_production_names_each_stand_in(folder, over, key):
    config = {"auth_server": {"url": "https://auth.example.com", "session_secret": STRONG}}
    write(folder, "production.json", {**config, **OWN_SITE, **over})
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ":"):
        load(folder, OAUTH2_ENV="production")


def test_development_keeps_the_stand_ins(folder):
    settings = load(folder)
    assert settings.resource_server["type"] == "dummy"
    assert settings.client_credentials.file.endswith("clients.json.example")


# -- one model, every problem at once -------------------------------------------------------
def test_the_shipped_default_json_is_the_model_s_defaults():
    # config/default.json is generated (`oauth2-server defaults`): it cannot drift.
    assert json.loads((ROOT / "config/default.json").read_text()) == defaults_document()


def test_every_problem_is_reported_at_once_each_naming_its_key(folder):
    write(
        folder,
        "runtime.json",
        {
            "auth_server": {"port": 0, "server": "uwsgi", "typo": 1},
            "limits": {"token": "lots"},
            "storage": {"codes": {"type": "Mongo"}},
        },
    )
    with pytest.raises(ConfigError) as caught:
        load(folder)
    named = [line.split(":")[0] for line in caught.value.problems]
    assert sorted(named) == [
        "auth_server.port",
        "auth_server.server",
        "auth_server.typo",
        "limits.token",
        "storage.codes.type",
    ]
    assert str(caught.value).count("\n") == 4


def test_production_lists_every_problem_together(folder):
    write(folder, "production.json", {"auth_server": {"session_secret": "short"}})
    with pytest.raises(ConfigError) as caught:
        load(folder, OAUTH2_ENV="production")
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "auth_server.url",
        "auth_server.session_secret",
        "resource_server.type",
        "client_credentials.file",
    ]


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_booleans_are_booleans_not_words(folder, value):
    # "no" used to be read as true; a bool key takes JSON true or false only.
    write(folder, "runtime.json", {"storage": {"auto_migrate": value}})
    with pytest.raises(ConfigError, match=re.escape("storage.auto_migrate")):
        load(folder)


def test_sections_are_typed_and_frozen(folder):
    settings = load(folder)
    assert settings.limits.lockout_after == 5
    with pytest.raises(ValueError, match="frozen"):
        settings.auth.port = 1  # type: ignore[misc]


def test_the_adapter_s_keys_are_checked_with_the_rest(folder):
    # Adapters declare their keys as models too: one run names every problem.
    write(
        folder,
        "runtime.json",
        {
            "auth_server": {"port": 0},
            "resource_server": {"type": "http", "base_url": "ftp://x", "scopes": {}, "tmeout": 5},
        },
    )
    with pytest.raises(ConfigError) as caught:
        load(folder)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "auth_server.port",
        "resource_server.base_url",
        "resource_server.scopes",
        "resource_server.tmeout",
    ]


def test_the_dummy_adapter_s_keys_are_typed(folder):
    write(folder, "runtime.json", {"resource_server": {"port": "8084", "hots": "x"}})
    with pytest.raises(ConfigError) as caught:
        load(folder)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "resource_server.hots",
        "resource_server.port",
    ]


@pytest.mark.parametrize("kind", [5, None, [], "", "no.such.module:Adapter"])
def test_a_bad_adapter_type_is_one_problem_never_a_crash(folder, kind):
    write(folder, "runtime.json", {"resource_server": {"type": kind}})
    with pytest.raises(ConfigError, match=re.escape("resource_server.type")):
        load(folder)


def test_storage_options_are_checked_by_their_backend_with_the_rest(folder):
    # Backends declare their options as models: a typo is named with every other problem.
    write(
        folder,
        "runtime.json",
        {
            "auth_server": {"port": 0},
            "storage": {
                "tokens": {"url": "redis://127.0.0.1:6379/1", "options": {"socket_timout": 1}},
                "codes": {"url": "redis://127.0.0.1:6379/1", "options": {"max_connections": "9"}},
                "users": {"url": "postgresql://db/x", "options": {"max_size": 0}},
            },
        },
    )
    with pytest.raises(ConfigError) as caught:
        load(folder)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "auth_server.port",
        "storage.codes.options.max_connections",
        "storage.tokens.options.socket_timout",
        "storage.users.options.max_size",
    ]


# -- serving --------------------------------------------------------------------------------
def test_threads_per_worker_reach_both_servers(folder):
    from app.serve import granian_options, gunicorn_options

    assert gunicorn_options(load(folder))["threads"] == 4  # the default
    write(folder, "runtime.json", {"auth_server": {"threads": 16, "num_workers": 3}})
    settings = load(folder)
    assert gunicorn_options(settings)["threads"] == 16
    assert gunicorn_options(settings)["workers"] == 3
    assert granian_options(settings)["blocking_threads"] == 16
    assert granian_options(settings)["workers"] == 3


def test_gunicorns_access_line_holds_no_query_and_no_referer(folder):
    """At ``debug`` gunicorn writes an access line; its default holds the whole request
    line and the referer, where an authorization request's code, state and hints are."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from app.serve import gunicorn_options

    options = gunicorn_options(load(folder))
    config = Config()
    config.set("access_log_format", options["access_log_format"])
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/cb?code=s3cr3t-code&state=st4te",
        "PATH_INFO": "/authorize",
        "QUERY_STRING": "code=s3cr3t-code&state=st4te",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.7",
        "HTTP_REFERER": "https://rp.example/cb?code=s3cr3t-code",
    }
    response = SimpleNamespace(status="302 FOUND", sent=0, headers=[])
    atoms = Logger(config).atoms(response, [], environ, timedelta(microseconds=1500))
    line = config.access_log_format % atoms
    assert line == '192.0.2.7 "GET /authorize HTTP/1.1" 302 0 1500'


@pytest.mark.parametrize("threads", [0, -1, 257, "many"])
def test_a_bad_thread_count_is_refused_naming_the_key(folder, threads):
    write(folder, "runtime.json", {"auth_server": {"threads": threads}})
    with pytest.raises(ConfigError, match="threads"):
        load(folder)
