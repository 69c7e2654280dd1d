"""Smoke test of benchmarks/deploy_latency.py: tiny repeats, checks the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_latency.py"
METRICS = {
    "act_p50_us",
    "act_p99_us",
    "adapt_step_64_ms",
    "adapt_step_256_ms",
    "process_rss_mb",
    "process_import_s",
    "process_total_s",
}


def test_deploy_latency_writes_measured_baseline_ratio_target(tmp_path: Path) -> None:
    out = tmp_path / "deploy_latency.json"
    args = ["--out", str(out), "--hidden", "8", "8", "--repeats", "200"]
    args += ["--adapt-repeats", "3", "--process-repeats", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == METRICS
    for name, r in doc["results"].items():
        assert set(r) == {"measured", "baseline", "ratio", "target", "pass"}, name
        assert r["measured"] > 0 and r["baseline"] > 0, name
        assert r["ratio"] == r["baseline"] / r["measured"]
    for name in ("act_p50_us", "adapt_step_256_ms", "process_rss_mb", "process_import_s"):
        assert isinstance(doc["results"][name]["pass"], bool) and doc["results"][name]["target"]
    assert isinstance(doc["all_pass"], bool)
    assert {"onnxruntime", "torch", "numpy"} <= set(doc["environment"])
    assert "act_p50_us" in result.stdout
