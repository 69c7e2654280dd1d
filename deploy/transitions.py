"""Transitions: what ``observe`` accepts (:func:`rejection`) and the ring buffer it fills."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from robometa.deploy.checks import (
    check_count,
    finite_as_float32,
    is_number,
    is_whole_number,
    scalar,
    within,
)

#: buffer size when neither ``capacity`` nor the bundle's support size says.
DEFAULT_CAPACITY = 1000
#: the most transitions a buffer holds (``capacity``, ``min_transitions``, and the manifest's
#: ``inner.support_size`` where it sets the capacity): the training config's own cap.
MAX_CAPACITY = 1_000_000
#: why ``observe`` refused a transition (the keys of ``Adapter.rejected``).
REJECTION_REASONS: tuple[str, ...] = (
    "non_finite_obs",
    "obs_out_of_range",
    "action_not_integer",
    "action_out_of_range",
    "reward_not_number",
    "non_finite_reward",
    "bad_terminated",
)


class Transitions(NamedTuple):
    """A batch of transitions as numpy arrays, in ``adapt.onnx`` input order."""

    obs: np.ndarray  # (B, obs_dim) float32
    action: np.ndarray  # (B,) int64
    reward: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, obs_dim) float32
    terminated: np.ndarray  # (B,) float32, 1.0 where the episode really ended

    def take(self, index: np.ndarray) -> Transitions:
        return Transitions(*(a[index] for a in self))


class TransitionBuffer:
    """Fixed-capacity ring buffer; arrays are allocated once, the oldest entry is overwritten.

    ``capacity`` is an int in ``[1, MAX_CAPACITY]``.
    """

    def __init__(self, capacity: int, obs_dim: int) -> None:
        capacity = check_count("capacity", capacity, 1, MAX_CAPACITY, "MAX_CAPACITY")
        self.capacity = capacity
        self._data = Transitions(
            np.zeros((capacity, obs_dim), np.float32),
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.float32),
            np.zeros((capacity, obs_dim), np.float32),
            np.zeros(capacity, np.float32),
        )
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: float
    ) -> None:
        i = self._next
        d = self._data
        d.obs[i], d.action[i], d.reward[i] = obs, action, reward
        d.next_obs[i], d.terminated[i] = next_obs, terminated
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def ordered(self) -> Transitions:
        """Copies of the stored transitions, oldest first."""
        start = (self._next - self._size) % self.capacity
        index = (start + np.arange(self._size)) % self.capacity
        return self._data.take(index)

    def clear(self) -> None:
        self._next = 0
        self._size = 0


def rejection(
    obs: np.ndarray,
    action: Any,
    reward: Any,
    next_obs: np.ndarray,
    terminated: Any,
    low: np.ndarray,
    high: np.ndarray,
    n_actions: int,
) -> str:
    """Why ``observe`` refuses a transition (one of :data:`REJECTION_REASONS`), '' if it does
    not; ``obs``/``next_obs`` are already float32 of the right shape, ``low``/``high`` the
    observation bounds."""
    if not (np.isfinite(obs).all() and np.isfinite(next_obs).all()):
        return "non_finite_obs"
    if not (within(obs, low, high) and within(next_obs, low, high)):
        return "obs_out_of_range"
    action, reward, terminated = scalar(action), scalar(reward), scalar(terminated)
    if not is_whole_number(action):
        return "action_not_integer"
    if not 0 <= int(action) < n_actions:
        return "action_out_of_range"
    if not is_number(reward):
        return "reward_not_number"
    if not finite_as_float32(reward):
        return "non_finite_reward"
    if not (isinstance(terminated, (bool, np.bool_)) or is_whole_number(terminated)):
        return "bad_terminated"
    if terminated not in (0, 1):  # compared as is: float() of 10**400 would overflow
        return "bad_terminated"
    return ""
