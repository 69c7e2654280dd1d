"""The numbers of DQN: Double-DQN targets, Huber loss, the replay ring, the epsilon schedule."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from robometa.adaptation import Batch, double_dqn_target, td_loss
from robometa.config import config_from_dict
from robometa.methods.dqn import DQN, linear_epsilon
from robometa.networks import NetworkSpec, QNetwork
from robometa.replay import ReplayBuffer


class TestDoubleDQNTarget:
    def test_online_net_picks_the_action_target_net_scores_it(self) -> None:
        q_next_online = torch.tensor([[3.0, 1.0], [2.0, 0.0]])  # argmax: 0, 0
        q_next_target = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
        reward = torch.tensor([1.0, 2.0])
        terminated = torch.tensor([0.0, 1.0])
        target = double_dqn_target(q_next_online, q_next_target, reward, terminated, 0.5)
        # 1 + 0.5 * Q_target(s', 0) = 1 + 0.5 * 10 (plain DQN: 1 + 0.5 * 20); terminal: reward.
        torch.testing.assert_close(target, torch.tensor([6.0, 2.0]))

    def test_differs_from_plain_max_when_the_nets_disagree(self) -> None:
        q_next_online = torch.tensor([[5.0, 1.0]])  # online prefers action 0
        q_next_target = torch.tensor([[2.0, 7.0]])  # target would prefer action 1
        target = double_dqn_target(
            q_next_online, q_next_target, torch.tensor([1.0]), torch.tensor([0.0]), 0.9
        )
        torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 2.0]))  # not 1 + 0.9 * 7


def tiny_net() -> tuple[QNetwork, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Q(s) = [relu(s), 2 relu(s)] online, [3 relu(s), relu(s)] target (hand-set weights)."""
    net = QNetwork(NetworkSpec(obs_dim=1, n_actions=2, hidden=(1,)))
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    params["body.0.weight"] = torch.tensor([[1.0]])
    params["body.0.bias"] = torch.tensor([0.0])
    params["q_head.weight"] = torch.tensor([[1.0], [2.0]])
    params["q_head.bias"] = torch.tensor([0.0, 0.0])
    target = dict(params)
    target["q_head.weight"] = torch.tensor([[3.0], [1.0]])
    return net, params, target


TINY_BATCH = Batch(
    obs=torch.tensor([[1.0], [2.0]]),
    action=torch.tensor([0, 1]),
    reward=torch.tensor([1.0, 0.0]),
    next_obs=torch.tensor([[1.0], [3.0]]),
    terminated=torch.tensor([0.0, 1.0]),
)


class TestTDLoss:
    """Hand-computed, gamma = 0.9, Huber delta = 1.

    Q(s, a):          s=1, a=0 -> 1;           s=2, a=1 -> 4
    online argmax s': Q(1) = [1, 2] -> 1;      Q(3) = [3, 6] -> 1
    target value:     Q'(1)[1] = 1;            Q'(3)[1] = 3 (terminal: unused)
    TD target:        1 + 0.9 * 1 = 1.9;       0
    error:            -0.9 -> 0.5 * 0.81 = 0.405;   4 -> 4 - 0.5 = 3.5
    loss:             (0.405 + 3.5) / 2 = 1.9525
    """

    def test_loss_value(self) -> None:
        net, params, target = tiny_net()
        loss = td_loss(net, params, target, TINY_BATCH, gamma=0.9, huber_delta=1.0)
        assert loss.item() == pytest.approx(1.9525, abs=1e-6)

    def test_huber_is_quadratic_inside_delta_and_linear_outside(self) -> None:
        net, params, target = tiny_net()
        # delta = 10: both errors are inside, 0.5 * (0.81 + 16) / 2 = 4.2025
        loss = td_loss(net, params, target, TINY_BATCH, gamma=0.9, huber_delta=10.0)
        assert loss.item() == pytest.approx(4.2025, abs=1e-6)
        # delta = 0.5: both outside, 0.5 * (|e| - 0.25) averaged: (0.325 + 1.875) / 2 = 1.1
        loss = td_loss(net, params, target, TINY_BATCH, gamma=0.9, huber_delta=0.5)
        assert loss.item() == pytest.approx(1.1, abs=1e-6)

    def test_gradient_flows_only_through_q_of_the_taken_action(self) -> None:
        net, params, target = tiny_net()
        params = {k: v.requires_grad_() for k, v in params.items()}
        td_loss(net, params, target, TINY_BATCH, gamma=0.9, huber_delta=1.0).backward()
        # dL/dq_sa = [-0.9, clip(4) = 1] / 2; q_sa = w_a * relu(s): s = 1 for a = 0, s = 2 for a = 1
        torch.testing.assert_close(params["q_head.weight"].grad, torch.tensor([[-0.45], [1.0]]))
        torch.testing.assert_close(params["q_head.bias"].grad, torch.tensor([-0.45, 0.5]))

    def test_dqn_fast_path_matches_the_functional_loss(self) -> None:
        cfg = config_from_dict(
            {
                "env": {"tasks": "nominal", "num_envs": 1},
                "dqn": {"learning_starts": 50, "batch_size": 32, "target_update_interval": 25},
                "logging": {"progress": False},
            }
        )
        agent = DQN(cfg)
        try:
            for _ in range(110):
                agent.iterate()
            assert agent.grad_steps == 61  # copied to the target net at 25 and 50, drifted since
            batch = agent.buffer.sample(32, np.random.default_rng(0))
            d = cfg.dqn
            params = dict(agent.net.named_parameters())
            expected = td_loss(agent.net, params, agent.target, batch, d.gamma, d.huber_delta)
            torch.testing.assert_close(agent.td_loss(batch), expected, rtol=1e-6, atol=1e-7)
        finally:
            agent.close()


