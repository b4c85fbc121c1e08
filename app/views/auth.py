"""Sign in against the existing site (signing out: :mod:`app.views.logout`)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from flask import Blueprint, redirect, request, session
from flask_login import login_user

from ..adapters import UpstreamUnavailable
from ..audit import audit
from ..limits import delay_fields, login_limits
from ..oidc.prompt import NO_CONTROLS
from ..pages import render_error, render_page
from .account import ask_second_step, enrolment_redirect, has_second_factor, required_for
from .common import safe_next, state

bp = Blueprint("auth", __name__)

MAX_FIELD = 256


def _authorize_params(next_url: str) -> dict[str, list[str]]:
    """The parameters of the ``/authorize`` URL a sign-in returns to (none for others)."""
    parts = urlsplit(next_url)
    return parse_qs(parts.query) if parts.path == "/authorize" else {}


def _login_hint(params: dict[str, list[str]]) -> str:
    """The username to fill in: the ``login_hint`` of the request (OIDC Core §3.1.2.1)."""
    hints = params.get("login_hint", [])
    hint = hints[0] if len(hints) == 1 else ""
    return hint if len(hint) <= MAX_FIELD and NO_CONTROLS.fullmatch(hint) else ""


def _form(next_url: str, error: str | None = None, status: int = 200):
    params = _authorize_params(next_url)
    client = state().clients.get(params.get("client_id", [None])[0])
    return render_page(
        "login",
        status,
        next=next_url,
        error=error,
        client=client,
        username=_login_hint(params),
    )


def _locked(next_url: str, wait: int):
    minutes = f"{wait} seconds" if wait < 120 else f"{wait // 60} minutes"
    response = _form(next_url, f"Too many failed attempts. Try again in {minutes}.", 429)
    response.headers["Retry-After"] = str(wait)
    response.headers.extend(delay_fields(state().limits.login, wait))
    return response


@bp.get("/login")
def login():
    return _form(safe_next(request.args.get("next"), ""))


@bp.post("/login")
@login_limits
def login_post():
    next_url = safe_next(request.form.get("next") or request.args.get("next"), "")
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    if not username or not password or len(username) > MAX_FIELD or len(password) > MAX_FIELD:
        return _form(next_url, "Enter your username and password.", 400)
    lockout, subject = state().limits.login, username.strip().lower()
    attempt = lockout.reserve(subject)  # counted before the site is asked: parallel-safe
    if attempt.wait:
        audit("login_locked", username=username)
        return _locked(next_url, attempt.wait)
    try:
        site_user = state().adapter.login(username, password)
    except UpstreamUnavailable:
        lockout.release(subject)
        return render_error(
            502,
            "Sign-in unavailable",
            "We cannot reach the site to check your password. Try again soon.",
        )
    if site_user is None:
        audit("login_failed", username=username)
        if attempt.delay:
            audit("lockout", username=username, seconds=attempt.delay)
        return _form(next_url, "Wrong username or password.", 401)
    second_step = has_second_factor(str(site_user.id))
    with state().storage.batch():  # user record and audit entry: one round trip
        lockout.succeeded(subject)
        user = state().users.remember(site_user)
        audit("login_password" if second_step else "login", user_id=user.id)
    if second_step:  # not signed in until the code (app.views.account)
        return ask_second_step(user.id, next_url)
    session.signed_in()  # type: ignore[attr-defined]  # new id, new CSRF secret
    login_user(user)
    if required_for():
        return enrolment_redirect(next_url)
    return redirect(next_url or "/review", 302)
