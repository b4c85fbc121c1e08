"""The clients file: original and new formats, redirect matching, public clients."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app
from app.clients import ClientFileError, ClientRegistry, load_clients_file, parse_client
from app.secrets_hash import hash_chosen_secret, hash_random_secret
from tests.conftest import (
    CHALLENGE,
    REDIRECT,
    VERIFIER,
    authorize_url,
    base_config,
    basic,
    consent,
    location_params,
    login,
)

SEED = Path("/work/shared/fixtures/seed-clients.json")
SCOPES = ["read-only", "read-write"]


def write_clients(tmp_path: Path, entries, name: str = "clients.json") -> Path:
    path = tmp_path / name
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


def entry(**over) -> dict:
    """A valid new-format confidential client, secret ``s3cret``."""
    base = {
        "client_id": "c1",
        "name": "Client One",
        "client_secret_hash": hash_random_secret("s3cret"),
        "redirect_uris": ["https://c1.example/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def make(**over):
    return parse_client(entry(**over), 0, SCOPES, allow_wildcard=False)


@pytest.fixture
def make_app(tmp_path, dummy_site, closing):
    def build(clients_path: Path, **cc):
        config = base_config(tmp_path, dummy_site, client_credentials={"file": str(clients_path)})
        config["client_credentials"].update(cc)
        return closing(create_app(config))

    return build


# -- the original format ------------------------------------------------------------------
def test_seed_file_reads_unchanged_with_wildcards_allowed():
    clients = load_clients_file(SEED, SCOPES, allow_wildcard=True)
    assert set(clients) == {"sp-demo", "test"}
    assert clients["sp-demo"].name == "Stuff Nation IdP Demo"
    assert clients["test"].name == "Automated tests"
    for client in clients.values():
        assert client.check_client_secret("hunter2") is True
        assert client.check_client_secret("hunter3") is False
        assert client.check_client_secret("") is False
        assert client.public is False


def test_seed_flags_map_to_grant_types():
    clients = load_clients_file(SEED, SCOPES, allow_wildcard=True)
    assert sorted(clients["test"].grant_types) == [
        "authorization_code",
        "implicit",
        "refresh_token",
    ]
    assert clients["test"].check_response_type("code")
    assert clients["test"].check_response_type("token")
    assert not clients["test"].check_grant_type("client_credentials")


def test_example_file_gives_test_client_credentials():
    example = Path(__file__).resolve().parents[1] / "clients.json.example"
    clients = load_clients_file(example, SCOPES)
    assert clients["test"].check_grant_type("client_credentials")
    assert not clients["sp-demo"].check_grant_type("client_credentials")
    assert clients["sp-demo"].name == "Demo partner site"


def test_seed_wildcard_is_refused_by_default_naming_the_client():
    with pytest.raises(ClientFileError, match="'sp-demo'") as info:
        load_clients_file(SEED, SCOPES)
    assert '"*"' in str(info.value)


def test_allowed_wildcard_matches_any_valid_uri_but_not_malformed_ones():
    client = load_clients_file(SEED, SCOPES, allow_wildcard=True)["sp-demo"]
    assert client.check_redirect_uri("https://anywhere.example/cb") is True
    assert client.check_redirect_uri("javascript:alert(1)") is False
    assert client.check_redirect_uri("https://x.example/cb#frag") is False
    assert client.get_default_redirect_uri() is None


def test_seed_secrets_authenticate_at_token_endpoint(tmp_path, make_app):
    path = shutil.copy(SEED, tmp_path / "seed.json")
    app = make_app(Path(path), allow_wildcard_redirects=True)
    http = app.test_client()
    for client_id in ("sp-demo", "test"):
        response = http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers=basic(client_id, "hunter2"),
        )
        # Neither seed client may use client credentials: authenticated, then refused.
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"] == "unauthorized_client"
        wrong = http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers=basic(client_id, "hunter3"),
        )
        assert wrong.status_code == 401
        assert wrong.get_json()["error"] == "invalid_client"


# -- the new format -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "stored",
    [hash_random_secret("s3cret"), hash_chosen_secret("s3cret", iterations=1000)],
    ids=["sha256", "pbkdf2-sha256"],
)
def test_new_format_hash_schemes_verify(stored):
    client = make(client_secret_hash=stored)
    assert client.check_client_secret("s3cret") is True
    assert client.check_client_secret("s3cret2") is False
    assert client.check_endpoint_auth_method("client_secret_basic", "token")
    assert client.check_endpoint_auth_method("client_secret_post", "token")
    assert not client.check_endpoint_auth_method("none", "token")


def test_new_format_secret_authenticates_at_token_endpoint(tmp_path, make_app):
    path = write_clients(tmp_path, [entry(grant_types=["client_credentials"])])
    http = make_app(path).test_client()
    ok = http.post(
        "/token", data={"grant_type": "client_credentials"}, headers=basic("c1", "s3cret")
    )
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["token_type"] == "Bearer"
    bad = http.post("/token", data={"grant_type": "client_credentials"}, headers=basic("c1", "x"))
    assert bad.status_code == 401
    assert bad.get_json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"client_id": None}, "clients[0]: missing client_id"),
        ({"client_secret_hash": "md5$abcdef"}, "'c1'.client_secret_hash"),
        ({"client_secret_hash": None}, "'c1'"),
        ({"redirect_uris": "https://c1.example/cb"}, "'c1'.redirect_uris"),
        ({"redirect_uris": ["not a url"]}, "'c1'"),
        ({"redirect_uris": ["/relative/cb"]}, "'c1'"),
        ({"redirect_uris": ["ftp://c1.example/cb"]}, "'c1'"),
        ({"redirect_uris": ["https://c1.example/cb#frag"]}, "'c1'"),
        ({"redirect_uris": ["https://c1.example:99999/cb"]}, "'c1'"),
        ({"redirect_uris": ["*"]}, "'c1'"),
        ({"grant_types": ["password"]}, "'c1'.grant_types"),
        ({"grant_types": "authorization_code"}, "'c1'.grant_types"),
        ({"scopes": ["admin"]}, "'c1'.scopes"),
        ({"public": True}, "'c1'"),  # a public client with a secret
        (
            {"public": True, "client_secret_hash": None, "grant_types": ["client_credentials"]},
            "'c1'",
        ),
    ],
)
def test_bad_entries_are_refused_naming_the_client(tmp_path, bad, named):
    path = write_clients(tmp_path, [entry(**bad)])
    with pytest.raises(ClientFileError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_clients_file(path, SCOPES)


@pytest.mark.parametrize(
    "stored",
    ["pbkdf2-sha256$", "pbkdf2-sha256$1000$salt", "pbkdf2-sha256$many$salt$abcd"],
)
def test_malformed_hash_is_refused_at_load_naming_the_client(tmp_path, stored):
    # known_scheme() looks only at the prefix; a damaged value must fail at start,
    # not later as a 500 when the client authenticates.
    path = write_clients(tmp_path, [entry(client_secret_hash=stored)])
    with pytest.raises(ClientFileError, match="'c1'"):
        load_clients_file(path, SCOPES)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("not json", "not valid JSON"),
        ('{"client_id": "c1"}', "must hold a JSON list"),
        (json.dumps([entry(), entry()]), "'c1': listed twice"),
        (json.dumps(["c1"]), r"clients\[0\]"),
    ],
)
def test_bad_files_are_refused(tmp_path, content, named):
    path = write_clients(tmp_path, content)
    with pytest.raises(ClientFileError, match=named):
        load_clients_file(path, SCOPES)


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(ClientFileError, match="client_credentials.file"):
        load_clients_file(tmp_path / "nope.json", SCOPES)


def test_app_refuses_to_start_on_wildcard_naming_the_client(tmp_path, dummy_site):
    path = write_clients(tmp_path, [entry(client_id="wild", redirect_uris=["*"])])
    config = base_config(tmp_path, dummy_site, client_credentials={"file": str(path)})
    with pytest.raises(ClientFileError, match="'wild'"):
        create_app(config)


# -- redirect URIs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("registered", "asked", "ok"),
    [
        ("https://c1.example/cb", "https://c1.example/cb", True),
        ("https://c1.example/cb", "https://c1.example/cb/", False),
        ("https://c1.example/cb", "https://c1.example/cb?x=1", False),
        ("https://c1.example/cb", "https://c1.example:8443/cb", False),
        ("https://c1.example/cb", "http://c1.example/cb", False),
        ("https://c1.example/cb", "https://C1.example.evil.com/cb", False),
        ("https://c1.example/cb", "https://c1.example/cb#x", False),
        # RFC 8252 §7.3: loopback IP redirects match on any port.
        ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb", True),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:9/cb", True),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1/cb", True),
        ("http://[::1]:8080/cb", "http://[::1]:40000/cb", True),
        ("http://[::1]/cb", "http://[::1]:40000/cb", True),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:9/other", False),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:9/cb?x=1", False),
        ("http://127.0.0.1:8080/cb", "https://127.0.0.1:9/cb", False),
        ("http://127.0.0.1:8080/cb", "http://[::1]:9/cb", False),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.2:9/cb", False),
        ("http://localhost:8080/cb", "http://localhost:9/cb", False),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:notaport/cb", False),
        ("http://127.0.0.1:8080/cb", "http://evil.example@127.0.0.1:9/cb", False),
        # User-info tricks: the host these URIs send the browser to is evil.example.
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:80@evil.example/cb", False),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1@evil.example/cb", False),
        ("http://[::1]:8080/cb", "http://[::1]:80@evil.example/cb", False),
    ],
)
def test_redirect_uri_matching(registered, asked, ok):
    assert make(redirect_uris=[registered]).check_redirect_uri(asked) is ok


def test_loopback_any_port_through_authorize(tmp_path, make_app):
    path = write_clients(tmp_path, [entry(redirect_uris=["http://127.0.0.1:8080/cb"])])
    http = make_app(path).test_client()
    login(http)
    response = consent(http, authorize_url("c1", redirect_uri="http://127.0.0.1:50123/cb"))
    assert response.status_code == 302
    assert response.headers["Location"].startswith("http://127.0.0.1:50123/cb?code=")
    bad = http.get(authorize_url("c1", redirect_uri="http://127.0.0.1:80@evil.example/cb"))
    assert bad.status_code == 400
    assert "Location" not in bad.headers


def test_default_redirect_uri_only_for_a_single_fixed_uri():
    assert make().get_default_redirect_uri() == "https://c1.example/cb"
    two = make(redirect_uris=["https://c1.example/a", "https://c1.example/b"])
    assert two.get_default_redirect_uri() is None


# -- grants, scopes, public clients ------------------------------------------------------
def test_grant_types_limit_response_and_grant_types():
    client = make(grant_types=["authorization_code"])
    assert client.check_response_type("code") is True
    assert client.check_response_type("token") is False
    assert client.check_response_type("id_token") is False
    assert client.check_grant_type("authorization_code") is True
    assert client.check_grant_type("refresh_token") is False
    assert client.check_grant_type("client_credentials") is False


@pytest.mark.parametrize(
    ("scopes", "asked", "allowed"),
    [
        (["read-only"], None, "read-only"),
        (["read-only"], "", "read-only"),
        (["read-write", "read-only"], None, "read-write"),
        (["read-only"], "read-only", "read-only"),
        (["read-only"], "read-write", None),
        (["read-only"], "read-only read-write", None),
        (["read-only", "read-write"], "read-write read-only read-write", "read-write read-only"),
        (None, "read-write", "read-write"),  # no list: every scope of the adapter
        (None, "admin", None),
    ],
)
def test_scopes(scopes, asked, allowed):
    assert make(scopes=scopes).get_allowed_scope(asked) == allowed


def test_client_scopes_limit_authorize(tmp_path, make_app):
    path = write_clients(tmp_path, [entry(scopes=["read-only"])])
    http = make_app(path).test_client()
    login(http)
    response = http.get(
        authorize_url("c1", scope="read-write", redirect_uri="https://c1.example/cb")
    )
    assert response.status_code == 302
    assert location_params(response)["error"] == "invalid_scope"


def test_public_client_has_no_secret_and_uses_none_auth():
    client = make(public=True, client_secret_hash=None)
    assert client.public is True
    assert client.check_client_secret("") is False
    assert client.check_client_secret("anything") is False
    assert client.check_endpoint_auth_method("none", "token") is True
    assert client.check_endpoint_auth_method("client_secret_basic", "token") is False


def test_public_client_code_flow_requires_pkce(tmp_path, make_app):
    public = entry(client_id="pub", public=True, client_secret_hash=None, redirect_uris=[REDIRECT])
    http = make_app(write_clients(tmp_path, [public])).test_client()
    login(http)
    without = http.get(authorize_url("pub"))
    assert without.status_code == 302
    assert location_params(without)["error"] == "invalid_request"

    def code() -> str:
        url = authorize_url("pub", code_challenge=CHALLENGE, code_challenge_method="S256")
        return location_params(consent(http, url))["code"]

    form = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, "client_id": "pub"}
    no_verifier = http.post("/token", data={**form, "code": code()})
    assert no_verifier.status_code == 400
    secret = http.post("/token", data={**form, "code": code(), "client_secret": "x"})
    assert secret.status_code == 401
    token = http.post("/token", data={**form, "code": code(), "code_verifier": VERIFIER})
    assert token.status_code == 200, token.get_json()
    assert token.get_json()["access_token"]


# -- registry --------------------------------------------------------------------------------
def test_registry_get_of_empty_or_unknown_id_is_none(tmp_path):
    registry = ClientRegistry(str(write_clients(tmp_path, [entry()])), SCOPES)
    assert registry.get(None) is None
    assert registry.get("") is None
    assert registry.get("C1") is None


# -- per-client policy: IP allowlist and browser origins -----------------------------------
@pytest.mark.parametrize(
    "networks",
    [["10.0.0.0/8"], ["192.0.2.7"], ["2001:db8::/32", "::1"], ["10.1.2.3/8"], []],
)
def test_ip_allowlist_takes_networks_and_addresses(tmp_path, networks):
    path = write_clients(tmp_path, [entry(ip_allowlist=networks)])
    assert load_clients_file(path, SCOPES)["c1"].ip_allowlist == networks


@pytest.mark.parametrize(
    "networks", [["10.0.0.0/33"], ["example.com"], ["10.0.0.1", ""], [7], "10.0.0.0/8", [None]]
)
def test_a_bad_ip_allowlist_entry_stops_loading_in_every_environment(tmp_path, networks):
    path = write_clients(tmp_path, [entry(ip_allowlist=networks)])
    with pytest.raises(ClientFileError, match=r"^client 'c1'\.ip_allowlist: "):
        load_clients_file(path, SCOPES)


def public(**over) -> dict:
    return entry(client_secret_hash=None, public=True, **over)


@pytest.mark.parametrize(
    "origins", [["https://app.example.com"], ["http://localhost:8080", "http://[::1]:3000"], []]
)
def test_allowed_origins_of_a_public_client(tmp_path, origins):
    client = load_clients_file(write_clients(tmp_path, [public(allowed_origins=origins)]), SCOPES)
    assert client["c1"].allowed_origins == origins
    assert all(client["c1"].allows_origin(origin) for origin in origins)
    assert not client["c1"].allows_origin("https://evil.example")


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com/",
        "https://app.example.com/cb",
        "https://App.example.com",
        "https://app.example.com:443",
        "ftp://app.example.com",
        "https://user@app.example.com",
        "https://app.example.com?x",
        "app.example.com",
        "*",
        "null",
        7,
    ],
)
def test_an_origin_must_be_as_browsers_send_it(tmp_path, origin):
    path = write_clients(tmp_path, [public(allowed_origins=[origin])])
    with pytest.raises(ClientFileError, match=r"^client 'c1'\.allowed_origins: "):
        load_clients_file(path, SCOPES)


def test_a_confidential_client_gets_no_origins(tmp_path):
    path = write_clients(tmp_path, [entry(allowed_origins=["https://app.example.com"])])
    with pytest.raises(ClientFileError, match="only a public client"):
        load_clients_file(path, SCOPES)


def test_every_problem_of_the_file_is_reported_at_once(tmp_path):
    bad = [entry(), entry(client_id="c2", ip_allowlist=["nope"])]
    bad += [entry(client_id="c3", redirect_uris=["x"]), entry()]
    with pytest.raises(ClientFileError) as caught:
        load_clients_file(write_clients(tmp_path, bad), SCOPES)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "client 'c2'.ip_allowlist",
        "client 'c3'",
        "client 'c1'",
    ]
    assert lines[2].endswith("listed twice")


# -- production refuses the demo secrets ---------------------------------------------------
def test_production_refuses_the_demo_clients_by_their_secret(tmp_path):
    copied = tmp_path / "clients.json"
    shutil.copy(Path(__file__).resolve().parents[1] / "clients.json.example", copied)
    assert len(load_clients_file(copied, SCOPES)) == 3  # fine in development
    with pytest.raises(ClientFileError) as caught:
        load_clients_file(copied, SCOPES, production=True)
    message = str(caught.value)
    assert "client 'sp-demo': its secret is a published demo secret" in message
    assert "client 'test': its secret is a published demo secret" in message
    assert "client 'admin': its secret is a published demo secret" in message


@pytest.mark.parametrize("hasher", [hash_random_secret, hash_chosen_secret])
def test_production_refuses_a_new_format_client_whose_secret_is_hunter2(tmp_path, hasher):
    entries = [entry(client_secret_hash=hasher("hunter2")), entry(client_id="c2")]
    path = write_clients(tmp_path, entries)
    with pytest.raises(ClientFileError, match=r"^client 'c1': its secret is a published demo"):
        load_clients_file(path, SCOPES, production=True)
    assert set(load_clients_file(write_clients(tmp_path, entries[1:]), SCOPES, production=True))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
origin_like = st.builds(
    "{}://{}{}".format,
    st.sampled_from(["http", "https", "HTTPS", "ftp", ""]),
    st.sampled_from(["a.example", "A.example", "[::1]", "127.0.0.1", "x@a.example", ""]),
    st.sampled_from(["", ":80", ":443", ":8080", ":0", ":99999", "/", "/p", "?q", "#f"]),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    networks=json_values | st.lists(st.text(max_size=20) | st.ip_addresses().map(str)),
    origins=json_values | st.lists(origin_like | st.text(max_size=20), max_size=3),
    is_public=st.booleans(),
)
def test_any_policy_value_loads_or_names_the_field(tmp_path, networks, origins, is_public):
    make = public if is_public else entry
    path = write_clients(tmp_path, [make(ip_allowlist=networks, allowed_origins=origins)])
    try:
        client = load_clients_file(path, SCOPES)["c1"]
    except ClientFileError as exc:
        assert str(exc).startswith(("client 'c1'.ip_allowlist:", "client 'c1'.allowed_origins:"))
        return
    assert client.check_ip("10.0.0.1") in (True, False)  # every entry parses
    for origin in client.allowed_origins:
        assert urlsplit(origin).scheme in ("http", "https") and not urlsplit(origin).path
