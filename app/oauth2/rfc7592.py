"""OAuth 2.0 Dynamic Client Registration Management Protocol (RFC 7592),
https://www.rfc-editor.org/rfc/rfc7592

Authlib's ``ClientConfigurationEndpoint`` does the protocol (GET, PUT, DELETE at
``/register/<client_id>``); the hooks here fix what it leaves (LIBRARIES.md §3): PUT
replaces the metadata (§2.2: fields left out are removed), the registration access
token is rotated on every PUT, ``revoke_access_token`` is called ``(request, token)``,
and a bad token is RFC 6750's ``401 invalid_token``. Only clients registered through
RFC 7591 are managed here; the admin API manages every stored client.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc7592 import ClientConfigurationEndpoint
from flask import request as flask_request

from ..client_metadata import ClientMetadataError
from ..client_store import ClientStore
from ..secrets_hash import new_secret, token_digest
from . import rfc6750
from .rfc7591 import (
    Registered,
    check_registration_token,
    checked_fields,
    json_request,
    metadata_error,
    registration_info,
)


class ConfigurationEndpoint(ClientConfigurationEndpoint):
    """``GET``/``PUT``/``DELETE /register/<client_id>`` (RFC 7592 §2)."""

    def __init__(self, server, *, store: ClientStore, lifetimes, remove) -> None:
        super().__init__(server)
        self.store, self.lifetimes, self.remove = store, lifetimes, remove

    def create_endpoint_request(self, request):
        return json_request(flask_request.method, flask_request.method == "PUT")

    def _client_id(self) -> str:
        return (flask_request.view_args or {}).get("client_id", "")

    def authenticate_token(self, request):
        """The client's registration access token; anything else is 401 (RFC 6750 §3.1)."""
        raw = rfc6750.bearer_token(request.headers.get("Authorization", ""))
        record = self.store.record(self._client_id()) if raw else None
        if record is None or record.get("source") != "registration" or raw is None:
            raise InvalidTokenError(description="Unknown registration access token or client.")
        if not check_registration_token(record, raw):
            raise InvalidTokenError(description="Unknown registration access token or client.")
        request.record = record
        return Registered(client_id=record["client_id"])

    def authenticate_client(self, request):
        return self.store.client(request.record)

    def revoke_access_token(self, request, token=None):
        """Nothing to revoke: the token lives in the client's record, which is gone."""

    def check_permission(self, client, request) -> bool:
        return True  # the token is the client's own (Authlib checked check_client)

    def introspect_client(self, client):
        return {}

    def generate_client_registration_info(self, client, request):
        return registration_info(request.record, getattr(request, "new_token", None))

    def get_server_metadata(self):
        return self.server.metadata

    def extract_client_metadata(self, request):
        return checked_fields(request.payload.data, self.lifetimes, request.record["metadata"])

    def update_client(self, client, client_metadata, request):
        """§2.2: the body replaces the metadata; a new registration access token."""
        token = new_secret(32)
        try:
            request.record = self.store.update(
                request.record, client_metadata, {"registration_token": token_digest(token)}
            )
        except ClientMetadataError as exc:
            raise metadata_error(exc) from None
        request.new_token = token
        return self.store.client(request.record)

    def delete_client(self, client, request):
        if self.remove(client.get_client_id()) is None:
            raise InvalidRequestError("The client is already gone.")
