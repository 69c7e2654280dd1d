"""Shared fixtures: every robot family, built headless; one torch thread per test."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import pytest
import robometa.envs
import torch

ENV_IDS = list(robometa.envs.FAMILIES)


@pytest.fixture(params=ENV_IDS)
def env_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_env():
    """Make envs by id and close them at the end of the test."""
    made: list[gym.Env] = []

    def _make(env_id: str, **kwargs) -> gym.Env:
        env = gym.make(env_id, **kwargs)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op torch thread during every test (restored after it): the tensors are tiny,
    and more threads only fight the other test processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
