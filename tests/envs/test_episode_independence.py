"""An episode depends only on its task and seed, never on what the env instance ran before.

Under domain randomization one env instance runs many tasks in a row, rebuilding its world
whenever the geometry changes; training and evaluation both assume that episode to be the one a
fresh env would give.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

STEPS = 40
SEED = 11

#: per family: task A, and a task B of different geometry and (where the family adapts it to
#: the task) a different substep count. Task C (built by the test) has A's geometry and B's
#: other parameters: the same world, a different substep count.
TASKS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "robometa/CartPole-v0": (
        {"pole_length": 1.2, "pole_mass": 0.08, "lateral_friction": 0.03, "joint_damping": 0.01},
        {
            "cart_mass": 2.0,
            "pole_length": 0.7,
            "pole_mass": 0.15,
            "payload_mass": 0.03,
            "lateral_friction": 0.0,
            "joint_damping": 0.001,
            "obs_noise": 0.01,
        },
    ),
    "robometa/Reacher-v0": (
        # a light short arm, strongly damped: 10 substeps
        {
            "link1_mass": 0.5,
            "link2_mass": 0.5,
            "link1_length": 0.35,
            "link2_length": 0.35,
            "joint_damping": 0.5,
            "lateral_friction": 0.2,
            "latency_steps": 1,
        },
        # 4 substeps (and so is A's arm with this damping)
        {
            "link1_mass": 1.5,
            "link1_length": 0.6,
            "link2_length": 0.4,
            "joint_damping": 0.1,
            "lateral_friction": 0.05,
            "obs_noise": 0.01,
        },
    ),
    "robometa/ArmReach-v0": (  # no geometry parameters: the world is built once
        {
            "link_mass_scale": 1.5,
            "payload_mass": 1.0,
            "lateral_friction": 0.1,
            "joint_damping": 5.0,
        },
        {
            "link_mass_scale": 0.6,
            "payload_mass": 2.5,
            "lateral_friction": 0.2,
            "joint_damping": 20.0,
            "actuator_gain": 1.5,
            "obs_noise": 0.01,
        },
    ),
    "robometa/DiffDrive-v0": (
        # light robot on small, strongly damped wheels: 5 substeps
        {"chassis_mass": 1.0, "wheel_mass": 0.075, "wheel_radius": 0.06, "joint_damping": 0.1},
        # 3 substeps (and so are A's wheels with this damping)
        {
            "chassis_mass": 6.0,
            "wheel_radius": 0.12,
            "payload_mass": 1.0,
            "joint_damping": 0.01,
            "lateral_friction": 0.6,
            "obs_noise": 0.01,
        },
    ),
}


def trajectory(
    env: gym.Env, task, seed: int, steps: int = STEPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations, rewards, terminated flags) of a fixed, seeded action sequence."""
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(0).integers(env.action_space.n, size=steps)
    observations, rewards, terminated = [obs], [], []
    for action in actions:
        obs, reward, term, trunc, _ = env.step(int(action))
        observations.append(obs)
        rewards.append(reward)
        terminated.append(term)
        if term or trunc:
            break
    return np.stack(observations), np.array(rewards), np.array(terminated)


def tasks_for(env: gym.Env, env_id: str):
    """Tasks A, B and C (A's geometry, B's other parameters) of one family."""
    space = env.unwrapped.dynamics_space
    if env_id in TASKS:
        a, b = (space.make_task(t) for t in TASKS[env_id])
    else:  # a family added later: two test-range robots differ in every parameter
        a, b = space.sample(2, seed=3, split="test")
    geometry = type(env.unwrapped).geometry_params
    c = space.make_task({**b, **{name: a[name] for name in geometry}})
    return a, b, c


def substeps(env: gym.Env, task) -> int | None:
    """The physics substeps ``task`` runs with, for families that adapt them to the task."""
    env.unwrapped.set_task(task)
    env.reset(seed=0)
    return getattr(env.unwrapped, "_substeps", None)


def assert_same_trajectory(expected, actual, what: str) -> None:
    for name, e, a in zip(("observations", "rewards", "terminated"), expected, actual, strict=True):
        if not np.array_equal(e, a):
            n = min(len(e), len(a))
            bad = np.flatnonzero(
                [not np.array_equal(x, y) for x, y in zip(e[:n], a[:n], strict=True)]
            )
            first = int(bad[0]) if len(bad) else n
            raise AssertionError(
                f"{what}: {name} differ from a fresh env's (lengths {len(e)} vs {len(a)}, "
                f"first difference at index {first}: {e[first] if first < len(e) else None} vs "
                f"{a[first] if first < len(a) else None})"
            )


def test_the_chosen_tasks_switch_geometry_and_substeps(env_id, make_env):
    # Guards that the next test exercises what it claims to.
    env = make_env(env_id)
    a, b, c = tasks_for(env, env_id)
    for name in type(env.unwrapped).geometry_params:
        assert c[name] == a[name]
    if type(env.unwrapped).geometry_params:
        assert any(a[name] != b[name] for name in type(env.unwrapped).geometry_params)
    n_a = substeps(env, a)
    if n_a is not None:
        assert substeps(env, b) != n_a and substeps(env, c) != n_a


def test_an_episode_does_not_depend_on_what_ran_before(env_id, make_env):
    fresh = make_env(env_id)
    a, b, c = tasks_for(fresh, env_id)
    expected = trajectory(fresh, a, SEED)
    env = make_env(env_id)
    # (task, seed, steps) of the episodes run before each comparison: a geometry change, a
    # repeat without a rebuild, a substep change without a rebuild, an episode cut short.
    history = [
        ("B", b, 1, STEPS),
        ("A", a, SEED, STEPS),
        ("B", b, 2, 7),
        ("A", a, SEED, STEPS),
        ("A", a, SEED, STEPS),
        ("C", c, 3, STEPS),
        ("A", a, SEED, STEPS),
    ]
    ran = []
    for label, task, seed, steps in history:
        got = trajectory(env, task, seed, steps)
        ran.append(label)
        if label == "A":
            assert_same_trajectory(expected, got, f"task A after {' '.join(ran[:-1])}")
