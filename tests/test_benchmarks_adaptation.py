"""benchmarks/adaptation.py: the claim check on known numbers, and a tiny end-to-end sweep."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("adaptation_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _row(method: str, group: str, steps: int, score: float) -> dict:
    return {
        "method": method,
        "group": group,
        "steps": steps,
        "score": score,
        "score_lo": score - 0.1,
        "score_hi": score + 0.1,
        "return": 100 * score,
    }


def test_claim_check_uses_the_best_meta_learner_at_the_step_limit() -> None:
    bench = _bench()
    rows = [
        _row("cavia", "id", 0, 0.2),
        _row("cavia", "id", 5, 0.95),
        _row("cavia", "id", 10, 0.1),  # beyond the 5-step limit: ignored
        _row("maml", "id", 5, 0.3),
        _row("dr", "id", 0, 0.5),
        _row("dr+finetune", "id", 5, 0.7),
        _row("oracle", "id", 0, 1.0),  # not a meta-learner
    ]
    (claim,) = bench.check_claim(rows, max_steps=5).values()
    assert claim["best_meta_learner"] == "cavia"
    assert claim["best_meta_score"] == pytest.approx(0.95)
    assert claim["pass"] == {
        "best_meta_score": True,
        "dr_score": True,
        "dr_finetune_below_meta": True,
    }
    assert claim["methods_above_oracle"] == []
    rows[1] = _row("cavia", "id", 5, 1.2)  # more than the oracle: it is no upper bound
    (claim,) = bench.check_claim(rows, max_steps=5).values()
    assert claim["methods_above_oracle"] == ["cavia"] and claim["oracle_return"] == 100
    rows[1] = _row("cavia", "id", 5, 0.65)  # now below 0.9 and below DR + fine-tune
    (claim,) = bench.check_claim(rows, max_steps=5).values()
    assert claim["pass"]["best_meta_score"] is False
    assert claim["pass"]["dr_finetune_below_meta"] is False


def _sized(support: int, *rows: dict) -> list[dict]:
    return [r | {"support": support} for r in rows]


def test_with_several_support_sizes_the_claim_uses_the_largest_up_to_200() -> None:
    bench = _bench()
    rows = [
        *_sized(50, _row("cavia", "id", 5, 0.5), _row("dr", "id", 0, 0.5)),
        *_sized(200, _row("cavia", "id", 5, 0.95), _row("dr", "id", 0, 0.5)),
        *_sized(500, _row("cavia", "id", 5, 0.2), _row("dr", "id", 0, 0.5)),
    ]
    (claim,) = bench.check_claim(rows, max_steps=5).values()
    assert claim["best_meta_score"] == pytest.approx(0.95)


def test_the_inference_claim_compares_with_every_gradient_learner_at_50() -> None:
    bench = _bench()
    rows = [
        *_sized(50, _row("context", "id", 1, 0.8), _row("cavia", "id", 5, 0.7)),
        *_sized(50, _row("maml", "id", 5, 0.75), _row("dr", "id", 0, 0.9)),
        *_sized(200, _row("context", "id", 1, 0.92), _row("cavia", "id", 5, 0.99)),
    ]
    (claim,) = bench.check_inference(rows, max_steps=5).values()
    assert claim["best_inference_200"] == "context"
    assert claim["best_inference_200_score"] == pytest.approx(0.92)
    assert claim["best_gradient_50"] == "maml"  # dr does not adapt: not a gradient learner
    assert claim["pass"] == {
        "best_inference_200_score": True,
        "best_inference_50_above_gradient": True,
    }
    rows[2] = _row("maml", "id", 5, 0.85) | {"support": 50}
    (claim,) = bench.check_inference(rows, max_steps=5).values()
    assert claim["pass"]["best_inference_50_above_gradient"] is False
    # without sizes 50 and 200 there is nothing to check
    assert bench.check_inference([_row("context", "id", 1, 0.9)], max_steps=5) == {}


@pytest.mark.slow
def test_tiny_sweep_trains_in_parallel_evaluates_and_reuses(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bench = _bench()
    out = tmp_path / "adaptation.json"
    runs = tmp_path / "runs"
    args = [
        "--out", str(out), "--families", "cartpole", "--methods", "dr,oracle,cavia",
        "--seeds", "0,1",
        "--steps", "400", "--oracle-steps", "400", "--n-tasks", "2", "--episodes", "1",
        "--runs-dir", str(runs), "--jobs", "2",
    ]  # fmt: skip
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    fam = report["families"]["cartpole"]
    assert len(fam["runs"]) == 6
    for method in ("dr", "oracle", "cavia"):
        for seed in (0, 1):
            run = runs / "cartpole" / f"{method}-seed{seed}"
            assert (run / "policy.pt").exists()
            assert "CartPole" in Path(f"{run}.log").read_text()  # the run's progress bar
    rows = fam["summary"]
    methods = {r["method"] for r in rows}
    assert methods == {"dr", "dr+finetune", "oracle", "cavia"}
    assert all(r["n"] == 4 for r in rows)  # 2 tasks x 2 training seeds, pooled
    assert set(fam["claim"]) == {"id", "ood"}
    assert (Path(fam["report_dir"]) / "results.md").exists()
    assert "| cavia | id |" in (runs / "cartpole" / "eval.log").read_text()
    captured = capsys.readouterr()
    assert captured.out.count("[trained]") + captured.err.count("[trained]") == 6
    assert "| cavia | ood |" in captured.out  # the table, printed by this process

    assert bench.main(args) == 0  # a second call reuses every finished run
    captured = capsys.readouterr()
    assert captured.out.count("[reuse]") == 6
    assert "[trained]" not in captured.out + captured.err

    # Another budget: the finished run is not that config's, so it is trained anew.
    other = ["--methods", "cavia", "--seeds", "0", "--steps", "600", "--jobs", "1"]
    assert bench.main([*args, *other]) == 0
    captured = capsys.readouterr()
    assert "[stale]" in captured.out and "cavia-seed0" in captured.out
    assert captured.out.count("[trained]") + captured.err.count("[trained]") == 1
    run = runs / "cartpole" / "cavia-seed0"
    assert "total_steps: 600" in (run / "config.yaml").read_text()


def test_support_sizes_reach_each_familys_evaluation(tmp_path: Path, capsys) -> None:
    bench = _bench()
    runs = {"cartpole": [tmp_path / "cavia-seed0"], "diffdrive": []}
    jobs = list(bench._eval_jobs(runs, tmp_path, 3, 1, [10, 50]))
    assert [family for family, *_ in jobs] == ["cartpole"]  # a family without runs: no job
    kwargs = jobs[0][-1]
    assert kwargs["supports"] == [10, 50] and kwargs["n_tasks"] == 3
    (default,) = bench._eval_jobs(runs, tmp_path, 3, 1)
    assert "supports" not in default[-1]


def test_a_bad_support_list_is_refused_with_the_range(capsys) -> None:
    with pytest.raises(SystemExit):
        _bench().main(["--out", "x.json", "--support", "10,0"])
    assert "'10,0': expected support sizes >= 1" in capsys.readouterr().err


def test_a_runs_cost_scales_with_its_budget_and_family() -> None:
    bench = _bench()
    cartpole = bench.run_cost("cartpole", "dr", 40_000)
    assert cartpole == pytest.approx(bench.COST["dr"])  # COST is at the shipped budget
    # ArmReach's DR (not measured there) at 200k steps: five times CartPole's env steps at
    # ArmReach's per-step factor
    assert ("armreach", "dr") not in bench.MEASURED_S_PER_KSTEP
    armreach = bench.run_cost("armreach", "dr", 200_000)
    assert armreach == pytest.approx(5 * bench.COST["dr"] * bench.FAMILY_COST["armreach"])
    # a measured (family, method) pair wins over the scaled CartPole cost
    measured = bench.MEASURED_S_PER_KSTEP[("armreach", "cavia")]
    assert bench.run_cost("armreach", "cavia", 10_000) == pytest.approx(10 * measured)
