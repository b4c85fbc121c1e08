"""OAuth 2.0 requests built from exactly the parameters the RFC allows for each endpoint.

The authorization endpoint reads the query string (or a stored transaction); the
token, revocation and introspection endpoints read the body only, form-encoded or,
for the original server's clients, a JSON object.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError

Params = dict[str, list[str]]


class ParamsPayload(OAuth2Payload):
    def __init__(self, params: Params) -> None:
        self._lists = params
        self._data = {key: values[0] for key, values in params.items() if values}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list]:
        return defaultdict(list, self._lists)


class ParamsRequest(OAuth2Request):
    """An ``OAuth2Request`` whose parameters were chosen by the caller. Its ``uri`` may be
    given as a Werkzeug request, whose ``url`` is then worked out when first read (a
    URI-to-IRI round trip that neither Authlib's grants nor ours read)."""

    def __init__(self, method: str, uri: Any, headers: Any, params: Params) -> None:
        source = None
        if not isinstance(uri, str):  # Authlib checks the scheme and host: from the parts
            source, uri = uri, f"{uri.scheme}://{uri.host}{uri.root_path}{uri.path}"
        # Set after: Authlib's ``headers or {}`` would count a Werkzeug ``EnvironHeaders``
        # (a walk over the whole environ) only to learn it is not empty.
        super().__init__(method=method, uri=uri)
        if source is not None:
            self._uri = source
        self.headers = {} if headers is None else headers
        self.payload = ParamsPayload(params)
        self.grant_id: str | None = None
        #: The checked DPoP proof of a token request (``app.oauth2.rfc9449``), if any.
        self.dpop: Any = None

    @property  # type: ignore[override]
    def uri(self) -> str:
        uri = self._uri
        if not isinstance(uri, str):
            uri = self._uri = uri.url
        return uri  # type: ignore[no-any-return]

    @uri.setter
    def uri(self, value: Any) -> None:
        self._uri = value

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data


def shown(name: str) -> str:
    """A parameter name fit for ``error_description`` (RFC 6749 §5.2's character set)."""
    safe = "".join(c for c in name[:40] if " " <= c <= "~" and c not in '"\\')
    return safe or "?"


def json_body(request: Any) -> Any:
    """A request's JSON body, or ``None`` when it is not JSON or does not parse; a body
    nested deeper than the parser goes (``RecursionError``, which ``get_json(silent=True)``
    lets through) included."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def json_params(body: Any) -> Params:
    """Turn a JSON object body into parameters; anything else is ``invalid_request``."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The JSON body must be an object.")
    params: Params = {}
    for key, value in body.items():
        text = json_text(value)
        if text is None:
            raise InvalidRequestError(f"Parameter '{shown(key)}' must be a string.")
        params[str(key)] = [text]
    return checked(params)


def json_text(value: Any) -> str | None:
    """A JSON body's value as the parameter it stands for: strings, and numbers as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value)


#: RFC 6749 Appendix A: these parameters are printable ASCII (VSCHAR, NQCHAR, URI).
VSCHAR_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "client_secret",
        "redirect_uri",
        "scope",
        "state",
        "code",
        "grant_type",
        "refresh_token",
        "code_verifier",
        "code_challenge",
        "code_challenge_method",
        "token",
        "token_type_hint",
        "response_mode",
    }
)
VSCHAR = re.compile(r"[\x20-\x7e]*")

#: RFC 6749 Appendix A (and RFC 3986 for URIs): the stricter syntax of parameters that
#: Authlib quotes in its error descriptions, so no value can break the error it builds.
_NAME = r"[A-Za-z0-9_.-]+"
_URI = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+"
GRAMMAR = {
    "response_type": re.compile(r"[A-Za-z0-9_]+( [A-Za-z0-9_]+)*"),
    "response_mode": re.compile(_NAME),
    "grant_type": re.compile(f"{_NAME}|{_URI}"),
    "redirect_uri": re.compile(_URI),
    "code_challenge_method": re.compile(_NAME),
    "token_type_hint": re.compile(_NAME),
}

#: Bounds on what a request may carry; real OAuth parameters are far smaller.
MAX_PARAMS = 32
MAX_VALUE = 4096


def require_utf8(raw: bytes) -> None:
    """Refuse a form-encoded string whose decoded bytes are not UTF-8 (RFC 6749 App. B)."""
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("The request is not valid UTF-8.") from exc


def form_params(raw: bytes) -> Params:
    """A form-encoded body's parameters, read as Werkzeug's form parser reads them
    (``parse_qsl``, blank values kept, ``+`` a space), each name's values in order; a
    body whose bytes or decoded escapes are not UTF-8 is refused (RFC 6749 Appendix B),
    as :func:`require_utf8` refuses it. One pass over the bytes ``get_data`` holds
    already, without the form parser's machinery or a ``MultiDict``."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("The request is not valid UTF-8.") from exc
    params: Params = {}
    for key, value in pairs:
        values = params.get(key)
        if values is None:
            params[key] = [value]
        else:
            values.append(value)
    return params


def checked(params: Params, unique: bool = True) -> Params:
    """Refuse oversized, undecodable or (RFC 6749 §3.1, §3.2) repeated parameters."""
    if len(params) > MAX_PARAMS:
        raise InvalidRequestError("Too many parameters.")
    for key, values in params.items():
        if unique and len(values) > 1:
            raise InvalidRequestError(f"Parameter '{shown(key)}' is repeated.")
        for value in (key, *values):
            if len(value) > MAX_VALUE:
                raise InvalidRequestError(f"Parameter '{shown(key)}' is too long.")
            if "\x00" in value:
                raise InvalidRequestError(f"Parameter '{shown(key)}' holds a NUL character.")
        if key in VSCHAR_PARAMS and not all(VSCHAR.fullmatch(v) for v in values):
            raise InvalidRequestError(f"Parameter '{key}' must be printable ASCII (RFC 6749 A).")
        grammar = GRAMMAR.get(key)
        if grammar and not all(grammar.fullmatch(v) for v in values):
            raise InvalidRequestError(f"Parameter '{key}' is malformed (RFC 6749 Appendix A).")
    return params
