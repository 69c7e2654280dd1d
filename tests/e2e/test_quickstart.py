"""The quickstart path end to end on a tiny budget: train, eval, export, deploy, report."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import imageio.v3 as iio
import pytest

from robometa.config import load_config
from robometa.quickstart import CONFIGS, ensure_trained, run_quickstart, trained_env_steps
from robometa.train import run_status

TINY = {"meta_steps": 1200, "baseline_steps": 1200, "eval_tasks": 2, "progress": False}


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown document as rows of cells (header first, no rule row)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tiny quickstart; its report and printed lines are kept, as later tests rerun it
    in the same directory."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = run_quickstart(out, **TINY)
    return out, result, buf.getvalue(), (out / "report.md").read_text()


@pytest.mark.slow
class TestQuickstartOnATinyBudget:
    def test_writes_report_table_bundle_chart_and_gif(self, first_run):
        out, result, printed, report = first_run
        for name in (
            "report.md",
            "quickstart.json",
            "before_after.gif",
            "robots.png",
            "robots.yaml",
            "eval/results.md",
            "eval/results.json",
            "eval/adaptation.png",
            "runs/cavia/learning_curve.png",
            "runs/dr/learning_curve.png",
            "bundle/manifest.json",
            "bundle/policy.onnx",
            "bundle/adapt.onnx",
        ):
            assert (out / name).stat().st_size > 0, name
        assert (out / "robots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](robots.png)" in report and "](before_after.gif)" in report
        for robot in ("reversed motor", "normal motor", "test-range draw"):
            assert robot in report and robot in printed
        rows = result["robots"]
        assert [r["task"]["motor_sign"] for r in rows][:2] == [-1, 1]
        for r in rows:
            assert all(math.isfinite(r[k]) for k in ("before", "after", "baseline"))
            # The runtime's adapt.onnx steps are torch's adapt_step on the same data.
            assert r["max_param_diff_vs_torch"] < 1e-4
        assert any(r["adapt_report"]["accepted"] for r in rows)
        saved = json.loads((out / "quickstart.json").read_text())
        assert saved["gif"]["robot"] == result["gif"]["robot"]

    def test_gif_shows_the_robot_adaptation_helps_most_from_one_start_state(self, first_run):
        out, result, _, report = first_run
        gif_path = out / "before_after.gif"
        assert gif_path.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
        assert gif_path.stat().st_size < 1_000_000
        gif = result["gif"]
        gains = {r["name"]: r["after"] - r["before"] for r in result["robots"]}
        assert gif["robot"] == max(gains, key=gains.get)
        frames = iio.imread(gif_path, index=None)
        longest = max(gif["before_steps"], gif["after_steps"])
        assert len(frames) >= longest / gif["every"]
        assert len(frames) >= min(gif["before_steps"], gif["after_steps"]) / gif["every"]
        assert frames.shape[2] > 2 * frames.shape[1]  # two panels side by side
        assert f"The {gif['robot']} robot before (left) and after (right)" in report
        assert f"{gif['before_return']:.0f} before, {gif['after_return']:.0f} after" in report

    def test_report_explains_its_columns_and_has_no_all_na_column(self, first_run):
        out, result, printed, report = first_run
        assert "`id` = 2 held-out robots drawn from the training ranges with unseen seeds" in report
        assert "`ood` = 2 robots from the wider test ranges, out of distribution" in report
        assert "ONNX runtime vs torch, max abs parameter difference" in report
        assert "runtime = torch" not in report
        tables = markdown_tables(report)
        assert len(tables) == 2
        for table in tables:
            header, *body = table
            assert body
            for j, column in enumerate(header):
                assert any(row[j] != "n/a" for row in body), column
        # The held-out evaluation shows the unadapted and the configured-steps return.
        evaluation = tables[1]
        assert evaluation[0][2:4] == [
            "greedy return, 0 steps [95% CI]",
            "greedy return, 5 steps [95% CI]",
        ]
        assert {row[0] for row in evaluation[1:]} == {"cavia", "dr", "dr+finetune"}
        assert {row[1] for row in evaluation[1:]} == {"id", "ood"}
        # The report states the env steps the runs actually trained, and the printed summary
        # is the report's text.
        steps = result["runs"]["cavia"]["env_steps"]
        assert steps >= 1200
        assert f"meta-trained for {steps} env steps" in report
        for line in report.splitlines():
            if line and not line.startswith(("![", "# ")):
                assert line in printed, line

    def test_a_second_run_reuses_the_finished_runs(self, first_run, capsys):
        out, *_ = first_run
        ckpts = {
            n: (out / "runs" / n / "checkpoint.pt").stat().st_mtime_ns for n in ("cavia", "dr")
        }
        result = run_quickstart(out, **TINY)
        printed = capsys.readouterr().out
        assert printed.count("[1/5] reusing the finished run") == 2
        assert "[1/5] training" not in printed
        for n, mtime in ckpts.items():
            assert (out / "runs" / n / "checkpoint.pt").stat().st_mtime_ns == mtime
            assert result["runs"][n]["action"] == "reused"
        assert "reused from a previous quickstart run" in (out / "report.md").read_text()

    def test_a_run_of_another_seed_or_budget_is_retrained_not_reused(self, first_run, capsys):
        out, *_ = first_run
        dr = out / "runs" / "dr"
        other_seed = load_config(
            CONFIGS / "cartpole_dr.yaml", ["logging.progress=false"], steps=1200, seed=1
        )
        assert run_status(dr, other_seed) == "stale"
        result = run_quickstart(out, **{**TINY, "meta_steps": 1000})
        printed = capsys.readouterr().out
        assert "holds a run of another config, budget or seed: retraining" in printed
        assert "[1/5] training cavia (quickstart.yaml, 1000 env steps, seed 0)" in printed
        assert result["runs"]["cavia"]["action"] == "trained"
        assert result["runs"]["dr"]["action"] == "reused"
        steps = result["runs"]["cavia"]["env_steps"]
        assert steps >= 1000 and result["runs"]["cavia"]["requested_env_steps"] == 1000
        assert steps == trained_env_steps(out / "runs" / "cavia")
        assert f"meta-trained for {steps} env steps" in (out / "report.md").read_text()


class TestEnsureTrained:
    """How the quickstart treats an existing run directory (training itself is stubbed)."""

    @pytest.fixture
    def calls(self, monkeypatch):
        import robometa.train

        calls = []
        monkeypatch.setattr(
            robometa.train, "train", lambda cfg, run_dir, resume=False: calls.append((cfg, resume))
        )
        return calls

    def status(self, monkeypatch, value):
        import robometa.train

        monkeypatch.setattr(robometa.train, "run_status", lambda run_dir, cfg: value)

    def ensure(self, run_dir):
        return ensure_trained("dr", run_dir, CONFIGS / "cartpole_dr.yaml", 1200, 0, False)

    def test_a_finished_run_is_reused(self, tmp_path, monkeypatch, calls, capsys):
        self.status(monkeypatch, "finished")
        assert self.ensure(tmp_path) == "reused"
        assert calls == [] and "reusing the finished run" in capsys.readouterr().out

    def test_an_interrupted_run_is_resumed_from_its_checkpoint(self, tmp_path, monkeypatch, calls):
        self.status(monkeypatch, "resumable")
        assert self.ensure(tmp_path) == "resumed"
        assert calls == [(None, True)]

    def test_a_stale_robometa_run_is_removed_and_retrained(self, tmp_path, monkeypatch, calls):
        self.status(monkeypatch, "stale")
        run = tmp_path / "dr"
        run.mkdir()
        (run / "config.yaml").write_text("seed: 7\n")
        assert self.ensure(run) == "trained"
        assert not run.exists()  # the stub trains nothing; the stale run is gone
        assert calls[0][0].seed == 0 and calls[0][0].dqn.total_steps == 1200

    def test_a_directory_robometa_did_not_write_is_never_deleted(
        self, tmp_path, monkeypatch, calls
    ):
        self.status(monkeypatch, "stale")
        run = tmp_path / "dr"
        run.mkdir()
        (run / "notes.txt").write_text("mine")
        with pytest.raises(FileExistsError, match=r"not a robometa run.*config\.yaml"):
            self.ensure(run)
        assert (run / "notes.txt").read_text() == "mine" and calls == []

    def test_a_run_that_differs_only_in_the_progress_bar_is_reused(
        self, tmp_path, monkeypatch, calls
    ):
        import robometa.train

        monkeypatch.setattr(
            robometa.train,
            "run_status",
            lambda run_dir, cfg: "finished" if cfg.logging.progress else "stale",
        )
        assert self.ensure(tmp_path) == "reused" and calls == []
