"""benchmarks/support_table.py: the README's support-size table from a benchmark JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "support_table.py"


def row(method: str, group: str, support: int, steps: int, ret: float) -> dict:
    return {
        "method": method,
        "group": group,
        "support": support,
        "steps": steps,
        "n": 20,
        "return": ret,
        "return_lo": ret - 5,
        "return_hi": ret + 5,
        "score": ret / 100,
        "score_lo": ret / 100 - 0.1,
        "score_hi": ret / 100 + 0.1,
    }


def run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True
    )


def test_each_method_gets_its_unadapted_and_adapted_returns_per_size(tmp_path: Path) -> None:
    summary = [
        row("cavia", "id", 10, 0, 40.0),
        row("cavia", "id", 10, 5, 90.0),
        row("cavia", "id", 200, 0, 41.0),
        row("cavia", "id", 200, 5, 150.0),
        row("cavia", "id", 200, 10, 10.0),  # beyond --max-steps: not shown
        row("context", "id", 10, 0, 30.0),
        row("context", "id", 10, 1, 120.0),
        row("context", "id", 200, 0, 30.0),
        row("context", "id", 200, 1, 140.0),
    ]
    path = tmp_path / "a.json"
    doc = {"families": {"cartpole": {"env_id": "robometa/CartPole-v0", "summary": summary}}}
    path.write_text(json.dumps(doc))
    done = run(path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[2].startswith("| method | id: 0 steps | id: 10 transitions | id: 200 transitions")
    assert lines[4] == (
        "| cavia | 41.0 | 90.0 [85.0, 95.0] | **150.0** [145.0, 155.0] | 1.50 [1.40, 1.60] |"
    )
    assert lines[5] == (
        "| context | 30.0 | **120.0** [115.0, 125.0] | 140.0 [135.0, 145.0] | 1.40 [1.30, 1.50] |"
    )


def test_a_file_without_support_sizes_or_family_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    summary = [{k: v for k, v in row("dr", "id", 10, 0, 1.0).items() if k != "support"}]
    path.write_text(json.dumps({"families": {"cartpole": {"env_id": "x", "summary": summary}}}))
    done = run(path)
    assert done.returncode != 0 and "cartpole: the summary has no support sizes" in done.stderr
    done = run(path, "--families", "reacher")
    assert "--families reacher: not in" in done.stderr and "it has cartpole" in done.stderr
    path.write_text(
        json.dumps(
            {"families": {"cartpole": {"env_id": "x", "summary": [row("dr", "id", 10, 0, 1.0)]}}}
        )
    )
    done = run(path, "--groups", "id,fresh-id")
    assert "no group fresh-id in the summary (it has id)" in done.stderr
    (tmp_path / "b.json").write_text("[]")
    assert "not an adaptation benchmark JSON" in run(tmp_path / "b.json").stderr
