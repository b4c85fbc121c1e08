"""The config-driven HTTP adapter: log in against a website and proxy ``/api`` calls to it."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass, fields
from http.cookiejar import DefaultCookiePolicy
from http.cookies import CookieError, SimpleCookie
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import requests
import urllib3
from requests.adapters import HTTPAdapter as _PoolAdapter
from requests.structures import CaseInsensitiveDict

from .base import ApiRoute, ResourceServer, SiteUser, UpstreamResponse, UpstreamUnavailable

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "oauth2-server/0.1"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")
TOKEN_IN = ("query", "header", "cookie", "form")
TOKEN_FROM = ("cookie", "json", "header")
TOP_KEYS = {"type", "base_url", "timeout", "user_agent", "trust_env", "login", "scopes", "api"}
ROUTE_KEYS = {"method", "path", "scope", "token_in"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fail(key: str, message: str) -> NoReturn:
    raise ValueError(f"resource_server.{key}: {message}")


def _check_keys(section: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        _fail(where, "must be an object")
    for key in section:
        if key not in allowed:
            _fail(f"{where}.{key}" if where else key, "unknown key")
    return section


def _placement(value: Any, kinds: tuple[str, ...], where: str) -> str:
    kind, _, name = str(value).partition(":")
    if kind not in kinds or not name:
        _fail(where, f"{value!r} is not one of {', '.join(k + ':<name>' for k in kinds)}")
    return str(value)


def _method(value: Any, where: str) -> str:
    if str(value).upper() not in METHODS:
        _fail(where, f"unsupported method {value!r}")
    return str(value).upper()


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        _fail(where, f"{value!r} must start with '/'")
    try:
        value.format(token="", user_id="")
    except (KeyError, IndexError, ValueError):
        _fail(where, f"{value!r} may only use the placeholders {{token}} and {{user_id}}")
    return value


@dataclass(frozen=True)
class LoginSettings:
    """How :meth:`HttpAdapter.login` talks to the site's login endpoint."""

    path: str = "/login"
    method: str = "POST"
    username_field: str = "username"
    password_field: str = "password"  # noqa: S105 - a form field name
    format: str = "form"
    token_from: str = "cookie:session"  # noqa: S105 - where the token is read
    id_from: str = "json:id"
    name_from: str = "json:firstName"

    @classmethod
    def parse(cls, section: Any) -> LoginSettings:
        """Validate the ``login`` section, filling in defaults."""
        given = _check_keys(section, {f.name for f in fields(cls)}, "login")
        settings = cls(**{**given, "method": _method(given.get("method", "POST"), "login.method")})
        _path(settings.path, "login.path")
        if settings.format not in ("form", "json"):
            _fail("login.format", f"{settings.format!r} is not 'form' or 'json'")
        for name in ("token_from", "id_from", "name_from"):
            _placement(getattr(settings, name), TOKEN_FROM, f"login.{name}")
        return settings


def parse_scopes(value: Any) -> dict[str, str]:
    """Validate ``scopes``: a non-empty object of name -> description."""
    if not isinstance(value, dict) or not value:
        _fail("scopes", "must be a non-empty object of scope name -> description")
    for name, text in value.items():
        if not _NAME.match(name) or not isinstance(text, str):
            _fail(f"scopes.{name}", "needs a plain name and a description string")
    return dict(value)


def parse_route(name: str, entry: Any, scopes: dict[str, str]) -> ApiRoute:
    """Validate one ``api.<name>`` entry."""
    where = f"api.{name}"
    if not _NAME.match(name):
        _fail(where, "the name may hold only letters, digits, '_', '.' and '-'")
    entry = _check_keys(entry, ROUTE_KEYS, where)
    scope = entry.get("scope")
    if scope not in scopes:
        _fail(f"{where}.scope", f"unknown scope {scope!r}")
    methods = _methods(entry.get("method", "GET"), f"{where}.method")
    token_in = _placement(entry.get("token_in", "query:token"), TOKEN_IN, f"{where}.token_in")
    bodiless = [m for m in methods if m not in BODY_METHODS]
    if token_in.startswith("form:") and bodiless:
        _fail(f"{where}.token_in", f"'form:' needs a method with a body, not {bodiless[0]}")
    path = _path(entry.get("path", f"/{name}"), f"{where}.path")
    return ApiRoute(
        name=name, scope=scope, method=methods[0], path=path, token_in=token_in, methods=methods
    )


def _methods(value: Any, where: str) -> tuple[str, ...]:
    """One method (``"GET"``) or several (``["GET", "POST"]``), each sent on as called."""
    values = value if isinstance(value, list) else [value]
    if not values:
        _fail(where, "lists no method")
    return tuple(dict.fromkeys(_method(v, where) for v in values))


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        _fail("timeout", f"{value!r} must be a positive number of seconds")
    return float(value)


