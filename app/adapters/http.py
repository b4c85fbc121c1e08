"""The config-driven HTTP adapter: log in against a website and proxy ``/api`` calls to it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import ssl
import threading
import urllib.request
import weakref
from http.cookies import CookieError, SimpleCookie
from typing import Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

import pycurl
from pydantic import BaseModel

from .. import process
from .base import ApiRoute, ResourceServer, SiteUser, UpstreamResponse, UpstreamUnavailable
from .http_config import BODY_METHODS, ClaimsSettings, HttpConfig

log = logging.getLogger(__name__)

#: libcurl's error codes by name ("E_COULDNT_CONNECT"), for messages without the URL.
_CURL_ERRORS: dict[int, str] = {}
for _name in sorted(dir(pycurl)):  # the easy interface's codes (not the multi's, the share's)
    if _name.startswith("E_") and not _name.startswith(("E_MULTI_", "E_SHARE_")):
        _CURL_ERRORS.setdefault(getattr(pycurl, _name), _name)
_HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
#: A character a URL may not carry as is (libcurl refuses a space, pycurl a non-ASCII
#: one): such URLs are percent-encoded first, as urllib3 encoded them.
_URL_UNSAFE = re.compile(r"[^A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
#: Headers libcurl would add unless the caller gives them: each line removes its own.
_NO_DEFAULTS = {"accept": b"Accept:", "content-type": b"Content-Type:", "expect": b"Expect:"}
#: The largest answer read from the site (bytes); a larger one is refused as unavailable,
#: so a misbehaving site cannot fill a worker's memory through ``/api``.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Methods sent on a kept-alive connection: libcurl sends a request again, once, when a
#: reused connection closes before any answer, and the site may have acted on the first.
_REUSE_METHODS = frozenset({"GET", "HEAD"})
#: Handles a forked child inherited: never closed there (closing one would end the TLS
#: session the parent still uses on the same socket).
_INHERITED: list[Any] = []
#: Every live client, for the fork hook.
_CLIENTS: weakref.WeakSet[SiteClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        # No lock taken: another thread of the parent may have held it at the fork.
        _INHERITED.extend(client._handles)
        client._handles, client._lock = [], threading.Lock()
        client._local = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)


def path_segment(value: str) -> str:
    """``value`` as one path segment: every reserved character encoded, and ``.``/``..``
    too (a site token or id must never climb the site's path)."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


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


class SiteResponse:
    """A site's answer: status, body and the final response's header lines (parsed on
    demand: the gateway reads only the status, body and Content-Type)."""

    __slots__ = ("status", "data", "content_type", "_lines", "_headers")

    def __init__(self, status: int, data: bytes, content_type: str | None, lines: list[bytes]):
        self.status, self.data, self.content_type = status, data, content_type
        self._lines = lines
        self._headers: dict[str, list[str]] | None = None

    def _parse(self) -> dict[str, list[str]]:
        if self._headers is None:
            lines = self._lines
            # Only the final response's block: a "100 Continue" or a proxy's CONNECT
            # answer comes before it, each starting with its own status line.
            first = max(
                (i for i, line in enumerate(lines) if line.startswith(b"HTTP/")), default=-1
            )
            headers: dict[str, list[str]] = {}
            last: list[str] | None = None
            for raw in lines[first + 1 :]:
                line = raw.decode("latin-1").rstrip("\r\n")
                if not line:
                    continue
                if line[0] in " \t" and last:  # an obsolete folded continuation
                    last[-1] += " " + line.strip()
                    continue
                name, sep, value = line.partition(":")
                if sep:
                    last = headers.setdefault(name.strip().lower(), [])
                    last.append(value.strip())
            self._headers = headers
        return self._headers

    def header(self, name: str) -> str | None:
        """The header's value (several joined with ", ", as urllib3 did), or ``None``."""
        values = self._parse().get(name.lower())
        return ", ".join(values) if values else None

    def header_list(self, name: str) -> list[str]:
        """Every value the header came with (each ``Set-Cookie`` on its own)."""
        return list(self._parse().get(name.lower(), ()))


class SiteClient:
    """libcurl (pycurl) talking to one site: a ``Curl`` handle per thread, reused so its
    connection stays alive, and reset before every request so nothing (method, body,
    header, cookie) carries from one call to the next. No retries: libcurl sends a
    request again, once, when a kept-alive connection turns out closed before any
    answer came, so only GET and HEAD go on kept-alive connections; any other method
    opens a fresh one (the site may have acted on a first copy). No redirects, no cookie
    engine: each call stands alone, so one user's cookie can never reach another's
    call. ``proxy`` is the only proxy used (libcurl's own reading of the environment is
    switched off). Answers over :data:`MAX_RESPONSE_BYTES` are refused. A forked child
    never closes the handles it inherited (their TLS sessions are the parent's)."""

    def __init__(self, timeout: float, proxy: str | None = None) -> None:
        self.timeout = timeout
        self.proxy = proxy or ""
        # The CA certificates Python's ssl (and so urllib3) trusts, SSL_CERT_FILE and
        # SSL_CERT_DIR included: the wheel's libcurl would look in its build system's
        # place (/etc/pki/tls/certs/ca-bundle.crt), missing on Debian and others.
        paths = ssl.get_default_verify_paths()
        self._ca = [
            (option, path)
            for options, path in (
                ((pycurl.CAINFO, pycurl.PROXY_CAINFO), paths.cafile),
                ((pycurl.CAPATH, pycurl.PROXY_CAPATH), paths.capath),
            )
            if path
            for option in options
        ]
        self._local = threading.local()
        #: Every handle made (kept: a thread's handle lives as long as the client).
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()
        _CLIENTS.add(self)

    def _handle(self) -> pycurl.Curl:
        local = self._local
        handle: pycurl.Curl | None = getattr(local, "handle", None)
        if handle is None or local.pid != process.pid():  # none yet, or a forked parent's
            handle = pycurl.Curl()
            local.handle, local.pid = handle, process.pid()
            with self._lock:
                self._handles.append(handle)
        return handle

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> SiteResponse:
        """Send one request; raise ``pycurl.error`` when no answer came, ``ValueError``
        for a header that cannot be sent (nothing is sent then)."""
        lines, given = [], set()
        for name, value in (headers or {}).items():
            if any(c in name for c in "\r\n\0:") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"invalid header {name!r}")  # as http.client refuses it
            given.add(name.lower())
            # "Name:" alone would make libcurl drop the header (and it drops one of blanks);
            # "Name;" sends it empty.
            line = f"{name}: {value}" if value.strip() else f"{name};"
            try:
                lines.append(line.encode("latin-1"))  # as http.client encodes it
            except UnicodeEncodeError:
                raise ValueError(f"invalid header {name!r}") from None
        # None of libcurl's own additions: no "Accept: */*", no form Content-Type for a
        # body that came without one, no "Expect: 100-continue" round trip.
        lines.extend(_NO_DEFAULTS[name] for name in _NO_DEFAULTS if name not in given)
        if _URL_UNSAFE.search(url):
            url = quote(url, safe=_URL_SAFE)
        handle = self._handle()
        handle.reset()
        setopt = handle.setopt
        setopt(pycurl.URL, url)
        setopt(pycurl.PATH_AS_IS, 1)  # no dot-segment squashing: the path goes as built
        setopt(pycurl.NOSIGNAL, 1)
        setopt(pycurl.PROTOCOLS, _HTTP_ONLY)
        setopt(pycurl.REDIR_PROTOCOLS, _HTTP_ONLY)
        setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        for option, path in self._ca:
            setopt(option, path)
        setopt(pycurl.PROXY, self.proxy)  # "" = none, whatever the environment says
        if self.proxy:
            setopt(pycurl.NOPROXY, "")  # proxy_for already applied NO_PROXY
        millis = max(1, int((self.timeout if timeout is None else timeout) * 1000))
        setopt(pycurl.CONNECTTIMEOUT_MS, millis)
        setopt(pycurl.TIMEOUT_MS, millis)
        setopt(pycurl.MAXFILESIZE_LARGE, MAX_RESPONSE_BYTES)
        if method not in _REUSE_METHODS:
            setopt(pycurl.FRESH_CONNECT, 1)  # never sent twice (see _REUSE_METHODS)
        if method == "HEAD":
            setopt(pycurl.NOBODY, 1)
        elif body is not None or method in BODY_METHODS:
            setopt(pycurl.POSTFIELDS, body or b"")  # sets its length too: binary-safe
            if method != "POST":
                setopt(pycurl.CUSTOMREQUEST, method)
        elif method != "GET":
            setopt(pycurl.CUSTOMREQUEST, method)
        setopt(pycurl.HTTPHEADER, lines)
        chunks: list[bytes] = []
        received: list[bytes] = []
        size = 0

        def write(chunk: bytes) -> int | None:
            nonlocal size
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:  # an answer without Content-Length, too long
                return 0  # libcurl stops: E_WRITE_ERROR
            chunks.append(chunk)
            return None

        setopt(pycurl.WRITEFUNCTION, write)
        setopt(pycurl.HEADERFUNCTION, received.append)
        handle.perform()
        data = b"".join(chunks)
        chunks.clear()  # the handle keeps ``write`` until its next call, not the body
        return SiteResponse(
            handle.getinfo(pycurl.RESPONSE_CODE),
            data,
            handle.getinfo(pycurl.CONTENT_TYPE),
            received,
        )

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            with contextlib.suppress(pycurl.error):  # one another thread is still using
                handle.close()
        self._local = threading.local()


