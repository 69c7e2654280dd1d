"""benchmarks/protocol.py: the plan, a tiny end-to-end protocol (resumed), the README render."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "protocol.py"


def _protocol():
    spec = importlib.util.spec_from_file_location("protocol_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )


def test_quick_plan_states_its_cost_and_runs_nothing(tmp_path: Path) -> None:
    done = _run("--quick", "--plan", "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    # CartPole, 2 seeds, 6 methods: 12 runs, all to train here, one evaluation
    assert line.startswith("plan: 12 runs over cartpole (12 to train: ~"), line
    assert "1 evaluations" in line and "estimated total ~" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("policy.pt"))


def test_an_evaluation_takes_the_processes_the_others_leave() -> None:
    eval_jobs = _protocol().eval_jobs
    # one family's one suite: both processes evaluate its runs; two suites: one each
    assert [eval_jobs(2, n) for n in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert [eval_jobs(4, n) for n in (1, 2, 3)] == [4, 2, 1]


def test_bad_arguments_name_the_value(tmp_path: Path) -> None:
    done = _run("--support", "10,50", "--plan")
    assert done.returncode == 2 and "--support must include 200" in done.stderr
    done = _run("--families", "cartpol", "--plan")
    assert done.returncode == 2 and "unknown family 'cartpol'" in done.stderr


def test_the_readme_section_is_the_committed_json() -> None:
    protocol = _protocol()
    results = ROOT / "benchmarks" / "results"
    text = (ROOT / "README.md").read_text()
    section = text.split(protocol.MARK_START, 1)[1].split(protocol.MARK_END, 1)[0]
    rendered = protocol.render(results)
    assert protocol.MARK_START + section + protocol.MARK_END == rendered, (
        "the README's results differ from benchmarks/results/*.json: run "
        "python benchmarks/protocol.py --render benchmarks/results"
    )
    for path in results.glob("protocol-*.json"):
        family = json.loads(path.read_text())["family"]
        assert (ROOT / "docs" / "images" / f"protocol-{family}.png").stat().st_size > 10_000
        assert path.stat().st_size < 1_000_000  # committed: small


def _tiny_suite(root: Path) -> Path:
    """Two robots (one per motor sign where the file has both) of each heldout file."""
    root.mkdir(parents=True)
    for name in ("id", "ood", "id-fixed-sign"):
        data = yaml.safe_load((ROOT / f"configs/tasks/cartpole/heldout/{name}.yaml").read_text())
        signs = [t["motor_sign"] for t in data["tasks"]]
        other = signs.index(-1) if -1 in signs else len(signs) - 1
        data["tasks"] = [data["tasks"][signs.index(1)], data["tasks"][other]]
        (root / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.mark.slow
def test_a_tiny_protocol_end_to_end_then_reused_and_rendered(tmp_path: Path) -> None:
    tasks = _tiny_suite(tmp_path / "tasks")
    args = [
        "--out", str(tmp_path / "out"), "--families", "cartpole", "--methods", "dr,oracle,cavia",
        "--seeds", "0,1", "--steps", "300", "--suites", str(tasks), "--support", "10,200",
        "--curve", "0,1", "--episodes", "1", "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    first = _run(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "protocol-cartpole.json").read_text())
    suite = record["suites"]["tasks"]
    assert suite["n_tasks"] == {"id": 2, "id-fixed-sign": 2, "ood": 2}
    analysis = suite["analysis"]
    assert analysis["best_meta_learner"] == "cavia"
    at = analysis["groups"]["id"]["methods"]
    assert set(at) == {"dr", "dr+finetune", "oracle", "cavia"}
    if at["oracle"]["return"] > at["dr"]["return"] + 1e-6:  # a gap to close
        assert at["oracle"]["gap_closed"][0] == pytest.approx(1.0)
        assert at["dr"]["gap_closed"][0] == pytest.approx(0.0)
    else:  # 300 steps of training: the bound may be no better than DR; then no fraction
        assert all(math.isnan(x) for x in at["cavia"]["gap_closed"])
    assert at["cavia"]["seeds"] == 2 and len(at["cavia"]["per_seed_return"]) == 2
    assert 0 <= at["cavia"]["seeds_above_dr"] <= 2
    assert set(analysis["targets"]) >= {"gap_closed", "above_dr_finetune", "fixed_sign_above_dr"}
    assert record["cost"]["train_s"] > 0 and record["cost"]["eval_s"] > 0
    # one suite: its evaluation takes both processes (--jobs 2, the default)
    assert list(record["cost"]["eval_jobs_by_suite"].values()) == [2]
    rows = {tuple(r[:4]) for r in suite["rows"]}
    assert ("cavia", "id", 10, 1) in rows and ("cavia", "id/motor-", 200, 1) in rows
    assert ("cavia", "id/motor-", 10, 1) not in rows  # motor split at 200 only
    # again: every run and the evaluation reused, the same numbers
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[trained]" not in again.stdout + again.stderr and "[reuse]" in again.stdout
    assert (
        json.loads((tmp_path / "out" / "protocol-cartpole.json").read_text())["suites"]
        == (record["suites"])
    )
    # the README section and the figure from that JSON
    protocol = _protocol()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{protocol.MARK_START}\nold\n{protocol.MARK_END}\nrest\n")
    protocol.render_readme(tmp_path / "out", readme=readme, images=tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "\nold\n" not in text
    assert "| cavia | 1 |" in text and "gap closed" in text
    assert "min (wall time, up to 2 runs at a time)." in text
    assert (tmp_path / "protocol-cartpole.png").stat().st_size > 10_000


def _experts(record: dict, returns: dict[int, float], compare: dict | None = None) -> dict:
    out = {
        "family": record["family"],
        "task_file": "configs/tasks/cartpole/heldout/id.yaml",
        "method": "dr",
        "steps": 40000,
        "robots": {str(i): {"expert_return": v} for i, v in returns.items()},
    }
    if compare is not None:
        out["compare"] = compare
    return out


def test_experts_beside_the_bound_on_every_robot_or_through_compare() -> None:
    protocol = _protocol()
    record = json.loads((ROOT / "benchmarks/results/protocol-cartpole.json").read_text())
    n = record["suites"]["heldout"]["n_tasks"]["id"]
    index = protocol.row_index(protocol.rows_of(record["suites"]["heldout"]))
    ks = record["suites"]["heldout"]["analysis"]["shipped_steps"]
    oracle = index[("oracle", "id", protocol.AT_SUPPORT, 0)]["return"]
    # every robot: the methods' means are the committed rows' (same robots)
    check = protocol.expert_check(record, _experts(record, {i: oracle + 1.0 for i in range(n)}))
    assert check["robots"] == check["of"] == n
    assert check["mean_expert"] == pytest.approx(oracle + 1.0)
    assert check["means"]["oracle"] == oracle
    above = {
        m for m, k in ks.items() if index[(m, "id", protocol.AT_SUPPORT, k)]["return"] > oracle + 1
    }
    assert set(check["above_experts"]) == above and "oracle" not in above
    text = protocol.render_family(record, _experts(record, {i: oracle + 1.0 for i in range(n)}))
    assert f"on {n} of the {n} `heldout` `id` robots: mean return {oracle + 1:.1f}" in text
    # a subset without per-robot means cannot be compared: nothing rendered
    assert protocol.expert_check(record, _experts(record, {0: 200.0, 3: 190.0})) is None
    assert "Per-robot experts" not in protocol.render_family(
        record, _experts(record, {0: 200.0, 3: 190.0})
    )
    # a subset with experts.py's compare block: its means
    compare = {"mean": {"oracle": 150.0, "recurrent": 199.0}}
    check = protocol.expert_check(record, _experts(record, {0: 200.0, 3: 190.0}, compare))
    assert check["mean_expert"] == 195.0 and check["above_experts"] == ["recurrent"]
    # the DR -> experts gap each method closes, from the same means
    compare["mean"]["dr"] = 95.0
    check = protocol.expert_check(record, _experts(record, {0: 200.0, 3: 190.0}, compare))
    assert check["gap_closed_to_experts"] == {"oracle": 0.55, "recurrent": 1.04}
