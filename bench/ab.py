"""Interleaved A/B of trees' in-process costs: ``python -m bench.ab A [B ...] [scenario ...]``.

Runs ``python -m bench.inproc`` (limits on, or ``INPROC_LIMITS``) in tree ``A`` and in
the others (default: this one), each a checkout with its own ``.venv`` (e.g. a ``git
worktree`` of an older commit), one after the other, ``AB_ROUNDS`` times (default 5),
each tree first in turn, and prints the median and the least CPU µs per request of
each scenario in each tree, and the change against ``A``. Single in-process runs on
this machine vary by ±20%; the interleaved medians are what a change is judged by.
The Python call counts are exact (no noise).
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


def report(trees: list[Path], samples: Samples) -> str:
    """Per scenario: each tree's median and least CPU µs, and its change against the first."""
    names = list({name: None for _, name in samples})
    labels = [chr(ord("A") + i) for i in range(len(trees))]
    head = f"{'scenario':20s}" + "".join(
        f" {label + ' median':>12s} {label + ' least':>12s}" for label in labels
    )
    lines = [head + "   calls " + " -> ".join(labels)]
    for name in names:
        first = samples[(str(trees[0]), name)]
        row = f"{name:20s}"
        for tree in trees:
            s = samples[(str(tree), name)]
            for pick in (statistics.median, min):
                value, base = pick(s["cpu"]), pick(first["cpu"])
                change = "" if tree == trees[0] else f" {(value - base) / base:+.0%}"
                row += f" {f'{value:.0f}{change}':>12s}"
        calls = " -> ".join(
            f"{statistics.median(s['calls']):.0f}" if s["calls"] else "?"
            for s in (samples[(str(tree), name)] for tree in trees)
        )
        lines.append(f"{row}   {calls}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    trees = [Path(arg).resolve() for arg in argv if Path(arg).is_dir()]
    scenarios = [arg for arg in argv if not Path(arg).is_dir()]
    if len(trees) == 1:
        trees.append(run.ROOT)
    rounds = int(os.environ.get("AB_ROUNDS", "5"))
    samples: Samples = defaultdict(lambda: {"cpu": [], "calls": []})
    for i in range(rounds):
        shift = i % len(trees)  # each tree goes first in turn
        for tree in trees[shift:] + trees[:shift]:
            measure(tree, scenarios, samples)
        run.log(f"round {i + 1}/{rounds}")
    for label, tree in zip("ABCDEFGH", trees, strict=False):
        print(f"{label} = {tree}")
    print(f"{rounds} interleaved runs; CPU µs per request: the median and the least run")
    print(report(trees, samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
