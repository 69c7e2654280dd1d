"""Each ArmReach dynamics parameter changes the arm's motion in the intended direction."""

from __future__ import annotations

import numpy as np
import pytest
from robometa.envs.arm_reach import EE_LINK, HOME, ArmReachEnv

PLUS_X, MINUS_X, PLUS_Y, MINUS_Y, PLUS_Z, MINUS_Z, STAY = range(7)
#: (axis index, sign) of each move action
AXES = {PLUS_X: (0, 1), MINUS_X: (0, -1), PLUS_Y: (1, 1), MINUS_Y: (1, -1)}
AXES |= {PLUS_Z: (2, 1), MINUS_Z: (2, -1)}


def run(task: dict, actions: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations (start included) and rewards from the home pose at rest."""
    env = ArmReachEnv(task=task)
    try:
        env.reset(seed=seed)
        for j, q in enumerate(HOME):  # a fixed start: the home pose, at rest
            env._client.resetJointState(env._body, j, q, 0.0)
        out, rewards = [env._observe(env._client)], []
        for a in actions:
            obs, reward, term, trunc, info = env.step(a)
            assert not info["physics_error"] and not term
            out.append(obs)
            rewards.append(reward)
        return np.stack(out), np.array(rewards)
    finally:
        env.close()


def displacement(task: dict, action: int, steps: int) -> np.ndarray:
    obs, _ = run(task, [action] * steps)
    return obs[-1, :3] - obs[0, :3]


@pytest.mark.parametrize("action", list(AXES))
def test_each_move_action_moves_the_end_effector_along_its_axis(action):
    axis, sign = AXES[action]
    d = displacement({}, action, 8)
    assert sign * d[axis] > 0.08, d  # about 1 m/s once up to speed
    assert np.abs(np.delete(d, axis)).max() < 0.015, d


def test_stay_holds_the_arm_still():
    assert np.abs(displacement({}, STAY, 25)).max() < 1e-3


def test_reversed_motor_moves_the_arm_the_wrong_way():
    normal = displacement({"motor_sign": 1}, PLUS_Y, 6)
    reversed_ = displacement({"motor_sign": -1}, PLUS_Y, 6)
    assert normal[1] > 0.08 and reversed_[1] < -0.08, (normal, reversed_)
    # The reversed joint is the base yaw: vertical moves are untouched.
    np.testing.assert_allclose(
        displacement({"motor_sign": -1}, PLUS_Z, 6),
        displacement({"motor_sign": 1}, PLUS_Z, 6),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("param", "low", "high", "action", "sign"),
    [
        ("actuator_gain", 0.5, 2.0, PLUS_Z, +1),  # a stronger servo accelerates faster
        ("link_mass_scale", 0.5, 2.0, PLUS_Z, -1),  # heavier links accelerate slower
        ("payload_mass", 0.0, 3.0, PLUS_Z, -1),  # a payload is lifted slower
        ("joint_damping", 0.4, 40.0, PLUS_Y, -1),  # damping slows the arm
        ("joint_damping", 0.1, 100.0, PLUS_Y, -1),
        ("lateral_friction", 0.0, 0.5, PLUS_Z, -1),  # joint friction slows the arm
        ("lateral_friction", 0.0, 0.5, PLUS_Y, -1),
    ],
)
def test_parameter_changes_how_far_the_arm_gets(param, low, high, action, sign):
    axis, direction = AXES[action]
    d_low = direction * displacement({param: low}, action, 5)[axis]
    d_high = direction * displacement({param: high}, action, 5)[axis]
    assert d_low > 0.03 and d_high > 0.0, (d_low, d_high)
    assert sign * (d_high - d_low) > 0.006, (d_low, d_high)


def test_heavy_payload_sags_a_weak_arm():
    sag = displacement({"payload_mass": 7.0, "actuator_gain": 0.5}, STAY, 25)
    assert sag[2] < -0.05, sag
    # The same payload on the nominal servos, or a train-range payload on weak ones, is held.
    assert abs(displacement({"payload_mass": 7.0}, STAY, 25)[2]) < 1e-3
    assert abs(displacement({"payload_mass": 3.0, "actuator_gain": 0.5}, STAY, 25)[2]) < 1e-3


def test_link_masses_and_inertias_are_scaled_together():
    env = ArmReachEnv(task={"link_mass_scale": 2.0, "payload_mass": 1.5})
    nominal = ArmReachEnv()
    try:
        env.reset(seed=0)
        nominal.reset(seed=0)
        for j in range(EE_LINK):
            mass, _, inertia = env._client.getDynamicsInfo(env._body, j)[:3]
            mass0, _, inertia0 = nominal._client.getDynamicsInfo(nominal._body, j)[:3]
            assert mass == pytest.approx(2.0 * mass0)
            np.testing.assert_allclose(inertia, 2.0 * np.array(inertia0))
        ee_mass = env._client.getDynamicsInfo(env._body, EE_LINK)[0]
        assert ee_mass == pytest.approx(2.0 * 0.3 + 1.5)
    finally:
        env.close()
        nominal.close()


def test_gravity_compensation_follows_the_link_masses_from_task_to_task():
    # PyBullet keeps a body's inverse-dynamics model from its first use: the compensation must
    # not keep the masses of whichever task stepped first.
    env = ArmReachEnv()
    try:
        for scale in (0.25, 4.0, 0.25, 1.0, 4.0):
            env.set_task({"link_mass_scale": scale})
            env.reset(seed=0)
            for j, q in enumerate(HOME):
                env._client.resetJointState(env._body, j, q, 0.0)
            start = env._observe(env._client)[:3]
            for _ in range(25):
                env.step(STAY)
            drift = env._observe(env._client)[:3] - start
            assert np.abs(drift).max() < 1e-3, (scale, drift)
    finally:
        env.close()


def test_latency_delays_the_move():
    prompt = run({"latency_steps": 0}, [PLUS_Z] * 4)[0][:, 2]
    late = run({"latency_steps": 2}, [PLUS_Z] * 4)[0][:, 2]
    assert prompt[1] - prompt[0] > 0.002 and prompt[2] - prompt[0] > 0.01
    assert abs(late[1] - late[0]) < 1e-4 and abs(late[2] - late[0]) < 1e-4
    assert late[4] - late[0] > 0.01


def test_observation_noise_perturbs_observations_only():
    clean_obs, clean_rewards = run({"obs_noise": 0.0}, [PLUS_Y] * 10)
    noisy_obs, noisy_rewards = run({"obs_noise": 0.05}, [PLUS_Y] * 10)
    error = np.abs(noisy_obs - clean_obs)[1:]
    assert 0.003 < error[:, :3].mean() < 0.03  # 0.05 * 0.25 m std
    np.testing.assert_allclose(noisy_rewards, clean_rewards)  # rewards use the true state


def test_extreme_test_range_robots_stay_finite():
    env = ArmReachEnv()
    rng = np.random.default_rng(0)
    extremes = [
        {"joint_damping": 100.0, "actuator_gain": 0.25, "link_mass_scale": 0.25},
        {"lateral_friction": 0.5, "joint_damping": 100.0, "payload_mass": 7.0},
        {"actuator_gain": 4.0, "link_mass_scale": 0.25, "joint_damping": 0.1},
        {"actuator_gain": 0.25, "link_mass_scale": 4.0, "payload_mass": 7.0},
    ]
    try:
        for i, task in enumerate(extremes + env.sample_tasks(6, seed=1, split="test")):
            env.set_task(task)
            env.reset(seed=i)
            for _ in range(100):
                obs, _, _, _, info = env.step(int(rng.integers(7)))
                assert not info["physics_error"], task
                assert np.all(np.isfinite(obs)) and np.abs(obs[3:6]).max() < 4.0, task
    finally:
        env.close()


def greedy(obs: np.ndarray) -> int:
    """Move along the axis of largest target error; stay when within 1 cm on every axis."""
    error = obs[6:9]
    axis = int(np.argmax(np.abs(error)))
    if abs(error[axis]) < 0.01:
        return STAY
    return 2 * axis + (0 if error[axis] > 0 else 1)


def returns(policy, task: dict, episodes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    env = ArmReachEnv(task=task)
    rng = np.random.default_rng(0)
    totals, final = [], []
    try:
        for seed in range(episodes):
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                a = policy(obs) if policy is not None else int(rng.integers(7))
                obs, reward, term, trunc, _ = env.step(a)
                total += reward
                done = term or trunc
            totals.append(total)
            final.append(np.linalg.norm(obs[6:9]))
        return np.array(totals), np.array(final)
    finally:
        env.close()


def test_scripted_greedy_policy_beats_random_on_the_nominal_robot():
    greedy_returns, greedy_final = returns(greedy, {})
    random_returns, random_final = returns(None, {})
    assert greedy_returns.mean() > 50.0, greedy_returns  # about +79
    assert random_returns.mean() < -10.0, random_returns  # about -27
    assert np.all(greedy_final < 0.05), greedy_final
    assert np.median(random_final) > 0.1, random_final


def test_reversed_motor_breaks_the_nominal_policy():
    # Adaptation matters: the policy that solves the nominal robot fails on a reversed motor.
    nominal, _ = returns(greedy, {"motor_sign": 1})
    reversed_, _ = returns(greedy, {"motor_sign": -1})
    assert reversed_.mean() < 0.0 < 50.0 < nominal.mean(), (nominal, reversed_)
