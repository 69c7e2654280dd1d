"""benchmarks/robustness.py --quick: every category replayed, outcomes classified and counted,
and a good input per category accepted (so the harness cannot call everything an error)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
CATEGORIES = {
    "bundles",
    "runtime calls",
    "deploy CLI flags",
    "export",
    "kills",
    "write faults",
    "configs & --set",
    "task files",
    "robometa CLI flags",
}
OUTCOMES = {
    "clear error",
    "intact",
    "accepted",
    "unclear error",
    "traceback",
    "silently accepted",
    "hang",
    "data lost",
    "good input refused",
    "harness error",
}


@pytest.mark.slow
def test_quick_run_classifies_every_category_and_accepts_the_controls(tmp_path: Path) -> None:
    out = tmp_path / "robustness.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["categories"]) == CATEGORIES
    assert report["unreadable_categories"] == {} and report["harness_failed"] is False
    cases = report["cases"]
    assert {c["outcome"] for c in cases} <= OUTCOMES
    assert all(c["category"] in CATEGORIES and c["detail"] for c in cases)
    assert len({c["name"] for c in cases}) == len(cases)
    for title, row in report["categories"].items():
        mine = [c for c in cases if c["category"] == title]
        assert row["tried"] == len(mine) == sum(row[o] for o in OUTCOMES)
        assert row["controls"] == sum(c["control"] for c in mine) >= 1
        assert any(not c["control"] for c in mine)
    for key, total in report["totals"].items():
        assert total == sum(row[key] for row in report["categories"].values())
    # The controls are good inputs: each must come out accepted, whatever the bad ones do.
    controls = [c for c in cases if c["control"]]
    assert {c["category"] for c in controls} == CATEGORIES
    assert all(c["outcome"] == "accepted" for c in controls), [
        (c["name"], c["outcome"], c["detail"]) for c in controls if c["outcome"] != "accepted"
    ]
    assert all(c["outcome"] != "accepted" for c in cases if not c["control"])
    # target_met is a measurement; it only has to agree with the counts
    bad = sum(report["totals"][o] for o in ("traceback", "silently accepted", "hang", "data lost"))
    assert report["target_met"] == (bad == 0)
    assert "target:" in done.stdout and "total" in done.stdout


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("robustness_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_the_judges_tell_a_clear_error_from_a_traceback_a_silence_and_a_vague_one() -> None:
    bench = _bench()
    prefix = "robometa train: error: "

    def refuse(code: int, err: str):
        return lambda: (print(err, file=sys.stderr, end=""), code)[1]

    clear = bench.call(refuse(2, f"{prefix}config file x.yaml: duplicate key 'seed'\n"))
    assert bench.judge_cli(clear, prefix, ["duplicate key 'seed'"])[0] == "clear error"
    assert bench.judge_cli(clear, prefix, ["x.yaml", "line 3"])[0] == "unclear error"
    traced = bench.call(refuse(2, f"Traceback (most recent call last):\n{prefix}boom\n"))
    assert bench.judge_cli(traced, prefix)[0] == "traceback"
    assert bench.judge_cli(bench.call(refuse(0, "")), prefix)[0] == "silently accepted"
    assert bench.judge_cli(bench.call(refuse(1, f"{prefix}x\n")), prefix)[0] == "unclear error"

    def raises(error: Exception):
        def fn():
            raise error

        return fn

    assert (
        bench.judge_raised(bench.call(raises(ValueError("bad seed"))), ValueError, ["seed"])[0]
        == "clear error"
    )
    assert bench.judge_raised(bench.call(raises(KeyError("x"))), ValueError)[0] == "traceback"
    assert bench.judge_raised(bench.call(lambda: 3), ValueError)[0] == "silently accepted"
    assert bench.judge_accepted(bench.call(raises(ValueError("no"))))[0] == "good input refused"
    verdict = bench.lost(("clear error", "refused"), "notes.txt changed")
    assert verdict[0] == "data lost"
    assert bench.worst(("a", ("clear error", "")), ("b", ("hang", "")))[0] == "hang"
