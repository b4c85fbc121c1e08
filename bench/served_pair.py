"""Served shapes side by side, interleaved: ``python -m bench.served_pair [scenario ...]``.

``make bench`` measures one served set-up after another, minutes apart, and on this VM
the same tree moves 20–40% from one window to the next; so it cannot price a 10–30%
change. This starts every arm at once (each ``oauth2-server serve`` from its own config
folder and dummy site, all on the same Redis database, limits and metrics on as in
``make bench``) beside the reference (bare Flask on gunicorn sync, ``bench.ceiling:bare``),
then, for each scenario, runs wrk against each of them in turn for ``PAIR_SECONDS``
(default 5, after ``BENCH_WARMUP``), ``PAIR_ROUNDS`` times (default 4), the order rotated
each round. Each round gives each arm a ratio to the reference measured a few seconds
apart, and a ratio to the first arm; the medians over rounds are the figures, with the
median req/s and server CPU per request.

``PAIR_ARMS`` (default ``2x4 4x1``), space separated, each ``[TREE@]WxT[+VARIANT]``:
``W`` workers of ``T`` request threads (``auth_server.num_workers``/``threads``), an
optional ``make bench`` variant (``+no-observability``, ``+no-token-cache``), and an
optional checkout to serve from (``/work/wt/base@2x4``: its own ``.venv``'s Python, its own code).
Scenarios (default all): ``client_credentials``, ``refresh`` (a fresh pool of refresh
tokens per arm and round), ``introspect``, ``gateway``, ``userinfo``, ``flow`` (the whole
code flow by ``bench.flow``'s users, as ``make bench`` runs it, ``BENCH_SECONDS`` long: its
req/s are the flows' requests, six a flow, and its ratio to bare Flask is per request
too, so flows/s per bare request is the ratio over six). Results in
``bench/served-pair.json`` (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs, run, wrk

SCENARIOS = ("client_credentials", "refresh", "introspect", "gateway", "userinfo", "flow")
ARMS = os.environ.get("PAIR_ARMS", "2x4 4x1").split()
ROUNDS = int(os.environ.get("PAIR_ROUNDS", "4"))
SECONDS = float(os.environ.get("PAIR_SECONDS", "5"))
RESULTS = Path(__file__).resolve().parent / "served-pair.json"
REFERENCE = "bare"
SPEC = re.compile(r"^(?:(?P<tree>[^@]+)@)?(?P<w>\d+)x(?P<t>\d+)(?:\+(?P<variant>[\w-]+))?$")


@dataclass
class Arm:
    name: str
    port: int
    proc: procs.Proc


def arm_config(spec: str, port: int, site_port: int) -> tuple[Path, dict[str, Any]]:
    """The checkout to serve from and the ``serve`` config of the arm ``spec`` says."""
    found = SPEC.match(spec)
    if found is None:
        raise SystemExit(f"PAIR_ARMS: {spec!r} is not [TREE@]WxT[+VARIANT]")
    tree = Path(found["tree"]).resolve() if found["tree"] else run.ROOT
    variant = found["variant"]
    if variant is not None and variant not in run.VARIANT_CONFIG:
        known = ", ".join(run.VARIANT_CONFIG)
        raise SystemExit(f"PAIR_ARMS: unknown variant {variant!r} ({known})")
    extra: dict[str, dict[str, Any]] = {
        "auth_server": {"num_workers": int(found["w"]), "threads": int(found["t"])}
    }
    for section, values in (run.VARIANT_CONFIG[variant][0] if variant else {}).items():
        extra.setdefault(section, {}).update(values)
    config = run.server_config(port, site_port, run.storage_for("redis"), extra=extra)
    defaults = tree / "config" / "default.json"
    if (
        tree != run.ROOT
        and defaults.exists()
        and set(config) - set(json.loads(defaults.read_text()))
    ):
        # An older checkout (before metrics, say): serve it as its own bench did.
        return tree, tree_config(tree, port, site_port, extra)
    return tree, config


#: Run in an older checkout: its own bench's server config and its settings' sections.
_TREE_CONFIG = """import json, sys
from app.settings import DEFAULTS
from bench import run
config = run.server_config(*json.loads(sys.argv[1]))
print(json.dumps([config, {k: list(v) for k, v in DEFAULTS.items() if isinstance(v, dict)}]))"""


def tree_config(
    tree: Path, port: int, site_port: int, extra: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The config another checkout's own bench serves with (an older one refuses sections
    and keys it does not know, and has its own clients file), plus the arm's settings it
    knows; what it does not know is logged and left out (it serves with its defaults)."""
    argv = [str(tree / ".venv" / "bin" / "python"), "-c", _TREE_CONFIG]
    argv.append(json.dumps([port, site_port, run.storage_for("redis")]))
    found = subprocess.run(  # noqa: S603 - the checkout's own Python, our own code
        argv, cwd=tree, env=run.clean_env({}), capture_output=True, text=True, check=True
    )
    config, known = json.loads(found.stdout.strip().splitlines()[-1])
    cut = []
    for section, values in extra.items():
        for key, value in values.items():
            if key in known.get(section, ()):
                config.setdefault(section, {})[key] = value
            else:
                cut.append(f"{section}.{key}")
    if cut:
        run.log(f"{tree}: its settings have no {', '.join(cut)}; served with its defaults")
    return config  # type: ignore[no-any-return]


