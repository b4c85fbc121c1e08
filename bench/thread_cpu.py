"""Where a served worker's CPU goes, thread by thread: ``python -m bench.thread_cpu [scenario]``.

Starts one arm as :mod:`bench.served_pair` does (``THREAD_CPU_ARM``, default ``2x4``:
``oauth2-server serve`` on Redis, limits and metrics on), warms it up for 2 s, then reads
every thread's user and system CPU (``/proc/<pid>/task/<tid>/stat``) of the server's
processes around a ``BENCH_SECONDS``-long wrk run (default 8 here) of ``scenario``
(``client_credentials``, the default, ``introspect`` or ``gateway``), and prints each
busy thread's CPU per request and the sums by thread name. granian names its I/O
runtime threads and its request (blocking) threads ``tokio-rt-worker`` alike; the one
that does most of its work in system time with a few percent of the CPU is the runtime.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
from pathlib import Path

from bench import procs, run, served_pair, wrk

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
ARM = os.environ.get("THREAD_CPU_ARM", "2x4")
TICK = os.sysconf("SC_CLK_TCK")

Sample = dict[tuple[int, int], tuple[str, float, float]]


def threads(pids: list[int]) -> Sample:
    """(pid, tid) -> (thread name, user s, system s), for every thread of ``pids``."""
    out: Sample = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            out[pid, int(tid)] = (name, int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def main(argv: list[str]) -> int:
    scenario = argv[0] if argv else "client_credentials"
    run_dir = Path(tempfile.mkdtemp(prefix="oauth2-thread-cpu-"))
    run.flush_redis()
    try:
        arm = served_pair.start_arm(ARM, run_dir, 1)
        fx = served_pair.fixtures(arm, run_dir)
        token = fx.live_token()
        fx.close()
        loads = {
            "client_credentials": run.cc_load(),
            "introspect": run.introspect_load(token),
            "gateway": run.gateway_load(token),
        }
        load = loads[scenario]
        wrk.run(arm.port, load, 2)
        pids = sorted({arm.proc.pid} | procs.descendants(arm.proc.pid))
        pids = [p for p in pids if "dummy_site" not in procs.cmdline(p)]
        before = threads(pids)
        result = wrk.run(arm.port, load, SECONDS)
        after = threads(pids)
    finally:
        procs.stop_all()
    count = result["requests"]
    print(f"{ARM} {scenario}: {result['rps']:,.0f} req/s, {count:,} requests")
    by_name: collections.Counter[str] = collections.Counter()
    for key, (name, user, system) in sorted(after.items()):
        _, user0, system0 = before.get(key, (name, 0.0, 0.0))
        spent = (user - user0) + (system - system0)
        if spent < 0.05:
            continue
        by_name[name] += spent
        print(
            f"  pid {key[0]} tid {key[1]} {name:<16} {spent:6.2f} s "
            f"(user {user - user0:5.2f}, system {system - system0:5.2f})  "
            f"{spent / count * 1e6:7.1f} µs per request"
        )
    for name, spent in by_name.most_common():
        print(f"  all {name:<16} {spent / count * 1e6:8.1f} µs per request")
    print(f"  total            {sum(by_name.values()) / count * 1e6:8.1f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
