"""OpenID Connect Discovery 1.0, https://openid.net/specs/openid-connect-discovery-1_0.html

The provider's fields, built once at start from what was registered. They go into the
RFC 8414 document as well (RFC 8414 §2 takes the OpenID Connect Discovery fields), so
``/.well-known/openid-configuration`` and ``/.well-known/oauth-authorization-server``
serve one document and cannot disagree.
"""

from __future__ import annotations

from typing import Any

from .. import paths
from .acr import LEVELS
from .keys import ALGS
from .signin import SIGN_IN_FACTS

#: Claims every ID Token may carry beside the user's (§2 of OpenID Connect Core).
ID_TOKEN_CLAIMS = ("sub", "iss", "aud", "exp", "iat", "nonce", "at_hash", *SIGN_IN_FACTS)


def provider_metadata(server: Any, user_claims: list[str]) -> dict[str, Any]:
    """The OpenID Provider fields of the metadata; ``user_claims`` are the adapter's."""
    issuer = server.issuer
    return {
        "jwks_uri": issuer + paths.JWKS,
        "userinfo_endpoint": issuer + paths.USERINFO,
        "subject_types_supported": ["public", "pairwise"],
        # RS256 first: the discovery spec requires it; ES256 per client.
        "id_token_signing_alg_values_supported": list(ALGS),
        "claims_supported": list(dict.fromkeys([*ID_TOKEN_CLAIMS, *user_claims])),
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "prompt_values_supported": ["none", "login", "consent"],
        "acr_values_supported": list(LEVELS),
    }
