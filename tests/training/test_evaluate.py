"""The evaluation harness: normalized scores and CIs on known inputs, the table, any Method
plugging into evaluate_method, task files, and `robometa eval` on tiny trained runs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from robometa.adaptation import Batch
from robometa.cli import main as cli_main
from robometa.config import config_from_dict
from robometa.evaluate import (
    FINE_TUNE_GRID,
    Method,
    TaskSet,
    bootstrap_ci,
    evaluate_method,
    markdown_table,
    normalized,
    run_evaluation,
    summarize,
    task_sets,
)
from robometa.rollout import ActFn, make_env
from robometa.train import train

CARTPOLE = "robometa/CartPole-v0"


# ------------------------------------------------------------------------ statistics


def test_normalized_score_by_hand() -> None:
    assert normalized(60.0, 10.0, 110.0) == pytest.approx(0.5)
    assert normalized(110.0, 10.0, 110.0) == pytest.approx(1.0)
    assert normalized(10.0, 10.0, 110.0) == pytest.approx(0.0)
    assert normalized(0.0, 10.0, 110.0) == pytest.approx(-0.1)  # worse than random
    assert normalized(160.0, 10.0, 110.0) == pytest.approx(1.5)  # better than the oracle
    assert math.isnan(normalized(50.0, 10.0, 10.0))  # oracle no better than random
    assert math.isnan(normalized(50.0, 20.0, 10.0))


def test_bootstrap_ci_is_deterministic_and_contains_the_mean() -> None:
    values = [0.1, 0.4, 0.35, 0.9, 0.2, 0.6, 0.55]
    a, b = bootstrap_ci(values), bootstrap_ci(values)
    assert a == b
    mean, lo, hi = a
    assert mean == pytest.approx(np.mean(values))
    assert lo < mean < hi
    assert min(values) <= lo and hi <= max(values)
    assert bootstrap_ci(values, seed=1) != a  # the seed is what fixes it
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_summarize_known_inputs() -> None:
    # One method, two training seeds, group "g" with two tasks, curve k = 0, 1.
    # R_random = [10, 20], R_oracle = [110, 60].
    seed0 = {"g": [[60.0, 110.0], [20.0, 60.0]]}  # scores k0: 0.5, 0.0   k1: 1.0, 1.0
    seed1 = {"g": [[35.0, 85.0], [40.0, 40.0]]}  # scores k0: 0.25, 0.5  k1: 0.75, 0.5
    rand = {"g": [10.0, 20.0]}
    oracle = {"g": [110.0, 60.0]}
    rows = summarize({"m": [seed0, seed1]}, [0, 1], rand, oracle)
    assert [(r["method"], r["group"], r["steps"], r["n"]) for r in rows] == [
        ("m", "g", 0, 4),
        ("m", "g", 1, 4),
    ]
    r0, r1 = rows
    # Pooled over the four (task, seed) pairs: mean R_random 15, mean R_oracle 85.
    assert r0["score"] == pytest.approx(((60 + 20 + 35 + 40) / 4 - 15) / (85 - 15))
    assert r1["score"] == pytest.approx(((110 + 60 + 85 + 40) / 4 - 15) / (85 - 15))
    assert r0["return"] == pytest.approx((60 + 20 + 35 + 40) / 4)
    for r in rows:
        assert r["score_lo"] <= r["score"] <= r["score_hi"]
        assert r["return_lo"] <= r["return"] <= r["return_hi"]
    # Without an oracle there is no normalized score, only returns.
    no_oracle = summarize({"m": [seed0]}, [0, 1], rand, None)
    assert all(math.isnan(r["score"]) for r in no_oracle)
    assert no_oracle[1]["return"] == pytest.approx(85.0)


def test_summarize_pools_tasks_before_normalizing() -> None:
    # Task 1's oracle is no better than random: a per-task ratio would be undefined there;
    # pooled, mean R 45, mean R_random 30, mean R_oracle 80 -> 0.3.
    rows = summarize({"m": [{"g": [[60.0], [30.0]]}]}, [0], {"g": [10.0, 50.0]}, {"g": [110, 50]})
    assert rows[0]["score"] == pytest.approx(0.3)
    assert rows[0]["n"] == 2 and rows[0]["return"] == pytest.approx(45.0)


def test_markdown_table_has_a_row_per_method_and_group() -> None:
    res = {"id": [[20.0, 60.0]], "ood": [[15.0, 30.0]]}
    rand, oracle = {"id": [10.0], "ood": [10.0]}, {"id": [110.0], "ood": [110.0]}
    rows = summarize(
        {"cavia": [res], "dr": [{"id": [[40.0]], "ood": [[20.0]]}]}, [0, 5], rand, oracle
    )
    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| method | tasks | steps | normalized score")
    body = [line for line in lines[2:]]
    assert len(body) == 4  # final step of (cavia, id), (cavia, ood), (dr, id), (dr, ood)
    assert "| cavia | id | 5 | 0.50 [0.50, 0.50] |" in table
    assert "| cavia | ood | 5 | 0.20 [0.20, 0.20] |" in table
    assert "| dr | id | 0 | 0.30 [0.30, 0.30] |" in table
    assert "| dr | ood | 0 | 0.10 [0.10, 0.10] |" in table
    assert len(markdown_table(rows, final_only=False).splitlines()) == 2 + 6
    no_score = markdown_table(summarize({"dr": [{"id": [[40.0]]}]}, [0], {"id": [10.0]}, None))
    assert no_score.splitlines()[0] == "| method | tasks | steps | return [95% CI] | n |"
    assert "| dr | id | 0 | 40.0 [40.0, 40.0] | 1 |" in no_score
    assert "n/a" not in no_score


# ------------------------------------------------------------------ any Method plugs in


class MotorSignProbe:
    """A scripted method, no torch training: a hand-written balancing controller that assumes
    the motor is mounted normally, and after "adaptation" reads the motor sign off the support
    transitions (does pushing right raise or lower the cart velocity?)."""

    name = "probe"
    env_id = CARTPOLE
    privileged = False
    support_size = 60
    support_epsilon = 1.0  # random pushes: the clearest evidence of the motor sign

    def __init__(self) -> None:
        self.supports: list[Batch] = []

    @staticmethod
    def controller(sign: int) -> ActFn:
        def act(obs: np.ndarray) -> int:
            lean_right = obs[2] + 0.5 * obs[3] + 0.05 * obs[1] > 0
            return 2 if lean_right == (sign > 0) else 0

        return act

    def initial_actor(self) -> ActFn:
        return self.controller(+1)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        self.supports.append(support)
        push = support.action.float() - 1.0  # -1 left, 0 none, +1 right
        dv = support.next_obs[:, 1] - support.obs[:, 1]
        sign = 1 if float((push * dv).sum()) >= 0 else -1
        return [self.controller(+1 if k == 0 else sign) for k in steps]


def test_a_scripted_method_plugs_into_evaluate_method() -> None:
    method = MotorSignProbe()
    _: Method = method  # a Protocol: structural, nothing to inherit
    env = make_env(CARTPOLE)
    space = env.unwrapped.dynamics_space
    env.close()
    tasks = [space.nominal(), space.make_task({"motor_sign": -1})]
    res = evaluate_method(method, [TaskSet("pair", tasks)], [0, 1], episodes=2)
    ((normal, reversed_),) = [res["pair"]]
    assert normal[0] == normal[1] == 200.0  # balances the nominal robot before and after
    assert reversed_[0] < 30.0  # the reversed motor knocks the pole over ...
    assert reversed_[1] == 200.0  # ... until the support data reveals the sign
    # The support the harness handed over: support_size transitions of the task, as tensors.
    assert len(method.supports) == 2
    for batch in method.supports:
        assert batch.obs.shape == (60, 4) and batch.action.dtype == torch.int64
    # Deterministic: the same method evaluated again gives the same numbers.
    assert evaluate_method(MotorSignProbe(), [TaskSet("pair", tasks)], [0, 1], 2) == res


# -------------------------------------------------------------------------- task files


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("tasks: [{motor_sign: 1}, {motor_sign: 3}]", "motor_sign"),  # outside [-1, 1]
        ("tasks: [{cart_mass: -1.0}]", "cart_mass"),  # out of range
        ("tasks: [{wheel_radius: 0.1}]", "wheel_radius"),  # no such parameter
        ("robots: [{motor_sign: -1}]", "tasks"),  # wrong top-level key
        ("tasks: []", "tasks"),  # empty
        ("tasks: [motor_sign]", ""),  # a task that is not a mapping
        ("tasks: [{motor_sign: -1}", ""),  # not valid YAML
        ("", ""),  # empty file
    ],
)
def test_malformed_task_file_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "my_robots.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="my_robots.yaml") as err:
        task_sets(str(path), CARTPOLE, 3)
    assert needle in str(err.value)


def test_missing_task_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.yaml"):
        task_sets(str(tmp_path / "nowhere.yaml"), CARTPOLE, 3)


def test_task_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("tasks:\n  - {motor_sign: -1, cart_mass: 1.5}\n  - {}\n")
    (only,) = task_sets(str(path), CARTPOLE, 3)
    assert only.name == "two"
    assert [t["motor_sign"] for t in only.tasks] == [-1, 1]
    assert only.tasks[0]["cart_mass"] == 1.5
    # 'test' gives the held-out in- and out-of-distribution groups, the same every time.
    sets = task_sets("test", CARTPOLE, 3)
    assert [s.name for s in sets] == ["id", "ood"]
    assert [dict(t) for t in sets[0].tasks] == [
        dict(t) for t in task_sets("test", CARTPOLE, 3)[0].tasks
    ]


# -------------------------------------------------------------------- robometa eval CLI


def tiny_dqn(algorithm: str) -> dict:
    return {
        "algorithm": algorithm,
        "seed": 5,
        "env": {"id": CARTPOLE, "tasks": "train", "num_envs": 1},
        "network": {"hidden": [16, 16]},
        "dqn": {"total_steps": 300, "learning_starts": 100, "batch_size": 16, "buffer_size": 300},
        "adaptation": {"steps": 2, "support_size": 50},
        "logging": {
            "log_every": 100,
            "checkpoint_every": 1000,
            "progress": False,
            "tensorboard": False,
        },
    }


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval_runs")
    train(config_from_dict(tiny_dqn("dqn")), root / "dqn")
    train(config_from_dict(tiny_dqn("oracle")), root / "oracle")
    return root / "dqn", root / "oracle"


def test_eval_cli_writes_the_reports(
    tiny_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dqn, oracle = tiny_runs
    out = tmp_path / "eval"
    code = cli_main(
        ["eval", str(dqn), str(oracle), "--n-tasks", "2", "--episodes", "1", "--out", f"{out}/"]
    )
    assert code == 0
    printed, err = capsys.readouterr()
    # Something at once (the fine-tuning rate search takes a while), then a bar for it.
    assert printed.splitlines()[0] == (
        "evaluating 2 run(s) on robometa/CartPole-v0: id (2 tasks), ood (2 tasks), "
        "1 episode(s) per task, adaptation steps 0,1,2"
    )
    assert "tune dr fine-tuning rates" in err and "120/120" in err  # 6 rates x 20 robots
    assert printed.splitlines()[-1] == (
        f"wrote {out}/results.md, {out}/results.json, {out}/adaptation.png"
    )
    for name in ("results.md", "results.json", "adaptation.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "results.json").read_text())
    assert report["env_id"] == CARTPOLE
    assert report["n_tasks"] == {"id": 2, "ood": 2}
    assert report["steps"] == [0, 1, 2]
    assert set(report["returns"]) == {"dr", "dr+finetune", "oracle"}
    tuned = report["fine_tune"][str(dqn)]  # tuned on training robots, a rate per step count
    assert set(tuned["picked"]) == {"1", "2"} and tuned["n_tasks"] == 20
    assert all(lr in FINE_TUNE_GRID for lr in tuned["picked"].values())
    grid = tuned["grid"]
    assert set(grid) == {str(lr) for lr in FINE_TUNE_GRID}
    # the grid moves the weights: more at a higher rate, more with more steps
    moved = [grid[str(lr)]["2"]["displacement"] for lr in FINE_TUNE_GRID]
    assert moved == sorted(moved) and moved[-1] > 100 * moved[0] > 0
    assert all(
        grid[str(lr)]["2"]["displacement"] > grid[str(lr)]["1"]["displacement"]
        for lr in FINE_TUNE_GRID
    )
    rows = report["summary"]
    seen = {(r["method"], r["group"], r["steps"]) for r in rows}
    assert {("dr", g, 0) for g in ("id", "ood")} <= seen
    assert {("dr+finetune", g, k) for g in ("id", "ood") for k in (0, 1, 2)} <= seen
    for r in rows:
        assert math.isfinite(r["score"]), r  # normalized against the oracle run
        assert r["score_lo"] <= r["score"] <= r["score_hi"]
        if r["method"] == "oracle":
            assert r["score"] == pytest.approx(1.0)
    # The normalized score in the JSON is the one the formula gives on the JSON's own returns
    # (returns pooled over the tasks before dividing).
    dr = [task[0] for task in report["returns"]["dr"][0]["id"]]
    expected = normalized(
        np.mean(dr),
        np.mean(report["random_returns"]["id"]),
        np.mean(report["oracle_returns"]["id"]),
    )
    (dr_id,) = [r for r in rows if r["method"] == "dr" and r["group"] == "id"]
    assert dr_id["score"] == pytest.approx(expected)
    md = (out / "results.md").read_text()
    for method in ("dr", "dr+finetune", "oracle"):
        for group in ("id", "ood"):
            assert f"| {method} | {group} |" in md


def test_eval_cli_errors_are_clear_and_create_no_report_dir(
    tiny_runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    dqn, _ = tiny_runs
    out = tmp_path / "o"
    bad = tmp_path / "robots.yaml"
    bad.write_text("tasks: [{motor_sign: 3}]")
    log = tmp_path / "train.log"  # e.g. a shell glob that also matched a log file
    log.write_text("step 1000 return 12.0\n")
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    cases = [
        ([str(dqn), "--tasks", str(bad)], ["robots.yaml", "motor_sign"]),
        ([str(dqn), "--tasks", str(tmp_path / "nowhere.yaml")], ["cannot read task file"]),
        ([str(tmp_path / "no_run")], ["no trained policy", "no_run"]),
        ([str(not_a_run)], ["no trained policy", "notes"]),
        ([str(dqn), str(log)], ["train.log", "not a robometa policy file"]),
    ]
    for args, needles in cases:
        assert cli_main(["eval", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("robometa eval: error: "), err
        assert all(n in err for n in needles), err
        assert not out.exists(), args


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--curve", "-1", "argument --curve: '-1': expected adaptation step counts >= 0"),
        ("--curve", "1,x", "argument --curve: '1,x': expected adaptation step counts >= 0"),
        ("--episodes", "0", "argument --episodes: '0' is not an integer >= 1"),
        ("--n-tasks", "0", "argument --n-tasks: '0' is not an integer >= 1"),
        ("--jobs", "0", "argument --jobs: '0' is not an integer >= 1"),
    ],
)
def test_eval_flag_values_are_checked(
    tiny_runs: tuple[Path, Path], tmp_path: Path, capsys, flag: str, value: str, message: str
) -> None:
    dqn, _ = tiny_runs
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", str(dqn), flag, value, "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_runs_evaluated_in_worker_processes_give_the_same_report(
    tiny_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``jobs=2``: DR, its fine-tuned rows (a rate per step count, tuned here first) and the
    oracle, each run in a worker process, return what one process returns, to the bit."""
    dqn, oracle = tiny_runs
    kw = {"n_tasks": 2, "episodes": 1, "steps": [0, 2]}
    one = run_evaluation([dqn, oracle], out=tmp_path / "one", show_progress=False, **kw)
    two = run_evaluation([dqn, oracle], out=tmp_path / "two", jobs=2, **kw)
    assert set(two["returns"]) == {"dr", "dr+finetune", "oracle"}
    for key in ("returns", "summary", "fine_tune", "random_returns", "oracle_returns"):
        assert two[key] == one[key], key
    assert "eval: 100%" in capsys.readouterr().err  # the bar counts every run's tasks
    with pytest.raises(ValueError, match=r"jobs must be an integer >= 1 .* got 0"):
        run_evaluation([dqn], out=tmp_path / "zero", jobs=0, **kw)
    assert not (tmp_path / "zero").exists()


