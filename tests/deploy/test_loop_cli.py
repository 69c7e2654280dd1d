"""The adaptation loop on a stand-in robot, and ``robometa-deploy`` on a simulated one."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from fake_robot import FakeCartPole
from robometa.deploy import Adapter, BundleError
from robometa.deploy.cli import main
from robometa.deploy.loop import (
    MAX_SUPPORT,
    RoundResult,
    collect,
    format_table,
    greedy_return,
    run_rounds,
)


class PaysForTheMetaPolicy:
    """A robot where adaptation can only hurt: each step pays 1 when the action is the one the
    meta-parameters choose, 0 otherwise (observations are fresh random cart-pole states), so
    the meta-policy earns the most and any adaptation that changes a greedy action earns less,
    whatever it does to the inner loss."""

    def __init__(self, meta: Adapter, length: int = 40) -> None:
        self.meta, self.length = meta, length

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.rng, self.t = np.random.default_rng(seed), 0
        self.obs = self._draw()
        return self.obs, {}

    def _draw(self) -> np.ndarray:
        return (self.rng.normal(size=4) * [0.5, 1.0, 0.1, 1.0]).astype(np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        paid = float(action == self.meta.act(self.obs))
        self.obs, self.t = self._draw(), self.t + 1
        return self.obs, paid, False, self.t >= self.length, {}


class Untouchable:
    """A robot for argument errors: they must be raised before the robot moves."""

    def reset(self, *, seed=None):
        raise AssertionError("the robot was reset despite a bad argument")

    def step(self, action):
        raise AssertionError("the robot was stepped despite a bad argument")


class TestLoop:
    def test_rounds_collect_adapt_and_evaluate(self, cavia) -> None:
        adapter = Adapter.load(cavia.path, capacity=40)
        results = run_rounds(
            adapter, FakeCartPole(), rounds=2, support=40, steps=2, eval_episodes=2, seed=1
        )
        assert [r.round for r in results] == [0, 1, 2]
        assert results[0].report is None
        for r in results[1:]:
            assert r.collected == 40 and r.accepted_transitions == 40
            assert r.report is not None and r.report.steps == 2 and r.report.n_transitions == 40
        assert all(np.isfinite(r.greedy_return) and r.greedy_return >= 1 for r in results)
        table = format_table(results)
        assert "meta-params" in table and len(table.splitlines()) >= 4

    def test_same_seed_same_results(self, cavia) -> None:
        def run() -> list[dict]:
            adapter = Adapter.load(cavia.path, capacity=30)
            results = run_rounds(adapter, FakeCartPole(), rounds=2, support=30, steps=2, seed=4)
            return [r.to_dict() | {"report": None} for r in results] + [
                {k: v.tolist() for k, v in adapter.params.items()}
            ]

        assert run() == run()

    def test_only_real_terminations_are_terminal(self, cavia) -> None:
        adapter = Adapter.load(cavia.path, capacity=200)
        robot = FakeCartPole(max_steps=7)  # truncates often, terminates rarely
        collect(adapter, robot, 200, epsilon=1.0, rng=np.random.default_rng(0))
        data = adapter.buffer.ordered()
        terminal = np.flatnonzero(data.terminated)
        for i in terminal:
            x, th = data.next_obs[i, 0], data.next_obs[i, 2]
            assert abs(x) > 2.4 or abs(th) > 0.21

    def test_greedy_return_is_deterministic_for_a_seed(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        robot = FakeCartPole()
        assert greedy_return(adapter, robot, 3, seed=5) == greedy_return(adapter, robot, 3, seed=5)

    def test_bad_arguments(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        with pytest.raises(ValueError, match="epsilon"):
            run_rounds(adapter, FakeCartPole(), rounds=1, support=5, epsilon=2.0)
        with pytest.raises(ValueError, match="support_from must be one of"):
            run_rounds(adapter, FakeCartPole(), rounds=1, support=5, support_from="adapted")

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"rounds": True}, TypeError, r"rounds must be an integer in \[0, 10000\] \(MAX_"),
            ({"rounds": 2.0}, TypeError, r"rounds .* got float 2.0"),
            ({"rounds": 10**9}, ValueError, r"rounds .* \(MAX_ROUNDS\), got 1000000000"),
            ({"support": "5"}, TypeError, r"support .* got str '5'"),
            ({"support": MAX_SUPPORT + 1}, ValueError, r"support .* \(MAX_SUPPORT\)"),
            ({"eval_episodes": -1}, ValueError, r"eval_episodes .* \(MAX_EVAL_EPISODES\)"),
            ({"seed": -1}, ValueError, r"seed must be an integer in \[0, 4294967295\]"),
            ({"seed": 1.5}, TypeError, r"seed .* got float"),
            ({"max_episode_steps": 0}, ValueError, r"max_episode_steps .* \[1, 1000000\]"),
            ({"epsilon": "0.1"}, TypeError, r"epsilon must be a number in \[0.0, 1.0\]"),
            ({"epsilon": math.nan}, ValueError, r"epsilon must be a number in \[0.0, 1.0\]"),
            ({"steps": 2.5}, TypeError, r"steps must be an integer .* \(MAX_ADAPT_STEPS\)"),
            ({"keep": "worst"}, ValueError, r"keep must be one of \('latest', 'best'\)"),
            ({"keep": "best", "eval_episodes": 0}, ValueError, r"eval_episodes must be >= 1"),
        ],
    )
    def test_bad_counts_are_refused_before_the_robot_moves(
        self, cavia, kwargs, error, message
    ) -> None:
        adapter = Adapter.load(cavia.path)
        args = {"rounds": 1, "support": 5, **kwargs}
        with pytest.raises(error, match=message):
            run_rounds(adapter, Untouchable(), **args)

    def test_collect_and_greedy_return_check_their_counts(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        rng = np.random.default_rng(0)
        with pytest.raises(ValueError, match=r"n must be an integer .* \(MAX_SUPPORT\), got -1"):
            collect(adapter, Untouchable(), -1, 0.1, rng)
        with pytest.raises(TypeError, match=r"episodes .* \(MAX_EVAL_EPISODES\), got float"):
            greedy_return(adapter, Untouchable(), 2.0)
        with pytest.raises(ValueError, match=r"max_episode_steps .* got 0"):
            greedy_return(adapter, Untouchable(), 1, max_episode_steps=0)

    @pytest.mark.parametrize("reward", [math.nan, math.inf, 10**400, None, "1"])
    def test_a_bad_reward_in_an_evaluation_is_named(self, cavia, reward) -> None:
        class BadReward(FakeCartPole):
            def step(self, action):
                obs, _, terminated, truncated, info = super().step(action)
                return obs, reward if self.t == 3 else 1.0, terminated, truncated, info

        with pytest.raises(ValueError, match=r"reward .* in evaluation episode 0, step 2; expe"):
            greedy_return(Adapter.load(cavia.path), BadReward(), 1)

    def test_epsilon_defaults_to_the_training_support_epsilon(self, cavia, edited_bundle) -> None:
        assert Adapter.load(cavia.path).support_epsilon == 0.3  # no training config recorded
        for eps in (0.0, 1.0):
            path = edited_bundle(
                cavia.path, manifest={"config": {"adaptation": {"support_epsilon": eps}}}
            )
            adapter = Adapter.load(path, capacity=30)
            assert adapter.support_epsilon == eps
            run_rounds(adapter, FakeCartPole(), rounds=1, support=30, steps=1, eval_episodes=1)
            data = adapter.buffer.ordered()
            with adapter.acting_with_meta():  # the support was collected with them
                greedy = adapter.q_values(data.obs).argmax(axis=1)
            # epsilon 0: the greedy action at every step; epsilon 1: uniformly random actions
            assert np.array_equal(greedy, data.action) == (eps == 0.0)
        bad = edited_bundle(cavia.path, manifest={"config": {"adaptation": {"support_epsilon": 2}}})
        with pytest.raises(
            BundleError, match=r"manifest.json: config.adaptation.support_epsilon is 2"
        ):
            Adapter.load(bad)

    @pytest.mark.parametrize(
        ("support_from", "acts_with_meta"), [("auto", True), ("meta", True), ("current", False)]
    )
    def test_which_parameters_collect_the_support(
        self, cavia, support_from: str, acts_with_meta: bool
    ) -> None:
        """CAVIA bundles adapt from the meta-parameters, so by default every round's support is
        collected with them (as in meta-training), not with the previous round's adaptation."""
        adapter = Adapter.load(cavia.path, capacity=40, tolerance=10.0)
        assert adapter.from_meta
        seen: list[np.ndarray] = []  # Q-values of a fixed probe with the acting parameters
        probe = np.array([0.1, -0.2, 0.05, 0.3], np.float32)

        class Spy(FakeCartPole):
            def step(self, action: int):
                seen.append(adapter.q_values(probe).copy())
                return super().step(action)

        ends: list[int] = []  # steps seen when each round finished
        results = run_rounds(
            adapter,
            Spy(),
            rounds=2,
            support=40,
            eval_episodes=1,
            support_from=support_from,
            on_round=lambda _r: ends.append(len(seen)),
        )
        assert results[1].report is not None and results[1].report.accepted
        with adapter.acting_with_meta():
            meta_q = adapter.q_values(probe)
        adapted_q = adapter.q_values(probe)
        assert not np.allclose(meta_q, adapted_q)
        round2 = seen[ends[1] : ends[1] + 40]  # round 2's collection
        assert len(round2) == 40
        # round 1 moved the parameters away from the meta-parameters
        assert not np.allclose(round2[0], meta_q) or acts_with_meta
        assert all(np.allclose(q, meta_q) for q in round2) == acts_with_meta
        # after the collection, the adapted parameters act again (the last evaluation)
        np.testing.assert_allclose(seen[-1], adapted_q)


