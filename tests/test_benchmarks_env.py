"""benchmarks/env_throughput.py runs and writes its JSON report (speed targets not asserted)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "env_throughput.py"


def test_env_throughput_writes_a_report(tmp_path):
    out = tmp_path / "env_throughput.json"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--steps", "200", "--repeats", "2"]
    cmd += ["--families", "CartPole", "--cpu", "-1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "robometa/CartPole-v0" in done.stdout

    report = json.loads(out.read_text())
    assert report["benchmark"] == "env_throughput"
    assert report["steps"] == 200 and report["repeats"] == 2
    assert report["torch_imported"] is False
    assert list(report["families"]) == ["robometa/CartPole-v0"]
    result = report["families"]["robometa/CartPole-v0"]
    for key in ("env_steps_per_s", "bare_steps_per_s", "ratio"):
        assert result[key] > 0.0, key
    assert len(result["env_runs"]) == len(result["bare_runs"]) == 2
    ratios = [e / b for e, b in zip(result["env_runs"], result["bare_runs"], strict=True)]
    assert result["ratio_runs"] == pytest.approx(ratios)
    assert result["ratio"] == pytest.approx(statistics.median(ratios))
    assert result["targets"] == {"ratio_min": 0.5, "env_steps_per_s_min": 10_000.0}
    assert isinstance(result["pass"], bool) and isinstance(report["pass"], bool)


def test_env_throughput_rejects_an_unknown_family(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json"), "--steps", "10"]
    done = subprocess.run(
        [*cmd, "--families", "NoSuchRobot"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "NoSuchRobot" in done.stderr and "robometa/CartPole-v0" in done.stderr
    assert not (tmp_path / "x.json").exists()