def _base_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        _fail("base_url", f"{value!r} must be an http:// or https:// URL")
    return value.rstrip("/")


def new_session(user_agent: str, trust_env: bool, pool_size: int = 32) -> requests.Session:
    """Build a pooled session that never keeps cookies (users' cookies must not mix)."""
    session = requests.Session()
    pool = _PoolAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", pool)
    session.mount("https://", pool)
    session.headers["User-Agent"] = user_agent
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.trust_env = trust_env
    return session


def new_pool(timeout: float, pool_size: int = 32) -> urllib3.PoolManager:
    """The ``/api`` calls' connection pool: urllib3 (what requests uses underneath)
    without requests' per-call session, cookie and hook machinery, which cost twice
    the CPU of the call itself (bench/README.md). No retries, redirects or cookies."""
    return urllib3.PoolManager(
        num_pools=4,
        maxsize=pool_size,
        retries=False,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
    )


class PooledAnswer:
    """A urllib3 response with the parts of ``requests.Response`` that ``extract`` reads."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status_code = response.status
        self.headers = response.headers
        self.content = response.data

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.getlist("Set-Cookie"):
            with contextlib.suppress(CookieError):
                jar.load(header)
        return {name: morsel.value for name, morsel in jar.items()}

    def json(self) -> Any:
        return json.loads(self.content)


def extract(spec: str, response: requests.Response | PooledAnswer) -> str | None:
    """Read ``cookie:<name>``, ``header:<Name>`` or ``json:<a.b>`` from a response."""
    kind, _, name = spec.partition(":")
    if kind == "cookie":
        return response.cookies.get(name)
    if kind == "header":
        return response.headers.get(name)
    try:
        value: Any = response.json()
    except ValueError:
        return None
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None or isinstance(value, dict | list) else str(value)


class HttpAdapter(ResourceServer):
    """Talk to an existing website over HTTP, as described by config.

    Config (the ``resource_server`` section)::

        {"type": "http",
         "base_url": "https://www.example.com",   # required
         "timeout": 5,                             # seconds, per request
         "user_agent": "oauth2-server/0.1",
         "trust_env": false,                       # honour HTTP(S)_PROXY, NO_PROXY, .netrc
         "login": {"path": "/login", "method": "POST",
                   "username_field": "username", "password_field": "password",
                   "format": "form",                # or "json"
                   "token_from": "cookie:session",  # or "json:a.b", "header:X-Token"
                   "id_from": "json:id", "name_from": "json:firstName"},
         "scopes": {"read-only": "Read your profile", ...},   # first = default scope
         "api": {"profile": {"method": "GET", "path": "/info", "scope": "read-only",
                             "token_in": "query:token"}}}  # or header:, cookie:, form:

    ``login`` keys all have the defaults shown. An ``api`` path may contain
    ``{token}`` and ``{user_id}``; ``method`` (one, or a list of those a partner may
    use: the site is called with the partner's) defaults to GET, ``path`` to
    ``/<name>`` and ``token_in`` to ``query:token``. Login answers 4xx mean bad
    credentials; 5xx and network errors raise :class:`UpstreamUnavailable`.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        settings = _check_keys(self.http_config(config), TOP_KEYS, "")
        self.base_url = _base_url(settings.get("base_url"))
        self.timeout = _timeout(settings.get("timeout", 5))
        self.login_settings = LoginSettings.parse(settings.get("login", {}))
        self._scopes = parse_scopes(settings.get("scopes"))
        routes = settings.get("api", {})
        if not isinstance(routes, dict):
            _fail("api", "must be an object of name -> route")
        self._api = {name: parse_route(name, e, self._scopes) for name, e in routes.items()}
        user_agent = str(settings.get("user_agent") or DEFAULT_USER_AGENT)
        trust_env = bool(settings.get("trust_env", False))
        self._user_agent = user_agent
        self._session = new_session(user_agent, trust_env)
        # Proxies from the environment are requests' business: with trust_env the
        # API calls go through the session too.
        self._pool = None if trust_env else new_pool(self.timeout)

    def http_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Return the config in the form documented above; presets override this."""
        return config

    @property
    def scopes(self) -> dict[str, str]:
        return self._scopes

    @property
    def api(self) -> dict[str, ApiRoute]:
        return self._api

    def login(self, username: str, password: str) -> SiteUser | None:
        spec = self.login_settings
        fields = {spec.username_field: username, spec.password_field: password}
        response: requests.Response | PooledAnswer
        if self._pool is not None:
            response = self._login_pooled(spec, fields)
        else:
            where = (
                "params" if spec.method == "GET" else "json" if spec.format == "json" else "data"
            )
            body = {where: fields}
            response = self._send(spec.method, spec.path, allow_redirects=False, **body)
        if response.status_code >= 500:
            raise UpstreamUnavailable(f"{self.base_url} login answered {response.status_code}")
        if response.status_code >= 400:
            return None
        return self._site_user(response, username)

    def _login_pooled(self, spec: LoginSettings, fields: dict[str, str]) -> PooledAnswer:
        url, headers = self.base_url + spec.path, {"User-Agent": self._user_agent}
        body: bytes | None = None
        if spec.method == "GET":
            url += ("&" if "?" in spec.path else "?") + urlencode(fields)
        elif spec.format == "json":
            body, headers["Content-Type"] = json.dumps(fields).encode(), "application/json"
        else:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return PooledAnswer(self._request_pooled(spec.method, url, body, headers))

    def _request_pooled(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        assert self._pool is not None
        try:
            return self._pool.request(method, url, body=body, headers=headers, redirect=False)
        # Messages name the site, not the URL: a URL may carry the user's site token.
        # (A refused connection is a NewConnectionError, which urllib3 derives from
        # its connect timeout: it is not a timeout.)
        except urllib3.exceptions.TimeoutError as exc:
            if isinstance(exc, urllib3.exceptions.NewConnectionError):
                message = f"{self.base_url} is unreachable ({type(exc).__name__})"
                raise UpstreamUnavailable(message) from exc
            message = f"{self.base_url} gave no answer in {self.timeout}s"
            raise UpstreamUnavailable(message, timeout=True) from exc
        except urllib3.exceptions.HTTPError as exc:
            message = f"{self.base_url} is unreachable ({type(exc).__name__})"
            raise UpstreamUnavailable(message) from exc

    def _site_user(
        self, response: requests.Response | PooledAnswer, username: str
    ) -> SiteUser | None:
        spec = self.login_settings
        token, uid = extract(spec.token_from, response), extract(spec.id_from, response)
        if not token or not uid:
            log.warning("site login gave no %s / %s", spec.token_from, spec.id_from)
            return None
        name = extract(spec.name_from, response) or username
        return SiteUser(id=uid, name=name, site_token=token)

    def call(
        self,
        route: ApiRoute,
        site_token: str,
        user_id: str,
        headers: dict[str, str],
        body: bytes | None,
        query: dict[str, str],
    ) -> UpstreamResponse:
        path = route.path.format(token=quote(site_token, safe=""), user_id=quote(user_id, safe=""))
        if self._pool is not None:
            return self._call_pooled(route, path, site_token, headers, body, query)
        request: dict[str, Any] = {"params": dict(query), "cookies": {}}
        request["headers"] = CaseInsensitiveDict(headers)
        request["data"] = body if route.method in BODY_METHODS else None
        _place_token(request, route.token_in, site_token)
        response = self._send(route.method, path, allow_redirects=False, **request)
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return UpstreamResponse(response.status_code, response.content, content_type)

    def _call_pooled(
        self,
        route: ApiRoute,
        path: str,
        site_token: str,
        headers: dict[str, str],
        body: bytes | None,
        query: dict[str, str],
    ) -> UpstreamResponse:
        assert self._pool is not None
        params = dict(query)
        headers = {"User-Agent": self._user_agent, **headers}
        data = body if route.method in BODY_METHODS else None
        kind, _, name = route.token_in.partition(":")
        if kind == "query":
            params[name] = site_token
        elif kind == "header":
            headers[name] = site_token
        elif kind == "cookie":
            headers["Cookie"] = f"{name}={site_token}"
        else:
            pair = urlencode({name: site_token}).encode()
            data = data + b"&" + pair if data else pair
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = self.base_url + path
        if params:
            url += ("&" if "?" in path else "?") + urlencode(params)
        response = self._request_pooled(route.method, url, data, headers)
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return UpstreamResponse(response.status, response.data, content_type)

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        try:
            return self._session.request(method, url, timeout=self.timeout, **kwargs)
        # Messages name the site, not the URL: a URL may carry the user's site token.
        except requests.Timeout as exc:
            message = f"{self.base_url} gave no answer in {self.timeout}s"
            raise UpstreamUnavailable(message, timeout=True) from exc
        except requests.RequestException as exc:
            message = f"{self.base_url} is unreachable ({type(exc).__name__})"
            raise UpstreamUnavailable(message) from exc

    def close(self) -> None:
        self._session.close()
        if self._pool is not None:
            self._pool.clear()


def _place_token(request: dict[str, Any], token_in: str, token: str) -> None:
    """Put the user's site token where the route says (``query:``, ``header:``...)."""
    kind, _, name = token_in.partition(":")
    if kind == "form":
        pair = urlencode({name: token}).encode()
        request["data"] = request["data"] + b"&" + pair if request["data"] else pair
        request["headers"].setdefault("Content-Type", "application/x-www-form-urlencoded")
    else:
        target = {"query": "params", "header": "headers", "cookie": "cookies"}[kind]
        request[target][name] = token
