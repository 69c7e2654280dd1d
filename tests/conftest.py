"""Shared fixtures: every robot family, built headless."""

from __future__ import annotations

import gymnasium as gym
import pytest
import robometa.envs

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
