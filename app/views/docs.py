"""The OpenAPI 3.1 description of the JSON endpoints, served from the package."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from flask import Blueprint, Response

bp = Blueprint("docs", __name__)


@cache
def spec_bytes() -> bytes:
    """``app/openapi.json`` as shipped, read once per process."""
    return files("app").joinpath("openapi.json").read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    response = Response(spec_bytes(), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
