"""The authorization server: Authlib's engine wired to our clients, grant store and users."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749.errors import (
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
    UnsupportedResponseTypeError,
)
from flask import Response
from flask import json as flask_json

from .. import context
from ..audit import audit
from ..oidc.signin import facts_of
from ..quotas.choice import grant_fields
from ..secrets_hash import new_secret
from . import client_auth
from .grant_store import new_grant_id
from .requests import (
    ParamsRequest,
    checked,
    form_params,
    json_body,
    json_params,
    require_utf8,
)


class OAuth2Server(AuthorizationServer):
    """Authlib's Flask server with this project's storage and request rules."""

    def __init__(self, *, clients, grants, users, issuer: str, access_ttl: int, scopes) -> None:
        super().__init__()
        self.clients = clients
        self.grants = grants
        self.users = users
        self.issuer = issuer
        self.access_ttl = access_ttl
        self.scopes_supported = list(scopes)
        self.grant_types: set[str] = set()
        self.response_types: set[str] = set()
        self.endpoint_names: set[str] = set()
        #: The RFC 8414 (and OpenID Connect Discovery) document, built once every grant
        #: and endpoint is registered.
        self.metadata: dict[str, Any] = {}
        #: Fields to add to the document (e.g. ``end_session_endpoint``): set them before
        #: ``build_server`` builds it.
        self.extra_metadata: dict[str, Any] = {}
        self.pkce: Any = None
        #: The ID Token issuer (``app.oidc.grants.IDTokens``).
        self.id_tokens: Any = None
        self.issuer_parameter: Any = None
        #: The DPoP proof checks (``app.oauth2.rfc9449.DPoP``); None: DPoP is off.
        self.dpop: Any = None
        self.register_token_generator("default", self.generate_bearer_token)
        for method, func in client_auth.HOOKS.items():
            self.register_client_auth_method(method, func)

    def load_config(self, config) -> None:
        """Ignore Authlib's ``OAUTH2_*`` keys: ``app.settings`` configured us already."""

    # -- hooks Authlib asks us to implement -------------------------------------------
    def query_client(self, client_id: str):
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request) -> None:
        self.grants.save_token(
            token, self.token_fields(request), refresh_lifetime=refresh_lifetime(request.client)
        )

    def access_lifetime(self, client) -> int:
        """Seconds an access token of ``client`` lives: its own lifetime, else the server's."""
        return getattr(client, "access_token_lifetime", None) or self.access_ttl

    def token_fields(self, request) -> dict[str, Any]:
        """The fields a token response's records carry: client, grant, user, and the
        sign-in its code or refresh token carried (for the ID Token of a later refresh)."""
        user = request.user
        fields = {
            "client_id": request.client.get_client_id(),
            "grant_id": getattr(request, "grant_id", None) or new_grant_id(),
            "user_id": user.get_user_id() if user else None,
        }
        if user:
            fields.update(user_name=user.name, site_token=user.site_token)
        source = request.authorization_code or request.refresh_token
        if source is not None:
            fields.update(facts_of(source.record))
        fields.update(grant_fields(source.record if source is not None else None))
        jkt = getattr(request, "dpop_jkt", None)
        if jkt:
            # RFC 9449 §5-6: the access token (and a public client's refresh token) is bound.
            fields["jkt"] = jkt
            if getattr(request, "dpop_refresh", False):
                fields["refresh_jkt"] = jkt
        return fields

    def generate_bearer_token(
        self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True
    ) -> dict[str, Any]:
        token = {
            "token_type": "Bearer",
            "access_token": new_secret(32),
            "expires_in": expires_in or self.access_lifetime(client),
            "scope": scope or "",
        }
        if include_refresh_token:
            token["refresh_token"] = new_secret(32)
        return token

    def register_grant(self, grant_cls, extensions=None):
        super().register_grant(grant_cls, extensions)
        self.grant_types.add(grant_cls.GRANT_TYPE)
        self.response_types.update(getattr(grant_cls, "RESPONSE_TYPES", ()))

    def authenticate_client(self, request, methods, endpoint="token"):
        return client_auth.authenticate(super().authenticate_client, request, methods, endpoint)

    def register_endpoint(self, endpoint) -> None:
        super().register_endpoint(endpoint)
        self.endpoint_names.add(endpoint.ENDPOINT_NAME)

    # -- requests ---------------------------------------------------------------------
    def create_oauth2_request(self, request):
        if isinstance(request, ParamsRequest):
            return request
        req = context.request()
        if isinstance(request, dict):
            return ParamsRequest("GET", req, req.headers, request)
        return ParamsRequest(
            req.method,
            req,
            req.headers,
            body_params() if req.method == "POST" else query_params(),
        )

    def get_consent_grant(self, request=None, end_user=None):
        """Authlib's, with errors redirected once the client and redirect URI are good."""
        request = self.create_oauth2_request(request)
        try:
            return _check_response_mode(super().get_consent_grant(request, end_user))
        except UnsupportedResponseTypeError as error:
            if request.payload.response_type:
                raise
            raise InvalidRequestError(
                "Missing 'response_type'.", state=error.state, redirect_uri=error.redirect_uri
            ) from error
        except InvalidRequestError as error:
            if not error.redirect_uri:
                error.redirect_uri = self._safe_redirect(request)
                error.redirect_fragment = in_fragment(request.payload.response_type)
            raise

    def _safe_redirect(self, request) -> str | None:
        """The redirect URI, if client_id and redirect_uri are single, known and registered."""
        lists = request.payload.datalist
        if len(lists.get("client_id", [])) != 1 or len(lists.get("redirect_uri", [])) > 1:
            return None
        client = self.query_client(request.payload.client_id)
        uri = request.payload.redirect_uri
        if client is None:
            return None
        if uri is None:
            return client.get_default_redirect_uri()
        return uri if client.check_redirect_uri(uri) else None

    def with_issuer(self, response):
        """Add ``iss`` (RFC 9207) to an error redirect made outside Authlib's hook."""
        self.issuer_parameter.add_issuer_parameter(self, response)
        return response

    def create_token_response(self, request=None, answer=None):
        """Authlib's, the grant's answer made by ``answer(status, body, headers)`` when
        given (the back channel's plain answers, :mod:`app.token_app`), else by
        :meth:`handle_response`; errors always by :meth:`handle_error_response`."""
        request = self.create_oauth2_request(request)
        try:
            grant = self.get_token_grant(request)
        except UnsupportedGrantTypeError as error:
            return self.handle_error_response(request, error)
        try:
            grant.validate_token_request()
            args = grant.create_token_response()
            return (answer or self.handle_response)(*args)
        except OAuth2Error as error:
            return self.handle_error_response(request, error)

    def handle_response(self, status_code, payload, headers):
        """Authlib's, with the app's JSON provider taken once (``flask.json.dumps`` finds
        it through ``current_app`` twice): the same text."""
        if isinstance(payload, dict):
            app = context.app_or_none()
            payload = app.json.dumps(payload) if app is not None else flask_json.dumps(payload)
        return Response(payload, status=status_code, headers=headers)

    def handle_error_response(self, request, error):
        if error.error == "invalid_client" and request is not None:
            claimed = client_auth.claimed_client_id(request.payload.data)
            audit("client_auth_failed", client_id=claimed)
        return super().handle_error_response(request, error)


