"""The code-flow driver: N browser-like users running login -> consent -> code -> token.

``python -m bench.flow --port P --users 8 --seconds 10 --warmup 2`` prints one JSON
object: flows/s, flow latency, per-step medians, errors by step, and the driver's
own CPU seconds (so it is visible that the driver is not the bottleneck).

Each flow is a fresh browser (no cookies) on one keep-alive connection per user:
1. GET /authorize            -> 302 /login?next=...
2. GET /login?next=...       -> 200 form (CSRF token)
3. POST /login               -> 302 next
4. GET /authorize            -> 200 consent (transaction id, CSRF token)
5. POST /authorize (allow)   -> 302 redirect_uri?code=...
6. POST /token (Basic)       -> 200 JSON with access_token

With ``--openid`` the request is an OpenID Connect one (``scope=openid profile read-only``,
a ``nonce``, ``prompt=consent`` so the same six steps run though consent is remembered)
and step 6 must return a signed ``id_token``: the code flow's price of OIDC.

With ``--peer`` it drives the bench's node-oidc-provider peer (``bench/peer``) instead:
the same request (client, scope, state; ``--openid`` alike) through its pages, eight
requests: GET /auth -> 303 /interaction/<uid> (login form) -> POST .../login -> 303
/auth/<uid> -> 303 /interaction/<uid> (consent form) -> POST .../confirm -> 303
/auth/<uid> -> 303 redirect_uri?code=... -> POST /token.
"""

from __future__ import annotations

import argparse
import base64
import html
import http.client
import json
import re
import resource
import statistics
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

CLIENT, SECRET, REDIRECT = "test", "hunter2", "http://localhost:8080/"
STEPS = ("authorize", "login_form", "login", "consent", "allow", "token")
_INPUT = re.compile(r"<input\b[^>]*>")
_NAME = re.compile(r'name="([^"]*)"')
_VALUE = re.compile(r'value="([^"]*)"')


def hidden_inputs(page: str) -> dict[str, str]:
    found = {}
    for tag in _INPUT.findall(page):
        if 'type="hidden"' in tag:
            name, value = _NAME.search(tag), _VALUE.search(tag)
            if name:
                found[name.group(1)] = html.unescape(value.group(1) if value else "")
    return found


