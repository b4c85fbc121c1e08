"""The review page: which partners hold access for me, and taking it back."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, redirect, request
from flask_login import current_user, login_required

from ..audit import audit
from ..pages import render_page
from .common import state

bp = Blueprint("review", __name__)


def _return_to() -> dict[str, str] | None:
    """``?client_id=&redirect_uri=`` names a way back only if registered for that client."""
    client = state().clients.get(request.args.get("client_id"))
    redirect_uri = request.args.get("redirect_uri", "")
    if client is None or not client.check_redirect_uri(redirect_uri):
        return None
    return {"client_id": client.client_id, "redirect_uri": redirect_uri}


def _grants() -> list[dict]:
    scopes = state().adapter.scopes
    rows = []
    for client_id, grants in state().store.grants_of_user(current_user.id).items():
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
    return_to = _return_to()
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
    for client_id in state().store.grants_of_user(current_user.id):
        if client_id not in kept:
            revoked = state().store.revoke_client_for_user(current_user.id, client_id)
            audit("grant_revoked", client_id=client_id, user_id=current_user.id, revoked=revoked)
    return_to = _return_to()
    if return_to:
        return redirect(return_to["redirect_uri"], 302)
    return redirect("/review?saved=1", 302)
