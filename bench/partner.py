"""The busy partner (issue 9): ``python -m bench.partner``, also a part of ``make bench``.

One client from one IP sends 50 code exchanges and 200 client-credentials tokens a
second for ``BENCH_PARTNER_SECONDS`` (30), with the **default** limits on, and the
429s are counted (the target is none). The codes are made first, by the flow driver's
browser (each by a user of its own, signing in from an address of its own, as real
users do); only the partner's requests are paced and counted. It runs in process like
``bench.inproc`` (Redis storage, so the limiter's counters live in Redis as in
production), paced by the wall clock so the limiter's windows see the real rate.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench import flow, inproc, procs, run

SECONDS = int(os.environ.get("BENCH_PARTNER_SECONDS", "30"))
TOKENS, CODES = 200, 50  # a second


class CodeBrowser(inproc.InprocBrowser):
    """The flow driver's browser, from its own address, stopping at the code."""

    def __init__(self, app: Any, n: int, codes: list[str]) -> None:
        super().__init__(app, f"user{n}")
        self.address, self.codes = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", codes
        self.app = self._from_user

    def _from_user(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_ADDR"] = self.address
        return self.wsgi(environ, start_response)

    def send(self, step: str, method: str, path: str, body: dict | None = None, **headers):
        if step == "token":  # the partner exchanges it later, paced
            self.codes.append((body or {})["code"])
            return 200, "", "access_token"
        return super().send(step, method, path, body, **headers)


def make_codes(wsgi: Any, count: int) -> list[str]:
    codes: list[str] = []
    for n in range(count):
        browser = CodeBrowser(None, n, codes)
        browser.wsgi = wsgi
        browser.flow({step: [] for step in flow.STEPS}, n)
    return codes


def counting(wsgi: Any, statuses: collections.Counter) -> Any:
    """The WSGI app, counting every answer's status."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses[int(status.split()[0])] += 1
            return start_response(status, headers, exc_info)

        return wsgi(environ, start)

    return app


def exchange(code: str) -> dict[str, Any]:
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": flow.REDIRECT}
    return inproc.environ("POST", "/token", urlencode(body).encode(), authorization=inproc.BASIC)


def measure(run_dir: Path) -> dict[str, Any]:
    _site, port = run.start_site(run_dir)
    run.flush_redis()
    app, state = inproc.build(True, port)
    state.limits = _default_limits(port)
    made = time.monotonic()
    codes = make_codes(app.wsgi_app, CODES * SECONDS)
    made = time.monotonic() - made
    statuses: collections.Counter = collections.Counter()
    wsgi = counting(app.wsgi_app, statuses)
    token = inproc.requests("", iter(()), "")["client_credentials"]
    start = time.monotonic()
    for second in range(SECONDS):
        for i in range(TOKENS):
            inproc.call(wsgi, token)
            if i % (TOKENS // CODES) == 0:
                inproc.call(wsgi, lambda: exchange(codes.pop(0)))
        time.sleep(max(0.0, start + second + 1 - time.monotonic()))
    elapsed = time.monotonic() - start
    state.storage.close()
    return {
        "codes_made_seconds": round(made, 1),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(statuses.total() / elapsed, 1),
        "statuses": dict(statuses),
        "429": statuses[429],
    }


def _default_limits(port: int) -> Any:
    """The limits with every setting at its default (the bench's config lifts them)."""
    from app import limits
    from app.settings import Settings

    config = run.server_config(8080, port, run.storage_for("redis"), True)
    config["limits"] = {}
    return limits.build(Settings.load(config, environ={"OAUTH2_ENV": "bench"}))


def line(result: dict[str, Any]) -> str:
    return (
        f"busy partner, default limits: {result['requests_per_s']:,} req/s from one client and "
        f"IP for {result['seconds']} s (target {TOKENS + CODES}/s), statuses "
        f"{result['statuses']}, 429s: {result['429']} (target 0)"
    )


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-partner-"))
    try:
        result = measure(run_dir)
    finally:
        procs.stop_all()
    print(line(result))
    return 0 if result["429"] == 0 and set(result["statuses"]) == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
