"""Interleaved A/B of two trees' in-process costs: ``python -m bench.ab A [B] [scenario ...]``.

Runs ``python -m bench.inproc`` (limits on, or ``INPROC_LIMITS``) in tree ``A`` and in
tree ``B`` (default: this one), each a checkout with its own ``.venv`` (e.g. a ``git
worktree`` of an older commit), one after the other, ``AB_ROUNDS`` times (default 5),
alternating which goes first, and prints the median and the least CPU µs per request
of each scenario in each tree and the change. Single in-process runs on this machine vary by
±20%; the interleaved medians are what a change is judged by. The Python call counts
are exact (no noise).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench import run

LINE = re.compile(
    r"limits (on|off)\s+(\S+)\s+cpu\s+(\d+) µs\s+wall\s+(\d+) µs(?:\s+calls\s+(\d+))?"
)

Samples = dict[tuple[str, str], dict[str, list[float]]]


def measure(tree: Path, scenarios: list[str], samples: Samples) -> None:
    """One ``bench.inproc`` run in ``tree``; its figures appended to ``samples``."""
    env = dict(os.environ, INPROC_LIMITS=os.environ.get("INPROC_LIMITS", "on"))
    out = subprocess.run(  # noqa: S603 - the trees' own interpreters
        [str(tree / ".venv" / "bin" / "python"), "-m", "bench.inproc", *scenarios],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    ).stdout
    for mode, name, cpu, _wall, calls in LINE.findall(out):
        if mode == env["INPROC_LIMITS"]:  # an older bench.inproc measures both
            samples[(str(tree), name)]["cpu"].append(float(cpu))
            if calls:
                samples[(str(tree), name)]["calls"].append(float(calls))


def report(a: Path, b: Path, samples: Samples) -> str:
    names = list({name: None for _, name in samples})
    lines = [
        f"{'':20s} {'median':>24s}  {'least':>24s}",
        f"{'scenario':20s} {'A µs':>7s} {'B µs':>7s} {'change':>8s}  "
        f"{'A µs':>7s} {'B µs':>7s} {'change':>8s}   calls A -> B",
    ]
    for name in names:
        sa, sb = samples[(str(a), name)], samples[(str(b), name)]
        row = f"{name:20s}"
        for pick in (statistics.median, min):
            ma, mb = pick(sa["cpu"]), pick(sb["cpu"])
            row += f" {ma:7.0f} {mb:7.0f} {(mb - ma) / ma:+8.1%} "
        calls = " -> ".join(
            f"{statistics.median(s['calls']):.0f}" if s["calls"] else "?" for s in (sa, sb)
        )
        lines.append(f"{row}  {calls}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    trees = [Path(arg).resolve() for arg in argv if Path(arg).is_dir()]
    scenarios = [arg for arg in argv if not Path(arg).is_dir()]
    a, b = trees[0], trees[1] if len(trees) > 1 else run.ROOT
    rounds = int(os.environ.get("AB_ROUNDS", "5"))
    samples: Samples = defaultdict(lambda: {"cpu": [], "calls": []})
    for i in range(rounds):
        for tree in (a, b) if i % 2 == 0 else (b, a):
            measure(tree, scenarios, samples)
        run.log(f"round {i + 1}/{rounds}")
    print(f"A = {a}\nB = {b}\n{rounds} interleaved runs, CPU per request: their median and least")
    print(report(a, b, samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
