"""The one epsilon-greedy collection loop: training, evaluation and the on-device loop use it.

numpy only (the torch-free runtime's :mod:`robometa.deploy.loop` runs it too). The random
number calls keep one order everywhere, which seeded runs and exact resume depend on: one
``rng.random()`` per step, then ``rng.integers(n_actions)`` only when the step explores.

```python
episode = Episode(env.reset(seed=0)[0])
returns = collect(env, episode, act, n=200, epsilon=0.3, rng=rng, n_actions=3,
                  store=buffer_add, restart=lambda: env.reset(seed=1)[0])
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ActFn = Callable[[np.ndarray], int]
#: ``store(obs, action, reward, next_obs, terminated, info)``: where a transition goes
StoreFn = Callable[[np.ndarray, int, float, np.ndarray, bool, dict], Any]


class Steppable(Protocol):
    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]: ...


@dataclass
class Episode:
    """Where an episode stands: the current observation, its return and length so far."""

    obs: np.ndarray
    ret: float = 0.0
    length: int = 0


def observer(act: ActFn) -> Callable[[np.ndarray, int, float, np.ndarray, bool], Any] | None:
    """The ``observe(obs, action, reward, next_obs, terminated)`` method of a stateful actor
    (one that adapts online, the ``rma`` and ``recurrent`` families': each step's transition
    updates what it acts on), or ``None`` for a plain function of the observation.

    :func:`collect` and :func:`robometa.rollout.episode_return` call it after every step
    the physics did not reject, the explored ones too; the actor's state carries across the
    episodes of one robot (its ``terminated`` flag marks where one ended)."""
    return getattr(act, "observe", None)


def epsilon_greedy(
    rng: np.random.Generator, epsilon: float, n_actions: int, greedy: Callable[[], int]
) -> int:
    """A random action with probability ``epsilon``, else ``greedy()`` (called only then)."""
    if rng.random() < epsilon:
        return int(rng.integers(n_actions))
    return greedy()


def step(
    env: Steppable,
    episode: Episode,
    action: int,
    store: StoreFn,
    restart: Callable[[], np.ndarray],
    max_episode_steps: int = 0,
    obs_fn: Callable[[Any], np.ndarray] | None = None,
) -> float | None:
    """Step ``env`` once with ``action`` and ``store`` the transition; when the episode ends
    (terminated, truncated, or ``max_episode_steps`` > 0 reached) start the next one with
    ``restart()`` and return the finished episode's return, else ``None``. Only
    ``terminated`` is stored as terminal: a time limit is not the end of the task."""
    raw, reward, terminated, truncated, info = env.step(action)
    next_obs = obs_fn(raw) if obs_fn is not None else raw
    store(episode.obs, action, reward, next_obs, bool(terminated), info)
    episode.ret += reward
    episode.length += 1
    if terminated or truncated or (max_episode_steps and episode.length >= max_episode_steps):
        finished = episode.ret
        episode.obs, episode.ret, episode.length = restart(), 0.0, 0
        return finished
    episode.obs = next_obs
    return None


def collect(
    env: Steppable,
    episode: Episode,
    act: ActFn,
    n: int,
    epsilon: float,
    rng: np.random.Generator,
    n_actions: int,
    store: StoreFn,
    restart: Callable[[], np.ndarray],
    max_episode_steps: int = 0,
    obs_fn: Callable[[Any], np.ndarray] | None = None,
) -> list[float]:
    """``n`` epsilon-greedy steps from ``episode`` (see :func:`step`); the returns of the
    episodes that ended, in order."""
    finished = []
    observe = observer(act)
    if observe is not None:
        inner = store

        def store(
            obs: np.ndarray, action: int, reward: float, nxt: np.ndarray, term: bool, info: dict
        ) -> Any:
            if not info.get("physics_error", False):
                observe(obs, action, reward, nxt, term)
            return inner(obs, action, reward, nxt, term, info)

    for _ in range(n):
        action = epsilon_greedy(rng, epsilon, n_actions, lambda: act(episode.obs))
        ret = step(env, episode, action, store, restart, max_episode_steps, obs_fn)
        if ret is not None:
            finished.append(ret)
    return finished
