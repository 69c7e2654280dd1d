"""Wrappers over the robot families."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class PrivilegedObservation(gym.ObservationWrapper):
    """Append the true dynamics parameters (normalized to about [-1, 1]) to the observation.

    This is the privileged oracle's input: what a policy could do if it knew the robot exactly.
    The vector follows ``dynamics_space.names`` and comes from the task of the current episode.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.unwrapped.dynamics_space
        base = env.observation_space
        n = len(space)
        self._params = np.zeros(n, np.float32)
        # Test-split tasks can lie outside the train range: leave generous room.
        self.observation_space = gym.spaces.Box(
            np.concatenate([base.low, np.full(n, -10.0, np.float32)]),
            np.concatenate([base.high, np.full(n, 10.0, np.float32)]),
            dtype=np.float32,
        )

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        unwrapped = self.env.unwrapped
        self._params = np.clip(unwrapped.dynamics_space.normalized(unwrapped.get_task()), -10, 10)
        return self.observation(obs), info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, self._params]).astype(np.float32)