class TestKeepBest:
    """``keep="best"``: the measured return, not only the inner loss, decides what is kept."""

    def run(self, cavia, edited_bundle, keep: str) -> tuple[Adapter, object, list[RoundResult]]:
        # A step size at which the accepted adaptations change greedy actions (the guard
        # accepts everything: tolerance inf, so only the return can object).
        path = edited_bundle(cavia.path, lrs={"context": np.float32(5.0)})
        adapter = Adapter.load(path, capacity=60, tolerance=math.inf, max_update_norm=None)
        robot = PaysForTheMetaPolicy(Adapter.load(cavia.path))
        results = run_rounds(
            adapter, robot, rounds=2, support=60, steps=3, eval_episodes=2, keep=keep
        )
        return adapter, robot, results

    def test_the_default_keeps_an_adaptation_that_lowers_the_return(
        self, cavia, edited_bundle
    ) -> None:
        adapter, robot, results = self.run(cavia, edited_bundle, "latest")
        returns = [r.greedy_return for r in results]
        assert returns[0] == 40.0 and returns[-1] < returns[0]  # adaptation hurts here
        assert all(r.report.accepted for r in results[1:])
        assert [r.rolled_back_to for r in results] == [None, None, None]
        assert [r.acting_round for r in results] == [0, 1, 2]
        assert not np.array_equal(adapter.params["context"], adapter.meta_params["context"])
        assert greedy_return(adapter, robot, 2, seed=1_000_000) == returns[-1]

    def test_best_keeps_the_best_rounds_parameters_and_says_it_rolled_back(
        self, cavia, edited_bundle
    ) -> None:
        adapter, robot, results = self.run(cavia, edited_bundle, "best")
        latest = self.run(cavia, edited_bundle, "latest")[2]
        # round 1 is the same run in both modes, and its adaptation returned less
        assert results[1].greedy_return == latest[1].greedy_return < results[0].greedy_return
        assert [r.rolled_back_to for r in results] == [None, 0, 0]
        assert [r.acting_round for r in results] == [0, 0, 0]
        assert all(r.report.accepted for r in results[1:])  # the inner-loss guard had no say
        np.testing.assert_array_equal(adapter.params["context"], adapter.meta_params["context"])
        assert greedy_return(adapter, robot, 2, seed=1_000_000) == results[0].greedy_return
        table = format_table(results)
        assert "back to r0" in table
        assert "round 1: greedy return 37.50 fell below round 0's; rolled back to round 0's" in (
            table
        )
        assert results[1].to_dict()["rolled_back_to"] == 0

    def test_best_keeps_adaptations_that_do_not_lower_the_return(self, cavia) -> None:
        adapter = Adapter.load(cavia.path, capacity=60, tolerance=math.inf)
        robot = PaysForTheMetaPolicy(Adapter.load(cavia.path))
        results = run_rounds(
            adapter, robot, rounds=2, support=60, steps=3, eval_episodes=2, keep="best"
        )
        assert [r.greedy_return for r in results] == [40.0, 40.0, 40.0]  # too small to hurt
        assert [r.acting_round for r in results] == [0, 1, 2]
        assert [r.rolled_back_to for r in results] == [None, None, None]
        assert not np.array_equal(adapter.params["context"], adapter.meta_params["context"])

    def test_best_keeps_a_followed_state_as_measured(self, rma) -> None:
        # A history runtime's window follows the greedy episodes; each round must keep (and
        # act on) the window its adaptation built, round 0 the empty one, not the window the
        # evaluation episodes slid on.
        adapter = Adapter.load(rma.path, capacity=40)
        adapted = [adapter.params]
        adapt = adapter.adapt

        def recording(*args, **kwargs):
            report = adapt(*args, **kwargs)
            adapted.append(adapter.params)
            return report

        adapter.adapt = recording  # type: ignore[method-assign]
        kept = []
        results = run_rounds(
            adapter,
            FakeCartPole(),
            rounds=2,
            support=40,
            steps=1,
            eval_episodes=2,
            keep="best",
            on_round=lambda r: kept.append(adapter.params),
        )
        for key, value in adapter.meta_params.items():
            np.testing.assert_array_equal(kept[0][key], value, err_msg=key)
        assert all(r.report.accepted for r in results[1:])
        for r, state in zip(results, kept, strict=True):
            for key, value in adapted[r.acting_round].items():
                np.testing.assert_array_equal(state[key], value, err_msg=f"{r}: {key}")


