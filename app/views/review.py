"""The review page: which partners hold access for me, and taking it back."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, g, redirect, request
from flask_login import current_user, login_required

from ..audit import audit
from ..pages import render_error, render_page
from .common import state

bp = Blueprint("review", __name__)


class NoWayBack(Exception):
    """``?client_id=&redirect_uri=`` names no registered way back to a client."""


def _return_to() -> dict[str, str] | None:
    """``?client_id=&redirect_uri=``: none, or one registered way back to that client."""
    args = request.args
    if "client_id" not in args and "redirect_uri" not in args:
        return None
    ids, uris = args.getlist("client_id"), args.getlist("redirect_uri")
    client = state().clients.get(ids[0]) if len(ids) == 1 else None
    if client is None or len(uris) != 1 or not client.check_redirect_uri(uris[0]):
        raise NoWayBack()
    return {"client_id": client.client_id, "redirect_uri": uris[0]}


@bp.before_request
def _way_back() -> None:
    """Refuse a bad way back first, before sign-in: the link itself is wrong."""
    g.return_to = _return_to()


@bp.errorhandler(NoWayBack)
def _no_way_back(_error: NoWayBack):
    return render_error(
        400,
        "This link cannot be used",
        "The application sent an unknown client or a return address it has not registered.",
    )


def _grants() -> list[dict]:
    scopes = state().adapter.scopes
    rows = []
    for client_id, grants in state().grants.grants_of_user(current_user.id).items():
        client = state().clients.get(client_id)
        granted = sorted({s for g in grants for s in scope_to_list(g["scope"]) or []})
        first = min(g["issued_at"] for g in grants)
        rows.append(
            {
                "client_id": client_id,
                "client_name": client.name if client else client_id,
                "scopes": [(s, scopes.get(s, s)) for s in granted],
                "granted_at": time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(first)),
                "count": len(grants),
            }
        )
    return sorted(rows, key=lambda row: row["client_name"].lower())


def _action(return_to: dict[str, str] | None) -> str:
    return "/review" + ("?" + urlencode(return_to) if return_to else "")


@bp.get("/review")
@login_required
def review():
    return_to = g.return_to
    return render_page(
        "review",
        grants=_grants(),
        return_to=return_to,
        action=_action(return_to),
        message=request.args.get("saved") and "Your changes were saved.",
    )


@bp.post("/review")
@login_required
def review_post():
    kept = set(request.form)
    for client_id in state().grants.grants_of_user(current_user.id):
        if client_id not in kept:
            revoked = state().grants.revoke_client_for_user(current_user.id, client_id)
            audit("grant_revoked", client_id=client_id, user_id=current_user.id, revoked=revoked)
    if g.return_to:
        return redirect(g.return_to["redirect_uri"], 302)
    return redirect("/review?saved=1", 302)
