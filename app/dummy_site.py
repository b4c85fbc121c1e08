"""The bundled stand-in for an existing website: any username, password ``password``.

Tokens are self-verifying (``base64(username).nonce.HMAC``), so every worker process
and every restart agrees on them without shared memory. Avatars changed through
``/update_avatar`` are kept per process, which is all a stand-in needs.

Run it with ``python -m app.dummy_site --host 127.0.0.1 --port 8084``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, Response, jsonify, request

from .logconfig import log_config

COOKIE = "dummy-server-token"
PASSWORD = "password"  # noqa: S105 - the documented demo password
#: Development-only signing key; the site is a stand-in and holds nothing of value.
DEV_KEY = b"dummy-site-dev-key"

_avatars: dict[str, str] = {}


def user_id(username: str) -> str:
    """Derive the stable site id of ``username``."""
    return hashlib.sha256(username.encode()).hexdigest()[:16]


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()[:32]


def make_token(key: bytes, username: str) -> str:
    """Issue a fresh token for ``username``."""
    name = base64.urlsafe_b64encode(username.encode()).decode().rstrip("=")
    payload = f"{name}.{secrets.token_urlsafe(9)}"
    return f"{payload}.{_mac(key, payload)}"


def read_token(key: bytes, token: str) -> str | None:
    """Return the username a valid ``token`` was issued to, else ``None``."""
    payload, _, mac = token.rpartition(".")
    if not payload or not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    name = payload.split(".", 1)[0]
    try:
        return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def profile(username: str) -> dict[str, str]:
    """Build the profile the site shows for ``username``."""
    uid = user_id(username)
    return {"id": uid, "firstName": username, "avatar": _avatars.get(uid, f"/avatars/{uid}.png")}


def looks_like_address(username: str) -> bool:
    local, at, domain = username.partition("@")
    return bool(at and local and "." in domain and " " not in username and "@" not in domain)


def claims(username: str) -> dict[str, Any]:
    """The OpenID Connect claims of ``username``: its address, or a stable made-up one."""
    address = looks_like_address(username)
    return {
        "name": username,
        "given_name": username.partition("@")[0] if address else username,
        "email": username if address else f"{user_id(username)}@users.example.com",
        "email_verified": address,
    }


def _fields() -> Any:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes: not a JSON object
        body = None
    return body if isinstance(body, dict) else request.form


def _request_token() -> str:
    return (
        request.args.get("token") or request.form.get("token") or request.cookies.get(COOKIE) or ""
    )


def _unauthorized(message: str = "invalid token") -> tuple[Response, int]:
    return jsonify(error=message), 401


def create_dummy_app(key: bytes = DEV_KEY) -> Flask:
    """Create the stand-in site; ``key`` signs its tokens."""
    app = Flask(__name__)

    @app.post("/login")
    def login() -> Any:
        fields = _fields()
        username = str(fields.get("username") or "")
        if not username or fields.get("password") != PASSWORD:
            return _unauthorized("invalid credentials")
        response = jsonify(id=user_id(username), firstName=username, **claims(username))
        response.set_cookie(COOKIE, make_token(key, username), httponly=True)
        return response

    @app.get("/info")
    def info() -> Any:
        username = read_token(key, _request_token())
        return jsonify(profile(username)) if username is not None else _unauthorized()

    @app.get("/claims")
    def user_claims() -> Any:
        username = read_token(key, _request_token())
        return jsonify(claims(username)) if username is not None else _unauthorized()

    @app.route("/update_avatar", methods=["GET", "POST"])  # GET as the original's site
    def update_avatar() -> Any:
        username = read_token(key, _request_token())
        if username is None:
            return _unauthorized()
        avatar = _fields().get("avatar") or request.args.get("avatar")
        if avatar:
            _avatars[user_id(username)] = str(avatar)
        return jsonify(success=1)

    return app


class FastInfo:
    """``GET /info?token=...`` as plain WSGI; every other request goes to the Flask app.

    It is the call behind every ``/api/profile``, and the gateway benchmark would
    otherwise mostly measure Flask's cost here rather than the server's.
    """

    def __init__(self, app: Flask, key: bytes) -> None:
        self.app, self.key = app, key

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/info" or environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        token = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
        if not token:
            return self.app(environ, start_response)  # cookie or form: Flask reads those
        username = read_token(self.key, token)
        if username is None:
            status, body = "401 UNAUTHORIZED", {"error": "invalid token"}
        else:
            status, body = "200 OK", profile(username)
        data = (json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n").encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(status, headers)
        return [data]


def create_site(key: bytes = DEV_KEY) -> FastInfo:
    """The site as served: the Flask app behind the plain ``/info`` path."""
    return FastInfo(create_dummy_app(key), key)


def site_from_env() -> FastInfo:
    return create_site(os.environ.get("DUMMY_SITE_KEY", "").encode() or DEV_KEY)


def serve(
    host: str, port: int, workers: int = 1, threads: int = 8, server: str = "granian"
) -> None:
    """Serve the site until SIGTERM or SIGINT: granian by default (its per-request cost
    is half gunicorn's, bench/README.md), or gunicorn."""
    if server == "granian":
        from granian.constants import Interfaces
        from granian.log import LogLevels
        from granian.server import Server

        Server(
            "app.dummy_site:site_from_env",
            address=host,
            port=port,
            interface=Interfaces.WSGI,
            workers=workers,
            blocking_threads=threads,
            log_level=LogLevels.warning,
            log_dictconfig=log_config({"_granian": "WARNING"}),  # the server's format
            workers_kill_timeout=3,  # a worker that does not stop in time is killed
        ).serve(target_loader=site_from_env, wrap_loader=False)
        return
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",  # keeps connections alive for pooled proxies
                "keepalive": 75,
                "graceful_timeout": 5,
                "control_socket_disable": True,  # would clash with the main server's
                "proc_name": "oauth2-dummy-site",
                # The server's format; no access log.
                "logconfig_dict": log_config(
                    {"gunicorn.error": "INFO", "gunicorn.access": "WARNING"}
                ),
            }
            for name, value in options.items():
                if name in self.cfg.settings:
                    self.cfg.set(name, value)

        def load(self) -> FastInfo:
            return site_from_env()

    _Server().run()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the site."""
    parser = argparse.ArgumentParser(description="Serve the bundled dummy website.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8084)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.workers, args.threads, args.server)


if __name__ == "__main__":
    main()
