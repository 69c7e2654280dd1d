"""benchmarks/train_throughput.py: a tiny measurement of the current tree, a side-by-side one
with a baseline worktree, and the import check that fails loudly (targets not asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "train_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _row(report: dict, method: str, ref: str = "current") -> dict:
    return next(r for r in report["rows"] if (r["method"], r["ref"]) == (method, ref))


def _check_times(row: dict, budget: int) -> None:
    assert "error" not in row, row.get("error")
    assert row["env_steps"] >= budget
    assert row["wall_s"] > 0 and row["cpu_s"] > 0
    assert row["wall_s_per_10k"] == pytest.approx(row["wall_s"] * 10_000 / row["env_steps"])
    assert row["cpu_s_per_10k"] == pytest.approx(row["cpu_s"] * 10_000 / row["env_steps"])
    assert 0 < row["cpu_utilization"] <= 2.5
    assert row["cpu_utilization"] == pytest.approx(row["cpu_s"] / row["wall_s"])
    # the whole process (start-up and imports too) takes at least the train() call
    assert row["process_wall_s"] >= row["wall_s"]


def test_throughput_of_dqn_and_a_meta_learner(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    argv = ["--out", str(out), "--steps", "400", "--methods", "dr,cavia"]
    assert _bench().main([*argv, "--families", "cartpole"]) == 0

    report = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("# Training throughput")
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["benchmark"] == "train_throughput" and report["steps"] == 400
    assert list(report["trees"]) == ["current"] and report["failed"] == []
    assert [(r["family"], r["method"]) for r in report["rows"]] == [
        ("cartpole", "dr"),
        ("cartpole", "cavia"),
    ]
    [physics] = report["physics"]
    assert physics["env_id"] == "robometa/CartPole-v0" and physics["env_steps"] == 400
    assert physics["wall_s"] > 0 and physics["env_steps_per_s"] > 0

    dr, cavia = _row(report, "dr"), _row(report, "cavia")
    for row in (dr, cavia):
        _check_times(row, 400)
        assert Path(row["robometa_file"]).is_relative_to(REPO)
        assert row["modules_outside_tree"] == []
    assert dr["algorithm"] == "dqn" and cavia["algorithm"] == "cavia"
    # the ratio to DQN comes from this run's dr row
    assert dr["x_dqn_wall"] == pytest.approx(1.0)
    assert cavia["x_dqn_wall"] == pytest.approx(cavia["wall_s_per_10k"] / dr["wall_s_per_10k"])
    assert cavia["target_x_dqn"] == 2.0 and isinstance(cavia["target_met"], bool)
    assert "target_x_dqn" not in dr
    assert report["targets"]["checked"] == 1

    for row in (dr, cavia):
        b = row["breakdown"]
        assert b["absent_wrappers"] == {}
        parts = {k: v["wall_s"] for k, v in b["parts"].items()}
        assert set(parts) == set(report["breakdown_parts"])
        assert all(v >= 0 for v in parts.values()), parts
        assert sum(parts.values()) <= row["wall_s"] * (1 + 1e-6)
        assert sum(parts.values()) == pytest.approx(row["wall_s"])  # "other" closes the sum
        assert all(v["wall_s"] >= 0 for v in b["subparts"].values())
        for part in ("collection", "selection", "checkpointing", "setup"):
            assert parts[part] > 0, part
    parts = cavia["breakdown"]["parts"]
    assert parts["inner_steps"]["wall_s"] > 0 and parts["updates"]["wall_s"] > 0
    # DQN learns only after dqn.learning_starts (1000) env steps: none in this budget
    assert dr["breakdown"]["parts"]["updates"]["wall_s"] == 0
    assert dr["breakdown"]["parts"]["inner_steps"]["wall_s"] == 0
    sub = cavia["breakdown"]["subparts"]
    assert 0 < sub["collect"]["wall_s"] <= parts["collection"]["wall_s"]
    assert 0 < sub["selection_return"]["wall_s"] <= parts["selection"]["wall_s"]
    paths = {p["path"]: p["calls"] for p in cavia["breakdown"]["paths"]}
    # one round of 8 tasks: support and query each, then updates_per_collect outer steps
    assert paths["collection"] == 8 and paths["collection/collect"] == 16
    assert paths["outer_step"] == 20
    assert report["cpu"] and all(0 < c["cpu_utilization"] <= 2.5 for c in report["cpu"])


def test_baseline_ref_measures_a_temporary_worktree(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    argv = ["--out", str(out), "--steps", "100", "--methods", "dr", "--families", "cartpole"]
    assert _bench().main([*argv, "--baseline-ref", "HEAD"]) == 0

    report = json.loads(out.read_text())
    assert list(report["trees"]) == ["current", "baseline HEAD"]
    baseline = report["trees"]["baseline HEAD"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert baseline["commit"] == head.stdout.strip()
    worktree = Path(baseline["root"])
    # created for the run (the children imported robometa from it), removed afterwards
    for row in [r for r in report["physics"] + report["rows"] if r["ref"] == "baseline HEAD"]:
        assert Path(row["robometa_file"]) == worktree / "robometa" / "__init__.py"
        assert row["modules_outside_tree"] == []
    assert not worktree.exists() and not Path(baseline["site"]).exists()
    listed = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert str(worktree) not in listed

    current, old = _row(report, "dr"), _row(report, "dr", "baseline HEAD")
    _check_times(current, 100)
    _check_times(old, 100)
    assert "breakdown" in current and "breakdown" not in old
    assert current["speedup_vs_baseline"] == pytest.approx(
        old["wall_s_per_10k"] / current["wall_s_per_10k"]
    )


def test_a_child_that_imports_another_tree_fails_loudly(tmp_path: Path) -> None:
    bench = _bench()
    (tmp_path / "work").mkdir()
    elsewhere = bench.Tree("elsewhere", tmp_path, None, "0" * 40, "not robometa")
    spec = {"kind": "physics", "env_id": "robometa/CartPole-v0", "steps": 10}
    with pytest.raises(SystemExit, match="did not import robometa from"):
        bench.run_child(elsewhere, spec, tmp_path / "work", timeout=120)


def test_breakdown_parts_are_exclusive_and_sum_to_the_wall_time() -> None:
    bench = _bench()
    paths = [
        {"path": "setup", "calls": 1, "wall_s": 1.0, "cpu_s": 1.0},
        {"path": "collection", "calls": 2, "wall_s": 2.0, "cpu_s": 2.0},
        {"path": "collection/collect", "calls": 4, "wall_s": 1.5, "cpu_s": 1.5},
        {"path": "collection/adapt", "calls": 2, "wall_s": 0.25, "cpu_s": 0.25},
        {"path": "outer_step", "calls": 3, "wall_s": 4.0, "cpu_s": 4.0},
        {"path": "outer_step/gradient_update", "calls": 3, "wall_s": 3.5, "cpu_s": 3.5},
        {"path": "outer_step/gradient_update/task_losses", "calls": 3, "wall_s": 2.0, "cpu_s": 2},
        {
            "path": "outer_step/gradient_update/task_losses/adapt",
            "calls": 3,
            "wall_s": 1.5,
            "cpu_s": 1.5,
        },
        {"path": "outer_step/target_update", "calls": 3, "wall_s": 0.25, "cpu_s": 0.25},
        {"path": "selection", "calls": 1, "wall_s": 0.5, "cpu_s": 0.5},
        {"path": "selection/selection_return", "calls": 1, "wall_s": 0.4, "cpu_s": 0.4},
        {"path": "checkpoint", "calls": 2, "wall_s": 0.2, "cpu_s": 0.2},
    ]
    b = bench.breakdown(paths, wall=10.0, cpu=9.0)
    parts = {k: v["wall_s"] for k, v in b["parts"].items()}
    assert parts["collection"] == 2.0
    assert parts["inner_steps"] == 1.5
    assert parts["updates"] == pytest.approx(4.0 - 1.5 - 0.25)
    assert parts["target_updates"] == 0.25
    assert parts["selection"] == 0.5 and parts["checkpointing"] == 0.2 and parts["setup"] == 1.0
    assert sum(parts.values()) == pytest.approx(10.0)
    assert b["parts"]["other"]["cpu_s"] == pytest.approx(9.0 - (10.0 - parts["other"]))
    sub = {k: v["wall_s"] for k, v in b["subparts"].items()}
    assert sub["collect"] == 1.5 and sub["collection_adapt"] == 0.25
    assert sub["outer_forward"] == pytest.approx(0.5)
    assert sub["backward_and_adam"] == pytest.approx(1.5)
    assert sub["selection_return"] == 0.4


def test_timing_wrappers_keep_results_and_exceptions() -> None:
    timers = _bench().Timers()
    calls = []

    def f(x: int) -> int:
        calls.append(x)
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    g = timers.wrap("f", f)
    assert g(3) == 6 and g.__name__ == "f"
    with pytest.raises(ValueError, match="negative"):
        g(-1)
    assert calls == [3, -1] and timers.stack == []
    [row] = timers.rows()
    assert row["path"] == "f" and row["calls"] == 2 and row["wall_s"] >= 0


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_site_directory_lays_out_the_packages(tmp_path: Path) -> None:
    bench = _bench()
    tree = tmp_path / "tree"
    for d in ("robometa", "envs", "deploy"):
        (tree / d).mkdir(parents=True)
        (tree / d / "__init__.py").write_text("")
    (tree / "robometa" / "train.py").write_text("")
    (tree / "robometa" / "__pycache__").mkdir()
    (tree / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"robometa" = "robometa"\n'
        '"robometa.envs" = "envs"\n"robometa.deploy" = "deploy"\n'
    )
    site = bench.build_site(tree, tmp_path / "site")
    package = site / "robometa"
    assert sorted(p.name for p in package.iterdir()) == [
        "__init__.py",
        "deploy",
        "envs",
        "train.py",
    ]
    assert (package / "envs").resolve() == (tree / "envs").resolve()
    assert (package / "train.py").resolve() == (tree / "robometa" / "train.py").resolve()


def test_set_overrides_the_current_trees_configs(tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "t.json"
    args = ["--steps", "200", "--methods", "dr", "--families", "cartpole", "--set", "threads=2"]
    assert bench.main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["overrides"] == ["threads=2"]
    assert "error" not in _row(report, "dr")
    assert "`threads=2`" in out.with_suffix(".md").read_text()
