"""The versioned task suites (configs/tasks/<family>/{heldout,fresh}/): what ships is what the
generator draws, the fixed-sign and fresh sets are what they say, `robometa eval --tasks`
reads a suite or a directory as one group per file, and `--by-motor-sign` splits a group
into its two motor mountings without changing the group's own rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from robometa.envs import dump_tasks

from robometa import task_suites
from robometa.cli import main as cli_main
from robometa.evaluate import EVAL_SEED, run_evaluation, summarize, task_sets

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "tasks"
CARTPOLE = "robometa/CartPole-v0"
FAMILIES = [f.env_id for f in task_suites.FAMILIES]
HELDOUT = ["id", "id-fixed-sign", "ood"]
FRESH = ["fresh-id", "fresh-id-fixed-sign", "fresh-ood"]


def _groups(env_id: str, spec: str) -> dict[str, list]:
    return {s.name: s.tasks for s in task_sets(spec, env_id, 3)}


# ------------------------------------------------------------------- the shipped files


@pytest.mark.parametrize("env_id", FAMILIES)
def test_the_shipped_suites_load_for_every_family(env_id: str) -> None:
    heldout, fresh = _groups(env_id, "heldout"), _groups(env_id, "fresh")
    assert list(heldout) == HELDOUT and list(fresh) == FRESH  # the order of the stems
    for tasks in (*heldout.values(), *fresh.values()):
        assert len(tasks) == task_suites.ROBOTS == 20
    directory = SHIPPED / task_suites.family(env_id).directory
    for path in (*directory.glob("heldout/*.yaml"), *directory.glob("fresh/*.yaml")):
        text = path.read_text()
        assert f"\nenv: {env_id}\n" in text, path  # each file names its family
        assert text.startswith(f"# robometa task suite v{task_suites.SUITE_VERSION}"), path


def test_the_shipped_files_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    written = task_suites.generate(tmp_path)
    shipped = sorted(p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file())
    assert shipped == sorted(p.relative_to(tmp_path) for p in written)  # no file missing or extra
    for rel in shipped:
        assert (SHIPPED / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    assert task_suites.stale() == []
    assert task_suites.main(["--check"]) == 0


def test_a_change_to_the_seeds_or_a_space_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_suites, "SUITE_SEED", task_suites.SUITE_SEED + 1)
    assert len(task_suites.stale()) == len(task_suites.FAMILIES) * len(task_suites.SETS)
    monkeypatch.undo()
    from robometa.envs.cartpole import CartPoleEnv

    space = CartPoleEnv.dynamics_space
    wider = replace(space["pole_length"], train=(0.5, 1.5))
    changed = replace(
        space, params=tuple(wider if p.name == "pole_length" else p for p in space.params)
    )
    monkeypatch.setattr(CartPoleEnv, "dynamics_space", changed)
    stale = task_suites.stale()
    assert stale and all(p.is_relative_to(SHIPPED / "cartpole") for p in stale)
    assert task_suites.main(["--check"]) == 1  # what CI or a user runs


def test_the_suite_files_ship_in_the_wheel(tmp_path: Path) -> None:
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("robometa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in task_suites.expected_files():
        assert f"robometa/configs/tasks/{rel.as_posix()}" in names, rel
    # installed elsewhere, `--tasks heldout` finds the installed copy's files
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True)
    code = (
        "from robometa.task_suites import suite_dir, task_files;"
        "print(*task_files(suite_dir('fresh', 'robometa/DiffDrive-v0')), sep='\\n')"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [Path(f).name for f in found] == [f"{g}.yaml" for g in FRESH]
    assert all(Path(f).is_relative_to(site) for f in found), found


# ------------------------------------------------------------------ what the sets hold


@pytest.mark.parametrize("env_id", FAMILIES)
def test_fixed_sign_sets_vary_only_the_other_parameters(env_id: str) -> None:
    space = task_suites.default_space(env_id)
    groups = {**_groups(env_id, "heldout"), **_groups(env_id, "fresh")}
    for name, tasks in groups.items():
        signs = [t["motor_sign"] for t in tasks]
        if name.endswith("fixed-sign"):
            assert signs == [1] * 20, name
        else:  # both mountings, half each
            assert sorted(signs) == [-1] * 10 + [1] * 10, name
        split = "test" if name.endswith("ood") else "train"
        for p in space.params:
            values = [t[p.name] for t in tasks]
            if p.distribution == "choice":
                assert set(values) <= set(getattr(p, split)), (name, p.name)
                continue
            lo, hi = getattr(p, split)
            assert all(lo <= v <= hi for v in values), (name, p.name)
            # continuous: spread over the range (6 significant digits: two robots may share one)
            assert len(set(values)) >= 18, (name, p.name)
            scale = np.log if p.distribution == "loguniform" else np.asarray
            spread = np.ptp(scale(values)) / np.ptp(scale([lo, hi]))
            assert spread > 0.5, (name, p.name, spread)
    # the out-of-distribution robots reach beyond the train ranges
    ood = groups["ood"]
    outside = [
        p.name
        for p in space.params
        if p.distribution != "choice"
        and any(not p.train[0] <= t[p.name] <= p.train[1] for t in ood)
    ]
    assert outside


@pytest.mark.parametrize("env_id", FAMILIES)
def test_the_fresh_sets_share_no_robot_with_the_others(env_id: str) -> None:
    heldout = [t for ts in _groups(env_id, "heldout").values() for t in ts]
    fresh = [t for ts in _groups(env_id, "fresh").values() for t in ts]
    space = task_suites.default_space(env_id)
    others = {
        *heldout,
        *(t for s in task_sets("test", env_id, 20) for t in s.tasks),  # --tasks test
        *space.sample(20, seed=EVAL_SEED + 1, split="train"),  # the fine-tuning rate's tasks
        *(t for seed in range(10) for t in space.sample(64, seed=seed, split="train")),
    }
    assert not set(fresh) & others
    assert len(set(fresh)) == len(fresh) and len(set(heldout)) == len(heldout)

    def continuous(t: dict) -> tuple:  # the fixed-sign sets are no copies with the sign reset
        return tuple(t[p.name] for p in space.params if p.distribution != "choice")

    assert len({continuous(t) for t in heldout + fresh}) == len(heldout) + len(fresh)


# ----------------------------------------------------------------- --tasks: suites, dirs


def test_a_directory_suite_gives_one_group_per_file_in_stem_order(tmp_path: Path) -> None:
    suite = tmp_path / "robots"
    suite.mkdir()
    dump_tasks([{"motor_sign": -1}, {}], suite / "b.yaml", env_id=CARTPOLE)
    dump_tasks([{"cart_mass": 2.0}], suite / "a.json")  # no env: any family's file
    dump_tasks([{}, {}, {}], suite / "c.yml", env_id=CARTPOLE)
    (suite / "README.md").write_text("notes, not tasks")
    dump_tasks([{}], suite / ".draft.yaml")  # hidden: an editor's or a user's scratch
    (suite / "old").mkdir()
    dump_tasks([{}], suite / "old" / "z.yaml")  # subdirectories are not read
    sets = task_sets(str(suite), CARTPOLE, 7)
    assert [(s.name, len(s.tasks)) for s in sets] == [("a", 1), ("b", 2), ("c", 3)]
    assert [s.tasks for s in task_sets(f"{suite}/", CARTPOLE, 7)] == [s.tasks for s in sets]
    assert sets[1].tasks[0]["motor_sign"] == -1 and sets[0].tasks[0]["cart_mass"] == 2.0
    # the shipped suite by path is the named one
    named = task_sets("heldout", CARTPOLE, 3)
    by_path = task_sets(str(SHIPPED / "cartpole" / "heldout"), CARTPOLE, 3)
    assert [(s.name, s.tasks) for s in named] == [(s.name, s.tasks) for s in by_path]


def _bad_cases(tmp_path: Path) -> list[tuple[str, list[str]]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    twice = tmp_path / "twice"
    twice.mkdir()
    dump_tasks([{}], twice / "id.yaml")
    dump_tasks([{}], twice / "id.json")
    other = tmp_path / "reacher.yaml"
    dump_tasks([{}], other, env_id="robometa/Reacher-v0")
    return [
        ("heldot", ["heldot", "did you mean heldout?", "test, heldout, fresh", "task file"]),
        ("Fresh", ["Fresh", "did you mean fresh?"]),
        (str(tmp_path / "nowhere.yaml"), ["cannot read task file", "nowhere.yaml", "heldout"]),
        (str(empty), ["task directory", "empty", "no task files", ".yaml, .yml, .json"]),
        (str(SHIPPED / "cartpole"), ["no task files", "not read: fresh/, heldout/"]),
        (str(twice), ["id.json and id.yaml would both be group 'id'"]),
        (str(other), ["reacher.yaml", "'robometa/Reacher-v0'", "the runs are", CARTPOLE]),
    ]


def test_bad_task_values_are_clear_errors(tmp_path: Path) -> None:
    for spec, needles in _bad_cases(tmp_path):
        with pytest.raises(ValueError) as err:
            task_sets(spec, CARTPOLE, 3)
        assert all(n in str(err.value) for n in needles), (spec, str(err.value))
    with pytest.raises(ValueError, match=r"no shipped task suite for 'robometa/Pendulum-v9'.*"):
        task_suites.suite_dir("heldout", "robometa/Pendulum-v9")


def _random_run(root: Path, name: str, algorithm: str, **kwargs) -> Path:
    from robometa.testing import random_policy

    policy = random_policy("dqn", **kwargs)
    policy.algorithm = algorithm
    policy.save(root / name)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """An untrained DR run and an untrained oracle (no training: fast, and any return will do)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("suite_runs")
    return [_random_run(root, "dr", "dqn"), _random_run(root, "oracle", "oracle", privileged=True)]


