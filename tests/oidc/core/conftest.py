"""The OpenID Connect core tests' app: the demo clients and this suite's relying parties."""

from __future__ import annotations

import pytest

from tests.oidc.core_helpers import open_rp_app


@pytest.fixture
def app(tmp_path, dummy_site):
    with open_rp_app(tmp_path, dummy_site) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()
