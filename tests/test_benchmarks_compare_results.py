"""benchmarks/compare_results.py: the before/after table of two protocol runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_results.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_results  # noqa: E402
from protocol import ROW_FIELDS  # noqa: E402

FIELDS = ROW_FIELDS  # the rows protocol.py writes


def protocol(path: Path, per_seed: dict[str, list[float]], episodes: int = 1) -> Path:
    """A protocol JSON with one group ('id'), supports 10 and 200, steps 0, 1 and 5, each
    method shipped at k = 5 (steps 0 is the unadapted return, stored at every support)."""
    rows = []
    for method, seeds in per_seed.items():
        mean = sum(seeds) / len(seeds)
        for support, steps in ((10, 0), (200, 0), (10, 5), (200, 1), (200, 5)):
            lo, hi = min(seeds), max(seeds)
            rows.append([method, "id", support, steps, len(seeds), mean, lo, hi, seeds, 0.1])
    report = {
        "version": 1,
        "family": "cartpole",
        "row_fields": FIELDS,
        "suites": {
            "heldout": {
                "task_files": {"id": {"path": "configs/tasks/x.yaml", "sha256": "abc"}},
                "supports": [10, 200],
                "steps": [0, 1, 5],
                "episodes": episodes,
                "analysis": {"shipped_steps": dict.fromkeys(per_seed, 5)},
                "rows": rows,
            }
        },
    }
    path.write_text(json.dumps(report))
    return path


def test_permutation_p_is_exact() -> None:
    # 3 vs 3 fully separated: 2 of the 20 splits are as extreme (both directions)
    assert compare_results.permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # 5 vs 5 fully separated: 2 of 252
    assert compare_results.permutation_p([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]) == pytest.approx(
        2 / 252
    )
    assert compare_results.permutation_p([1, 2, 3], [1, 2, 3]) == 1.0


def test_verdicts_and_the_first_before_file_wins(tmp_path: Path) -> None:
    committed = protocol(tmp_path / "committed.json", {"cavia": [150, 140, 160, 155, 165]})
    fresh = protocol(
        tmp_path / "before.json",
        {"cavia": [0, 0, 0, 0, 0], "maml": [100, 110, 90, 105, 95]},
    )
    after = protocol(
        tmp_path / "after.json",
        {"cavia": [152, 141, 158, 150, 170], "maml": [10, 20, 15, 12, 18]},
    )
    result = compare_results.compare([committed, fresh], after, "heldout", 200, None)
    at = {r["method"]: r for r in result["rows"] if "verdict" in r}
    assert at["cavia"]["verdict"] == "unchanged" and at["cavia"]["before_file"] == str(committed)
    assert at["cavia"]["p"] > 0.5
    assert at["maml"]["verdict"] == "differs" and at["maml"]["p"] == pytest.approx(2 / 252)
    # before adapting (support 0), every support size at k, the step curve at 200; the tests
    # only at (200, k)
    points = [(r["support"], r["steps"]) for r in result["rows"] if r["method"] == "maml"]
    assert points == [(0, 0), (10, 5), (200, 5), (200, 1)]
    out = tmp_path / "cmp.md"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--before",
            str(committed),
            "--before",
            str(fresh),
            "--after",
            str(after),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| cavia | id | 5 | 154.0 [140.0, 165.0] | 154.2 [141.0, 170.0] |" in text
    assert "1 of 2 rows unchanged, 1 differ." in text
    assert json.loads(out.with_suffix(".json").read_text())["rows"]


def test_files_with_other_settings_are_refused(tmp_path: Path) -> None:
    before = protocol(tmp_path / "before.json", {"cavia": [1, 2, 3]}, episodes=2)
    after = protocol(tmp_path / "after.json", {"cavia": [1, 2, 3]})
    with pytest.raises(SystemExit, match="key 'episodes' is 1.*not comparable"):
        compare_results.compare([before], after, "heldout", 200, None)
    with pytest.raises(SystemExit, match="no suite 'fresh'"):
        compare_results.compare([after], after, "fresh", 200, None)
    with pytest.raises(SystemExit, match="method 'maml' is not in every side"):
        compare_results.compare([after], after, "heldout", 200, ["maml"])
