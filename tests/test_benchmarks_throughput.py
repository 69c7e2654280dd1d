"""benchmarks/train_throughput.py: a tiny measurement of the current tree (with its FLOP
counting pass), a side-by-side one with a baseline worktree, the import check that fails loudly
(targets not asserted), and --no-flops."""

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
    argv = ["--out", str(out), "--steps", "400", "--methods", "dr,cavia", "--flops-steps", "400"]
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
    _check_flops(report, out.with_suffix(".md").read_text(), dr, cavia)


def _check_flops(report: dict, md: str, dr: dict, meta: dict) -> None:
    """The counting pass of the test above: positive counts past the warm-up, the meta-learner
    above DQN, the ratios from this run's numbers, the columns and the section in the table."""
    assert report["flops"]["flops_steps"] == 400
    assert "aten.mm" in report["flops"]["counted_ops"]
    for row in (dr, meta):
        f = row["flops"]
        assert "error" not in f, f.get("error")
        assert f["flops"] > 0 and f["flops_per_iteration_min"] > 0
        assert f["flops_per_env_step"] == pytest.approx(f["flops"] / f["env_steps"])
        assert f["window"] == [f["warmup_env_steps"], f["warmup_env_steps"] + f["env_steps"]]
        assert row["mflop_per_env_step"] == pytest.approx(f["flops_per_env_step"] / 1e6)
        assert f["ops"] and all(n > 0 for n in f["ops"].values())
        assert sum(f["ops"].values()) == f["window_flops"] >= f["flops"]
        # the FLOP shares of the window's parts sum to its FLOPs
        parts = f["breakdown"]["parts"]
        assert sum(p["flops"] for p in parts.values()) == pytest.approx(f["window_flops"])
        assert parts["updates"]["flops"] > 0
        # the timed runs' budget was too small for the window: raised, and only then
        assert f["total_steps"] > 400 and f["window"][1] < f["total_steps"]
        assert row["modules_outside_tree"] == [] and f["counting_wall_s"] > 0
    # DQN: counted from dqn.learning_starts, a gradient step every vector step there; the
    # update-free steps before it do a tiny fraction of that arithmetic
    assert dr["flops"]["warmup_env_steps"] == 1000 and dr["flops"]["env_steps"] == 400
    assert dr["flops"]["iterations"] == 100  # 4 envs
    assert dr["flops"]["warmup_flops_per_env_step"] < 0.1 * dr["flops"]["flops_per_env_step"]
    # the meta-learner: its first round is the warm-up, then one round (400 env steps)
    assert meta["flops"]["window"] == [400, 800] and meta["flops"]["iterations"] == 1
    assert meta["flops"]["breakdown"]["parts"]["inner_steps"]["flops"] > 0
    assert meta["mflop_per_env_step"] > dr["mflop_per_env_step"]
    assert dr["flops_x_dqn"] == pytest.approx(1.0) and dr["wall_per_mflop_x_dqn"] == 1.0
    assert meta["flops_x_dqn"] == pytest.approx(
        meta["mflop_per_env_step"] / dr["mflop_per_env_step"]
    )
    assert meta["flops_x_dqn"] > 1
    assert meta["wall_ms_per_mflop"] == pytest.approx(
        1e3 * meta["wall_s_per_10k"] / 10_000 / meta["mflop_per_env_step"]
    )
    assert meta["wall_per_mflop_x_dqn"] == pytest.approx(meta["x_dqn_wall"] / meta["flops_x_dqn"])
    for column in ("MFLOP/env step", "arithmetic x DQN", "wall/MFLOP x DQN"):
        assert column in md.split("\n## ")[0]  # in the main table
    assert "## Arithmetic per env step" in md and "FlopCounterMode" in md
    assert f"| {_bench()._mflop(meta)} | {meta['flops_x_dqn']:.1f}x |" in md
    reading = f"{meta['method']} does {meta['flops_x_dqn']:.1f}x DQN's arithmetic per env step"
    assert reading in md and f"in {meta['x_dqn_wall']:.1f}x its wall time" in md


