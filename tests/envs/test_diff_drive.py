"""Each DiffDrive dynamics parameter changes the motion in the intended direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from robometa.envs.diff_drive import DiffDriveEnv

STOP, FORWARD, BACKWARD, TURN_LEFT, TURN_RIGHT = range(5)
DIST, COS_B, SIN_B, V_FWD, V_LAT, YAW_RATE, W_LEFT, W_RIGHT = range(8)


def run(task: dict, action: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Observations and final (x, y, yaw) of ``steps`` repeats of ``action`` from rest at the
    origin, heading along +x."""
    env = DiffDriveEnv(task=task)
    try:
        env.reset(seed=seed)
        env._client.resetBasePositionAndOrientation(
            env._body, [0.0, 0.0, env._radius], [0.0, 0.0, 0.0, 1.0]
        )
        out = []
        for _ in range(steps):
            obs, _, term, trunc, info = env.step(action)
            assert not info["physics_error"]
            out.append(obs)
        (x, y, _), orn = env._client.getBasePositionAndOrientation(env._body)
        yaw = env._client.getEulerFromQuaternion(orn)[2]
        return np.stack(out), np.array([x, y, yaw])
    finally:
        env.close()


def test_forward_drives_straight_ahead():
    obs, (x, y, yaw) = run({}, FORWARD, 20)
    assert obs[-1, V_FWD] == pytest.approx(1.0, abs=0.05)  # 10 rad/s * 0.1 m
    assert x > 0.7 and abs(y) < 0.02 and abs(yaw) < 0.02


def test_turn_left_spins_counter_clockwise_on_the_spot():
    obs, (x, y, yaw) = run({}, TURN_LEFT, 10)
    assert obs[-1, YAW_RATE] > 1.5 and yaw > 0.8
    assert math.hypot(x, y) < 0.05


def test_reversed_left_motor_makes_forward_spin():
    obs, (x, y, _) = run({"motor_sign": -1}, FORWARD, 20)
    assert obs[-1, W_LEFT] < -5.0 and obs[-1, W_RIGHT] > 5.0  # the left wheel turns backward
    assert obs[-1, YAW_RATE] > 3.0 and math.hypot(x, y) < 0.1
    # ... and "turn right" now drives straight backward
    obs, (x, y, _) = run({"motor_sign": -1}, TURN_RIGHT, 20)
    assert x < -0.2 and abs(obs[-1, YAW_RATE]) < 0.1


@pytest.mark.parametrize(("ratio", "turn"), [(1.25, -1), (0.8, +1)])
def test_left_right_mismatch_makes_forward_curve(ratio, turn):
    obs, (x, y, yaw) = run({"left_right_mismatch": ratio}, FORWARD, 20)
    # a faster left wheel curves right (clockwise), a slower one left
    assert turn * obs[-1, YAW_RATE] > 0.3 and turn * yaw > 0.3 and turn * y > 0.05
    assert obs[-1, W_LEFT] / obs[-1, W_RIGHT] == pytest.approx(ratio, rel=0.02)


def test_bigger_wheels_drive_faster_at_the_same_wheel_speed():
    small, _ = run({"wheel_radius": 0.08}, FORWARD, 30)
    big, _ = run({"wheel_radius": 0.12}, FORWARD, 30)
    assert small[-1, W_LEFT] == pytest.approx(big[-1, W_LEFT], rel=0.02)
    assert small[-1, V_FWD] == pytest.approx(0.08 * small[-1, W_LEFT], rel=0.03)
    assert big[-1, V_FWD] == pytest.approx(0.12 * big[-1, W_LEFT], rel=0.03)


def test_actuator_gain_scales_the_top_speed():
    slow, _ = run({"actuator_gain": 0.5}, FORWARD, 20)
    fast, _ = run({"actuator_gain": 2.0}, FORWARD, 20)
    assert slow[-1, V_FWD] == pytest.approx(0.5, abs=0.05)
    assert fast[-1, V_FWD] == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(
    ("param", "low", "high"),
    [
        ("chassis_mass", 2.0, 8.0),  # a heavier robot accelerates less
        ("payload_mass", 0.0, 2.0),
        ("wheel_mass", 0.15, 0.6),
        ("lateral_friction", 1.0, 0.2),  # a slipping wheel accelerates the robot less
        ("joint_damping", 0.002, 0.1),  # axle damping eats motor torque
    ],
)
def test_parameter_slows_the_acceleration(param, low, high):
    v_low = run({param: low}, FORWARD, 3)[0][-1, V_FWD]
    v_high = run({param: high}, FORWARD, 3)[0][-1, V_FWD]
    assert v_high < v_low - 0.05, (v_low, v_high)


