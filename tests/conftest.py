"""Shared fixtures: every robot family, built headless; one torch thread per test."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest

# A Python without the project installed: one clear line, not an ImportError per module.
_MISSING = [
    m for m in ("gymnasium", "pybullet", "torch", "robometa") if not importlib.util.find_spec(m)
]
if _MISSING:
    pytest.exit(
        f"robometa's tests need {', '.join(_MISSING)}, not installed in {sys.executable}: run the "
        'README\'s test command, pip install torch==2.13.0 && pip install -e ".[test,bench]" && pytest',
        returncode=4,
    )

import gymnasium as gym  # noqa: E402
import robometa.envs  # noqa: E402
import torch  # noqa: E402

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
