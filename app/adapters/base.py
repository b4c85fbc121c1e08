"""The resource-server adapter: how this server talks to the existing website."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class SiteUser:
    """A user of the existing site as returned by :meth:`ResourceServer.login`."""

    id: str
    name: str
    #: The site's own credential for this user (a session cookie value, an API key...),
    #: passed back to the site when a partner calls ``/api/*`` for the user.
    site_token: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRoute:
    """One ``/api/<name>`` function: the scope it needs and how the site serves it."""

    name: str
    scope: str
    #: The method the site is called with; in :meth:`ResourceServer.call`, the one the
    #: partner used (the site is told which, as the original's sites were).
    method: str = "GET"
    #: Path on the site; ``{token}`` and ``{user_id}`` are filled in.
    path: str = ""
    #: Where the user's site token goes: ``query:<param>``, ``header:<Name>``,
    #: ``cookie:<name>`` or ``form:<field>``.
    token_in: str = "query:token"  # noqa: S105 - a placement, not a secret
    #: Every method partners may use (the original answered GET for every function);
    #: empty means ``method`` alone.
    methods: tuple[str, ...] = ()

    @property
    def allowed(self) -> tuple[str, ...]:
        """The methods a partner may call this function with."""
        return self.methods or (self.method,)

    def called_with(self, method: str) -> ApiRoute:
        """This route as called with ``method`` (one of :attr:`allowed`)."""
        return replace(self, method=method)


@dataclass
class UpstreamResponse:
    """What the site answered to a proxied call."""

    status: int
    body: bytes
    content_type: str = "application/json"


class UpstreamUnavailable(Exception):
    """The site could not be reached (502) or did not answer in time (504)."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class ResourceServer(abc.ABC):
    """Adapter for one existing website.

    Implementations MUST:

    * answer :meth:`login` with a :class:`SiteUser` for good credentials and
      ``None`` for bad ones, raising :class:`UpstreamUnavailable` only when the
      site cannot be reached;
    * list every scope in :attr:`scopes` (name -> human description), the first
      being the default scope for a request that names none;
    * list every ``/api/<name>`` function in :attr:`api`, each naming a scope
      from :attr:`scopes`;
    * in :meth:`call`, pass ``user.site_token`` (never the OAuth token) to the
      site together with ``headers``, with ``route.method`` (the partner's method),
      and raise :class:`UpstreamUnavailable` when the site is down or slow, never a
      driver exception;
    * put the user's OpenID Connect claims (OpenID Connect Core §5.1 names:
      ``email``, ``given_name``...) it read from the login answer in
      ``SiteUser.extra`` (other keys there are not kept), list every claim it can
      give in :attr:`claims_supported`, and answer :meth:`claims` as :meth:`call`
      (raise :class:`UpstreamUnavailable` only when the site fails).
    """

    #: Started and stopped with ``oauth2-server serve`` when set (the dummy site).
    bundled_site: tuple[str, int] | None = None

    #: The model of this adapter's ``resource_server`` keys (``None``: not checked).
    Config: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> Any:
        """Validate ``config`` against :attr:`Config`; raise ``ConfigError`` naming each key."""
        if cls.Config is None:
            return config
        from ..config_model import ConfigError, problem_lines

        try:
            return cls.Config.model_validate(config)
        except ValidationError as error:
            raise ConfigError(problem_lines(error, "resource_server")) from None

    @property
    @abc.abstractmethod
    def scopes(self) -> dict[str, str]:
        """Scope name -> description shown on the consent page."""

    @property
    @abc.abstractmethod
    def api(self) -> dict[str, ApiRoute]:
        """``/api/<name>`` -> route."""

    @abc.abstractmethod
    def login(self, username: str, password: str) -> SiteUser | None:
        """Check credentials against the site."""

    @abc.abstractmethod
    def call(
        self,
        route: ApiRoute,
        site_token: str,
        user_id: str,
        headers: dict[str, str],
        body: bytes | None,
        query: dict[str, str],
    ) -> UpstreamResponse:
        """Serve one ``/api`` call for the user; ``headers`` are extra headers for the site."""

    @property
    def claims_supported(self) -> list[str]:
        """The OpenID Connect claims this site gives, beside ``sub`` (for discovery)."""
        return ["name"]

    def claims(self, user_id: str, site_token: str, extra: dict[str, Any]) -> dict[str, Any]:
        """The user's claims for UserInfo; ``extra``: those of the login answer, as kept
        at sign-in (``name`` always). The default gives ``extra``; an adapter MAY ask
        the site for fresher or more claims with ``site_token``."""
        return dict(extra)

    def ready(self, timeout: float) -> None:
        """Raise :class:`UpstreamUnavailable` unless the site answers within ``timeout``
        seconds (``/readyz``). The default checks nothing: an adapter with no site to
        reach is always ready; one that talks to a site SHOULD probe it cheaply."""

    def close(self) -> None:
        """Release pooled connections."""
