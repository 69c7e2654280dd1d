"""The ``recurrent`` bundle kind end to end: export with its parity check, the reader's
layout, the runtime's parity with torch along a 200-step rollout (state and Q-values within
1e-5), the state's lifecycle (observe advances it, act leaves it, adapt re-derives it, reset
zeros it), saved state, and the adaptation loop (``run_rounds`` and ``robometa-deploy adapt``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, Bundle
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.loop import greedy_return, run_rounds
from robometa.deploy.recurrent import HIDDEN, MEMORY_GRAPH, NEW_HIDDEN, RecurrentAdapter
from robometa.deploy.state import StateError

from robometa.adaptation import Batch
from robometa.methods.recurrent import advance, recurrent_q, warm_state

TOLERANCE = 1e-5


def robot_transitions(n: int, seed: int) -> list[tuple]:
    """``n`` random-action transitions of the fake cart-pole (within its bounds), episodes
    restarting as they end."""
    robot, rng = FakeCartPole(max_steps=40), np.random.default_rng(seed)
    obs, _ = robot.reset(seed=seed)
    out = []
    for _ in range(n):
        action = int(rng.integers(3))
        nxt, reward, terminated, truncated, _ = robot.step(action)
        out.append((obs, action, float(reward), nxt, bool(terminated)))
        obs = robot.reset(seed=int(rng.integers(1000)))[0] if terminated or truncated else nxt
    return out


def as_batch(rows: list[tuple]) -> Batch:
    obs, action, reward, nxt, term = zip(*rows, strict=True)
    return Batch(
        torch.from_numpy(np.stack(obs)),
        torch.tensor(action),
        torch.tensor(reward, dtype=torch.float32),
        torch.from_numpy(np.stack(nxt)),
        torch.tensor(term, dtype=torch.float32),
    )


def test_the_bundle_holds_the_kinds_files_and_loads_its_runtime(recurrent) -> None:
    manifest = json.loads((recurrent.path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "recurrent" and manifest["algorithm"] == "recurrent"
    assert sorted(manifest["graphs"]) == ["memory", "policy"]
    assert manifest["graphs"]["memory"]["outputs"] == [NEW_HIDDEN]
    assert HIDDEN in manifest["graphs"]["memory"]["inputs"]
    assert HIDDEN in manifest["graphs"]["policy"]["inputs"]
    assert manifest["recurrent"] == {"hidden_size": 8, "support_size": 40, "initial": "zeros"}
    assert sorted(manifest["files"]) == [MEMORY_GRAPH, "params.npz", "policy.onnx"]
    adapter = Adapter.load(recurrent.path)
    assert type(adapter) is RecurrentAdapter and Bundle.load(recurrent.path).kind == "recurrent"
    assert adapter.buffer.capacity == 40 and not adapter.from_meta
    assert np.array_equal(adapter.hidden, np.zeros(8, np.float32))


def test_the_runtime_follows_torch_along_a_200_step_rollout(recurrent) -> None:
    policy = recurrent.policy
    net, params = policy.net, policy.params
    adapter = Adapter.load(recurrent.path, capacity=200)
    data = robot_transitions(200, seed=1)
    h = torch.zeros(1, 8)
    q_err = h_err = 0.0
    changed = 0
    with torch.no_grad():
        for row in data:
            obs = torch.from_numpy(row[0])
            q = recurrent_q(net, params, obs[None], h[0]).numpy()[0]
            q_err = max(q_err, float(np.abs(adapter.q_values(row[0]) - q).max()))
            assert adapter.act(row[0]) == int(np.argmax(q))
            changed += int(np.argmax(q)) != int(recurrent_q(net, params, obs[None], None).argmax())
            assert adapter.observe(*row)
            h = advance(net, params, h, as_batch([row]))
            h_err = max(h_err, float(np.abs(adapter.hidden - h[0].numpy()).max()))
    assert q_err <= TOLERANCE and h_err <= TOLERANCE, (q_err, h_err)
    assert changed > 0  # the state changed some greedy actions: the parity is not vacuous
    # adapt re-derives the state from the buffer: the same pass from zeros
    adapter.adapt()
    assert np.abs(adapter.hidden - warm_state(net, params, as_batch(data)).numpy()).max() <= 1e-5


def test_act_leaves_the_state_observe_advances_it_and_reset_zeros_it(recurrent) -> None:
    adapter = Adapter.load(recurrent.path)
    obs = np.array([0.01, 0.0, 0.02, 0.0], np.float32)
    zero_q = adapter.q_values(obs)
    for _ in range(5):
        adapter.act(obs)
    assert np.array_equal(adapter.hidden, np.zeros(8, np.float32))
    rows = robot_transitions(12, seed=2)
    for row in rows[:6]:
        adapter.observe(*row)
    after_six = adapter.hidden.copy()
    assert np.abs(after_six).max() > 1e-3
    assert not adapter.observe(rows[6][0], 7, 1.0, rows[6][3], False)  # rejected: no advance
    assert np.array_equal(adapter.hidden, after_six) and adapter.rejected == {
        "action_out_of_range": 1
    }
    assert adapter.follow(*rows[6]) and len(adapter.buffer) == 6  # advanced, not buffered
    assert not np.array_equal(adapter.hidden, after_six)
    with adapter.acting_with_meta():
        assert np.array_equal(adapter.q_values(obs), zero_q)  # the zero state acts
    assert not np.allclose(adapter.q_values(obs), zero_q)
    assert not adapter.adapt(0).accepted and not np.array_equal(adapter.hidden, np.zeros(8))
    adapter.reset()
    assert np.array_equal(adapter.hidden, np.zeros(8, np.float32)) and len(adapter.buffer) == 0
    assert np.array_equal(adapter.q_values(obs), zero_q)
    report = adapter.adapt()
    assert not report.accepted and "only 0 transitions" in report.reason
    with pytest.raises(TypeError, match="from_meta"):
        adapter.adapt(from_meta="yes")


def test_saved_state_restores_the_hidden_state_and_buffer(recurrent, tmp_path: Path) -> None:
    adapter = Adapter.load(recurrent.path)
    for row in robot_transitions(15, seed=4):
        adapter.observe(*row)
    state = adapter.save_state(tmp_path / "state.npz")
    restored = Adapter.load(recurrent.path)
    restored.load_state(state)
    assert np.array_equal(restored.hidden, adapter.hidden) and len(restored.buffer) == 15
    obs = np.array([0.01, 0.0, 0.02, 0.0], np.float32)
    assert np.array_equal(restored.q_values(obs), adapter.q_values(obs))
    with pytest.raises(ValueError, match="restore_params: hidden is float32\\[5\\]"):
        restored.restore_params({HIDDEN: np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="unknown parameters \\['context'\\]"):
        restored.restore_params({"context": np.zeros(8, np.float32)})


def test_a_state_outside_the_grus_range_is_refused(recurrent, tmp_path: Path) -> None:
    # a GRU state started at zero stays in [-1, 1]: a finite 1e6 is no state it can reach
    adapter = Adapter.load(recurrent.path)
    for row in robot_transitions(15, seed=4):
        adapter.observe(*row)
    h = adapter.hidden.copy()
    far = np.zeros(8, np.float32)
    far[3] = 1e6
    with pytest.raises(
        ValueError, match=r"restore_params: hidden entry \[3\] is 1000000.0, outside \[-1, 1\]"
    ):
        adapter.restore_params({HIDDEN: far})
    assert np.array_equal(adapter.hidden, h)
    saturated = np.array([1.0, -1.0, 1.0 + 5e-7, 0, 0, 0, 0, 0], np.float32)
    adapter.restore_params({HIDDEN: saturated})  # reachable (float32 tanh saturates)
    assert np.array_equal(adapter.hidden, saturated)
    adapter.restore_params({HIDDEN: h})
    path = adapter.save_state(tmp_path / "state.npz")
    arrays = dict(np.load(path))
    arrays["param:hidden"] = -far
    np.savez(tmp_path / "far.npz", **arrays)
    fresh = Adapter.load(recurrent.path)
    message = r"far.npz: param:hidden entry \[3\] is -1000000.0, outside \[-1, 1\]"
    with pytest.raises(StateError, match=message):
        fresh.load_state(tmp_path / "far.npz")
    assert np.array_equal(fresh.hidden, np.zeros(8, np.float32)) and len(fresh.buffer) == 0
    fresh.load_state(path)
    assert np.array_equal(fresh.hidden, h)


def test_a_non_finite_state_step_is_counted_warned_and_reported(recurrent, monkeypatch) -> None:
    adapter = Adapter.load(recurrent.path)
    rows = robot_transitions(4, seed=5)
    assert adapter.observe(*rows[0]) and adapter.non_finite_states == 0
    h = adapter.hidden.copy()
    monkeypatch.setattr(adapter, "memory_step", lambda hidden, data: np.full_like(hidden, np.nan))
    with pytest.warns(RuntimeWarning, match="non-finite GRU state; the previous state is kept"):
        assert adapter.observe(*rows[1])  # stored: adapt re-derives from it
    assert adapter.non_finite_states == 1 and len(adapter.buffer) == 2
    with pytest.warns(RuntimeWarning, match="non-finite GRU state"):
        assert not adapter.follow(*rows[2])  # not followed: says so
    assert adapter.non_finite_states == 2 and np.array_equal(adapter.hidden, h)
    monkeypatch.undo()
    report = adapter.adapt()
    assert report.accepted
    assert "2 transition(s) since the last reset gave a non-finite state" in report.reason
    adapter.reset()
    assert adapter.non_finite_states == 0
    assert "non-finite" not in adapter.adapt().reason


def test_greedy_episodes_follow_the_robot_without_buffering(recurrent) -> None:
    adapter = Adapter.load(recurrent.path)
    greedy_return(adapter, FakeCartPole(), episodes=1, seed=0)
    assert np.abs(adapter.hidden).max() > 0 and len(adapter.buffer) == 0


def test_run_rounds_adapts_a_recurrent_bundle_on_a_robot(recurrent) -> None:
    adapter = Adapter.load(recurrent.path, capacity=40)
    results = run_rounds(adapter, FakeCartPole(), rounds=2, support=40, steps=1, seed=0)
    assert [r.round for r in results] == [0, 1, 2]
    assert all(r.report.accepted and r.report.n_transitions == 40 for r in results[1:])
    assert np.abs(adapter.hidden).max() > 0


def adapted_states(adapter: Adapter) -> dict[int, dict[str, np.ndarray]]:
    """Record the adapter's state before round 1 (key 0) and right after each ``adapt``
    (keys 1, 2, ...): what each round's adaptation left, before anything measures it."""
    states = {0: {k: v.copy() for k, v in adapter.params.items()}}
    adapt = adapter.adapt

    def recording(*args, **kwargs):
        report = adapt(*args, **kwargs)
        states[len(states)] = {k: v.copy() for k, v in adapter.params.items()}
        return report

    adapter.adapt = recording  # type: ignore[method-assign]
    return states


