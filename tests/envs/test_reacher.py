"""Each Reacher dynamics parameter changes the motion in the intended direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from robometa.envs.reacher import ReacherEnv

NONE, SHOULDER_CCW, SHOULDER_CW, ELBOW_CCW, ELBOW_CW = range(5)
V1, V2 = 4, 5  # observation indices of the shoulder and elbow velocities


def run(
    task: dict,
    action: int,
    steps: int,
    elbow: float = 0.5,
    velocity: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
) -> np.ndarray:
    """Observations of ``steps`` repeats of ``action`` from a fixed start (shoulder at 0)."""
    env = ReacherEnv(task=task)
    try:
        env.reset(seed=seed)
        env._client.resetJointState(env._body, 0, 0.0, velocity[0])
        env._client.resetJointState(env._body, 1, elbow, velocity[1])
        out = []
        for _ in range(steps):
            obs, _, term, trunc, info = env.step(action)
            assert not info["physics_error"] and not term
            out.append(obs)
        return np.stack(out)
    finally:
        env.close()


def test_reversed_shoulder_motor_turns_the_arm_the_other_way():
    assert run({"motor_sign": 1}, SHOULDER_CCW, 5)[-1, V1] > 1.0
    assert run({"motor_sign": -1}, SHOULDER_CCW, 5)[-1, V1] < -1.0
    # The elbow motor is not reversed.
    assert run({"motor_sign": -1}, ELBOW_CCW, 5)[-1, V2] > 1.0


@pytest.mark.parametrize(
    ("param", "low", "high", "sign"),
    [
        ("actuator_gain", 0.5, 2.0, +1),  # a stronger motor accelerates the arm more
        ("link1_mass", 0.5, 2.0, -1),  # heavier links accelerate less
        ("link2_mass", 0.5, 2.0, -1),
        # The elbow bearing barely resists (0.05 N*m at the nominal friction): the forearm and the
        # payload lag behind, and the shoulder feels little of the payload's inertia (the
        # smallest effect here, about 0.18 rad/s after 5 steps).
        ("payload_mass", 0.0, 1.0, -1),
        ("link1_length", 0.35, 0.65, -1),  # a longer upper arm has more inertia
        ("lateral_friction", 0.0, 0.3, -1),  # bearing friction slows the arm
        ("joint_damping", 0.02, 0.5, -1),
    ],
)
def test_parameter_changes_shoulder_acceleration(param, low, high, sign):
    v_low = run({param: low}, SHOULDER_CCW, 5)[-1, V1]
    v_high = run({param: high}, SHOULDER_CCW, 5)[-1, V1]
    assert sign * (v_high - v_low) > 0.12, (v_low, v_high)


@pytest.mark.parametrize(
    ("param", "low", "high", "sign"),
    [
        ("actuator_gain", 0.5, 2.0, +1),
        ("link2_mass", 0.5, 2.0, -1),
        ("link2_length", 0.35, 0.65, -1),  # a longer forearm has more inertia
        ("payload_mass", 0.0, 0.5, -1),
        ("lateral_friction", 0.0, 0.3, -1),
        ("joint_damping", 0.02, 0.5, -1),
    ],
)
def test_parameter_changes_elbow_acceleration(param, low, high, sign):
    v_low = run({param: low}, ELBOW_CCW, 5)[-1, V2]
    v_high = run({param: high}, ELBOW_CCW, 5)[-1, V2]
    assert sign * (v_high - v_low) > 0.3, (v_low, v_high)


@pytest.mark.parametrize("param", ["joint_damping", "lateral_friction"])
def test_damping_and_friction_slow_a_coasting_arm(param):
    low, high = {"joint_damping": (0.02, 0.5), "lateral_friction": (0.0, 0.3)}[param]
    free = run({param: low}, NONE, 10, velocity=(3.0, 0.0))[-1, V1]
    slowed = run({param: high}, NONE, 10, velocity=(3.0, 0.0))[-1, V1]
    # friction: 0.29 N*m on the shoulder for 0.4 s, about 0.25 rad/s; damping: about 0.9 rad/s
    assert 0.0 < slowed < free - 0.2, (free, slowed)


@pytest.mark.parametrize(("l1", "l2"), [(0.5, 0.5), (0.3, 0.75), (0.8, 0.25)])
def test_link_lengths_put_the_fingertip_where_the_observation_says(l1, l2):
    env = ReacherEnv(task={"link1_length": l1, "link2_length": l2})
    try:
        env.reset(seed=1)
        for q1, q2 in [(0.0, 0.0), (0.7, -1.2), (-2.0, 2.5)]:
            env._client.resetJointState(env._body, 0, q1, 0.0)
            env._client.resetJointState(env._body, 1, q2, 0.0)
            obs = env._observe(env._client)
            tip = obs[6:8] - obs[8:10]  # target minus (target - tip)
            simulated = env._client.getLinkState(env._body, 2)[4][:2]  # fingertip link
            np.testing.assert_allclose(tip, simulated, atol=1e-9)
            if q2 == 0.0:  # stretched out along +x: the tip is l1 + l2 away
                assert tip[0] == pytest.approx(l1 + l2)
    finally:
        env.close()


@pytest.mark.parametrize("lengths", [(0.5, 0.5), (0.8, 0.25)])
def test_targets_are_reachable(lengths):
    l1, l2 = lengths
    env = ReacherEnv(task={"link1_length": l1, "link2_length": l2})
    try:
        for seed in range(50):
            obs, _ = env.reset(seed=seed)
            radius = math.hypot(obs[6], obs[7])
            assert abs(l1 - l2) < radius < 0.9 * (l1 + l2) + 1e-9
    finally:
        env.close()


def test_strongly_damped_light_arm_stays_stable():
    # Light, short links with the strongest test damping: explicit damping at the nominal
    # 0.01 s substep would overshoot (velocity flipping sign and growing); the env substeps
    # finely enough that the free motion decays smoothly.
    task = {
        "link1_mass": 0.25,
        "link2_mass": 0.25,
        "link1_length": 0.25,
        "link2_length": 0.25,
        "joint_damping": 0.5,
        "lateral_friction": 0.0,
    }
    env = ReacherEnv(task=task)
    env.reset(seed=0)
    assert env._substeps > ReacherEnv.substeps
    env.close()
    elbow = run(task, NONE, 6, elbow=0.0, velocity=(0.0, 10.0))[:, V2]
    assert np.all(np.diff(elbow) < 0) and np.all(elbow > 0), elbow
    assert run({}, NONE, 1)[0, V1] == pytest.approx(0.0, abs=0.2)  # nominal: no such problem


def test_nominal_arm_uses_the_nominal_substeps():
    env = ReacherEnv()
    env.reset(seed=0)
    assert env._substeps == ReacherEnv.substeps
    env.close()


def test_latency_delays_the_torque():
    prompt = run({"latency_steps": 0}, SHOULDER_CCW, 3)[:, V1]
    late = run({"latency_steps": 2}, SHOULDER_CCW, 3)[:, V1]
    assert prompt[0] > 0.3
    assert abs(late[0]) < 0.05 and abs(late[1]) < 0.05 and late[2] > 0.3


def test_observation_noise_perturbs_observations_only():
    clean = run({"obs_noise": 0.0}, NONE, 10)
    noisy = run({"obs_noise": 0.05}, NONE, 10)
    # target minus tip, x: scale 0.5 m, so the noise std is 0.025 m
    assert 0.005 < np.abs(noisy - clean)[:, 8].mean() < 0.05


def coasting_slowdown(env: ReacherEnv, task: dict) -> float:
    """Shoulder speed lost in one control step coasting at 3 rad/s, elbow straight, no torque."""
    env.set_task(task)
    env.reset(seed=0)
    env._client.resetJointState(env._body, 0, 0.0, 3.0)
    env._client.resetJointState(env._body, 1, 0.0, 0.0)
    obs, *_ = env.step(NONE)
    return 3.0 - float(obs[V1])


def test_bearing_friction_is_the_same_in_every_episode():
    # Without damping the coasting arm is slowed by bearing friction alone. The elbow bearing
    # holds the straight arm rigid, so the shoulder's friction torque mu * g * (m1 + m2) * 0.05
    # decelerates the whole arm's inertia about the shoulder. PyBullet turns the torque cap into
    # an impulse cap with the time step in force when the motor is set: it must be the substep.
    task = {"lateral_friction": 0.3, "joint_damping": 0.0}
    env = ReacherEnv(task=task)
    try:
        first = coasting_slowdown(env, task)  # the first episode after the world was built
        later = coasting_slowdown(env, task)
        coasting_slowdown(env, {**task, "link1_length": 0.35})  # rebuilds the world
        after_rebuild = coasting_slowdown(env, task)  # ... and rebuilds it back
        coasting_slowdown(env, {**task, "joint_damping": 2.0})  # same arm, 10 substeps
        after_substep_change = coasting_slowdown(env, task)
        inertia = env._client.calculateMassMatrix(env._body, [0.0, 0.0])[0][0]
    finally:
        env.close()
    torque = 0.3 * 9.81 * (1.0 + 1.0) * 0.05
    assert later == pytest.approx(torque / inertia * ReacherEnv.control_dt, rel=1e-3)
    assert first == later and after_rebuild == later and after_substep_change == later, (
        first,
        later,
        after_rebuild,
        after_substep_change,
    )


def test_a_geometry_switch_rebuilds_the_arm_with_the_new_lengths():
    # The URDF is regenerated at the same path: the world must load the new file, not the first
    # one PyBullet read there.
    env = ReacherEnv()
    try:
        env.reset(seed=0)
        for l1, l2 in [(0.3, 0.75), (0.5, 0.5), (0.8, 0.25)]:
            env.set_task({"link1_length": l1, "link2_length": l2})
            env.reset(seed=0)
            env._client.resetJointState(env._body, 0, 0.0, 0.0)
            env._client.resetJointState(env._body, 1, 0.0, 0.0)
            tip_x = env._client.getLinkState(env._body, 2)[4][0]  # fingertip, arm stretched
            assert tip_x == pytest.approx(l1 + l2), (l1, l2, tip_x)
    finally:
        env.close()


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def scripted_action(obs: np.ndarray, l1: float, l2: float) -> int:
    """Inverse kinematics to the target, then bang-bang PD on the joint farthest off."""
    q = np.array([math.atan2(obs[1], obs[0]), math.atan2(obs[3], obs[2])])
    tx, ty = obs[6], obs[7]
    cos2 = np.clip((tx * tx + ty * ty - l1 * l1 - l2 * l2) / (2.0 * l1 * l2), -1.0, 1.0)
    best = None
    for elbow in (math.acos(cos2), -math.acos(cos2)):  # the closer elbow-up/down solution
        shoulder = math.atan2(ty, tx) - math.atan2(l2 * math.sin(elbow), l1 + l2 * math.cos(elbow))
        error = np.array([_wrap(shoulder - q[0]), _wrap(elbow - q[1])])
        if best is None or np.abs(error).sum() < np.abs(best).sum():
            best = error
    u = (8.0 * best - 2.0 * obs[4:6]) / np.array([2.0, 1.0])
    j = int(np.argmax(np.abs(u)))
    if abs(u[j]) < 0.3:
        return NONE
    return (SHOULDER_CCW, ELBOW_CCW)[j] + (0 if u[j] > 0 else 1)


def test_scripted_reaching_beats_random_on_the_nominal_arm():
    """Guards that the task is learnable: knowing the kinematics gives a much better return."""
    env = ReacherEnv()
    rng = np.random.default_rng(0)
    scripted, random, final = [], [], []
    try:
        for seed in range(5):
            for policy, returns in (("scripted", scripted), ("random", random)):
                obs, _ = env.reset(seed=seed)
                total, done = 0.0, False
                while not done:
                    if policy == "scripted":
                        action = scripted_action(obs, *env._lengths)
                    else:
                        action = int(rng.integers(5))
                    obs, reward, term, trunc, _ = env.step(action)
                    total += reward
                    done = term or trunc
                returns.append(total)
                if policy == "scripted":
                    final.append(-reward)
    finally:
        env.close()
    assert np.mean(random) < -50.0
    assert np.mean(scripted) > 0.4 * np.mean(random)  # returns are negative distances
    assert np.mean(final) < 0.1  # the scripted tip ends within 10 cm of the target
