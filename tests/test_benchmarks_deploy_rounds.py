"""Smoke test of benchmarks/deploy_rounds.py on an untrained CAVIA-shaped policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from robometa.testing import random_policy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_rounds.py"


def test_deploy_rounds_writes_both_modes_per_round(tmp_path: Path) -> None:
    policy = random_policy("cavia", "model", hidden=(8, 8), seed=1)
    policy.save(tmp_path / "run")
    out = tmp_path / "rounds.json"
    args = ["--run", str(tmp_path / "run"), "--out", str(out), "--tasks", "2", "--rounds", "2"]
    args += ["--eval-episodes", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    for group in ("id", "ood"):
        for mode in ("meta", "current"):
            rows = doc["returns"][group][mode]
            assert len(rows) == 2 and all(len(r) == 3 for r in rows)  # 2 robots, rounds 0..2
            summary = doc["summary"][group][mode]
            assert [s["round"] for s in summary] == [0, 1, 2]
            for s in summary:
                lo, hi = s["ci95"]
                assert lo <= s["mean"] <= hi and 1 <= s["mean"] <= 200
        # Round 0 is the meta-parameters in both modes, and round 1 collects with them too.
        meta, current = doc["returns"][group]["meta"], doc["returns"][group]["current"]
        assert [r[:2] for r in meta] == [r[:2] for r in current]
    assert "round 2" in result.stdout
