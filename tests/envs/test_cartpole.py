"""Each CartPole dynamics parameter changes the motion in the intended direction."""

from __future__ import annotations

import numpy as np
import pytest
from robometa.envs.cartpole import CartPoleEnv


def run(task: dict, action: int, steps: int, seed: int = 0) -> np.ndarray:
    env = CartPoleEnv(task=task)
    try:
        obs, _ = env.reset(seed=seed)
        env._client.resetJointState(env._body, 0, 0.0, 0.0)  # a fixed start: upright, at rest
        env._client.resetJointState(env._body, 1, 0.02, 0.0)
        out = []
        for _ in range(steps):
            obs, _, term, trunc, info = env.step(action)
            assert not info["physics_error"]
            out.append(obs)
            if term or trunc:
                break
        return np.stack(out)
    finally:
        env.close()


PUSH_RIGHT, NONE = 2, 1


def test_reversed_motor_pushes_the_cart_the_other_way():
    assert run({"motor_sign": 1}, PUSH_RIGHT, 5)[-1, 1] > 0.5
    assert run({"motor_sign": -1}, PUSH_RIGHT, 5)[-1, 1] < -0.5


@pytest.mark.parametrize(
    ("param", "low", "high", "sign"),
    [
        ("actuator_gain", 0.5, 2.0, +1),  # a stronger motor accelerates the cart more
        ("cart_mass", 0.5, 2.0, -1),  # a heavier cart accelerates less
        ("pole_mass", 0.05, 0.4, -1),
        ("lateral_friction", 0.0, 0.1, -1),  # rail friction slows the cart
    ],
)
def test_parameter_changes_cart_acceleration(param, low, high, sign):
    v_low = run({param: low}, PUSH_RIGHT, 5)[-1, 1]
    v_high = run({param: high}, PUSH_RIGHT, 5)[-1, 1]
    assert sign * (v_high - v_low) > 0.02, (v_low, v_high)


def test_longer_pole_falls_slower():
    short = run({"pole_length": 0.6}, NONE, 15)[-1, 2]
    long = run({"pole_length": 1.4}, NONE, 15)[-1, 2]
    assert abs(short) > abs(long) * 1.2 > 0


def test_tip_payload_slows_the_fall():
    bare = run({"payload_mass": 0.0}, NONE, 15)[-1, 2]
    loaded = run({"payload_mass": 0.15}, NONE, 15)[-1, 2]
    assert abs(loaded) < abs(bare) * 0.9


def test_hinge_damping_slows_the_fall():
    free = run({"joint_damping": 0.0001}, NONE, 15)[-1, 3]
    damped = run({"joint_damping": 0.1}, NONE, 15)[-1, 3]
    assert abs(damped) < abs(free) * 0.9


def test_latency_delays_the_push():
    prompt = run({"latency_steps": 0}, PUSH_RIGHT, 3)[:, 1]
    late = run({"latency_steps": 2}, PUSH_RIGHT, 3)[:, 1]
    assert prompt[0] > 0.1 and abs(late[0]) < 0.02 and abs(late[1]) < 0.02 and late[2] > 0.1


def test_observation_noise_perturbs_observations_only():
    clean = run({"obs_noise": 0.0}, NONE, 10)
    noisy = run({"obs_noise": 0.05}, NONE, 10)
    assert 0.005 < np.abs(noisy - clean)[:, 0].mean() < 0.2
