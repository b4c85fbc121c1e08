"""The shipped OpenAPI 3.1 description: valid, complete, and what the server really answers.

Schemathesis generates requests from ``app/openapi.json`` (valid and invalid ones,
a bounded and reproducible number per operation) and runs them in-process against
the app; every answer must be documented: status, content type, body and headers,
and never a 500.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from werkzeug.exceptions import HTTPException

from app import create_app
from app.paths import JSON_PATHS
from app.views import docs
from tests.conftest import base_config, close_app
from tests.factories import make_token

SPEC = files("app").joinpath("openapi.json")

#: Examples per operation and generation mode: bounded, so the run stays well under a minute.
MAX_EXAMPLES = 50

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.ignored_auth,
]

#: JSON routes outside the prefixes whose errors are JSON (``app.paths.JSON_PATHS``).
JSON_EXTRAS = {"/healthz", "/openapi.json"}


def load_spec() -> dict:
    return json.loads(SPEC.read_text(encoding="utf-8"))


#: Generation is bounded and reproducible: the same requests on every run.
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"clientBasic": {"username": "test", "password": "hunter2"}}},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    }
)
schema = schemathesis.openapi.from_path(str(SPEC), config=CONFIG)


@pytest.fixture
def app(tmp_path, dummy_site):
    """The app, with a budget for bad tokens (``api_ip``) the checks never reach: their
    calls with invalid credentials (``ignored_auth``) must meet 401, and on a slow day a
    function's share of them came to the default 120 a minute and met 429 (the limiter
    has tests of its own; ``tests/test_gateway_fast.py`` does the same)."""
    app = create_app(base_config(tmp_path, dummy_site, limits={"api_ip": "100000/minute"}))
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def bearer_headers(app) -> dict[str, str]:
    """A user's access token holding every scope of the dummy adapter."""
    token = make_token(app.extensions["oauth2"], scope="read-only read-write")
    return {"Authorization": f"Bearer {token['access_token']}"}


@pytest.fixture
def admin_headers(app) -> dict[str, str]:
    """The demo admin client's token with the scope ``admin`` (client credentials: no user)."""
    token = make_token(app.extensions["oauth2"], client_id="admin", scope="admin", user_id=None)
    return {"Authorization": f"Bearer {token['access_token']}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_is_documented(case, app, bearer_headers, admin_headers):
    # The app, and the user token the /api functions need, are made per test: the schema
    # loaded at import cannot hold them. (Checks such as ignored_auth send their own requests.)
    case.operation.app = case.operation.schema.app = app
    headers = bearer_headers if case.path.startswith("/api/") else None
    headers = admin_headers if case.path.startswith("/admin/") else headers
    case.call_and_validate(headers=headers, checks=CHECKS)


# -- the document itself ------------------------------------------------------------------
def test_spec_is_valid_openapi_3_1():
    raw = load_spec()
    assert raw["openapi"].startswith("3.1.")
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.validate()  # the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) >= 10


def walk(node, where="#"):
    """Every (JSON pointer, object) pair of the document."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def resolve(raw: dict, pointer: str):
    node = raw
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves_and_every_schema_is_json_schema_2020_12():
    raw = load_spec()
    for where, node in walk(raw):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.startswith("#/"), where
            resolve(raw, ref)  # raises KeyError when dangling
    # Component schemas, and the schemas of parameters, headers and media types.
    schemas = [(f"#/components/schemas/{n}", s) for n, s in raw["components"]["schemas"].items()]
    for section in (raw["paths"], raw["components"]["responses"], raw["components"]["headers"]):
        schemas += [(w, n["schema"]) for w, n in walk(section) if isinstance(n.get("schema"), dict)]
    for where, schema_ in schemas:
        assert jsonschema_rs.meta.is_valid(schema_), where


def test_examples_match_their_schemas():
    raw = load_spec()
    checked = 0
    for where, media in walk(raw["paths"]):
        if "schema" not in media or not isinstance(media.get("examples"), dict):
            continue
        validator = jsonschema_rs.validator_for({**raw, **media["schema"]})
        for name, example in media["examples"].items():
            assert validator.is_valid(example["value"]), f"{where}/examples/{name}"
            checked += 1
    assert checked


def serving_apps(app) -> list[Flask]:
    """The main app and the lean apps its dispatcher sends their paths to (app.lean)."""
    return [app, app.extensions["oauth2.gateway"], app.extensions["oauth2.token_app"]]


def test_every_json_route_is_described(app):
    paths = load_spec()["paths"]
    described = {re.sub(r"\{[^}]+\}", "<>", path): item for path, item in paths.items()}
    json_rules = [
        rule
        for served in serving_apps(app)
        for rule in served.url_map.iter_rules()
        if rule.rule.startswith(JSON_PATHS) or rule.rule in JSON_EXTRAS
    ]
    assert {rule.rule for rule in json_rules} >= JSON_EXTRAS
    for rule in json_rules:
        template = re.sub(r"<[^>]+>", "<>", rule.rule)
        assert template in described, f"{rule.rule} is not in app/openapi.json"
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        missing = {m.lower() for m in methods} - set(described[template])
        assert not missing, f"{rule.rule}: {sorted(missing)} not in app/openapi.json"


def test_every_described_path_is_a_route(app):
    adapters = [served.url_map.bind("localhost") for served in serving_apps(app)]
    for path, item in load_spec()["paths"].items():
        concrete = path.replace("{name}", "unknown_function")
        for method in item:
            if method == "parameters":
                continue
            endpoints = []
            for adapter in adapters:
                try:
                    endpoints.append(adapter.match(concrete, method=method.upper())[0])
                except HTTPException:
                    continue
            assert len(endpoints) == 1, (path, method, endpoints)  # one app routes it


def test_every_api_function_of_the_adapter_is_described(app):
    paths = load_spec()["paths"]
    for name, route in app.extensions["oauth2"].adapter.api.items():
        assert route.method.lower() in paths.get(f"/api/{name}", {}), name


# -- serving it -----------------------------------------------------------------------------
def test_blueprint_serves_the_shipped_document():
    site = Flask(__name__)
    site.register_blueprint(docs.bp)
    response = site.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == load_spec()
    assert docs.spec_bytes() is docs.spec_bytes()  # read once


def test_the_app_serves_it(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == load_spec()
