"""The review page: which partners hold access for me, and taking it back.

A partner is listed while it holds live tokens or the user's remembered consent
(:mod:`app.oidc.consent`); unchecking it revokes both, so every token of its grants dies
and its next request asks again.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Blueprint, g, redirect, request
from flask_login import current_user, login_required

from ..audit import audit
from ..oidc.consent import Consents, describe
from ..pages import render_error, render_page
from ..quotas.choice import review_line
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
    """One row per client holding live tokens or remembered consent for the user."""
    described = state().adapter.scopes
    tokens = state().grants.grants_of_user(current_user.id)
    consents = Consents.of(state()).of_user(current_user.id)
    rows = []
    for client_id in tokens.keys() | consents.keys():
        grants, consent = tokens.get(client_id, []), consents.get(client_id)
        client = state().clients.get(client_id)
        granted = {s for g in grants for s in scope_to_list(g["scope"]) or []}
        remembered = consent["scopes"] if consent else []
        times = [g["issued_at"] for g in grants] + ([consent["granted_at"]] if consent else [])
        rows.append(
            {
                "client_id": client_id,
                "client_name": client.name if client else client_id,
                "scopes": [(s, describe(s, described)) for s in sorted(granted | set(remembered))],
                "granted_at": time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(min(times))),
                "count": len(grants),
                "remembered": bool(consent),
                "quota": review_line(client, current_user.id, grants),
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
    consents = Consents.of(state())
    grants = state().grants
    held = grants.grants_of_user(current_user.id).keys()
    with grants.ending():  # the token cache: one announcement, after every write
        # A retry after a failed announcement finds nothing left to name: flush instead.
        grants.ended_unknown()
        for client_id in held | consents.of_user(current_user.id).keys():
            if client_id not in kept:
                # Consent first: a request racing this one is asked again, not answered at once.
                forgot = consents.forget(current_user.id, client_id)
                revoked = grants.revoke_client_for_user(current_user.id, client_id)
                audit(
                    "grant_revoked",
                    client_id=client_id,
                    user_id=current_user.id,
                    revoked=revoked,
                    consent_forgotten=forgot,
                )
    if g.return_to:
        return redirect(g.return_to["redirect_uri"], 302)
    return redirect("/review?saved=1", 302)
