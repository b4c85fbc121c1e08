"""Rendering pages: configurable view names, security headers, the error page."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask, current_app, render_template

from . import context
from .paths import API, CACHEABLE, STATIC

#: Strict CSP: no inline script or style, nothing from elsewhere, no framing.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self' http: https:; "
    "frame-ancestors 'none'; base-uri 'none'"
)


#: The CSP of every ``/api/*`` answer, whatever its type: what the site answered is data,
#: never a page of ours (an HTML or SVG answer runs nothing, loads nothing, is framed nowhere).
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


#: The CSP of a page that runs our own script (``static/passkeys.js``) and nothing else.
SCRIPT_CSP = CSP.replace("default-src 'none';", "default-src 'none'; script-src 'self';")


def with_script(response):
    """Let the page run scripts from this server (the passkey forms)."""
    response.headers["Content-Security-Policy"] = SCRIPT_CSP
    return response


def with_image_origin(response, origin: str):
    """Let the page load images from ``origin`` too (a client's logo on the consent page)."""
    response.headers["Content-Security-Policy"] = CSP.replace(
        "img-src 'self'", f"img-src 'self' {origin}"
    )
    return response


def view(name: str) -> str:
    """Map a logical page (``login``, ``dialog``...) to its template, as configured."""
    views = current_app.extensions["oauth2"].settings.auth.views
    return f"{getattr(views, name)}.html"


def render_page(name: str, code: int = 200, **context):
    return current_app.make_response((render_template(view(name), **context), code))


def render_error(status: int, title: str, message: str, detail: str | None = None):
    return render_page("error", status, status=status, title=title, message=message, detail=detail)


def _security_headers(response):
    """Add each security header the response lacks (one look at the names it has)."""
    headers = response.headers
    req = context.request()
    for name, value in missing(headers.items(), response.mimetype, req.path, req.is_secure):
        headers.add(name, value)
    return response


def missing(
    headers: Iterable[tuple[str, str]], mimetype: str, path: str, secure: bool
) -> list[tuple[str, str]]:
    """The security headers an answer with ``headers`` lacks (one look at their names)."""
    present = {name.lower() for name, _ in headers}
    wanted = _wanted(mimetype == "text/html", path, secure)
    return [(name, value) for name, value in wanted if name.lower() not in present]


def _wanted(html: bool, path: str, secure: bool) -> list[tuple[str, str]]:
    """The security headers an answer gets unless it sets them itself."""
    api = path.startswith(API)
    page = html and not api  # the gateway passes the site's answers on: never our page
    wanted = [
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        # Pages send a Referer only to us (Flask-WTF checks it over TLS); everything else,
        # redirects carrying codes or tokens and token answers included, sends none.
        ("Referrer-Policy", "same-origin" if page else "no-referrer"),
    ]
    if not path.startswith(CACHEABLE):
        wanted.append(("Cache-Control", "no-store"))
    if api:
        wanted.append(("Content-Security-Policy", API_CSP))
    elif html:
        wanted.append(("Content-Security-Policy", CSP))
    elif not path.startswith(STATIC):
        wanted.append(("Content-Security-Policy", "frame-ancestors 'none'"))
    if secure:
        wanted.append(("Strict-Transport-Security", "max-age=31536000"))
    return wanted


def _context():
    return {"site_name": current_app.extensions["oauth2"].settings.auth.site_name}


def init_app(app: Flask) -> None:
    app.after_request(_security_headers)
    app.context_processor(_context)