def _cookies(response: SiteResponse) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.header_list("Set-Cookie"):
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


def extract(spec: str, response: SiteResponse) -> str | None:
    """Read ``cookie:<name>``, ``header:<Name>`` or ``json:<a.b>`` from a response."""
    kind, _, name = spec.partition(":")
    if kind == "cookie":
        return _cookies(response).get(name)
    if kind == "header":
        return response.header(name)
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
        self._client = SiteClient(self.timeout, proxy_for(self.base_url, settings.trust_env))

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

    def _site_user(self, response: SiteResponse, username: str) -> SiteUser | None:
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
        path = route.path.format(token=path_segment(site_token), user_id=path_segment(user_id))
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
        content_type = response.content_type or "application/octet-stream"
        return UpstreamResponse(response.status, response.data, content_type)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> SiteResponse:
        headers = {"User-Agent": self._user_agent, **headers}
        try:
            return self._client.request(method, self.base_url + path, body, headers)
        except pycurl.error as exc:
            raise self._unavailable(exc, self.timeout, detail=True) from exc
        except ValueError as exc:  # a header the site gave us (a token) that HTTP can't carry
            raise UpstreamUnavailable(f"{self.base_url} cannot be sent this call ({exc})") from exc

    def _unavailable(self, exc: pycurl.error, timeout: float, detail: bool) -> UpstreamUnavailable:
        # Messages name the site, not the URL (a URL may carry the user's site token),
        # nor libcurl's own text: only its error's name.
        code = exc.args[0] if exc.args else -1
        if code in (pycurl.E_WRITE_ERROR, pycurl.E_FILESIZE_EXCEEDED):
            return UpstreamUnavailable(
                f"{self.base_url} answered more than {MAX_RESPONSE_BYTES} bytes"
            )
        if code == pycurl.E_OPERATION_TIMEDOUT:
            return UpstreamUnavailable(
                f"{self.base_url} gave no answer in {timeout}s", timeout=True
            )
        reason = f" ({_CURL_ERRORS.get(code, 'error')})" if detail else ""
        return UpstreamUnavailable(f"{self.base_url} is unreachable{reason}")

    def ready(self, timeout: float) -> None:
        """``HEAD /`` on the site: any answer below 500 means it serves (a 404 too)."""
        headers = {"User-Agent": self._user_agent}
        try:
            response = self._client.request("HEAD", self.base_url + "/", None, headers, timeout)
        except pycurl.error as exc:
            raise self._unavailable(exc, timeout, detail=False) from exc
        if response.status >= 500:
            raise UpstreamUnavailable(f"{self.base_url} answered {response.status}")

    def close(self) -> None:
        self._client.close()