def refresh_lifetime(client) -> int | None:
    """Seconds a refresh token of ``client`` lives at most (None: the table's lifetime)."""
    return getattr(client, "refresh_token_lifetime", None)


#: The response modes each response type is delivered by (OAuth 2.0 Multiple Response
#: Type Encoding Practices §2.1 and §3: the default one); ``form_post`` is not offered.
RESPONSE_MODES = {
    "code": "query",
    **dict.fromkeys(("token", "id_token", "id_token token", "token id_token"), "fragment"),
}


def in_fragment(response_type: str | None) -> bool:
    """Whether the response type's answers (errors too) go in the fragment."""
    return RESPONSE_MODES.get(response_type or "") == "fragment"


def _check_response_mode(grant):
    """Refuse a ``response_mode`` other than the response type's own (RFC 6749 §3.1)."""
    request = grant.request
    mode = request.payload.data.get("response_mode")
    if mode is not None and mode != RESPONSE_MODES.get(request.payload.response_type):
        raise InvalidRequestError(
            "Unsupported 'response_mode'.",
            state=request.payload.state,
            redirect_uri=grant.redirect_uri,
            redirect_fragment=in_fragment(request.payload.response_type),
        )
    return grant


def query_params() -> dict[str, list[str]]:
    """The authorization request; Authlib reports repeats once the redirect URI is known."""
    req = context.request()
    require_utf8(req.query_string)
    args = req.args
    return checked({key: args.getlist(key) for key in args}, False)


#: The request attribute holding :func:`body_params`' answer (its parameters or its refusal).
_PARSED = "oauth2_body_params"


def body_params() -> dict[str, list[str]]:
    """Parameters of a token-style endpoint: the form body, or a JSON object body. Read
    once per request (the limiter, CORS and the view all ask); a refusal is the same
    each time."""
    req = context.request()
    parsed = getattr(req, _PARSED, None)
    if parsed is None:
        try:
            parsed = _body_params(req)
        except InvalidRequestError as refusal:
            parsed = refusal
        setattr(req, _PARSED, parsed)
    if isinstance(parsed, InvalidRequestError):
        raise parsed
    return parsed


def _body_params(req: Any) -> dict[str, list[str]]:
    if req.is_json:
        params = json_params(json_body(req))
    else:
        if req.mimetype != "application/x-www-form-urlencoded":
            # RFC 6749 §3.2: form encoding (JSON for the original's clients), not multipart.
            raise InvalidRequestError("Send the body as application/x-www-form-urlencoded.")
        params = checked(form_params(req.get_data(cache=True)))
    if "client_secret" in params and client_auth.basic_sent(req.headers):
        # RFC 6749 §2.3: a client MUST NOT use more than one authentication method.
        raise InvalidRequestError("Use one client authentication method, not two.")
    return params