def start_arm(spec: str, run_dir: Path, index: int) -> Arm:
    """``oauth2-server serve`` as ``spec`` says, on Redis, ready on a free port."""
    port, site_port = procs.free_port(), procs.free_port()
    tree, config = arm_config(spec, port, site_port)
    config_dir = run_dir / f"config-{index}"
    config_dir.mkdir()
    (config_dir / "default.json").write_text(json.dumps(config, indent=2))
    env = run.clean_env({"OAUTH2_CONFIG_DIR": str(config_dir), "OAUTH2_ENV": "development"})
    # ``python -m``: the tree's own code comes first on the path (a worktree may share
    # this tree's virtualenv).
    argv = [str(tree / ".venv" / "bin" / "python"), "-m", "app.cli", "serve"]
    run.log(f"starting {spec} on :{port} (dummy site :{site_port}) from {tree}")
    proc = procs.start(
        f"arm-{index}", argv, run_dir, env=env, cwd=str(tree), port=port,
        ready_path="/healthz", timeout=60,
    )  # fmt: skip
    procs.wait_ready(proc, site_port, None, 30)
    return Arm(spec, port, proc)


def loads(fx: run.Fixtures, run_dir: Path, arms: list[Arm]) -> dict[str, Any]:
    """Scenario -> a function (arm, round) -> (warm-up load, load)."""
    access = fx.live_token()
    openid = fx.live_token(run.USERINFO_SCOPE)

    def refresh(arm: Arm, number: int) -> tuple[wrk.Load, wrk.Load]:
        return run.refresh_loads(fx, run_dir, f"{arms.index(arm)}-{number}", SECONDS)

    def fixed(load: wrk.Load) -> Any:
        return lambda _arm, _number: (load, load)

    return {
        "client_credentials": fixed(run.cc_load()),
        "refresh": refresh,
        "introspect": fixed(run.introspect_load(access)),
        "gateway": fixed(run.gateway_load(access)),
        "userinfo": fixed(run.userinfo_load(openid)),
    }


def flow(arm: Arm, scenario: str, number: int) -> dict[str, Any]:
    """One round of whole code flows against ``arm`` (``bench.flow``, as ``make bench``)."""
    result = run.run_flow(arm)  # type: ignore[arg-type]  # it reads .port and .proc only
    run.log(
        f"  {scenario} round {number + 1} {arm.name}: {result['flows_per_s']:,.1f} flows/s "
        f"cpu {result.get('server_cpu_ms_per_req', 0):.2f} ms/r errors {result['errors']}"
    )
    return result


def fixtures(arm: Arm, run_dir: Path) -> run.Fixtures:
    """The app's storage objects over the arms' Redis (token fixtures, refresh pools)."""
    server = run.Server(arm.name, "redis", arm.proc, arm.port, 0, run_dir, {}, {})
    server.storage_section = run.storage_for("redis")
    return run.Fixtures(server)