def test_non_adapting_rows_are_labelled_zero_steps(
    tiny_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A curve without 0 must not relabel the unadapted baseline's return as k > 0."""
    dqn, _ = tiny_runs
    report = run_evaluation(
        [dqn],
        n_tasks=1,
        episodes=1,
        steps=[2],
        out=tmp_path,
        fine_tune=False,
        show_progress=False,
    )
    for r in report["summary"]:
        if r["method"] == "dr":
            assert r["steps"] == 0, r


# ------------------------------------------------------- the algorithm registry decides


@pytest.fixture
def toy_algorithms() -> Iterator[None]:
    """A DR-like algorithm (fine-tuned, reported under another name on train tasks) and a
    privileged one, registered only for the test."""
    from robometa import algorithms

    dqn = "robometa.methods.dqn:DQN"
    algorithms.register(
        "toyrand", dqn, family="dqn", fine_tunes=True, randomized_label="toydr", summary="toy"
    )
    algorithms.register("toyoracle", dqn, family="dqn", privileged=True, summary="toy")
    try:
        yield
    finally:
        algorithms.unregister("toyrand")
        algorithms.unregister("toyoracle")


def _saved_random_run(
    root: Path, name: str, shape: str, algorithm: str, tasks: str | None = None, **kwargs
) -> Path:
    """A `robometa.testing.random_policy` saved as a run directory of ``algorithm``."""
    from robometa.testing import random_policy

    policy = random_policy(shape, **kwargs)
    policy.algorithm = algorithm
    if tasks is not None:
        policy.config["env"] = {"tasks": tasks}
    policy.save(root / name)
    return root / name


def test_the_registry_decides_labels_fine_tuning_and_the_oracle(
    toy_algorithms: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robometa.evaluate as evaluate

    monkeypatch.setattr(evaluate, "TUNE_TASKS", 2)  # the rate search, shortened
    runs = [
        _saved_random_run(tmp_path, "rand-train", "dqn", "toyrand"),  # no env.tasks: train
        _saved_random_run(tmp_path, "rand-test", "dqn", "toyrand", tasks="test", seed=1),
        _saved_random_run(tmp_path, "oracle", "dqn", "toyoracle", privileged=True, seed=2),
        _saved_random_run(tmp_path, "cavia", "cavia", "cavia", seed=3),
    ]
    report = run_evaluation(
        runs, n_tasks=1, episodes=1, steps=[0, 1], out=tmp_path / "eval", show_progress=False
    )
    # randomized_label on train tasks, the name otherwise; fine_tunes adds "+finetune".
    assert list(report["returns"]) == [
        "toydr",
        "toydr+finetune",
        "toyrand",
        "toyrand+finetune",
        "toyoracle",
        "cavia",
    ]
    assert set(report["fine_tune"]) == {str(runs[0]), str(runs[1])}  # not the oracle's
    steps = {}
    for r in report["summary"]:
        steps.setdefault(r["method"], set()).add(r["steps"])
    # What does not adapt is evaluated at k = 0 only; fine-tuning and adapting go along the curve.
    assert steps == {
        "toydr": {0},
        "toyrand": {0},
        "toyoracle": {0},
        "toydr+finetune": {0, 1},
        "toyrand+finetune": {0, 1},
        "cavia": {0, 1},
    }
    # The privileged algorithm is the reference of the normalized score.
    (oracle_run,) = report["returns"]["toyoracle"]
    assert report["oracle_returns"] == {
        g: [task[0] for task in oracle_run[g]] for g in report["random_returns"]
    }


def test_the_default_dqn_label_is_dr_on_train_tasks_only(tmp_path: Path) -> None:
    runs = [
        _saved_random_run(tmp_path, "dr", "dqn", "dqn"),
        _saved_random_run(tmp_path, "nominal", "dqn", "dqn", tasks="nominal", seed=1),
    ]
    report = run_evaluation(
        runs, n_tasks=1, episodes=1, out=tmp_path / "eval", fine_tune=False, show_progress=False
    )
    assert list(report["returns"]) == ["dr", "dqn"]
    assert report["oracle_returns"] is None and report["fine_tune"] == {}


def test_a_run_of_an_unregistered_algorithm_is_an_error_before_any_report(
    tmp_path: Path,
) -> None:
    run = _saved_random_run(tmp_path, "ghost", "dqn", "ghost")
    with pytest.raises(ValueError, match=r"ghost.*'ghost'.*registered"):
        run_evaluation([run], out=tmp_path / "eval", show_progress=False)
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------ one bootstrap everywhere


def test_one_bootstrap_serves_evaluation_and_the_benchmarks() -> None:
    import importlib.util

    import robometa.evaluate
    import robometa.stats

    assert robometa.evaluate.bootstrap_ci is robometa.stats.bootstrap_ci
    assert robometa.evaluate.normalized_ci is robometa.stats.normalized_ci
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    for script in ("dr_vs_oracle", "deploy_rounds"):
        spec = importlib.util.spec_from_file_location(
            f"bench_{script}", benchmarks / f"{script}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if script == "dr_vs_oracle":
            assert module.bootstrap_ci is robometa.stats.bootstrap_ci
        else:
            values = [1.0, 4.0, 2.0, 8.0]
            mean, lo, hi = robometa.stats.bootstrap_ci(values)
            assert module._mean_ci(values) == (mean, (lo, hi))


def test_bootstrap_ci_levels_and_known_numbers() -> None:
    from robometa.stats import bootstrap_ci as shared
    from robometa.stats import tail_percentiles

    assert tail_percentiles(0.95) == (2.5, 97.5)  # exactly, though 1 - 0.95 != 0.05
    assert tail_percentiles(0.9) == (5.0, 95.0)
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="confidence level"):
            tail_percentiles(bad)
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    # The 95% interval: percentiles 2.5 and 97.5 of n_boot seeded resample means.
    v = np.asarray(values)
    means = v[np.random.default_rng(7).integers(0, v.size, size=(500, v.size))].mean(axis=1)
    expected = (v.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5))
    assert shared(values, n_boot=500, seed=7) == expected
    mean, lo90, hi90 = shared(values, level=0.9)
    _, lo95, hi95 = shared(values)
    assert lo95 <= lo90 < mean < hi90 <= hi95  # a lower level, a narrower interval
    # The benchmark's settings (10,000 resamples, seed 0) are arguments, not a second copy.
    assert shared(values, n_boot=10_000) != shared(values)


def test_statistics_import_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, robometa.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_explicit_curve_goes_past_the_configured_steps_with_seed_level_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import robometa.evaluate as evaluate

    monkeypatch.setattr(evaluate, "TUNE_TASKS", 3)  # the rate search, shortened
    runs = [_saved_random_run(tmp_path, f"dr{s}", "dqn", "dqn", seed=s) for s in (0, 1)] + [
        _saved_random_run(tmp_path, "oracle", "dqn", "oracle", privileged=True, seed=5)
    ]
    report = run_evaluation(
        runs, n_tasks=2, episodes=1, steps=[0, 1, 7], out=tmp_path / "eval", show_progress=False
    )
    assert report["steps"] == [0, 1, 7]  # 7 > every run's adaptation.steps: still evaluated
    picked = report["fine_tune"][str(runs[0])]["picked"]
    assert set(picked) == {"1", "7"}  # a rate tuned for each step count
    rows = {(r["method"], r["group"], r["steps"]): r for r in report["summary"]}
    ft = rows[("dr+finetune", "id", 7)]
    assert ft["n_seeds"] == 2 and ft["n"] == 4 and len(ft["per_seed_return"]) == 2
    assert ft["return"] == pytest.approx(np.mean(ft["per_seed_return"]))
    assert 0.0 <= ft["harmed_fraction"] <= 1.0 and ft["change_worst"] <= ft["change_mean"]
    assert "harmed_fraction" not in rows[("dr+finetune", "id", 0)]
    # The grid's top rates blow up an untrained network in 7 TD steps: flagged, and the
    # saved record holds no NaN/Infinity (which strict JSON parsers refuse)
    tuned = json.loads((tmp_path / "eval" / "results.json").read_text())["fine_tune"]
    diverged = {lr for run in runs[:2] for lr in tuned[str(run)]["diverged"]}
    assert diverged and diverged < set(FINE_TUNE_GRID), tuned
    assert min(FINE_TUNE_GRID) not in diverged  # the lowest rate stays finite
    for run in runs[:2]:  # a rate that diverged is not picked (others did not)
        assert not set(tuned[str(run)]["picked"].values()) & set(tuned[str(run)]["diverged"])
    err = capsys.readouterr().err
    assert "diverged on training robots" in err and "not picked" in err
    json.dumps(tuned, allow_nan=False)  # raises on a non-finite number
    for run in runs[:2]:
        lowest = tuned[str(run)]["grid"][str(min(FINE_TUNE_GRID))]
        assert all(e["displacement"] > 0 for e in lowest.values())
    with pytest.raises(ValueError, match=r"integers in \[0, 1000\]"):
        run_evaluation(runs, steps=[0, 1001], out=tmp_path / "bad", show_progress=False)
    assert not (tmp_path / "bad").exists()


def test_numeric_overflows_flags_numpy_float_errors_and_leaves_other_warnings_alone(
    recwarn: pytest.WarningsRecorder,
) -> None:
    """A diverged network's forward pass (numpy overflow, inf - inf) sets the flag instead of
    warning; a warning of any other kind reaches the caller's filters once, as it was."""
    import warnings

    from robometa.evaluate import _numeric_overflows

    def broken() -> float:
        warnings.warn("a gym deprecation", UserWarning, stacklevel=1)
        x = np.full(4, 1e30, np.float32) @ np.full(4, 1e30, np.float32)  # overflows
        return float(np.float32(x) - np.float32(x))  # inf - inf: invalid

    out, flagged = _numeric_overflows(broken)
    assert flagged and math.isnan(out)
    assert [str(w.message) for w in recwarn] == ["a gym deprecation"]
    out, flagged = _numeric_overflows(lambda: float(np.ones(3) @ np.ones(3)))
    assert out == 3.0 and not flagged


def test_a_diverged_rate_is_not_picked_even_with_the_best_score() -> None:
    """A broken network can score well (one constant action may balance a while): the rate
    search passes it over, unless no rate is left; ties go to the first rate of the grid."""
    from robometa.evaluate import _pick_rates

    scores = {5: [(-3.0, 1e-3), (1.0, 1e-2), (9.0, 0.3)], 20: [(2.0, 1e-3), (2.0, 1e-2)]}
    assert _pick_rates(scores, diverged=[0.3]) == {5: 1e-2, 20: 1e-3}
    assert _pick_rates(scores, diverged=[]) == {5: 0.3, 20: 1e-3}
    assert _pick_rates({5: [(1.0, 0.1), (4.0, 0.3)]}, diverged=[0.1, 0.3]) == {5: 0.3}
