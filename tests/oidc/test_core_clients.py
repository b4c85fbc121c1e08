"""The clients file's OpenID Connect metadata (RFC 7591 names) and ``clients add``."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.clients import ClientFileError, load_clients_file, parse_client
from tests.conftest import authorize_url, basic, table
from tests.factories import REDIRECT, SECRET, login, make_client
from tests.oauth2.conftest import open_app, redirect_error
from tests.oidc.core_helpers import code_for, decode

SCOPES = ["read-only", "read-write"]


def parse(**fields):
    return parse_client(make_client("c1", **fields), 0, SCOPES, allow_wildcard=False)


def test_new_format_fields_are_read():
    client = parse(
        client_name="Partner C",
        post_logout_redirect_uris=["https://c.example/bye"],
        response_types=["code"],
        token_endpoint_auth_method="client_secret_post",
        id_token_signed_response_alg="ES256",
        subject_type="pairwise",
        redirect_uris=["https://c.example/cb"],
        backchannel_logout_uri="https://c.example/bc",
        backchannel_logout_session_required=True,
        skip_consent=True,
        scopes=["openid", "email", "read-only"],
    )
    assert client.name == "c1"  # make_client sets ``name``, which wins over client_name
    assert client.post_logout_redirect_uris == ["https://c.example/bye"]
    assert client.response_types == ["code"]
    assert client.token_endpoint_auth_method == "client_secret_post"
    assert client.id_token_signed_response_alg == "ES256"
    assert client.subject_type == "pairwise" and client.sector_identifier is None
    assert client.backchannel_logout_uri == "https://c.example/bc"
    assert client.backchannel_logout_session_required is True
    assert client.skip_consent is True
    assert client.scopes == ["openid", "email", "read-only"]


def test_client_name_is_an_alias_of_name():
    entry = make_client("c1", client_name="Partner C")
    del entry["name"]
    assert parse_client(entry, 0, SCOPES, allow_wildcard=False).name == "Partner C"


def test_defaults_know_every_oidc_scope_and_keep_the_adapters_first():
    client = parse()
    assert client.scopes[:2] == SCOPES
    assert {"openid", "profile", "email", "address", "phone", "offline_access"} <= set(
        client.scopes
    )
    assert client.get_allowed_scope(None) == "read-only"
    assert client.subject_type == "public" and client.response_types is None


def test_sector_identifier_uri_names_the_sector():
    client = parse(
        subject_type="pairwise",
        redirect_uris=["https://a.example/cb", "https://b.example/cb"],
        sector_identifier_uri="https://sector.example/uris.json",
    )
    assert client.sector_identifier == "sector.example"


def test_token_endpoint_auth_method_none_makes_a_public_client():
    entry = make_client("c1", secret=None, token_endpoint_auth_method="none")
    del entry["public"]
    assert parse_client(entry, 0, SCOPES, allow_wildcard=False).public is True


@pytest.mark.parametrize(
    ("fields", "named"),
    table(
        [
            ("unknown scope", {"scopes": ["openid", "admin"]}, "scopes: unknown scope(s) admin"),
            ("scopes not a list", {"scopes": "openid"}, "scopes: expected a list"),
            ("bad response type", {"response_types": ["code id_token"]}, "response_types"),
            (
                "response type without its grant",
                {"response_types": ["id_token"]},
                "needs the implicit grant",
            ),
            ("bad auth method", {"token_endpoint_auth_method": "private_key_jwt"}, "auth_method"),
            ("none with a secret", {"token_endpoint_auth_method": "none"}, "public"),
            ("bad alg", {"id_token_signed_response_alg": "HS256"}, "RS256, ES256"),
            ("bad subject type", {"subject_type": "secret"}, "subject_type"),
            (
                "pairwise on two hosts",
                {
                    "subject_type": "pairwise",
                    "redirect_uris": ["https://a.example/cb", "https://b.example/cb"],
                },
                "sector_identifier_uri",
            ),
            (
                "plain http sector",
                {"sector_identifier_uri": "http://a.example/s.json"},
                "sector_identifier_uri",
            ),
            ("bad logout uri", {"post_logout_redirect_uris": ["/bye"]}, "post_logout_redirect"),
            ("logout uris not a list", {"post_logout_redirect_uris": "x"}, "expected a list"),
            (
                "backchannel with fragment",
                {"backchannel_logout_uri": "https://a.example/bc#x"},
                "backchannel_logout_uri",
            ),
            ("skip_consent not a flag", {"skip_consent": "yes"}, "skip_consent: must be true"),
            ("client_name not text", {"client_name": 7, "name": None}, "client_name"),
        ]
    ),
)
def test_every_problem_is_named(fields, named):
    entry = make_client("c1", **fields)
    if entry.get("name") is None:
        entry.pop("name")
    with pytest.raises(ClientFileError) as error:
        parse_client(entry, 0, SCOPES, allow_wildcard=False)
    assert "'c1'" in str(error.value)
    assert named in str(error.value)


def test_production_refuses_plain_http_logout_uris(tmp_path):
    entry = make_client(
        "c1",
        secret="a-real-secret-" + "y" * 20,
        redirect_uris=["https://c.example/cb"],
        post_logout_redirect_uris=["http://c.example/bye"],
        backchannel_logout_uri="http://c.example/bc",
    )
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([entry]))
    assert load_clients_file(path, SCOPES)["c1"].backchannel_logout_uri  # fine in development
    with pytest.raises(ClientFileError) as error:
        load_clients_file(path, SCOPES, production=True)
    assert "http://c.example/bye" in str(error.value)
    assert "http://c.example/bc" in str(error.value)
    entry.update(
        post_logout_redirect_uris=["http://127.0.0.1:9000/bye"],
        backchannel_logout_uri="http://127.0.0.1:9000/bc",
    )
    path.write_text(json.dumps([entry]))
    assert load_clients_file(path, SCOPES, production=True)  # loopback is fine


# -- honoured at the endpoints ----------------------------------------------------------
CLIENTS = [
    make_client("basic-only", token_endpoint_auth_method="client_secret_basic"),
    make_client("post-only", token_endpoint_auth_method="client_secret_post"),
    make_client(
        "code-type", response_types=["code"], grant_types=["authorization_code", "implicit"]
    ),
]


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_app(tmp_path, dummy_site, clients=CLIENTS) as app:
        yield app


def token_request(client, client_id: str, how: str):
    code = code_for(client, client_id, scope="openid")
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if how == "basic":
        return client.post("/token", data=data, headers=basic(client_id))
    return client.post("/token", data={**data, "client_id": client_id, "client_secret": SECRET})


@pytest.mark.parametrize(
    ("client_id", "how", "status"),
    [
        ("basic-only", "basic", 200),
        ("basic-only", "post", 401),
        ("post-only", "post", 200),
        ("post-only", "basic", 401),
    ],
)
def test_the_registered_auth_method_is_the_only_one(app, client_id, how, status):
    client = app.test_client()
    response = token_request(client, client_id, how)
    assert response.status_code == status, response.get_json()
    if status == 200:
        assert decode(client, response.get_json()["id_token"]).claims["aud"] == [client_id]
    else:
        assert response.get_json()["error"] == "invalid_client"


def test_registered_response_types_limit_the_client(app):
    client = app.test_client()
    login(client)
    url = authorize_url(client_id="code-type", response_type="token")
    assert redirect_error(client.get(url), fragment=True) == "unauthorized_client"
    assert client.get(authorize_url(client_id="code-type")).status_code == 200


# -- clients add --------------------------------------------------------------------------
@pytest.fixture
def config_dir(tmp_path, dummy_site, monkeypatch):
    from tests.conftest import config_folder

    for name in [n for n in __import__("os").environ if n.startswith("OAUTH2")]:
        monkeypatch.delenv(name)
    clients = {"file": str(tmp_path / "clients.json")}
    return config_folder(tmp_path, dummy_site, "cli", client_credentials=clients)[0]


def add(config_dir, *argv: str) -> int:
    base = ["--config-dir", str(config_dir), "clients", "add", "--name", "RP", "--client-id", "rp"]
    return main([*base, "--redirect-uri", "https://rp.example/cb", *argv])


def test_clients_add_writes_the_oidc_fields(tmp_path, config_dir, capsys):
    code = add(
        config_dir,
        *("--scope", "openid", "--scope", "email"),
        *("--token-endpoint-auth-method", "client_secret_post"),
        *("--post-logout-redirect-uri", "https://rp.example/bye"),
        *("--id-token-signed-response-alg", "ES256"),
        *("--subject-type", "pairwise"),
        *("--backchannel-logout-uri", "https://rp.example/bc"),
        "--backchannel-logout-session-required",
        "--skip-consent",
        *("--response-type", "code"),
    )
    assert code == 0, capsys.readouterr().err
    [entry] = json.loads((tmp_path / "clients.json").read_text())
    assert entry["client_secret_hash"].startswith("sha256$")
    assert entry["scopes"] == ["openid", "email"]
    assert entry["token_endpoint_auth_method"] == "client_secret_post"
    assert entry["post_logout_redirect_uris"] == ["https://rp.example/bye"]
    assert entry["id_token_signed_response_alg"] == "ES256"
    assert entry["subject_type"] == "pairwise"
    assert entry["backchannel_logout_uri"] == "https://rp.example/bc"
    assert entry["backchannel_logout_session_required"] is True
    assert entry["skip_consent"] is True
    assert entry["response_types"] == ["code"]


def test_clients_add_auth_method_none_is_a_public_client(tmp_path, config_dir, capsys):
    assert add(config_dir, "--token-endpoint-auth-method", "none") == 0
    assert "client_secret" not in capsys.readouterr().out
    [entry] = json.loads((tmp_path / "clients.json").read_text())
    assert entry["public"] is True and "client_secret_hash" not in entry


def test_clients_add_refuses_bad_oidc_metadata(tmp_path, config_dir, capsys):
    assert (
        add(config_dir, "--subject-type", "pairwise", "--redirect-uri", "https://x.example/") == 2
    )
    assert "sector_identifier_uri" in capsys.readouterr().err
    assert not (tmp_path / "clients.json").exists()
