"""Smoke test of benchmarks/dqn_vs_sb3.py: a tiny budget, every reported figure present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dqn_vs_sb3.py"


def test_dqn_vs_sb3_writes_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("dqn_vs_sb3", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dqn_vs_sb3.json"
    assert (
        bench.main(
            ["--out", str(out), "--seeds", "1", "--max-steps", "1200", "--eval-every", "600"]
        )
        == 0
    )
    report = json.loads(out.read_text())
    for name in ("robometa", "sb3"):
        side = report[name]
        (run,) = side["runs"]
        assert run["env_steps"] == 1200
        assert [step for step, _ in run["curve"]] == [600, 1200]
        assert all(0 < ret <= 200 for _, ret in run["curve"])
        assert run["train_wall_s"] > 0 and run["train_cpu_s"] > 0
        # unsolved within 1200 steps counts as the whole budget
        assert side["steps_to_solve_mean"] == (run["solved_at"] or 1200)
    assert report["sb3"]["hyperparameters"]["train_freq"] == 256
    assert report["ratio"]["wall_s_per_10k"] == pytest.approx(
        report["robometa"]["wall_s_per_10k_median"] / report["sb3"]["wall_s_per_10k_median"]
    )
    assert set(report["pass"]) >= {"env_steps_to_solve", "wall_s_per_10k"}
    table = capsys.readouterr().out
    assert "env steps to solve" in table and "wall s per 10k steps" in table