class TestReplayBuffer:
    @staticmethod
    def filled(capacity: int, n: int) -> ReplayBuffer:
        """Transition i: obs [i], action i % 2, reward 10 i, next obs [i + 1], ends at i = 4."""
        buf = ReplayBuffer(capacity, obs_dim=1)
        for i in range(n):
            buf.add(np.array([i], np.float32), i % 2, 10.0 * i, np.array([i + 1.0]), i == 4)
        return buf

    def test_wraps_around_overwriting_the_oldest(self) -> None:
        buf = self.filled(3, 5)
        assert len(buf) == 3
        assert buf.pos == 2  # the next write overwrites transition 2, the oldest
        assert buf.obs[:, 0].tolist() == [3.0, 4.0, 2.0]  # ring slots
        latest = buf.all()  # insertion order, oldest first
        assert latest.obs[:, 0].tolist() == [2.0, 3.0, 4.0]
        assert latest.action.tolist() == [0, 1, 0]
        assert latest.reward.tolist() == [20.0, 30.0, 40.0]
        assert latest.next_obs[:, 0].tolist() == [3.0, 4.0, 5.0]
        assert latest.terminated.tolist() == [0.0, 0.0, 1.0]
        assert buf.latest(2).obs[:, 0].tolist() == [3.0, 4.0]

    def test_state_round_trip_keeps_the_ring_layout_and_later_writes(self) -> None:
        buf = self.filled(3, 5)
        state = buf.state_dict()
        assert state["obs"][:, 0].tolist() == [2.0, 3.0, 4.0]  # stored oldest first
        restored = ReplayBuffer(3, obs_dim=1)
        restored.load_state_dict(state)
        assert (restored.pos, len(restored)) == (2, 3)
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            np.testing.assert_array_equal(getattr(restored, name), getattr(buf, name))
        # Same seed, same sampled transitions (indices address ring slots).
        a = buf.sample(8, np.random.default_rng(7))
        b = restored.sample(8, np.random.default_rng(7))
        assert a.obs[:, 0].tolist() == b.obs[:, 0].tolist()
        # The next write lands on the same slot in both: transition 2 goes, 5 arrives.
        for x in (buf, restored):
            x.add(np.array([5.0], np.float32), 1, 50.0, np.array([6.0]), False)
        assert restored.obs[:, 0].tolist() == buf.obs[:, 0].tolist() == [3.0, 4.0, 5.0]
        assert restored.all().reward.tolist() == [30.0, 40.0, 50.0]

    def test_state_loads_into_a_bigger_buffer_oldest_first(self) -> None:
        restored = ReplayBuffer(5, obs_dim=1)
        restored.load_state_dict(self.filled(3, 5).state_dict())
        assert len(restored) == 3
        assert restored.all().obs[:, 0].tolist() == [2.0, 3.0, 4.0]
        assert sorted(restored.sample(50, np.random.default_rng(0)).obs[:, 0].tolist())[0] == 2.0

    def test_state_too_big_for_the_buffer_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="holds 3 transitions, capacity is 2"):
            ReplayBuffer(2, obs_dim=1).load_state_dict(self.filled(3, 5).state_dict())

    def test_sampling_an_empty_buffer_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="empty replay buffer"):
            ReplayBuffer(3, obs_dim=1).sample(1, np.random.default_rng(0))