def test_the_eval_cli_refuses_a_bad_suite_before_any_report(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    for spec, needles in _bad_cases(tmp_path):
        assert cli_main(["eval", str(runs[0]), "--tasks", spec, "--out", str(out)]) == 2, spec
        err = capsys.readouterr().err
        assert err.startswith("robometa eval: error: ") and all(n in err for n in needles), err
        assert not out.exists(), spec


def test_eval_cli_on_the_heldout_suite_split_by_motor_sign(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = [
        "eval",
        *map(str, runs),
        "--tasks",
        "heldout",
        "--episodes",
        "1",
        "--no-fine-tune",
        "--curve",
        "0",
    ]
    assert cli_main([*args, "--by-motor-sign", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "evaluating 2 run(s) on robometa/CartPole-v0: id (20 tasks), id-fixed-sign (20 tasks), "
        "ood (20 tasks), 1 episode(s) per task, adaptation steps 0, split by motor sign"
    )
    report = json.loads((out / "results.json").read_text())
    assert report["tasks"] == "heldout" and report["by_motor_sign"] is True
    assert report["n_tasks"] == {"id": 20, "id-fixed-sign": 20, "ood": 20}
    for group, entry in report["task_files"].items():  # which robots, exactly
        path = SHIPPED / "cartpole" / "heldout" / f"{group}.yaml"
        assert entry == {"path": str(path), "sha256": task_suites.sha256(path)}
    groups = list(dict.fromkeys(r["group"] for r in report["summary"] if r["method"] == "dr"))
    # the fixed-sign group has one sign: nothing to split
    assert groups == [
        "id",
        "id/motor+",
        "id/motor-",
        "id-fixed-sign",
        "ood",
        "ood/motor+",
        "ood/motor-",
    ]
    md = (out / "results.md").read_text()
    assert "| dr | id/motor- | 0 |" in md and "| oracle | ood/motor+ | 0 |" in md
    assert "--by-motor-sign" in md  # the note says what the rows are
    for r in report["summary"]:
        if "motor_sign" in r:
            assert r["group"].endswith("/motor+" if r["motor_sign"] == 1 else "/motor-")
            assert r["n"] == 10
    # the same evaluation without the flag: the groups' rows are the same, nothing else
    plain = run_evaluation(
        runs,
        tasks="heldout",
        episodes=1,
        steps=[0],
        fine_tune=False,
        out=tmp_path / "p",
        show_progress=False,
    )
    capsys.readouterr()
    unsplit = [r for r in report["summary"] if "motor_sign" not in r]
    assert json.dumps(plain["summary"]) == json.dumps(unsplit)  # (a NaN score is no NaN's equal)
    assert "by_motor_sign" not in plain and plain["returns"] == report["returns"]
    assert "motor" not in (tmp_path / "p" / "results.md").read_text()


# -------------------------------------------------------------------- the motor-sign split


def test_per_sign_rows_average_back_to_the_group() -> None:
    # group g: four tasks (signs +, -, +, -), two training seeds, k = 0, 1
    seed0 = {"g": [[10.0, 50.0], [20.0, 30.0], [30.0, 70.0], [5.0, 5.0]], "h": [[1.0, 2.0]]}
    seed1 = {"g": [[12.0, 40.0], [25.0, 35.0], [33.0, 60.0], [8.0, 9.0]], "h": [[3.0, 4.0]]}
    rand = {"g": [5.0, 5.0, 10.0, 0.0], "h": [0.0]}
    oracle = {"g": [100.0, 50.0, 90.0, 40.0], "h": [10.0]}
    signs = {"g": [1, -1, 1, -1], "h": [1]}
    plain = summarize({"m": [seed0, seed1]}, [0, 1], rand, oracle)
    rows = summarize({"m": [seed0, seed1]}, [0, 1], rand, oracle, signs=signs)
    assert [r for r in rows if "motor_sign" not in r] == plain  # the group's rows unchanged
    assert [(r["group"], r["steps"]) for r in rows] == [
        ("g", 0), ("g", 1), ("g/motor+", 0), ("g/motor+", 1), ("g/motor-", 0), ("g/motor-", 1),
        ("h", 0), ("h", 1),
    ]  # fmt: skip
    by = {(r["group"], r["steps"]): r for r in rows}
    for k in (0, 1):
        whole, plus, minus = by["g", k], by["g/motor+", k], by["g/motor-", k]
        assert (plus["motor_sign"], minus["motor_sign"], plus["n"], minus["n"]) == (1, -1, 4, 4)
        assert whole["n"] == plus["n"] + minus["n"]
        mixed = (plus["n"] * plus["return"] + minus["n"] * minus["return"]) / whole["n"]
        assert mixed == pytest.approx(whole["return"])
    # motor+ is tasks 0 and 2 only, normalized over their own random and oracle returns
    plus_returns = [10.0, 30.0, 12.0, 33.0]
    assert by["g/motor+", 0]["return"] == pytest.approx(np.mean(plus_returns))
    assert by["g/motor+", 0]["score"] == pytest.approx((np.mean(plus_returns) - 7.5) / (95 - 7.5))
    no_oracle = summarize({"m": [seed0]}, [0], rand, None, signs=signs)
    assert all(math.isnan(r["score"]) for r in no_oracle) and len(no_oracle) == 4


def test_the_split_needs_a_motor_sign_parameter() -> None:
    from robometa.envs import Task

    from robometa.evaluate import TaskSet, motor_signs

    sets = [TaskSet("ok", [Task({"motor_sign": -1})]), TaskSet("plug", [Task({"gain": 1.0})])]
    with pytest.raises(ValueError, match=r"--by-motor-sign: .*toy/Arm-v0 .*'motor_sign'.*'plug'"):
        motor_signs(sets, "toy/Arm-v0")
    assert motor_signs(sets[:1], CARTPOLE) == {"ok": [-1]}


def test_benchmark_passes_tasks_and_the_split_through(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_adaptation", ROOT / "benchmarks" / "adaptation.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = {"cartpole": [tmp_path / "dr-seed0"]}
    ((*_, default),) = bench._eval_jobs(runs, tmp_path, 3, 1)
    assert default["tasks"] == "test" and "by_motor_sign" not in default
    ((*_, kwargs),) = bench._eval_jobs(runs, tmp_path, 3, 1, None, "heldout", True)
    assert kwargs["tasks"] == "heldout" and kwargs["by_motor_sign"] is True
    assert "supports" not in kwargs
