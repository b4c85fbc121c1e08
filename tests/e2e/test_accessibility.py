"""Every page of the real server checked for accessibility in headless Chromium, in the
light and the dark colour scheme: axe-core with the WCAG 2.0/2.1/2.2 A and AA rules plus
its best practices, and what axe leaves out: a visible 3:1 focus ring on every control
reached with Tab, text field edges at 3:1 (WCAG 1.4.11), no sideways scrolling at 320 CSS
pixels (1.4.10).

Pages: sign-in (plain, for a partner, wrong password, locked out), consent (plain scopes,
OpenID Connect scopes, with remembered scopes kept), the review page (empty, with apps and
remembered consent, an app unchecked, returning to a partner, saved), the account page
(two-step sign-in), the sign-out
question, the signed-out page and the error pages (400 unknown client signed in and out,
404). axe-core is the npm package pinned in ``tests/e2e/rp/package.json``; any finding
fails the test with its rule, impact, help and the elements it found.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.e2e import test_browser as browser
from tests.e2e.conftest import HTTP_TIMEOUT
from tests.factories import make_client

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

chromium, partner_site = browser.chromium, browser.partner_site  # the fixtures

AXE = Path(__file__).parent / "rp" / "node_modules" / "axe-core" / "axe.min.js"
#: The rule sets run: WCAG 2.0, 2.1 and 2.2 at levels A and AA, and axe's best practices.
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
SCHEMES = ("light", "dark")
VIEWPORT = {"width": 900, "height": 900}

#: Runs axe on the document; returns each violation with the elements that broke it.
RUN_AXE = """async (tags) => {
  const results = await axe.run(document, {
    runOnly: {type: 'tag', values: tags},
    resultTypes: ['violations'],
  });
  return results.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => ({target: n.target.join(' '), summary: n.failureSummary})),
  }));
}"""


#: Contrast helpers for the checks axe does not make (in page JavaScript).
CONTRAST = """
  const rgba = c => (c.match(/[\\d.]+/g) || [0, 0, 0, 0]).map(Number);
  const linear = c => rgba(c).slice(0, 3).map(v => v / 255)
    .map(v => v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
  const lum = c => { const [r, g, b] = linear(c); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return Math.round((x + 0.05) / (y + 0.05) * 100) / 100;
  };
  const opaque = c => c !== 'transparent' && (rgba(c).length < 4 || rgba(c)[3] > 0);
  const around = el => {
    for (let e = el.parentElement; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (opaque(c)) return c;
    }
    return 'rgb(255, 255, 255)';
  };
"""

#: Text fields at rest: their edge (border, or their own background) must stand out from
#: what is around them by 3:1 (WCAG 1.4.11 non-text contrast).
FIELDS = f"""() => {{ {CONTRAST}
  document.activeElement && document.activeElement.blur();
  return [...document.querySelectorAll('input[type=text], input[type=password]')]
    .map(el => {{
      const style = getComputedStyle(el);
      const edge = Math.max(ratio(style.borderTopColor, around(el)),
                            ratio(style.backgroundColor, around(el)));
      return {{what: el.outerHTML.slice(0, 90), edge}};
    }});
}}"""

#: Where keyboard focus is, whether its ring shows with 3:1 against what is around it
#: (WCAG 1.4.11, 2.4.7) and whether it is on screen (2.4.11).
FOCUS = f"""() => {{ {CONTRAST}
  const all = [...document.querySelectorAll(
    'a[href], button, input:not([type=hidden]), select, textarea, [tabindex]')];
  const el = document.activeElement;
  const index = all.indexOf(el);
  if (index < 0) return {{index, count: all.length}};
  const style = getComputedStyle(el), rect = el.getBoundingClientRect();
  return {{
    index, count: all.length,
    what: el.outerHTML.slice(0, 90),
    outline: style.outlineStyle === 'none' ? 0 : parseFloat(style.outlineWidth),
    ring: ratio(style.outlineColor, around(el)),
    inView: rect.width > 0 && rect.height > 0 && rect.bottom > 0 && rect.right > 0
      && rect.top < innerHeight && rect.left < innerWidth,
  }};
}}"""


def keyboard_problems(page) -> list[str]:
    """Text field edges at rest, then Tab through every focusable element once."""
    problems = [
        f"text field edge contrast {field['edge']}:1 < 3:1: {field['what']}"
        for field in page.evaluate(FIELDS)
        if field["edge"] < 3
    ]
    seen: set[int] = set()
    at: dict[str, Any] = {"count": 0}
    for _ in range(40):
        page.keyboard.press("Tab")
        at = page.evaluate(FOCUS)
        if at["index"] < 0:
            continue  # focus left the page (the browser's own UI) before coming back
        if at["index"] in seen:
            break
        seen.add(at["index"])
        where = at["what"]
        if at["outline"] < 2:
            problems.append(f"no visible focus ring ({at['outline']}px): {where}")
        elif at["ring"] < 3:
            problems.append(f"focus ring contrast {at['ring']}:1 < 3:1: {where}")
        if not at["inView"]:
            problems.append(f"focused but not on screen: {where}")
    if len(seen) < at["count"]:
        problems.append(f"only {len(seen)} of {at['count']} focusable elements reached with Tab")
    return problems


def reflow_problems(page) -> list[str]:
    """At 320 CSS pixels wide nothing may need scrolling sideways (WCAG 1.4.10)."""
    page.set_viewport_size({"width": 320, "height": 640})
    try:
        width = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.set_viewport_size(VIEWPORT)
    return [f"{width}px wide at a 320px viewport: scrolls sideways"] if width > 320 else []


def report(found: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for where, violations in found.items():
        for v in violations:
            lines.append(f"{where}: {v['id']} ({v['impact']}): {v['help']}")
            for node in v["nodes"]:
                summary = " ".join((node["summary"] or "").split())
                lines.append(f"    {node['target']}: {summary[:300]}")
    return "\n".join(lines)


def test_every_page_has_no_accessibility_violations(start_server, partner_site, chromium):
    assert AXE.is_file(), "axe-core is missing: run `make install-test`"
    axe_source = AXE.read_text()
    callback, seen = partner_site
    secret = secrets.token_urlsafe(24)
    server = start_server(
        [
            make_client("a11y-plain", [callback], secret, name="Plain Partner"),
            make_client(
                "a11y-oidc",
                [callback],
                secret,
                name="Open Partner",
                scopes=["openid", "profile", "email", "read-only"],
            ),
        ],
        workers=1,
        config={"limits": {"lockout_after": 1}},
    )
    base = server.url
    username = "a11y-" + secrets.token_hex(3)
    # The pages' CSP forbids inline scripts, axe's included: the test browser ignores it.
    context = chromium.new_context(bypass_csp=True, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10_000)
    found: dict[str, list[dict[str, Any]]] = {}
    checked: list[str] = []

    def check(name: str, text: str) -> None:
        """Run axe on the page as it is, in each colour scheme; record what it finds."""
        assert text in (page.text_content("main") or ""), f"{name}: {text!r} not on the page"
        page.add_script_tag(content=axe_source)
        for scheme in SCHEMES:
            page.emulate_media(color_scheme=scheme)
            violations = page.evaluate(RUN_AXE, TAGS)
            for rule, problems in (
                ("keyboard", keyboard_problems(page)),
                ("reflow", reflow_problems(page)),
            ):
                violations += [
                    {"id": rule, "impact": "serious", "help": problem, "nodes": []}
                    for problem in problems
                ]
            if violations:
                found[f"{name} [{scheme}]"] = violations
        checked.append(name)

    def goto(path: str, status: int = 200) -> None:
        response = page.goto(base + path)
        assert response is not None and response.status == status, (path, response)

    def authorize(client_id: str, scope: str, **extra: str) -> str:
        query = {"response_type": "code", "client_id": client_id, "redirect_uri": callback}
        return "/authorize?" + urlencode({**query, "scope": scope, "state": "s", **extra})

    def sign_in(password: str = "password", who: str = username) -> int:
        """Send the sign-in form; return the status of the page it leads to."""
        page.fill("input[name=username]", who)
        page.fill("input[name=password]", password)
        with page.expect_navigation() as navigation:
            page.click("main form button[type=submit]")
        response = navigation.value
        assert response is not None
        return response.status

    try:
        # Signed out: the sign-in page plain, for a partner, after a wrong password, locked.
        goto("/login")
        check("login", text="Sign in")
        goto("/docs", 404)  # no HTML documentation: the JSON /openapi.json only
        check("error 404 (/docs)", text="Error 404")
        goto(authorize("nope", "read-only"), 400)
        check("error 400 unknown client (signed out)", text="Error 400")
        goto(authorize("a11y-plain", "read-only"))
        check("login for a partner", text="Plain Partner")
        locked = "locked-" + secrets.token_hex(3)
        assert sign_in("wrong", locked) == 401
        check("login, wrong password", text="Wrong username or password")
        assert sign_in("wrong", locked) == 401  # the last free attempt shuts the gate
        assert sign_in("wrong", locked) == 429
        check("login, locked out (429)", text="Too many failed attempts")

        # Signed in: the review page with no apps, then consent pages.
        goto("/login?next=/review")
        assert sign_in() == 200
        page.wait_for_url(re.compile(r"/review$"))
        check("review, empty", text="No apps have access")
        goto("/account")
        check("account, two-step sign-in off (QR code and key)", text="Turn on")
        goto(authorize("a11y-plain", "read-only"))
        check("consent", text="Plain Partner")
        page.click("button[name=allow]")
        page.wait_for_url(f"{callback}?**")
        goto(authorize("a11y-oidc", "openid profile email"))
        check("consent, OpenID Connect scopes", text="Open Partner")
        page.click("button[name=allow]")
        page.wait_for_url(f"{callback}?**")
        goto(authorize("a11y-oidc", "openid profile email read-only"))
        check("consent, remembered scopes kept", text="You already allowed it to")
        page.click("button[name=cancel]")
        page.wait_for_url(f"{callback}?**")
        assert len(seen) == 3
        # The plain partner takes its code: it then holds access the review page lists.
        token = requests.post(
            base + "/token",
            data={
                "grant_type": "authorization_code",
                "code": seen[0]["code"][0],
                "redirect_uri": callback,
            },
            auth=("a11y-plain", secret),
            timeout=HTTP_TIMEOUT,
        )
        assert token.status_code == 200, token.text

        goto("/review")
        check("review, apps and remembered consent", text="Remembered")
        page.uncheck("input[name=a11y-plain]")  # how an app about to lose access looks
        check("review, an app unchecked", text="Plain Partner")
        goto("/review?" + urlencode({"client_id": "a11y-plain", "redirect_uri": callback}))
        check("review, returning to a partner", text="returned to the app")
        goto("/review?saved=1")
        check("review, saved", text="Your changes were saved")
        goto(authorize("nope", "read-only"), 400)
        check("error 400 unknown client (signed in)", text="Your authorised apps")

        # Signing out: the question, then the signed-out page.
        goto("/logout")
        check("logout question", text="Sign out?")
        page.click("main form button[type=submit]")
        page.wait_for_url(re.compile(r"/login$"))
        goto("/logout?client_id=a11y-oidc")
        check("signed out", text="You are signed out")
    finally:
        context.close()
    assert len(checked) == 18
    assert not found, "accessibility violations:\n" + report(found)