class TestEpsilonSchedule:
    @pytest.mark.parametrize(
        ("step", "expected"),
        [(0, 1.0), (250, 0.55), (500, 0.1), (501, 0.1), (1000, 0.1), (5000, 0.1)],
    )
    def test_linear_decay_over_a_fraction_then_flat(self, step: int, expected: float) -> None:
        # total 1000 steps, decay over the first half from 1.0 to 0.1
        assert linear_epsilon(step, 1000, 1.0, 0.1, 0.5) == pytest.approx(expected)

    def test_zero_fraction_drops_to_the_end_value_at_once(self) -> None:
        assert linear_epsilon(0, 1000, 1.0, 0.05, 0.0) == pytest.approx(1.0)
        assert linear_epsilon(1, 1000, 1.0, 0.05, 0.0) == pytest.approx(0.05)


class TestLearningRateSchedule:
    @pytest.mark.parametrize(
        ("env_steps", "expected"), [(0, 1e-3), (500, 6e-4), (1000, 2e-4), (4000, 2e-4)]
    )
    def test_linear_decay_to_the_end_fraction(self, env_steps: int, expected: float) -> None:
        cfg = config_from_dict(
            {"dqn": {"total_steps": 1000, "learning_rate": 1e-3, "lr_end_fraction": 0.2}}
        )
        agent = DQN.__new__(DQN)  # the schedule needs only the config and the step count
        agent.cfg, agent.env_steps = cfg, env_steps
        assert agent.learning_rate() == pytest.approx(expected)

    def test_optimizer_follows_the_schedule(self) -> None:
        cfg = config_from_dict(
            {
                "env": {"tasks": "nominal", "num_envs": 1},
                "dqn": {"total_steps": 200, "learning_starts": 90, "lr_end_fraction": 0.0},
            }
        )
        agent = DQN(cfg)
        try:
            for _ in range(100):
                agent.iterate()
            # set at the gradient step that follows env step 100 of 200: halfway
            assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
        finally:
            agent.close()


class TestNStepTransitions:
    """gamma = 0.5, n = 3; rewards 1, 2, 4, 8 from observations [0], [1], [2], [3]."""

    @staticmethod
    def agent(n_step: int) -> DQN:
        agent = DQN.__new__(DQN)  # storing transitions needs only these
        agent.cfg = config_from_dict({"dqn": {"gamma": 0.5, "n_step": n_step}})
        agent.obs = np.zeros((1, 1), np.float32)
        agent.pending = [deque()]
        agent.buffer = ReplayBuffer(10, obs_dim=1)
        return agent

    @staticmethod
    def play(agent: DQN, last_terminates: bool) -> Batch:
        for t, r in enumerate([1.0, 2.0, 4.0, 8.0]):
            agent.obs[0] = t
            agent._store(0, t % 3, r, np.array([t + 1.0], np.float32), last_terminates and t == 3)
        return agent.buffer.all()

    def test_returns_are_discounted_sums_and_the_tail_flushes_at_termination(self) -> None:
        got = self.play(self.agent(3), last_terminates=True)
        assert got.obs[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert got.action.tolist() == [0, 1, 2, 0]
        # 1 + .5 * 2 + .25 * 4;  2 + .5 * 4 + .25 * 8;  then the tails 4 + .5 * 8 and 8
        assert got.reward.tolist() == [3.0, 6.0, 8.0, 8.0]
        assert got.next_obs[:, 0].tolist() == [3.0, 4.0, 4.0, 4.0]  # n steps on, or the end
        assert got.terminated.tolist() == [0.0, 1.0, 1.0, 1.0]

    def test_without_termination_only_full_windows_are_stored(self) -> None:
        agent = self.agent(3)
        got = self.play(agent, last_terminates=False)
        assert got.reward.tolist() == [3.0, 6.0]
        assert got.terminated.tolist() == [0.0, 0.0]
        assert len(agent.pending[0]) == 2  # dropped by the reset after a truncation

    def test_one_step_is_the_plain_transition(self) -> None:
        got = self.play(self.agent(1), last_terminates=True)
        assert got.reward.tolist() == [1.0, 2.0, 4.0, 8.0]
        assert got.next_obs[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
        assert got.terminated.tolist() == [0.0, 0.0, 0.0, 1.0]

    def test_target_bootstraps_with_gamma_to_the_n(self) -> None:
        cfg = config_from_dict(
            {"env": {"tasks": "nominal", "num_envs": 1}, "dqn": {"gamma": 0.9, "n_step": 3}}
        )
        agent = DQN(cfg)
        try:
            net, params, target = tiny_net()
            agent.net, agent.target_net = net, QNetwork(net.spec)
            agent.net.load_state_dict({**params, **dict(net.named_buffers())})
            agent.target_net.load_state_dict({**target, **dict(net.named_buffers())})
            # TINY_BATCH with gamma^3 = 0.729: target 1 + 0.729 * 1 for the first transition
            expected = td_loss(net, params, target, TINY_BATCH, gamma=0.729, huber_delta=1.0)
            torch.testing.assert_close(agent.td_loss(TINY_BATCH), expected)
        finally:
            agent.close()
