"""The one epsilon-greedy collection loop (robometa.deploy.collection): its random number calls, the
restart at each episode end, the episode-length cap, and what is stored as terminal."""

from __future__ import annotations

import numpy as np
import pytest
from robometa.deploy.collection import Episode, collect, epsilon_greedy, step


class Counter:
    """obs ``[t]`` after ``t`` steps of the episode, reward ``action + 1``; terminated at the
    steps in ``terminate_at``, truncated at those in ``truncate_at`` (counted per episode)."""

    def __init__(self, terminate_at: tuple[int, ...] = (), truncate_at: tuple[int, ...] = ()):
        self.terminate_at, self.truncate_at = terminate_at, truncate_at
        self.t = 0
        self.actions: list[int] = []
        self.restarts = 0

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        self.actions.append(action)
        obs = np.array([self.t], np.float32)
        return obs, float(action + 1), self.t in self.terminate_at, self.t in self.truncate_at, {}

    def restart(self) -> np.ndarray:
        self.t = 0
        self.restarts += 1
        return np.array([-self.restarts], np.float32)  # tells the episodes apart


class Store:
    def __init__(self) -> None:
        self.rows: list[tuple[float, int, float, float, bool]] = []

    def __call__(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        info: dict,
    ) -> None:
        self.rows.append((float(obs[0]), action, reward, float(next_obs[0]), terminated))


def test_one_uniform_draw_per_step_and_an_action_draw_only_when_exploring() -> None:
    rng, twin = np.random.default_rng(7), np.random.default_rng(7)
    greedy_calls = []

    def greedy() -> int:
        greedy_calls.append(1)
        return 2

    got = [epsilon_greedy(rng, 0.4, 3, greedy) for _ in range(300)]
    expected, greedy_expected = [], 0
    for _ in range(300):
        if twin.random() < 0.4:
            expected.append(int(twin.integers(3)))
        else:
            expected.append(2)
            greedy_expected += 1
    assert got == expected
    assert len(greedy_calls) == greedy_expected  # called only when acting greedily
    assert 0 < greedy_expected < 300
    assert rng.bit_generator.state == twin.bit_generator.state


@pytest.mark.parametrize(("epsilon", "greedy_steps"), [(0.0, 50), (1.0, 0)])
def test_epsilon_zero_is_greedy_and_one_explores(epsilon: float, greedy_steps: int) -> None:
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(50):
        epsilon_greedy(rng, epsilon, 4, lambda: calls.append(1) or 0)
    assert len(calls) == greedy_steps


def test_collect_draws_exactly_what_the_loops_before_it_drew() -> None:
    """The raw generator calls every loop made before they were merged: per step one
    ``random()``, then ``integers(n_actions)`` only when it is below epsilon; the actor is
    called only on greedy steps. Replayed by hand on a twin generator."""
    env = Counter(terminate_at=(4,))
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    greedy_calls = []

    def act(obs: np.ndarray) -> int:
        greedy_calls.append(float(obs[0]))
        return int(obs[0]) % 2

    collect(env, Episode(np.zeros(1, np.float32)), act, 40, 0.5, rng, 5, Store(), env.restart)
    expected, explored = [], 0
    for _ in range(40):
        if twin.random() < 0.5:
            expected.append(int(twin.integers(5)))
            explored += 1
        else:
            expected.append(None)  # greedy: the actor's choice
    assert 5 < explored < 35  # both branches exercised
    assert [a for a, e in zip(env.actions, expected, strict=True) if e is not None] == [
        e for e in expected if e is not None
    ]
    assert len(greedy_calls) == 40 - explored
    assert rng.bit_generator.state == twin.bit_generator.state


def test_an_episode_end_restarts_and_returns_its_return() -> None:
    env, store = Counter(terminate_at=(3,)), Store()
    episode = Episode(env.restart())
    returns = collect(
        env, episode, lambda obs: 0, 7, 0.0, np.random.default_rng(0), 2, store, env.restart
    )
    assert returns == [3.0, 3.0]  # two episodes of 3 steps, reward 1 each
    assert env.restarts == 3  # the first start, then one per finished episode
    # The transition after a restart starts from the restart's observation.
    assert [r[0] for r in store.rows] == [-1.0, 1.0, 2.0, -2.0, 1.0, 2.0, -3.0]
    assert (episode.obs[0], episode.ret, episode.length) == (1.0, 1.0, 1)


def test_max_episode_steps_ends_an_episode_without_marking_it_terminal() -> None:
    env, store = Counter(), Store()
    episode = Episode(env.restart())
    returns = collect(
        env,
        episode,
        lambda obs: 1,
        5,
        0.0,
        np.random.default_rng(0),
        2,
        store,
        env.restart,
        max_episode_steps=2,
    )
    assert returns == [4.0, 4.0]  # 2 steps of reward 2, twice
    assert env.restarts == 3
    assert [r[4] for r in store.rows] == [False] * 5
    assert episode.length == 1


def test_only_terminated_is_stored_as_terminal() -> None:
    """A truncation (time limit) ends the episode but is no terminal state of the task."""
    truncating, store = Counter(truncate_at=(2,)), Store()
    episode = Episode(truncating.restart())
    finished = [step(truncating, episode, 0, store, truncating.restart) for _ in range(4)]
    assert finished == [None, 2.0, None, 2.0]
    assert [r[4] for r in store.rows] == [False] * 4
    terminating, store = Counter(terminate_at=(2,), truncate_at=(2,)), Store()
    episode = Episode(terminating.restart())
    finished = [step(terminating, episode, 0, store, terminating.restart) for _ in range(2)]
    assert finished == [None, 2.0]
    assert [r[4] for r in store.rows] == [False, True]  # terminated (and truncated): terminal


def test_obs_fn_maps_what_is_stored_and_acted_on() -> None:
    env, store = Counter(), Store()
    episode = Episode(np.zeros(1, np.float32))
    seen = []
    collect(
        env,
        episode,
        lambda obs: seen.append(float(obs[0])) or 0,
        3,
        0.0,
        np.random.default_rng(0),
        2,
        store,
        env.restart,
        obs_fn=lambda raw: raw * 10,
    )
    assert [r[3] for r in store.rows] == [10.0, 20.0, 30.0]
    assert seen == [0.0, 10.0, 20.0]


def test_a_stateful_actor_observes_every_stored_step_in_order() -> None:
    """An actor with ``observe`` (the online-adapting families') sees each transition the
    physics did not reject, in order, with its terminal flag; a plain function is unchanged."""
    from robometa.deploy.collection import Episode, collect

    class Env:
        t = 0

        def step(self, action: int):
            self.t += 1
            info = {"physics_error": self.t == 3}
            return np.array([float(self.t)]), 1.0, self.t % 5 == 0, False, info

    class Actor:
        def __init__(self) -> None:
            self.seen: list[tuple] = []

        def __call__(self, obs: np.ndarray) -> int:
            return 1

        def observe(self, obs, action, reward, next_obs, terminated) -> None:
            self.seen.append((float(obs[0]), action, float(next_obs[0]), terminated))

    act, stored = Actor(), []
    collect(
        Env(),
        Episode(np.zeros(1)),
        act,
        7,
        0.0,
        np.random.default_rng(0),
        2,
        lambda *t: stored.append(t),
        lambda: np.zeros(1),
    )
    assert len(stored) == 7
    assert act.seen == [
        (0.0, 1, 1.0, False),
        (1.0, 1, 2.0, False),
        (3.0, 1, 4.0, False),
        (4.0, 1, 5.0, True),
        (0.0, 1, 6.0, False),
        (6.0, 1, 7.0, False),
    ]
