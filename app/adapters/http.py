"""The config-driven HTTP adapter: log in against a website and proxy ``/api`` calls to it."""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from http.cookies import CookieError, SimpleCookie
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import urllib3
from pydantic import BaseModel

from .base import ApiRoute, ResourceServer, SiteUser, UpstreamResponse, UpstreamUnavailable
from .http_config import BODY_METHODS, ClaimsSettings, HttpConfig

log = logging.getLogger(__name__)


def proxy_for(base_url: str, trust_env: bool) -> str | None:
    """The proxy URL the environment names for ``base_url`` (as requests reads it), if any.

    ``HTTP_PROXY``/``HTTPS_PROXY`` (or ``ALL_PROXY``) name it; ``NO_PROXY`` exempts hosts.
    """
    if not trust_env:
        return None
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    if not proxy.startswith(("http://", "https://")):
        raise ValueError(
            f"resource_server.trust_env: the environment's proxy for {parts.scheme} "
            "must be http(s)://"
        )
    return proxy


def new_pool(timeout: float, proxy: str | None = None, pool_size: int = 32) -> urllib3.PoolManager:
    """The site's connection pool (urllib3: requests' per-call session, cookie and hook
    machinery cost twice the CPU of the call itself, bench/README.md), or a
    ``ProxyManager`` when a proxy applies. No retries, redirects or cookies: each
    call stands alone, so one user's cookie can never reach another's call."""
    options: dict[str, Any] = {
        "num_pools": 4,
        "maxsize": pool_size,
        "retries": False,
        "timeout": urllib3.Timeout(connect=timeout, read=timeout),
    }
    if proxy is None:
        return urllib3.PoolManager(**options)
    user = urlsplit(proxy)
    if user.username is not None:
        secret = unquote(f"{user.username}:{user.password or ''}")
        options["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=secret)
    return urllib3.ProxyManager(proxy, **options)


def _cookies(response: urllib3.BaseHTTPResponse) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        with contextlib.suppress(CookieError):
            jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def json_fields(body: bytes, paths: dict[str, str]) -> dict[str, Any]:
    """Claim -> the JSON value at its ``json:<a.b>`` path in ``body`` (absent ones left out)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return {}
    found = {}
    for claim, spec in paths.items():
        value = data
        for part in spec.partition(":")[2].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            found[claim] = value
    return found


def extract(spec: str, response: urllib3.BaseHTTPResponse) -> str | None:
    """Read ``cookie:<name>``, ``header:<Name>`` or ``json:<a.b>`` from a response."""
    kind, _, name = spec.partition(":")
    if kind == "cookie":
        return _cookies(response).get(name)
    if kind == "header":
        return response.headers.get(name)
    try:
        value: Any = json.loads(response.data)
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
         "trust_env": false,                       # honour HTTP(S)_PROXY, NO_PROXY
         "login": {"path": "/login", "method": "POST",
                   "username_field": "username", "password_field": "password",
                   "format": "form",                # or "json"
                   "token_from": "cookie:session",  # or "json:a.b", "header:X-Token"
                   "id_from": "json:id", "name_from": "json:firstName"},
         "scopes": {"read-only": "Read your profile", ...},   # first = default scope
         "api": {"profile": {"method": "GET", "path": "/info", "scope": "read-only",
                             "token_in": "query:token"}},  # or header:, cookie:, form:
         "claims": {"from_login": {"email": "json:email"},    # OpenID Connect claims
                    "endpoint": {"path": "/me", "token_in": "query:token",
                                 "fields": {"email": "json:email", "locale": "json:lang"}}}}

    ``login`` keys all have the defaults shown. An ``api`` path may contain
    ``{token}`` and ``{user_id}``; ``method`` (one, or a list of those a partner may
    use: the site is called with the partner's) defaults to GET, ``path`` to
    ``/<name>`` and ``token_in`` to ``query:token``. Login answers 4xx mean bad
    credentials; 5xx and network errors raise :class:`UpstreamUnavailable`.
    ``claims`` (optional): standard claim names mapped from the login answer (kept with
    the user) and/or from a site endpoint asked at each UserInfo request; ``name`` is
    always the login's ``name_from``.
    """

    Config: ClassVar[type[BaseModel] | None] = HttpConfig

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.check_config(config)  # this class's own keys (a preset's, such as the dummy's)
        settings: HttpConfig = HttpAdapter.check_config(self.http_config(config))
        self.base_url, self.timeout = settings.base_url, settings.timeout
        self.login_settings = settings.login
        self._scopes = dict(settings.scopes)
        self._api = {name: route.route(name) for name, route in settings.api.items()}
        self._user_agent = settings.user_agent
        self.claim_settings: ClaimsSettings = settings.claims
        self._pool = new_pool(self.timeout, proxy_for(self.base_url, settings.trust_env))

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
        path, headers, body = spec.path, {}, None
        if spec.method == "GET":
            path += ("&" if "?" in path else "?") + urlencode(fields)
        elif spec.format == "json":
            body, headers["Content-Type"] = json.dumps(fields).encode(), "application/json"
        else:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = self._request(spec.method, path, body, headers)
        if response.status >= 500:
            raise UpstreamUnavailable(f"{self.base_url} login answered {response.status}")
        if response.status >= 400:
            return None
        return self._site_user(response, username)

    def _site_user(self, response: urllib3.BaseHTTPResponse, username: str) -> SiteUser | None:
        spec = self.login_settings
        token, uid = extract(spec.token_from, response), extract(spec.id_from, response)
        if not token or not uid:
            log.warning("site login gave no %s / %s", spec.token_from, spec.id_from)
            return None
        name = extract(spec.name_from, response) or username
        extra = json_fields(response.data, self.claim_settings.from_login)
        return SiteUser(id=uid, name=name, site_token=token, extra=extra)

    @property
    def claims_supported(self) -> list[str]:
        return self.claim_settings.supported

    def claims(self, user_id: str, site_token: str, extra: dict[str, Any]) -> dict[str, Any]:
        """The login's claims, under the claims endpoint's answer when one is configured."""
        endpoint = self.claim_settings.endpoint
        if endpoint is None:
            return dict(extra)
        response = self.call(endpoint.route(), site_token, user_id, {}, None, {})
        if response.status != 200:
            raise UpstreamUnavailable(f"{self.base_url} claims answered {response.status}")
        return {**extra, **json_fields(response.body, endpoint.fields)}

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
        params, headers = dict(query), dict(headers)
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
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        response = self._request(route.method, path, data, headers)
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return UpstreamResponse(response.status, response.data, content_type)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        url, headers = self.base_url + path, {"User-Agent": self._user_agent, **headers}
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

    def ready(self, timeout: float) -> None:
        """``HEAD /`` on the site: any answer below 500 means it serves (a 404 too)."""
        try:
            response = self._pool.request(
                "HEAD",
                self.base_url + "/",
                headers={"User-Agent": self._user_agent},
                redirect=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
            )
        except urllib3.exceptions.TimeoutError as exc:
            if isinstance(exc, urllib3.exceptions.NewConnectionError):
                raise UpstreamUnavailable(f"{self.base_url} is unreachable") from exc
            message = f"{self.base_url} gave no answer in {timeout}s"
            raise UpstreamUnavailable(message, timeout=True) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamUnavailable(f"{self.base_url} is unreachable") from exc
        if response.status >= 500:
            raise UpstreamUnavailable(f"{self.base_url} answered {response.status}")

    def close(self) -> None:
        self._pool.clear()
