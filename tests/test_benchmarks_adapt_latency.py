"""Smoke test of benchmarks/adapt_latency.py: one bundle of each builtin kind, tiny repeats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adapt_latency.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from robometa.bundle import export_bundle
    from robometa.methods.context import untrained_policy
    from robometa.testing import random_policy

    root = tmp_path_factory.mktemp("latency")
    cavia = random_policy("cavia", "td+model", hidden=(16, 16), seed=3)
    return {
        "gradient": export_bundle(cavia, root / "cavia"),
        "context": export_bundle(untrained_policy(support_size=40, seed=3), root / "context"),
    }


def test_each_bundle_gets_its_kind_and_every_timing(bundles, tmp_path: Path) -> None:
    out = tmp_path / "lat.json"
    result = run(
        "--out",
        str(out),
        "--bundles",
        str(bundles["gradient"]),
        str(bundles["context"]),
        "--sizes",
        "5,20",
        "--repeats",
        "50",
        "--adapt-repeats",
        "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["sizes"] == [5, 20]
    kinds = [e["kind"] for e in doc["bundles"]]
    assert kinds == ["gradient", "context"]
    for e in doc["bundles"]:
        assert e["act_p50_us"] > 0 and e["act_p99_us"] >= e["act_p50_us"]
        assert e["observe_p50_us"] > 0
        assert set(e["adapt_ms"]) == {"5", "20"} and min(e["adapt_ms"].values()) > 0
    gradient, context = doc["bundles"]
    assert gradient["adapt_steps"]["20"] == gradient_steps(bundles["gradient"])
    assert context["adapt_steps"] == {"5": 1, "20": 1}  # one encoder pass
    assert "| cavia | gradient |" in result.stdout and "| context | context |" in result.stdout


def gradient_steps(bundle: Path) -> int:
    return json.loads((bundle / "manifest.json").read_text())["inner"]["steps"]


def test_a_run_without_a_policy_is_named(tmp_path: Path) -> None:
    result = run("--out", str(tmp_path / "x.json"), "--runs", str(tmp_path))
    assert result.returncode != 0
    assert f"--runs {tmp_path}: no policy.pt there" in result.stderr
    assert not (tmp_path / "x.json").exists()
