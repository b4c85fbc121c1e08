"""The served pair's arithmetic and set-up, and ``make bench``'s adjacent reference."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench import run, served_pair


def _runs(rates: list[float], cpu: list[float] | None = None) -> list[dict[str, Any]]:
    cpu = cpu or [1.0] * len(rates)
    return [
        {"rps": r, "server_cpu_ms_per_req": c, "errors": 0} for r, c in zip(rates, cpu, strict=True)
    ]


def test_ratios_are_taken_round_by_round_not_between_medians() -> None:
    # The reference's second round ran on a faster machine; so did the arm's.
    samples = {
        "bare": _runs([1000, 3000, 1000]),
        "2x4": _runs([500, 1500, 800], [2.0, 1.0, 1.0]),
        "2x1": _runs([600, 1500, 400], [1.0, 1.0, 2.0]),
    }
    out = served_pair.summary(samples)
    assert out["2x4"]["ratio"] == 0.5  # per round 0.5, 0.5, 0.8 (medians would give 0.8)
    assert out["2x4"]["rps"] == 800
    assert out["2x1"]["vs_first_rps"] == 1.0  # 1.2, 1.0, 0.5
    assert out["2x1"]["vs_first_cpu"] == 1.0  # 0.5, 1.0, 2.0
    assert out["2x4"]["vs_first_cpu"] == 1.0
    assert "ratio" not in out["bare"]


def test_paired_skips_a_round_the_other_side_lost_and_refuses_unequal_rounds() -> None:
    assert served_pair.paired(_runs([10, 20]), [{"rps": 0}, {"rps": 10}], "rps") == 2.0
    assert served_pair.paired(_runs([10]), [{"rps": 0}], "rps") == 0.0
    with pytest.raises(ValueError):
        served_pair.paired(_runs([10, 20]), _runs([10]), "rps")
    # A round where the arm served nothing has no CPU figure: skipped, not a ratio of 0.
    cpu = "server_cpu_ms_per_req"
    lost = [{"rps": 0.0}, {"rps": 5.0, cpu: 2.0}]
    assert served_pair.paired(lost, [{cpu: 1.0}, {cpu: 1.0}], cpu) == 2.0


def test_an_arm_is_served_with_its_workers_threads_variant_and_tree(tmp_path: Path) -> None:
    tree, config = served_pair.arm_config(f"{tmp_path}@3x2+no-observability", 8001, 8002)
    assert tree == tmp_path
    assert config["auth_server"]["num_workers"] == 3
    assert config["auth_server"]["threads"] == 2
    assert config["auth_server"]["port"] == 8001
    assert config["resource_server"]["port"] == 8002
    assert config["metrics"]["enabled"] is False
    assert config["logging"]["requests"] is False
    assert config["limits"]  # the limits stay on, set above any bench rate
    tree, config = served_pair.arm_config("2x4", 8001, 8002)
    assert tree == run.ROOT
    assert config["auth_server"]["threads"] == 4
    assert config["metrics"]["enabled"] is run.METRICS


def test_an_older_tree_is_served_with_its_own_bench_config_and_the_arm_keys_it_knows(
    tmp_path: Path,
) -> None:
    """A checkout from before metrics refuses sections it does not know: its own bench's
    config is used, with the arm's workers (known) and without its threads (unknown)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.json").write_text('{"auth_server": {}, "storage": {}}')
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    for package, body in {
        "app": "DEFAULTS = {'auth_server': {'port': 0, 'num_workers': 1}, 'storage': {}}\n",
        "bench": "def server_config(port, site_port, storage):\n"
        "    return {'auth_server': {'port': port, 'num_workers': 2}, 'storage': storage,\n"
        "            'resource_server': {'port': site_port}}\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / ("settings.py" if package == "app" else "run.py")).write_text(body)
    tree, config = served_pair.arm_config(f"{tmp_path}@3x2+no-observability", 8001, 8002)
    assert tree == tmp_path
    assert config == {
        "auth_server": {"port": 8001, "num_workers": 3},
        "storage": run.storage_for("redis"),
        "resource_server": {"port": 8002},
    }


@pytest.mark.parametrize("spec", ["2", "x4", "2x4+nope", "2x4 extra", "@2x4"])
def test_a_malformed_arm_stops_the_bench_naming_it(spec: str) -> None:
    with pytest.raises(SystemExit, match="PAIR_ARMS"):
        served_pair.arm_config(spec, 8001, 8002)


def test_the_adjacent_reference_gives_its_own_ratio_column(monkeypatch) -> None:
    reference = run.procs.Proc("reference", None, Path("/dev/null"), 9)  # type: ignore[arg-type]
    rates = iter([3000.0, 5000.0])
    seen: list[int] = []

    def measure(port: int, load: Any, server: Any = None, *_: Any) -> dict[str, Any]:
        seen.append(port)
        assert load.path == "/"
        return {"rps": next(rates), "p99_ms": 2.0, "server_cpu_ms_per_req": 0.5, "errors": 0}

    monkeypatch.setattr(run, "measure", measure)
    failures: dict[str, Any] = {}
    before = run.reference_run(reference, failures, "reference before x")
    after = run.reference_run(reference, failures, "reference after x")
    row = {"rps": 2400.0, "p50_ms": 5.0, "p99_ms": 9.0, "errors": 0, "ratio": 0.4}
    run.adjacent(row, [before, after])
    assert seen == [9, 9]
    assert row["ratio_adjacent"] == 0.6  # 2,400 / the mean of 3,000 and 5,000
    assert [r["rps"] for r in row["reference_adjacent"]["runs"]] == [3000.0, 5000.0]
    results = {"scenarios": {"redis": {"client_credentials": row}}}
    text = run.table(results)
    line = next(x for x in text.splitlines() if "client_credentials" in x)
    assert "0.40" in line and "0.60" in line
    assert "ratio adj" in text and "right before and after" in text


def test_a_failed_reference_run_leaves_the_other_or_no_adjacent_ratio(monkeypatch) -> None:
    reference = run.procs.Proc("reference", None, Path("/dev/null"), 9)  # type: ignore[arg-type]

    def measure(*_: Any, **__: Any) -> dict[str, Any]:
        raise RuntimeError("wrk failed")

    monkeypatch.setattr(run, "measure", measure)
    failures: dict[str, Any] = {}
    assert run.reference_run(reference, failures, "reference after redis-0 refresh") is None
    assert failures["failures"][0]["step"] == "reference after redis-0 refresh"
    row = {"rps": 2400.0}
    run.adjacent(row, [None, None])
    assert "ratio_adjacent" not in row
    run.adjacent(row, [None, {"rps": 4800.0}])
    assert row["ratio_adjacent"] == 0.5