def test_keep_best_keeps_the_state_it_measured_not_the_one_after_measuring(recurrent) -> None:
    # The greedy episodes move the state (follow); the measurement must not: every round's
    # state is the one its adaptation left, and the kept state is the one that earned the best
    # return (round 0: the zero state).
    adapter, probe = Adapter.load(recurrent.path, capacity=40), Adapter.load(recurrent.path)
    adapted = adapted_states(adapter)
    kept, remeasured = [], []

    def on_round(result) -> None:
        kept.append(adapter.hidden.copy())
        probe.restore_params(adapter.params)
        remeasured.append(greedy_return(probe, FakeCartPole(), 2, seed=1_000_000))

    results = run_rounds(
        adapter,
        FakeCartPole(),
        rounds=4,
        support=40,
        steps=1,
        eval_episodes=2,
        keep="best",
        on_round=on_round,
    )
    assert np.array_equal(kept[0], np.zeros(8, np.float32))
    assert any(r.rolled_back_to is not None for r in results)  # the rollback is exercised
    for r, state in zip(results, kept, strict=True):
        assert r.report is None or r.report.accepted
        assert np.array_equal(state, adapted[r.acting_round][HIDDEN]), r
    returns = [r.greedy_return for r in results]
    assert remeasured == [max(returns[: i + 1]) for i in range(len(returns))]
    # measuring leaves the state as it was, and the kept state earns the best return again
    before = adapter.hidden.copy()
    assert run_rounds(adapter, FakeCartPole(), rounds=0, support=0, eval_episodes=2)[
        0
    ].greedy_return == max(returns)
    assert np.array_equal(adapter.hidden, before)


def test_robometa_deploy_adapt_runs_a_recurrent_bundle(recurrent, capsys) -> None:
    capsys.readouterr()
    args = ["adapt", "--bundle", str(recurrent.path), "--sample-test-task", "0", "--rounds", "1"]
    assert deploy_main([*args, "--support", "20", "--eval-episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "a recurrent bundle; adapts a 8-d GRU state advanced by memory.onnx" in out
    assert deploy_main(["info", "--bundle", str(recurrent.path)]) == 0
    assert "kind        recurrent" in capsys.readouterr().out.splitlines()
