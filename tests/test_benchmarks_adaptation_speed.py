"""benchmarks/adaptation_speed.py: the adaptation benchmark run from a baseline worktree and
from this tree, side by side, on a tiny budget (the 0.5x target is not asserted here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "adaptation_speed.py"
TINY = "--families cartpole --methods dr,oracle,cavia --seeds 0 --steps 300 --oracle-steps 300"
TINY += " --n-tasks 2 --episodes 1 --jobs 1"


def _load():
    spec = importlib.util.spec_from_file_location("adaptation_speed_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: a commit before robometa/collection.py moved to deploy/: the baseline must not pick up the
#: current tree's copy of a module it lacks (the editable install's hook is dropped there)
OLDER = "cd05957"


@pytest.mark.slow
def test_side_by_side_with_a_baseline_worktree(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "speed.json"
    assert bench.main(["--baseline-ref", OLDER, "--out", str(out), "--", *TINY.split()]) == 0
    report = json.loads(out.read_text())
    base, cur = report["baseline"], report["current"]
    older = subprocess.run(
        ["git", "rev-parse", OLDER], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert base["tree"]["commit"] == older and base["tree"]["root"] != str(ROOT)
    assert cur["tree"]["root"] == str(ROOT)
    for r in (base, cur):
        assert r["returncode"] == 0 and r["wall_s"] > 0 and r["cpu_s"] > 0
        assert set(r["claim"]) == {"cartpole"} and set(r["claim"]["cartpole"]) == {"id", "ood"}
    assert report["ratio"] == pytest.approx(cur["wall_s"] / base["wall_s"])
    assert report["pass"]["same_claim"] == (base["claim"] == cur["claim"])
    assert out.with_suffix(".md").read_text().startswith("| tree | commit |")
    assert out.with_suffix(".png").stat().st_size > 5000
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "robometa-baseline-" not in worktrees  # removed afterwards


def test_a_baseline_that_imports_the_wrong_tree_is_refused(tmp_path: Path) -> None:
    bench = _load()
    tt = bench._throughput_module()
    wrong = tt.Tree("baseline x", tmp_path / "elsewhere", None, "0" * 40, "")
    with pytest.raises(SystemExit, match="robometa imports from .* not from"):
        bench.check_import(wrong, tmp_path)


def test_the_baseline_site_drops_the_editable_hook(tmp_path: Path) -> None:
    """In the baseline's processes a module only the current tree has does not import."""
    import os
    import sys

    bench = _load()
    tt = bench._throughput_module()
    with tt.baseline_tree(OLDER) as base:
        bench.check_import(base, tmp_path)
        done = subprocess.run(
            [sys.executable, "-c", "import robometa.deploy.collection"],
            env=base.env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, os.linesep + done.stderr


def test_both_trees_get_the_baselines_default_methods(tmp_path: Path) -> None:
    """The baseline commit's own method list, read in its own environment, not today's longer
    one (timing different work would not be a speed-up)."""
    bench = _load()
    tt = bench._throughput_module()
    with tt.baseline_tree("0964d52") as base:
        methods = bench.default_methods(base, tmp_path)
    assert methods == "dr,oracle,cavia,maml,fomaml,metasgd,anil,reptile"
    current = bench.default_methods(tt.current_tree(), tmp_path).split(",")
    assert set(methods.split(",")) < set(current)


def test_own_defaults_takes_no_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(
            [
                "--baseline-ref",
                OLDER,
                "--out",
                str(tmp_path / "x.json"),
                "--own-defaults",
                "--",
                "--seeds",
                "0",
            ]
        )
    assert exit_info.value.code == 2
    assert "--own-defaults times each tree's defaults" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
