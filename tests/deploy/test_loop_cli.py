"""The adaptation loop on a stand-in robot, and ``robometa-deploy`` on a simulated one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_robot import FakeCartPole
from robometa.deploy import Adapter, BundleError
from robometa.deploy.cli import main
from robometa.deploy.loop import collect, format_table, greedy_return, run_rounds


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

    def test_missing_bundle(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["info", "--bundle", str(tmp_path / "none")]) == 2
        assert "does not exist" in capsys.readouterr().err