def measure(scenarios: list[str], run_dir: Path) -> dict[str, Any]:
    run.flush_redis()
    reference = run.start_reference(run_dir)
    arms = [Arm(REFERENCE, reference.port or 0, reference)]
    arms += [start_arm(spec, run_dir, i) for i, spec in enumerate(ARMS, 1)]
    fx = fixtures(arms[1], run_dir)
    out: dict[str, Any] = {"arms": ARMS, "rounds": ROUNDS, "seconds": SECONDS, "scenarios": {}}
    try:
        makers = loads(fx, run_dir, arms)
        for scenario in scenarios:
            samples: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
            for number in range(ROUNDS):
                order = arms[number % len(arms) :] + arms[: number % len(arms)]
                for arm in order:
                    if arm.name == REFERENCE:  # it answers "/" whatever it is sent
                        warm = load = wrk.Load("/")
                    elif scenario == "flow":
                        samples[arm.name].append(flow(arm, scenario, number))
                        continue
                    else:
                        warm, load = makers[scenario](arm, number)
                    result = run.measure(arm.port, load, arm.proc, warm, SECONDS)
                    samples[arm.name].append(result)
                    run.log(
                        f"  {scenario} round {number + 1} {arm.name}: {result['rps']:,.0f}/s "
                        f"cpu {result.get('server_cpu_ms_per_req', 0):.2f} ms/r "
                        f"errors {result['errors']}"
                    )
            out["scenarios"][scenario] = summary(samples)
    finally:
        fx.close()
    return out


def summary(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each arm's medians, and its per-round ratios to the reference and to the first arm."""
    reference = samples[REFERENCE]
    names = [n for n in samples if n != REFERENCE]
    base = samples[names[0]]
    out: dict[str, Any] = {}
    for name in samples:
        rounds = samples[name]
        rps = [r["rps"] for r in rounds]
        cpu = [r.get("server_cpu_ms_per_req", 0.0) for r in rounds]
        row: dict[str, Any] = {
            "rps": round(statistics.median(rps)),
            "rps_all": [round(x) for x in rps],
            "cpu_ms_per_req": round(statistics.median(cpu), 3),
            "errors": sum(r["errors"] for r in rounds),
            "runs": rounds,
        }
        if name != REFERENCE:
            row["ratio"] = paired(rounds, reference, "rps")
            row["vs_first_rps"] = paired(rounds, base, "rps")
            row["vs_first_cpu"] = paired(rounds, base, "server_cpu_ms_per_req")
        out[name] = row
    return out


def paired(rounds: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> float:
    """The median over rounds of ``key`` in ``rounds`` over ``key`` in ``other``."""
    pairs = zip(rounds, other, strict=True)
    ratios = [r[key] / o[key] for r, o in pairs if r.get(key) and o.get(key)]
    return round(statistics.median(ratios), 3) if ratios else 0.0


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<20}{'arm':<34}{'req/s':>8}{'÷ bare':>8}{'÷ first':>9}"
        f"{'cpu ms/r':>10}{'cpu ÷ first':>13}  req/s by round"
    ]
    for scenario, arms in results["scenarios"].items():
        for name, row in arms.items():
            lines.append(
                f"{scenario:<20}{name[-33:]:<34}{row['rps']:>8,}{row.get('ratio', 1.0):>8.2f}"
                f"{row.get('vs_first_rps', 0):>9.2f}{row['cpu_ms_per_req']:>10.2f}"
                f"{row.get('vs_first_cpu', 0):>13.2f}  {row['rps_all']}"
                + (f"  errors {row['errors']}" if row["errors"] else "")
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    scenarios = [a for a in argv if a in SCENARIOS] or list(SCENARIOS)
    if len(set(ARMS)) != len(ARMS) or not ARMS:
        raise SystemExit(f"PAIR_ARMS: each arm once, at least one: {ARMS}")
    for spec in ARMS:
        arm_config(spec, 0, 0)  # a malformed arm stops the run before anything starts
    wrk.ensure_wrk()
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-served-pair-"))
    run.log(f"logs in {run_dir}; arms {ARMS}; {ROUNDS} rounds of {SECONDS:g}s; {scenarios}")
    started = time.monotonic()
    try:
        with procs.stopping_all(run.flush_redis):  # SIGTERM too stops the arms
            results = measure(scenarios, run_dir)
    except KeyboardInterrupt:
        run.log("interrupted: everything stopped")
        return 130
    results["machine"] = run.machine()
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    print(f"\nwritten: {RESULTS} ({results['elapsed_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