class FlowError(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step


class Browser:
    """One user: a keep-alive connection and a cookie jar."""

    #: OpenID Connect requests (``--openid``): an ID Token is signed at step 6.
    openid = False
    steps = STEPS

    def __init__(self, port: int, username: str) -> None:
        self.port = port
        self.username = username
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.cookies: dict[str, str] = {}
        self.basic = "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()

    def send(self, step: str, method: str, path: str, body: dict | None = None, **headers):
        head = dict(headers)
        if self.cookies:
            head["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urlencode(body)
            head["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, data, head)
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                self.conn.close()  # the server closed a kept-alive connection: dial again once
                if attempt:
                    raise FlowError(step, f"connection: {exc!r}") from exc
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                cookie_value = rest.split(";", 1)[0]
                if "max-age=0" in value.lower() or "expires=thu, 01 jan 1970" in value.lower():
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = cookie_value
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return (
            response.status,
            response.getheader("Location", ""),
            payload.decode("utf-8", "replace"),
        )

    def params(self, n: int) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": CLIENT,
            "redirect_uri": REDIRECT,
            "scope": "read-only",
            "state": f"s{n}",
        }
        if self.openid:
            params.update(scope="openid profile read-only", nonce=f"n{n}", prompt="consent")
        return params

    def exchange(self, code: str) -> None:
        body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        status, _, payload = self.send("token", "POST", "/token", body, Authorization=self.basic)
        if status != 200 or "access_token" not in payload:
            raise FlowError("token", f"{status} {payload[:80]}")
        if self.openid and '"id_token"' not in payload:
            raise FlowError("token", f"no id_token: {payload[:80]}")

    def flow(self, timings: dict[str, list[float]], n: int) -> None:
        self.cookies.clear()
        state = f"s{n}"
        query = urlencode(self.params(n))
        t = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[step].append(now - t)
            t = now

        status, location, _ = self.send("authorize", "GET", "/authorize?" + query)
        if status != 302 or "/login" not in location:
            raise FlowError("authorize", f"{status} {location}")
        lap("authorize")
        login_path = (
            location
            if location.startswith("/")
            else urlsplit(location)._replace(scheme="", netloc="").geturl()
        )
        status, _, page = self.send("login_form", "GET", login_path)
        if status != 200:
            raise FlowError("login_form", str(status))
        form = hidden_inputs(page)
        lap("login_form")
        form.update(username=self.username, password="password")  # noqa: S106 - the demo site's
        status, location, _ = self.send("login", "POST", login_path, form)
        if status != 302 or not location:
            raise FlowError("login", f"{status} {location}")
        lap("login")
        next_path = urlsplit(location)._replace(scheme="", netloc="").geturl()
        status, _, page = self.send("consent", "GET", next_path)
        if status != 200 or "transaction_id" not in page:
            raise FlowError("consent", str(status))
        form = hidden_inputs(page)
        form["allow"] = "Allow"
        lap("consent")
        status, location, _ = self.send("allow", "POST", "/authorize", form)
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        if status != 302 or not code or f"state={state}" not in location:
            raise FlowError("allow", f"{status} {location[:80]}")
        lap("allow")
        self.exchange(code)
        lap("token")


def _path(location: str) -> str:
    return urlsplit(location)._replace(scheme="", netloc="").geturl()


class PeerBrowser(Browser):
    """The same user and request on the node-oidc-provider peer's pages."""

    steps = (
        "authorize", "login_form", "login", "resume", "consent", "allow", "resume_allow",
        "token",
    )  # fmt: skip

    def flow(self, timings: dict[str, list[float]], n: int) -> None:
        self.cookies.clear()
        t = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[step].append(now - t)
            t = now

        def redirect(step: str, method: str, path: str, to: str, body=None) -> str:
            status, location, _ = self.send(step, method, path, body)
            if status not in (302, 303) or to not in location:
                raise FlowError(step, f"{status} {location[:80]}")
            lap(step)
            return location

        def form(step: str, path: str, field: str) -> None:
            status, _, page = self.send(step, "GET", path)
            if status != 200 or field not in page:
                raise FlowError(step, f"{status} {page[:80]}")
            lap(step)

        interaction = _path(
            redirect("authorize", "GET", "/auth?" + urlencode(self.params(n)), "/interaction/")
        )
        form("login_form", interaction, "password")
        login = {"username": self.username, "password": "password"}  # noqa: S106 - demo
        resume = _path(redirect("login", "POST", interaction + "/login", "/auth/", login))
        interaction = _path(redirect("resume", "GET", resume, "/interaction/"))
        form("consent", interaction, "Scope:")
        resume = _path(redirect("allow", "POST", interaction + "/confirm", "/auth/", {}))
        location = redirect("resume_allow", "GET", resume, REDIRECT)
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        if not code or f"state=s{n}" not in location:
            raise FlowError("resume_allow", location[:80])
        self.exchange(code)
        lap("token")


def run(
    port: int, users: int, seconds: float, warmup: float, browser: type[Browser] = Browser
) -> dict[str, Any]:
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    begin = time.monotonic()
    measure_from = begin + warmup
    stop_at = measure_from + seconds
    lock = threading.Lock()
    flows: list[float] = []
    errors: dict[str, int] = {}
    samples: list[str] = []
    steps = browser.steps
    timings: dict[str, list[float]] = {s: [] for s in steps}
    cpu_at_measure: list[resource.struct_rusage] = []
    done_all = [0]  # every finished flow, warm-up included (for the server's CPU per flow)

    def user(k: int) -> None:
        agent = browser(port, f"bench-user-{k}")
        local: dict[str, list[float]] = {s: [] for s in steps}
        n = 0
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            n += 1
            t0 = time.perf_counter()
            try:
                agent.flow(local, n)
            except FlowError as exc:
                if now >= measure_from:
                    with lock:
                        errors[exc.step] = errors.get(exc.step, 0) + 1
                        if len(samples) < 5:
                            samples.append(str(exc))
                continue
            elapsed = time.perf_counter() - t0
            with lock:
                done_all[0] += 1
            if now >= measure_from and time.monotonic() <= stop_at:
                with lock:
                    flows.append(elapsed)
                    for step, values in local.items():
                        timings[step].extend(values)
            for values in local.values():
                values.clear()

    def mark() -> None:
        time.sleep(warmup)
        cpu_at_measure.append(resource.getrusage(resource.RUSAGE_SELF))

    threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(users)]
    marker = threading.Thread(target=mark, daemon=True)
    marker.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + warmup + 30)
    end_cpu = resource.getrusage(resource.RUSAGE_SELF)
    first = cpu_at_measure[0] if cpu_at_measure else start_cpu
    cpu = (end_cpu.ru_utime - first.ru_utime) + (end_cpu.ru_stime - first.ru_stime)
    flows.sort()
    count = len(flows)

    def pct(p: float) -> float:
        return flows[min(count - 1, int(p / 100 * count))] * 1000 if count else 0.0

    return {
        "flows": count,
        "flows_all": done_all[0],
        "seconds": seconds,
        "flows_per_s": count / seconds,
        "requests_per_flow": len(steps),
        "rps": count * len(steps) / seconds,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "errors": sum(errors.values()),
        "errors_by_step": errors,
        "error_samples": samples,
        "step_p50_ms": {s: round(statistics.median(v) * 1000, 2) for s, v in timings.items() if v},
        "driver_cpu_s": round(cpu, 2),
        "driver_cpu_share": round(cpu / seconds, 3),
        "driver_cpu_ms_per_flow": round(cpu / count * 1000, 3) if count else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--openid", action="store_true", help="OpenID Connect requests")
    parser.add_argument("--peer", action="store_true", help="drive the node-oidc-provider peer")
    args = parser.parse_args()
    browser = PeerBrowser if args.peer else Browser
    browser.openid = args.openid
    print(json.dumps(run(args.port, args.users, args.seconds, args.warmup, browser)))


if __name__ == "__main__":
    main()