def test_strong_axle_damping_limits_the_top_speed():
    # 0.1 N*m*s/rad at 10 rad/s needs more than the motor's 0.8 N*m
    free, _ = run({"joint_damping": 0.002}, FORWARD, 30)
    damped, _ = run({"joint_damping": 0.1}, FORWARD, 30)
    assert free[-1, W_LEFT] == pytest.approx(10.0, abs=0.1)
    assert damped[-1, W_LEFT] < 8.5


def test_stop_brakes():
    env = DiffDriveEnv()
    try:
        env.reset(seed=0)
        for _ in range(20):
            obs, *_ = env.step(FORWARD)
        assert obs[V_FWD] > 0.9
        for _ in range(10):
            obs, *_ = env.step(STOP)
        assert abs(obs[V_FWD]) < 0.05
    finally:
        env.close()


def test_robot_does_not_tip_over_at_the_test_range_corners():
    env = DiffDriveEnv()
    rng = np.random.default_rng(0)
    corners = [
        {"chassis_mass": 1.0, "wheel_mass": 0.075, "wheel_radius": 0.06, "actuator_gain": 4.0},
        {"chassis_mass": 16.0, "payload_mass": 5.0, "wheel_radius": 0.15, "actuator_gain": 4.0},
        {"chassis_mass": 1.0, "payload_mass": 5.0, "joint_damping": 0.1, "lateral_friction": 0.2},
    ]
    try:
        for task in corners:
            env.set_task(task)
            env.reset(seed=0)
            for _ in range(100):
                _, _, term, trunc, info = env.step(int(rng.integers(5)))
                assert not info["physics_error"]
                orn = env._client.getBasePositionAndOrientation(env._body)[1]
                roll, pitch, _ = env._client.getEulerFromQuaternion(orn)
                assert abs(roll) < 0.3 and abs(pitch) < 0.3, task
                if term or trunc:
                    env.reset()
    finally:
        env.close()


def test_latency_delays_the_command():
    prompt = run({"latency_steps": 0}, FORWARD, 3)[0][:, V_FWD]
    late = run({"latency_steps": 2}, FORWARD, 3)[0][:, V_FWD]
    assert prompt[0] > 0.1
    assert abs(late[0]) < 0.01 and abs(late[1]) < 0.01 and late[2] > 0.1


def test_observation_noise_perturbs_observations_only():
    clean = run({"obs_noise": 0.0}, STOP, 10)[0]
    noisy = run({"obs_noise": 0.05}, STOP, 10)[0]
    # goal distance: scale 1 m, so the noise std is 0.05 m
    assert 0.01 < np.abs(noisy - clean)[:, DIST].mean() < 0.1


def test_goal_observation_matches_the_world():
    env = DiffDriveEnv()
    try:
        obs, _ = env.reset(seed=3)
        (x, y, _), orn = env._client.getBasePositionAndOrientation(env._body)
        yaw = env._client.getEulerFromQuaternion(orn)[2]
        bearing = math.atan2(obs[SIN_B], obs[COS_B])
        goal = (x + obs[DIST] * math.cos(yaw + bearing), y + obs[DIST] * math.sin(yaw + bearing))
        np.testing.assert_allclose(goal, env._goal, atol=1e-5)
        assert 1.0 <= obs[DIST] <= 3.0
    finally:
        env.close()


def greedy_action(obs: np.ndarray) -> int:
    """Turn on the spot toward the goal, drive forward once it is roughly ahead."""
    bearing = math.atan2(obs[SIN_B], obs[COS_B])
    if abs(bearing) > 0.3:
        return TURN_LEFT if bearing > 0 else TURN_RIGHT
    return FORWARD


def test_scripted_driving_beats_random_on_the_nominal_robot():
    """Guards that the task is learnable: heading for the goal reaches it, random does not."""
    env = DiffDriveEnv()
    rng = np.random.default_rng(0)
    scripted, random, reached = [], [], 0
    try:
        for seed in range(5):
            for policy, returns in (("scripted", scripted), ("random", random)):
                obs, _ = env.reset(seed=seed)
                total, done = 0.0, False
                while not done:
                    if policy == "scripted":
                        action = greedy_action(obs)
                    else:
                        action = int(rng.integers(5))
                    obs, reward, term, trunc, _ = env.step(action)
                    total += reward
                    done = term or trunc
                returns.append(total)
                if policy == "scripted":
                    reached += term
    finally:
        env.close()
    assert reached == 5  # every goal reached (and the bonus of 10 collected)
    assert np.mean(scripted) > 20.0
    assert np.mean(random) < 5.0
