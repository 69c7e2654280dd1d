"""The quickstart path end to end on a tiny budget: train, eval, export, deploy, report."""

from __future__ import annotations

import json
import math

import pytest

from robometa.quickstart import run_quickstart


@pytest.mark.slow
def test_quickstart_writes_report_table_bundle_and_gif(tmp_path, capsys):
    result = run_quickstart(tmp_path / "qs", meta_steps=1200, baseline_steps=1200,
                            eval_tasks=2, progress=False)
    out = tmp_path / "qs"
    for name in ("report.md", "quickstart.json", "before_after.gif", "robots.yaml",
                 "eval/results.md", "eval/results.json", "eval/adaptation.png",
                 "runs/cavia/learning_curve.png", "runs/dr/learning_curve.png",
                 "bundle/manifest.json", "bundle/policy.onnx", "bundle/adapt.onnx"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "before_after.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    report = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    for robot in ("reversed motor", "normal motor", "test-range draw"):
        assert robot in report and robot in printed
    rows = result["robots"]
    assert [r["task"]["motor_sign"] for r in rows][:2] == [-1, 1]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("before", "after", "baseline"))
        if r["adapt_report"]["accepted"]:
            # The runtime's adapted parameters are torch's adapt_step on the same data.
            assert r["max_param_diff_vs_torch"] < 1e-4
    assert any(r["adapt_report"]["accepted"] for r in rows)
    saved = json.loads((out / "quickstart.json").read_text())
    assert saved["robots"][0]["name"] == "reversed motor"
