"""The ``http`` and ``dummy`` adapters' keys, declared the way ``app.config_model`` declares ours.

Each adapter class names its model in ``ResourceServer.Config``; the settings check it
with the rest of the configuration (every problem at once, each naming its key under
``resource_server.``), and the adapter reads its typed values from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..oidc.scopes import USER_CLAIMS
from .base import ApiRoute

DEFAULT_USER_AGENT = "oauth2-server/0.1"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")
TOKEN_IN = ("query", "header", "cookie", "form")
TOKEN_FROM = ("cookie", "json", "header")
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class Keys(BaseModel):
    """Strict types, unknown keys refused, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _method(value: str) -> str:
    if value not in METHODS:
        raise ValueError(f"unsupported method {value!r}")
    return value


def _site_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with '/'")
    try:
        value.format(token="", user_id="")
    except (KeyError, IndexError, ValueError):
        raise ValueError(
            f"{value!r} may only use the placeholders {{token}} and {{user_id}}"
        ) from None
    return value


def _placement(kinds: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        kind, _, name = value.partition(":")
        if kind not in kinds or not name:
            raise ValueError(f"{value!r} is not one of {', '.join(k + ':<name>' for k in kinds)}")
        return value

    return AfterValidator(check)


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} must be an http:// or https:// URL")
    return value.rstrip("/")


def _methods(value: Any) -> tuple[str, ...]:
    """One method (``"GET"``) or several (``["GET", "POST"]``), in the order given."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("lists no method")
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{value!r}: each method is a string")
    return tuple(dict.fromkeys(_method(v.upper()) for v in values))


Method = Annotated[str, BeforeValidator(_upper), AfterValidator(_method)]
SitePath = Annotated[str, AfterValidator(_site_path)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Seconds = Annotated[float, Field(gt=0)]


class LoginSettings(Keys):
    """How :meth:`HttpAdapter.login` talks to the site's login endpoint."""

    path: SitePath = "/login"
    method: Method = "POST"
    username_field: str = "username"
    password_field: str = "password"  # noqa: S105 - a form field name
    format: Literal["form", "json"] = "form"
    token_from: Annotated[str, _placement(TOKEN_FROM)] = "cookie:session"  # noqa: S105
    id_from: Annotated[str, _placement(TOKEN_FROM)] = "json:id"
    name_from: Annotated[str, _placement(TOKEN_FROM)] = "json:firstName"


def _claim(value: str) -> str:
    if value not in USER_CLAIMS:
        raise ValueError(f"{value!r} is not a standard claim ({', '.join(USER_CLAIMS)})")
    return value


def _json_path(value: str) -> str:
    kind, _, name = value.partition(":")
    if kind != "json" or not name:
        raise ValueError(f"{value!r} is not json:<field> (a dotted path into the JSON answer)")
    return value


Claim = Annotated[str, AfterValidator(_claim)]
JsonPath = Annotated[str, AfterValidator(_json_path)]


class ClaimsEndpoint(Keys):
    """A site endpoint answering the signed-in user's claims as JSON (read at UserInfo)."""

    path: SitePath
    method: Method = "GET"
    token_in: Annotated[str, _placement(TOKEN_IN)] = "query:token"  # noqa: S105
    #: Claim -> ``json:<a.b>`` in the endpoint's answer.
    fields: Annotated[dict[Claim, JsonPath], Field(min_length=1)]

    def route(self) -> ApiRoute:
        return ApiRoute(
            name="claims", scope="", method=self.method, path=self.path, token_in=self.token_in
        )


class ClaimsSettings(Keys):
    """Where the users' OpenID Connect claims come from (beside ``name``, the login's)."""

    #: Claim -> ``json:<a.b>`` in the login answer; kept with the user at sign-in.
    from_login: dict[Claim, JsonPath] = {}
    #: A site endpoint asked at every UserInfo request, its claims over the login's.
    endpoint: ClaimsEndpoint | None = None

    @property
    def supported(self) -> list[str]:
        fields = self.endpoint.fields if self.endpoint else {}
        return list(dict.fromkeys(["name", *self.from_login, *fields]))


class RouteConfig(Keys):
    """One ``api.<name>`` function: the scope it needs and how the site serves it."""

    scope: str
    #: One method, or the list a partner may use (the site is called with the partner's).
    method: Annotated[Any, AfterValidator(_methods)] = ("GET",)
    path: SitePath | None = None
    token_in: Annotated[str, _placement(TOKEN_IN)] = "query:token"  # noqa: S105

    @property
    def methods(self) -> tuple[str, ...]:
        return self.method

    def route(self, name: str) -> ApiRoute:
        methods = self.methods
        path = self.path or f"/{name}"
        return ApiRoute(
            name=name,
            scope=self.scope,
            method=methods[0],
            path=path,
            token_in=self.token_in,
            methods=methods,
        )


class HttpConfig(Keys):
    """The ``http`` adapter's section (see :class:`app.adapters.http.HttpAdapter`)."""

    type: str = "http"
    base_url: Annotated[str, AfterValidator(_base_url)]
    timeout: Seconds = 5.0
    user_agent: str = DEFAULT_USER_AGENT
    #: Honour HTTP(S)_PROXY / NO_PROXY from the environment.
    trust_env: bool = False
    login: LoginSettings = LoginSettings()
    #: Scope name -> description shown on the consent page; the first is the default.
    scopes: Annotated[dict[Name, str], Field(min_length=1)]
    api: dict[Name, RouteConfig] = {}
    claims: ClaimsSettings = ClaimsSettings()

    @model_validator(mode="after")
    def _routes_fit(self) -> HttpConfig:
        for name, route in self.api.items():
            where = f".api.{name}"
            if route.scope not in self.scopes:
                raise ValueError(f"{where}.scope: unknown scope {route.scope!r}")
            bodiless = [m for m in route.methods if m not in BODY_METHODS]
            if route.token_in.startswith("form:") and bodiless:
                raise ValueError(
                    f"{where}.token_in: 'form:' needs a method with a body, not {bodiless[0]}"
                )
        return self


class DummyConfig(Keys):
    """The ``dummy`` adapter's section: where the bundled stand-in site listens."""

    type: str = "dummy"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8084
    user_agent: str = DEFAULT_USER_AGENT
    timeout: Seconds = 5.0
