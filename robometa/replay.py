"""Replay buffers: a fixed-capacity ring of transitions, one per task for the meta-learners."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robometa.adaptation import Batch


class ReplayBuffer:
    """Ring buffer of ``(obs, action, reward, next_obs, terminated)`` transitions.

    ``terminated`` is 1 only where the episode really ended (not on time-limit truncation),
    so that targets bootstrap through truncations.
    """

    def __init__(self, capacity: int, obs_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.pos = 0
        self.size = 0
        #: transitions ever added to this buffer object (not saved: a count to take
        #: differences of, e.g. what a remote worker's collection added)
        self.added = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        i = self.pos
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.terminated[i] = float(terminated)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return rng.integers(0, self.size, size=n)

    def batch(self, idx: np.ndarray) -> Batch:
        return Batch(
            torch.from_numpy(self.obs[idx]),
            torch.from_numpy(self.action[idx]),
            torch.from_numpy(self.reward[idx]),
            torch.from_numpy(self.next_obs[idx]),
            torch.from_numpy(self.terminated[idx]),
        )

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        return self.batch(self.indices(n, rng))

    def latest(self, n: int) -> Batch:
        """The ``n`` most recent transitions (in insertion order)."""
        n = min(n, self.size)
        idx = (self.pos - n + np.arange(n)) % self.capacity
        return self.batch(idx)

    def all(self) -> Batch:
        return self.latest(self.size)

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        order = (self.pos - n + np.arange(n)) % self.capacity
        return {
            "capacity": self.capacity,
            "obs": torch.from_numpy(self.obs[order].copy()),
            "action": torch.from_numpy(self.action[order].copy()),
            "reward": torch.from_numpy(self.reward[order].copy()),
            "next_obs": torch.from_numpy(self.next_obs[order].copy()),
            "terminated": torch.from_numpy(self.terminated[order].copy()),
            "pos": self.pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(state["action"])
        if n > self.capacity:
            raise ValueError(f"replay state holds {n} transitions, capacity is {self.capacity}")
        # Stored oldest first; restore the exact ring layout so later writes land where they did.
        # A buffer of another capacity cannot share that layout: oldest first from slot 0.
        same = int(state.get("capacity", -1)) == self.capacity
        pos = int(state["pos"]) if same else n % self.capacity
        idx = (pos - n + np.arange(n)) % self.capacity
        self.obs[idx] = state["obs"].numpy()
        self.action[idx] = state["action"].numpy()
        self.reward[idx] = state["reward"].numpy()
        self.next_obs[idx] = state["next_obs"].numpy()
        self.terminated[idx] = state["terminated"].numpy()
        self.pos, self.size = pos, n
