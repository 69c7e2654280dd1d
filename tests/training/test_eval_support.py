"""`robometa eval --support`: every method evaluated at several support sizes, the smaller
ones the first transitions of one collection; the default output is unchanged."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from robometa.adaptation import Batch
from robometa.cli import main as cli_main
from robometa.config import load_config
from robometa.evaluate import (
    MethodRuns,
    PolicyMethod,
    TaskSet,
    _evaluate_runs,
    collect_prefixes,
    run_evaluation,
    with_support,
)
from robometa.methods.context import ContextMethod, untrained_policy
from robometa.policy import Policy
from robometa.rollout import ActFn, collect, make_env
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
CARTPOLE = "robometa/CartPole-v0"
QUIET = ["logging.progress=false", "logging.eval_every=0"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny cavia run (support_size 30) and a tiny context run (support_size 200)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("support_runs")
    cavia = load_config(
        ROOT / "configs" / "cartpole_cavia.yaml",
        [*QUIET, "adaptation.support_size=30", "adaptation.steps=2", "meta.updates_per_collect=1"],
        steps=600,
    )
    context = load_config(
        ROOT / "configs" / "cartpole_context.yaml",
        [*QUIET, "meta.updates_per_collect=2"],
        steps=800,
    )
    train(cavia, root / "cavia")
    train(context, root / "context")
    return {"cavia": root / "cavia", "context": root / "context"}


def test_the_smaller_supports_are_the_first_transitions_of_one_collection() -> None:
    policy = untrained_policy(seed=1)
    method = ContextMethod("context", policy)
    env = make_env(policy.env_id)
    task = env.unwrapped.sample_tasks(1, seed=0, split="test")[0]
    act = method.initial_actor()
    got = collect_prefixes(env, act, task, [20, 5, 60], 0.3, np.random.default_rng(7))
    assert sorted(got) == [5, 20, 60]
    for k, batch in got.items():  # what a robot holds after k steps, collected on its own
        alone = collect(env, act, task, k, 0.3, np.random.default_rng(7)).all()
        assert len(batch.obs) == k
        assert all(torch.equal(a, b) for a, b in zip(batch, alone, strict=True)), k
    env.close()


def test_with_support_sets_the_size_or_refuses_naming_the_method() -> None:
    policy = untrained_policy(seed=1, support_size=64)
    ctx = with_support(ContextMethod("context", policy), 10)
    assert ctx.support_size == 10 and ContextMethod("c", policy).support_size == 64
    pm = PolicyMethod("dr", policy, lrs={})
    assert with_support(pm, 7).support_size == 7 and pm.support_size == 64

    class Fixed:  # a plugin's evaluation object that takes no support size
        name, env_id, privileged, support_size, support_epsilon = "toy", CARTPOLE, False, 50, 0.3

        def initial_actor(self) -> ActFn:
            return lambda _o: 0

        def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
            return [self.initial_actor() for _ in steps]

    fixed = Fixed()
    assert with_support(fixed, 50) is fixed
    with pytest.raises(ValueError, match=r"'toy' .* allowed --support values for it: 50"):
        with_support(fixed, 20)


def test_support_at_the_configured_size_gives_the_default_returns(
    tiny_runs: dict[str, Path], tmp_path: Path
) -> None:
    runs = [tiny_runs["cavia"], tiny_runs["context"]]
    kw = {"n_tasks": 2, "episodes": 1, "steps": [0, 1], "show_progress": False}
    default = run_evaluation(runs, out=tmp_path / "default", **kw)
    assert "support" not in default and all("support" not in r for r in default["summary"])
    assert "| support |" not in (tmp_path / "default" / "results.md").read_text()
    assert not (tmp_path / "default" / "support.png").exists()
    for name, run in (("cavia", tiny_runs["cavia"]), ("context", tiny_runs["context"])):
        size = Policy.load(run).support_size
        sized = run_evaluation([run], out=tmp_path / name, supports=[size], **kw)
        assert sized["support"] == [size]
        (entry,) = sized["returns"][name]
        assert entry["support"] == size
        assert entry["returns"] == default["returns"][name][0]  # the same numbers
        rows = [r for r in default["summary"] if r["method"] == name]
        assert [{k: v for k, v in r.items() if k != "support"} for r in sized["summary"]] == rows
        assert all(r["support"] == size for r in sized["summary"])


def test_support_sizes_evaluated_in_worker_processes_give_the_same_returns(
    tiny_runs: dict[str, Path], tmp_path: Path
) -> None:
    runs = [tiny_runs["cavia"], tiny_runs["context"]]
    kw = {"n_tasks": 2, "episodes": 1, "steps": [0, 1], "show_progress": False}
    one = run_evaluation(runs, out=tmp_path / "one", supports=[5, 20], **kw)
    two = run_evaluation(runs, out=tmp_path / "two", supports=[5, 20], jobs=2, **kw)
    assert two["returns"] == one["returns"] and two["summary"] == one["summary"]
    assert [e["support"] for e in two["returns"]["cavia"]] == [5, 20]


def test_an_evaluation_object_that_cannot_be_pickled_is_named_before_any_worker() -> None:
    class Local:  # defined in a function: pickle cannot find it by name
        name, env_id, privileged, support_size, support_epsilon = "toy", CARTPOLE, False, 5, 0.3

    methods = {"toy": MethodRuns("toy", adapts=False, reference=False, methods=[Local(), Local()])}
    sets = [TaskSet("t", [])]
    with pytest.raises(ValueError, match=r"method 'toy': its evaluation object \(Local\)"):
        _evaluate_runs(methods, sets, [0], 1, None, None, show_progress=False, jobs=2)


def test_eval_cli_support_sizes(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = [str(tiny_runs["cavia"]), str(tiny_runs["context"]), "--n-tasks", "2"]
    code = cli_main(
        ["eval", *args, "--episodes", "1", "--curve", "0,1", "--support", "20,5", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("adaptation steps 0,1, support sizes 5,20")
    assert printed[-1].endswith(f"{out / 'adaptation.png'}, {out / 'support.png'}")
    for name in ("results.md", "results.json", "adaptation.png", "support.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "results.json").read_text())
    assert report["support"] == [5, 20]
    for method in ("cavia", "context"):
        assert [e["support"] for e in report["returns"][method]] == [5, 20]
        for e in report["returns"][method]:
            assert set(e["returns"]) == {"id", "ood"}
            assert len(e["returns"]["id"]) == 2 and len(e["returns"]["id"][0]) == 2  # k = 0, 1
        seen = {
            (r["group"], r["support"], r["steps"])
            for r in report["summary"]
            if r["method"] == method
        }
        assert seen == {(g, s, k) for g in ("id", "ood") for s in (5, 20) for k in (0, 1)}
    for e in report["returns"]["context"]:  # k = 0 never looks at the support
        assert [t[0] for t in e["returns"]["id"]] == [
            t[0] for t in report["returns"]["context"][0]["returns"]["id"]
        ]
    md = (out / "results.md").read_text()
    assert "| method | tasks | support | steps |" in md
    for method in ("cavia", "context"):
        for size in (5, 20):
            assert f"| {method} | id | {size} | 1 |" in md


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0", "'0': expected support sizes >= 1"),
        ("10,x", "'10,x': expected support sizes >= 1"),
        ("5,2000000", "'5,2000000': 2000000 support transitions is outside the allowed range"),
    ],
)
def test_a_bad_support_value_is_a_usage_error_with_the_range(
    value: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", str(tmp_path), "--support", value, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --support: {needle}" in err and "[1, 1_000_000]" in err, err
    assert not (tmp_path / "o").exists()