class TestCommandLine:
    def test_info(self, cavia, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["info", "--bundle", str(cavia.path)]) == 0
        out = capsys.readouterr().out
        assert "verified" in out and "robometa/CartPole-v0" in out and "context" in out

    def test_adapt_on_a_sampled_test_task(
        self, cavia, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        state, report = tmp_path / "state.npz", tmp_path / "rounds.json"
        args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3"]
        args += ["--rounds", "2", "--support", "30", "--steps", "2", "--eval-episodes", "1"]
        args += ["--save-state", str(state), "--json", str(report)]
        assert main(args) == 0
        out = capsys.readouterr().out
        rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
        assert [row[0] for row in rows] == ["0", "1", "2"]
        assert "motor_sign=" in out
        doc = json.loads(report.read_text())
        assert len(doc["rounds"]) == 3 and doc["rounds"][2]["collected"] == 30
        restored = Adapter.load(cavia.path)
        restored.load_state(state)
        assert len(restored.buffer) == 30

    @pytest.mark.parametrize(
        ("extra", "support_from", "epsilon"),
        [([], "auto", None), (["--support-from", "current", "--epsilon", "0.05"], "current", 0.05)],
    )
    def test_adapt_passes_support_from_and_epsilon(
        self, cavia, monkeypatch, extra: list[str], support_from: str, epsilon
    ) -> None:
        import robometa.deploy.cli as cli

        seen = {}

        def fake_run_rounds(adapter, env, **kwargs):
            seen.update(kwargs)
            return []

        monkeypatch.setattr(cli, "run_rounds", fake_run_rounds)
        args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3", *extra]
        assert main(args) == 0
        assert seen["support_from"] == support_from and seen["epsilon"] == epsilon

    def test_adapt_on_a_task_file(self, cavia, tmp_path: Path) -> None:
        import gymnasium as gym
        import robometa.envs

        env = gym.make("robometa/CartPole-v0")
        tasks = [env.unwrapped.dynamics_space.make_task({"motor_sign": -1, "pole_length": 1.5})]
        env.close()
        path = tmp_path / "tasks.yaml"
        robometa.envs.dump_tasks(tasks, path)
        args = ["adapt", "--bundle", str(cavia.path), "--task", str(path), "--rounds", "1"]
        assert main([*args, "--support", "20", "--steps", "1", "--eval-episodes", "1"]) == 0

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (["--task", "missing.yaml"], "cannot read task file"),
            (["--sample-test-task", "0", "--env", "robometa/Nope-v0"], "Nope"),
        ],
    )
    def test_errors_are_reported(
        self, cavia, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["adapt", "--bundle", str(cavia.path), *extra]) == 2
        assert message in capsys.readouterr().err

    @pytest.fixture
    def fake_rounds(self, monkeypatch: pytest.MonkeyPatch) -> dict:
        """``run_rounds`` replaced: records its arguments, returns a round-0 and a rolled-back
        round 1."""
        import robometa.deploy.cli as cli

        seen: dict = {}

        def fake_run_rounds(adapter, env, **kwargs):
            seen.update(kwargs, adapter=adapter)
            return [
                RoundResult(0, 0, 0, None, 200.0, acting_round=0),
                RoundResult(1, 5, 5, None, 172.0, acting_round=0, rolled_back_to=0),
            ]

        monkeypatch.setattr(cli, "run_rounds", fake_run_rounds)
        return seen

    @pytest.mark.parametrize(
        ("flag", "value", "message"),
        [
            ("--support", "-5", r"must be an integer in \[1, 1000000\] \(MAX_SUPPORT\), got '-5'"),
            ("--support", "0", r"got '0'"),
            ("--capacity", "0", r"must be an integer in \[1, 1000000\] \(MAX_CAPACITY\)"),
            ("--capacity", "1e3", r"got '1e3'"),
            ("--steps", "2.7", r"\[0, 10000\] \(MAX_ADAPT_STEPS\), got '2.7'"),
            ("--steps", "1000000000", r"\(MAX_ADAPT_STEPS\), got '1000000000'"),
            ("--rounds", "-1", r"\[0, 10000\] \(MAX_ROUNDS\)"),
            ("--eval-episodes", "-2", r"\(MAX_EVAL_EPISODES\), got '-2'"),
            ("--seed", "-1", r"\[0, 4294967295\] \(MAX_SEED\)"),
            ("--sample-test-task", "-1", r"\(MAX_SEED\), got '-1'"),
            ("--epsilon", "nan", r"must be a number in \[0.0, 1.0\], got 'nan'"),
            ("--epsilon", "1.5", r"got '1.5'"),
            ("--holdout-fraction", "0.9", r"\[0.0, 0.5\], got '0.9'"),
            ("--tolerance", "-1", r"\[0.0, inf\], got '-1'"),
            ("--max-update-norm", "-0.5", r"got '-0.5'"),
            ("--keep", "worst", r"invalid choice: 'worst'"),
        ],
    )
    def test_bad_flags_are_named(
        self, cavia, fake_rounds, flag, value, message, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3", flag, value]
        if flag == "--sample-test-task":
            args = args[:3] + args[5:]
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: " in err
        assert re.search(message, err), err
        assert fake_rounds == {}

    def test_keep_best_is_passed_and_its_rollbacks_are_reported(
        self, cavia, fake_rounds, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3"]
        assert main([*args, "--keep", "best", "--capacity", "7", "--support", "5"]) == 0
        assert fake_rounds["keep"] == "best" and fake_rounds["support"] == 5
        assert fake_rounds["adapter"].buffer.capacity == 7
        out = capsys.readouterr().out
        assert "round 1: greedy return 172.00 fell below round 0's; rolled back to round 0's" in out
        assert main(args) == 0
        assert fake_rounds["keep"] == "latest"
        assert fake_rounds["support"] == fake_rounds["adapter"].buffer.capacity == 64

    def test_keep_best_needs_an_evaluation(
        self, cavia, fake_rounds, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["adapt", "--bundle", str(cavia.path), "--sample-test-task", "3"]
        assert main([*args, "--keep", "best", "--eval-episodes", "0"]) == 2
        err = capsys.readouterr().err
        assert "--keep best compares measured returns: --eval-episodes must be >= 1" in err
        assert fake_rounds == {}

    def test_missing_bundle(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["info", "--bundle", str(tmp_path / "none")]) == 2
        assert "does not exist" in capsys.readouterr().err
