"""``record_episode`` (what ``robometa play`` renders) runs a stateful actor's memory: its
``observe`` is called once per step the physics did not reject, so a played dr-history
policy's return is the one the evaluation harness (``episode_return``) measures."""

from __future__ import annotations

import types

import numpy as np
import pytest

from robometa.render import record_episode
from robometa.rollout import episode_return, make_env


class Env:
    """Ends after ``length`` steps, reward 1 per step; the observation is the step count; the
    steps in ``broken`` report a physics error."""

    def __init__(self, length: int, broken: tuple[int, ...] = ()) -> None:
        self.length, self.broken, self.t = length, broken, 0
        self.unwrapped = types.SimpleNamespace(set_task=lambda task: None)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        info = {"physics_error": True} if self.t in self.broken else {}
        return np.full(1, self.t, np.float32), 1.0, self.t >= self.length, False, info

    def render(self) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)


class CountingActor:
    """Acts 0 on every observation, counts and keeps what it observes."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def __call__(self, obs: np.ndarray) -> int:
        return 0

    def observe(self, obs, action, reward, next_obs, terminated) -> None:
        self.seen.append((float(obs[0]), action, reward, float(next_obs[0]), terminated))


def test_a_stateful_actor_observes_every_step_of_the_recording() -> None:
    actor = CountingActor()
    rec = record_episode(Env(7), actor, task=None, seed=0, every=3)
    assert rec.length == 7 and len(actor.seen) == 7
    assert actor.seen[0] == (0.0, 0, 1.0, 1.0, False)
    assert [s[3] for s in actor.seen] == [1, 2, 3, 4, 5, 6, 7]
    assert [s[4] for s in actor.seen] == [False] * 6 + [True]


def test_a_step_the_physics_rejected_is_not_observed() -> None:
    actor = CountingActor()
    record_episode(Env(5, broken=(3,)), actor, task=None, seed=0)
    assert [s[3] for s in actor.seen] == [1, 2, 4, 5]


def test_a_plain_function_still_plays() -> None:
    assert record_episode(Env(4), lambda obs: 0, task=None, seed=0).total == 4.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_played_dr_history_policy_returns_what_the_harness_measures(seed: int) -> None:
    from robometa.methods.dr_history import DRHistoryMethod, untrained_policy

    method = DRHistoryMethod("dr-history", untrained_policy(seed=3, history=4), 0.3)
    env = make_env("robometa/CartPole-v0", render_mode="rgb_array")
    try:
        task = env.unwrapped.dynamics_space.sample(3, seed=1, split="test")[seed]
        harness = episode_return(env, method.initial_actor(), task, 100 + seed)
        actor = method.initial_actor()
        rec = record_episode(env, actor, task, 100 + seed, every=10_000)  # 2 frames
        assert rec.total == harness and len(rec.frames) == 2
        frozen = record_episode(env, lambda o: actor(o), task, 100 + seed, every=10_000)
    finally:
        env.close()
    # the same actor with its memory frozen (no observe) plays a different episode
    assert frozen.total != harness or frozen.length != rec.length
