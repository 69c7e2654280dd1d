"""Every registered robot family honours the gymnasium contract and the task API."""

from __future__ import annotations

import inspect
import json

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from robometa.envs import Task


def rollout(env: gym.Env, seed: int, steps: int = 60, action_seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        out.append(obs)
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return np.stack(out)


def test_check_env_passes(env_id, make_env):
    env = make_env(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert env.observation_space.dtype == np.float32


def test_spec_docstring_has_every_section(env_id, make_env):
    cls = type(make_env(env_id).unwrapped)
    for section in (
        "## Action space",
        "## Observation space",
        "## Reward",
        "## Episode end",
        "## Dynamics parameters",
    ):
        assert section in cls.__doc__, f"{cls.__name__} docstring lacks {section!r}"
    for name in cls.dynamics_space.names:
        assert f"`{name}`" in cls.__doc__, f"{cls.__name__} docstring does not document {name}"
    assert len(cls.observation_names) == make_env(env_id).observation_space.shape[0]
    assert len(cls.action_names) == make_env(env_id).action_space.n


def test_docstring_dynamics_table_matches_the_space(env_id, make_env):
    # The spec table is the space's own table, so the docs cannot drift from the ranges.
    cls = type(make_env(env_id).unwrapped)
    assert cls.dynamics_space.table() in inspect.cleandoc(cls.__doc__)


def test_render_rgb_array_headless(env_id, make_env):
    env = make_env(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 1.0, "the rendered frame is blank"


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_runs_in_vector_envs(env_id, vector_cls):
    envs = vector_cls([lambda: gym.make(env_id) for _ in range(2)])
    try:
        obs, _ = envs.reset(seed=3)
        for _ in range(5):
            obs, rew, term, trunc, _ = envs.step(envs.action_space.sample())
        assert obs.shape == (2, *envs.single_observation_space.shape)
        assert np.all(np.isfinite(obs)) and rew.shape == (2,)
    finally:
        envs.close()


def test_same_seed_and_task_give_identical_trajectories(env_id, make_env):
    a, b = make_env(env_id), make_env(env_id)
    task = a.unwrapped.sample_tasks(1, seed=7)[0]
    a.unwrapped.set_task(task)
    b.unwrapped.set_task(task)
    np.testing.assert_array_equal(rollout(a, seed=11), rollout(b, seed=11))


def test_different_tasks_give_different_dynamics(env_id, make_env):
    env = make_env(env_id)
    t1, t2 = env.unwrapped.sample_tasks(2, seed=5)
    env.unwrapped.set_task(t1)
    r1 = rollout(env, seed=11)
    env.unwrapped.set_task(t2)
    r2 = rollout(env, seed=11)
    assert not np.allclose(r1[: len(r2)][:20], r2[: len(r1)][:20])


def test_episodes_truncate_at_time_limit(env_id, make_env):
    env = make_env(env_id, max_episode_steps=7)
    env.reset(seed=0)
    noop = type(env.unwrapped).noop_action
    for t in range(7):  # noqa: B007 (t is checked after the loop)
        _, _, term, trunc, _ = env.step(noop)
        if term:
            pytest.skip("episode terminated before the time limit under the no-op action")
    assert trunc and t == 6


@pytest.mark.parametrize("split", ["train", "test"])
def test_task_sampling_is_seeded_and_in_range(env_id, make_env, split):
    env = make_env(env_id).unwrapped
    tasks = env.sample_tasks(50, seed=1, split=split)
    assert tasks == env.sample_tasks(50, seed=1, split=split)
    assert tasks != env.sample_tasks(50, seed=2, split=split)
    for p in env.dynamics_space.params:
        values = [t[p.name] for t in tasks]
        bounds = getattr(p, split)
        if p.distribution == "choice":
            assert set(values) <= set(bounds)
        else:
            assert min(bounds) <= min(values) and max(values) <= max(bounds)


def test_test_ranges_contain_train_ranges(env_id, make_env):
    for p in make_env(env_id).unwrapped.dynamics_space.params:
        if p.distribution == "choice":
            assert set(p.train) <= set(p.test), p.name
        else:
            assert p.test[0] <= p.train[0] and p.train[1] <= p.test[1], p.name


def test_task_round_trips_through_yaml_and_json(env_id, make_env):
    env = make_env(env_id).unwrapped
    for task in env.sample_tasks(5, seed=3, split="test"):
        assert env.dynamics_space.make_task(json.loads(json.dumps(dict(task)))) == task
        assert env.dynamics_space.make_task(yaml.safe_load(yaml.safe_dump(dict(task)))) == task
        assert isinstance(task, Task) and hash(task) == hash(Task(dict(task)))


def test_set_task_takes_effect_at_reset(env_id, make_env):
    env = make_env(env_id).unwrapped
    task = env.sample_tasks(1, seed=9)[0]
    env.set_task(task)
    assert env.get_task() == task
    env.reset(seed=0)
    assert env._task == task


def test_bad_task_values_are_rejected_with_the_parameter_named(env_id, make_env):
    env = make_env(env_id).unwrapped
    with pytest.raises(ValueError, match="unknown dynamics parameter 'no_such_param'"):
        env.set_task({"no_such_param": 1.0})
    mass = next(p for p in env.dynamics_space.params if p.unit == "kg")
    with pytest.raises(ValueError, match=rf"{mass.name}.*-1.0.*physical range"):
        env.set_task({mass.name: -1.0})
    with pytest.raises(ValueError, match=rf"{mass.name}.*type str"):
        env.set_task({mass.name: "heavy"})
    with pytest.raises(ValueError, match="lateral_friction.*physical range"):
        env.set_task({"lateral_friction": -0.1})
    assert env.get_task() == env.dynamics_space.nominal(), "a rejected task must not be applied"


def test_every_family_randomizes_the_common_parameters(env_id, make_env):
    names = set(make_env(env_id).unwrapped.dynamics_space.names)
    common = {
        "lateral_friction",
        "joint_damping",
        "actuator_gain",
        "latency_steps",
        "obs_noise",
        "motor_sign",
        "payload_mass",
    }
    assert common <= names, f"missing {sorted(common - names)}"


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e9])
def test_physics_blow_up_truncates_without_nan(env_id, make_env, monkeypatch, bad):
    env = make_env(env_id)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    raw = np.zeros(env.observation_space.shape[0])
    raw[0] = bad
    monkeypatch.setattr(unwrapped, "_observe", lambda client: raw)
    obs, reward, term, trunc, info = env.step(type(unwrapped).noop_action)
    assert info["physics_error"] and trunc and not term and reward == 0.0
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)


def test_bad_action_is_rejected(env_id, make_env):
    env = make_env(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(env.action_space.n)