def test_baseline_ref_measures_a_temporary_worktree(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    argv = ["--out", str(out), "--steps", "100", "--methods", "dr", "--families", "cartpole"]
    assert _bench().main([*argv, "--baseline-ref", "HEAD", "--flops-steps", "40"]) == 0

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
    # FLOPs are counted for the current tree only
    assert current["mflop_per_env_step"] > 0 and current["flops"]["env_steps"] == 40
    assert "flops" not in old and "mflop_per_env_step" not in old


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
    assert bench.main([*args, "--out", str(out), "--flops-steps", "40"]) == 0
    report = json.loads(out.read_text())
    assert report["overrides"] == ["threads=2"]
    dr = _row(report, "dr")
    assert "error" not in dr
    assert dr["torch_threads"] == 2
    assert dr["flops"]["torch_threads"] == 2  # the counting pass runs the same settings
    assert "`threads=2`" in out.with_suffix(".md").read_text()


def test_no_flops_skips_the_counting_pass(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    argv = ["--out", str(out), "--steps", "100", "--methods", "dr", "--families", "cartpole"]
    assert _bench().main([*argv, "--no-flops"]) == 0
    report = json.loads(out.read_text())
    assert report["flops"] is None and report["failed"] == []
    dr = _row(report, "dr")
    _check_times(dr, 100)
    assert not {"flops", "mflop_per_env_step", "flops_x_dqn", "wall_per_mflop_x_dqn"} & set(dr)
    md = out.with_suffix(".md").read_text()
    assert "MFLOP" not in md and "arithmetic x DQN" not in md
    assert "## Arithmetic per env step" not in md
    # the main table keeps its columns
    assert "| CPU util | x DQN | target | speed-up vs baseline |\n" in md


def test_flop_ratios_and_reading_come_from_the_numbers() -> None:
    bench = _bench()

    def row(method: str, wall_10k: float, ref: str = "current") -> dict:
        return {
            "ref": ref,
            "family": "cartpole",
            "method": method,
            "wall_s_per_10k": wall_10k,
            "cpu_s_per_10k": wall_10k / 2,
        }

    rows = [row("dr", 10.0), row("fomaml", 31.0), row("maml", 60.0), row("x", 5.0)]
    rows.append(row("dr", 20.0, ref="baseline HEAD"))
    flops = {
        ("cartpole", "dr"): {"flops_per_env_step": 1e6},
        ("cartpole", "fomaml"): {"flops_per_env_step": 9.8e6},
        ("cartpole", "maml"): {"flops_per_env_step": 4e6},
        ("cartpole", "x"): {"error": "exit code 1"},
    }
    bench.add_flop_ratios(rows, flops)
    dr, fomaml, maml, failed, old = rows
    for r, x_wall in ((dr, 1.0), (fomaml, 3.1), (maml, 6.0)):
        r["x_dqn_wall"] = x_wall
    assert dr["mflop_per_env_step"] == 1.0 and dr["flops_x_dqn"] == 1.0
    assert dr["wall_ms_per_mflop"] == pytest.approx(1.0)  # 1 ms per env step, 1 MFLOP
    assert dr["effective_gflop_per_s"] == pytest.approx(1.0)
    assert fomaml["flops_x_dqn"] == pytest.approx(9.8)
    assert fomaml["wall_per_mflop_x_dqn"] == pytest.approx(3.1 / 9.8)
    assert maml["wall_per_mflop_x_dqn"] == pytest.approx(6.0 / 4.0)
    assert dr["cpu_ms_per_mflop"] == pytest.approx(0.5)
    assert maml["cpu_per_mflop_x_dqn"] == pytest.approx(6.0 / 4.0)
    assert failed["flops"] == {"error": "exit code 1"} and "flops_x_dqn" not in failed
    assert "flops" not in old  # the baseline's rows are not counted
    text = bench.flops_reading(rows)
    assert text.startswith(
        "Reading (DQN: `dr`): fomaml does 9.8x DQN's arithmetic per env step in 3.1x its wall time "
        "(0.316x DQN's wall per MFLOP); maml does 4.0x DQN's arithmetic per env step in 6.0x "
        "its wall time (1.500x DQN's wall per MFLOP)."
    )
    assert "For fomaml the wall-time ratio is below the arithmetic ratio" in text
    assert "For maml the wall-time ratio is at or above the arithmetic ratio" in text
    assert bench.flops_reading([dr]) == ""
    assert [bench._mflop(r) for r in (dr, fomaml, failed, old)] == ["1.00", "9.80", "FAILED", "-"]
    assert bench._mflop({"mflop_per_env_step": 76.96}) == "77.0"


def test_timers_count_flops_per_call_path_and_since_a_snapshot() -> None:
    bench = _bench()
    counted = [0]
    timers = bench.Timers(flops=lambda: counted[0])

    def work(n: int) -> None:
        counted[0] += n

    outer = timers.wrap("outer", lambda: (work(5), inner(7)))
    inner = timers.wrap("inner", work)
    outer()
    before = timers.snapshot()
    outer()
    inner(1)
    rows = {r["path"]: r for r in timers.rows()}
    assert rows["outer"]["flops"] == 24 and rows["outer/inner"]["flops"] == 14
    assert rows["inner"]["flops"] == 1 and rows["outer"]["calls"] == 2
    since = {r["path"]: (r["calls"], r["flops"]) for r in timers.rows(since=before)}
    assert since == {"inner": (1, 1), "outer": (1, 12), "outer/inner": (1, 7)}
    paths = [
        {"path": p, **{k: r[k] for k in ("calls", "wall_s", "cpu_s", "flops")}}
        for p, r in rows.items()
    ]
    b = bench.breakdown(paths, wall=1.0, cpu=1.0, flops=30)
    assert b["parts"]["other"]["flops"] == 30 and b["parts"]["other"]["flops_fraction"] == 1.0
    assert "flops" not in bench.breakdown(paths, wall=1.0, cpu=1.0)["parts"]["other"]
    plain = bench.Timers()  # no counter: no FLOPs in its rows
    plain.wrap("f", work)(2)
    assert "flops" not in plain.rows()[0]


def test_the_default_budget_is_the_shipped_one_of_dr_and_every_gradient_meta_learner() -> None:
    """The targets are per env step at the shipped config: the default --steps is the shipped
    dqn.total_steps of DR and of each gradient meta-learner (a shorter run weighs setup more)."""
    import robometa.algorithms
    from robometa.config import load_config

    bench = _bench()
    gradient = [
        n for n in robometa.algorithms.names() if robometa.algorithms.get(n).family == "gradient"
    ]
    checked = 0
    for family in bench.DEFAULT_FAMILIES:
        for method in ["dr", *gradient]:
            path = REPO / "configs" / f"{family}_{method}.yaml"
            if path.exists():
                assert load_config(path).dqn.total_steps == bench.DEFAULT_STEPS, path.name
                checked += 1
    assert checked >= 10
