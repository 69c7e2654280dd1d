"""Smoke test of benchmarks/ray_scaling.py --quick: the local backend and Ray with 1 and 2
workers measured on a tiny CartPole config, the JSON and the markdown table written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_scaling.py"

TINY = [
    "network.hidden=[16, 16]",
    "adaptation.support_size=20",
    "meta.meta_batch=4",
    "meta.task_pool=4",
    "meta.collect_steps=10",
    "meta.updates_per_collect=2",
    "meta.query_batch=16",
]


def _bench():
    spec = importlib.util.spec_from_file_location("ray_scaling_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_quick_run_measures_local_and_one_and_two_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ray = pytest.importorskip("ray")
    already = ray.is_initialized()
    out = tmp_path / "ray_scaling.json"
    args = ["--out", str(out), "--quick", "--methods", "fomaml,maml"]
    for item in TINY:
        args += ["--set", item]
    assert _bench().main(args) == 0
    assert ray.is_initialized() == already  # a Ray it started is stopped again

    doc = json.loads(out.read_text())
    assert doc["methods"] == ["fomaml"] and doc["rounds"] == 2  # --quick: one method, 2 rounds
    assert doc["failed"] == []
    by = doc["results"]["fomaml"]
    assert set(by) == {"local", "ray-1", "ray-2"}
    for label, row in by.items():
        assert row["meta_batch"] == 4 and row["tasks_per_outer_step"] == 4
        assert row["outer_steps"] == 2 * 2 and row["tasks"] == 16
        assert row["outer_tasks_per_s"] > 0 and row["round_tasks_per_s"] > 0
        # the whole round includes the outer steps: fewer tasks per second of it
        assert row["round_tasks_per_s"] < row["outer_tasks_per_s"]
        assert row["per_task_s"] > 0 and len(row["loadavg_before"]) == 3
        assert label == "local" or row["collect_calls_per_round"] >= 1
        if label == "local":
            assert "bytes" not in row
            continue
        n = row["workers"]
        step = row["bytes"]["outer_step"]
        assert step["broadcast"] > 0 and step["shares"] > 0 and step["workers"] == n
        assert row["bytes"]["collection"]["broadcast"] > 0
        assert row["bytes"]["collection"]["replies"] > 0 and row["bytes"]["round"] > 0
        # the slowest worker's share is part of the outer step's wall time
        assert 0 < row["worker_share_s"] < row["wall_per_outer_step_s"]
        assert ("worker_share_alone_s" in row) == ("worker_share_together_s" in row) == (n > 1)
        if n > 1:
            assert 0 < row["worker_share_together_s"] < row["wall_per_outer_step_s"]
            assert 0 < row["worker_share_alone_s"] < row["wall_per_outer_step_s"]
    # one broadcast per outer step, one gradient share per worker
    one, two = by["ray-1"]["bytes"]["outer_step"], by["ray-2"]["bytes"]["outer_step"]
    assert one["broadcast"] == two["broadcast"]
    assert two["shares"] == 2 * one["shares"]

    ratios = doc["ratios"]["fomaml"]
    assert ratios["ray2_vs_ray1_outer"] > 0
    assert ratios["outer_verdict"] in ("PASS", "MISS")
    assert doc["model"]["fomaml"]["compute_per_task_s"] > 0
    assert len(doc["loadavg_before"]) == len(doc["loadavg_after"]) == 3

    table = out.with_suffix(".md").read_text()
    assert "| fomaml | ray-2 |" in table and "| fomaml | local |" in table
    assert "How it should scale with N machines" in table
    assert "2 vs 1 worker" in table and ("PASS" in table or "MISS" in table)
    assert "at once / one at a time (ms)" in table and "one at a time" in doc["reading"]
    assert "| fomaml | ray-1 |" in capsys.readouterr().out
