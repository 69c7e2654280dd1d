"""Scripted reference controllers, one per robot family, written for the nominal robot.

Each controller knows the family's *nominal* dynamics (the default values of its dynamics
space and the constants of its env module) and nothing about the task an env is running: it
reads only the observation. It computes the continuous command it wants from the nominal
model and picks the discrete action that realises it best. They are the yardstick of the
evaluation protocol: DQN trained on the nominal robot must reach at least 90% of a reference
controller's return above random before claims on that family are made
(``benchmarks/reference_controllers.py``).

    from robometa.reference import reference_controller
    from robometa.rollout import episode_return, make_env

    env = make_env("robometa/CartPole-v0")
    act = reference_controller("robometa/CartPole-v0", env)  # or the family name "cartpole"
    episode_return(env, act, env.unwrapped.dynamics_space.nominal(), seed=0)  # 200.0

numpy only (the env modules are imported for their nominal constants); no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from robometa.envs import arm_reach, cartpole, diff_drive, reacher

#: a greedy single-observation actor (as :data:`robometa.deploy.collection.ActFn`)
ActFn = Callable[[np.ndarray], int]

#: family name -> env id (the names of ``configs/<family>_*.yaml``)
FAMILY_IDS: dict[str, str] = {
    "cartpole": "robometa/CartPole-v0",
    "reacher": "robometa/Reacher-v0",
    "armreach": "robometa/ArmReach-v0",
    "diffdrive": "robometa/DiffDrive-v0",
}


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def _expm(a: np.ndarray) -> np.ndarray:
    """Matrix exponential by scaling and squaring a Taylor series (small, well-scaled matrices)."""
    norm = float(np.linalg.norm(a, 1))
    squarings = max(0, math.ceil(math.log2(norm)) + 1) if norm > 0.0 else 0
    x = a / 2.0**squarings
    term = np.eye(len(a))
    out = term.copy()
    for k in range(1, 20):
        term = term @ x / k
        out = out + term
    for _ in range(squarings):
        out = out @ out
    return out


# ----------------------------------------------------------------------------- cart-pole

#: LQR weights of the cart-pole: state (x, x_dot, theta, theta_dot), force in N
CARTPOLE_Q = (1.0, 1.0, 10.0, 1.0)
CARTPOLE_R = 0.01


def cartpole_lqr_gain(
    q: tuple[float, ...] = CARTPOLE_Q, r: float = CARTPOLE_R
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(K, A_d, B_d)``: the discrete-time LQR gain of the nominal cart-pole (``u = -K x``, u
    in N) and the zero-order-hold model it is computed on (one 0.02 s control step).

    The model linearises the cart-pole about upright: a cart of ``cart_mass`` on a rail, a
    uniform pole of ``pole_mass`` and full length ``pole_length`` (centre of mass at half its
    length, inertia ``m L^2 / 3`` about the hinge), a point payload at the tip, viscous hinge
    damping ``joint_damping``; the rail's Coulomb friction (0.1 N at nominal, 1% of a push)
    is left out. The Riccati equation is iterated to convergence.
    """
    nom = cartpole.CARTPOLE_DYNAMICS.nominal()
    cart, pole, length = nom["cart_mass"], nom["pole_mass"], nom["pole_length"]
    tip = nom["payload_mass"]
    g = 9.81
    total = cart + pole + tip
    first = pole * length / 2.0 + tip * length  # sum of m * (distance of the mass from the hinge)
    inertia = pole * length**2 / 3.0 + tip * length**2  # about the hinge
    # [total, first; first, inertia] [x_dd, th_dd] = [F, first * g * th - damping * th_d]
    inv = np.linalg.inv(np.array([[total, first], [first, inertia]]))
    a = np.zeros((4, 4))
    a[0, 1] = a[2, 3] = 1.0
    for row, acc in ((1, inv[0]), (3, inv[1])):
        a[row, 2] = acc[1] * first * g
        a[row, 3] = -acc[1] * nom["joint_damping"]
    b = np.array([0.0, inv[0, 0], 0.0, inv[1, 0]])
    dt = cartpole.CartPoleEnv.control_dt
    aug = np.zeros((5, 5))
    aug[:4, :4] = a * dt
    aug[:4, 4] = b * dt
    e = _expm(aug)
    ad, bd = e[:4, :4], e[:4, 4:]
    qm, rm = np.diag(q), np.array([[r]])
    p = qm.copy()
    for _ in range(10_000):
        k = np.linalg.solve(rm + bd.T @ p @ bd, bd.T @ p @ ad)
        nxt = qm + ad.T @ p @ (ad - bd @ k)
        done = float(np.max(np.abs(nxt - p))) < 1e-9 * max(1.0, float(np.max(np.abs(p))))
        p = nxt
        if done:
            break
    k = np.linalg.solve(rm + bd.T @ p @ bd, bd.T @ p @ ad)
    return k[0], ad, bd[:, 0]


def cartpole_controller() -> ActFn:
    """Cart-pole: discrete-time LQR on the linearised nominal model, nearest push.

    Nominal values (``CARTPOLE_DYNAMICS``): cart 1 kg, pole 0.1 kg and 1 m, no payload, hinge
    damping 0.002 N*m*s/rad, push 10 N (gain 1, motor mounted normally); 50 Hz. Weights
    ``Q = diag(1, 1, 10, 1)`` on (x, x_dot, theta, theta_dot) and ``R = 0.01`` per N^2 (see
    :func:`cartpole_lqr_gain`); the force ``u = -K obs`` is realised by the nearest of the
    three actions (-10, 0, +10 N): no push when ``|u| < 5 N``. On the nominal robot it holds
    the pole for the whole 200-step episode (checked from 20 start states; also for 5,000
    steps from 5).
    """
    gain = cartpole.CARTPOLE_DYNAMICS.nominal()
    push = cartpole.FORCE_NEWTONS * gain["actuator_gain"] * gain["motor_sign"]
    forces = push * np.array([-1.0, 0.0, 1.0])  # actions 0, 1, 2
    k = cartpole_lqr_gain()[0]

    def act(obs: np.ndarray) -> int:
        u = -float(k @ np.asarray(obs[:4], np.float64))
        return int(np.argmin(np.abs(forces - u)))

    return act


# ----------------------------------------------------------------------------- reacher


class ReacherModel:
    """The nominal planar two-link arm as a small numpy-free simulator (pure Python: it runs
    many times per control step).

    Rigid-body dynamics of two solid rods (radius ``LINK_RADIUS``) and a point payload at the
    tip, turning about vertical axes (no gravity torque); viscous joint damping, and the
    bearings' Coulomb friction as a velocity cap (as the env's friction motors act), with the
    env's nominal torques, control step and 4 substeps (semi-implicit Euler).
    """

    def __init__(self) -> None:
        nom = reacher.REACHER_DYNAMICS.nominal()
        l1, l2 = nom["link1_length"], nom["link2_length"]
        m1, m2, tip = nom["link1_mass"], nom["link2_mass"], nom["payload_mass"]
        r2 = reacher.LINK_RADIUS**2
        i1 = m1 * (3.0 * r2 + l1**2) / 12.0
        i2 = m2 * (3.0 * r2 + l2**2) / 12.0
        # M = [[a + 2 b cos q2, d + b cos q2], [d + b cos q2, d]]
        self.a = (
            i1 + m1 * (l1 / 2) ** 2 + i2 + m2 * (l2 / 2) ** 2 + tip * l2**2 + (m2 + tip) * l1**2
        )
        self.b = m2 * l1 * l2 / 2 + tip * l1 * l2
        self.d = i2 + m2 * (l2 / 2) ** 2 + tip * l2**2
        self.l1, self.l2 = l1, l2
        self.damping = nom["joint_damping"]
        mu = nom["lateral_friction"] * reacher.GRAVITY * reacher.BEARING_RADIUS
        self.friction = (mu * (m1 + m2 + tip), mu * (m2 + tip))
        shoulder = reacher.SHOULDER_TORQUE * nom["actuator_gain"] * nom["motor_sign"]
        elbow = reacher.ELBOW_TORQUE * nom["actuator_gain"]
        self.torques = tuple(
            (shoulder * s, elbow * e) for s, e in reacher.ReacherEnv._ACTION_TORQUES
        )
        self.substeps = reacher.ReacherEnv.substeps
        self.dt = reacher.ReacherEnv.control_dt / self.substeps

    def step(
        self, q1: float, q2: float, v1: float, v2: float, action: int
    ) -> tuple[float, float, float, float]:
        """The joint state one control step later with ``action``'s torques held."""
        t1, t2 = self.torques[action]
        a, b, d, c, dt = self.a, self.b, self.d, self.damping, self.dt
        f1, f2 = self.friction
        for _ in range(self.substeps):
            cos2, sin2 = math.cos(q2), math.sin(q2)
            m11, m12 = a + 2.0 * b * cos2, d + b * cos2
            h = b * sin2
            g1 = t1 + h * (2.0 * v1 * v2 + v2 * v2) - c * v1
            g2 = t2 - h * v1 * v1 - c * v2
            det = m11 * d - m12 * m12
            v1 += (d * g1 - m12 * g2) / det * dt
            v2 += (m11 * g2 - m12 * g1) / det * dt
            s1, s2 = f1 * dt / m11, f2 * dt / d
            v1 = 0.0 if abs(v1) <= s1 else v1 - math.copysign(s1, v1)
            v2 = 0.0 if abs(v2) <= s2 else v2 - math.copysign(s2, v2)
            q1 += v1 * dt
            q2 += v2 * dt
        return q1, q2, v1, v2

    def distance(self, q1: float, q2: float, tx: float, ty: float) -> float:
        """Fingertip-to-target distance at joint angles ``(q1, q2)``."""
        x = self.l1 * math.cos(q1) + self.l2 * math.cos(q1 + q2)
        y = self.l1 * math.sin(q1) + self.l2 * math.sin(q1 + q2)
        return math.hypot(tx - x, ty - y)

    def joint_error(self, q1: float, q2: float, tx: float, ty: float) -> tuple[float, float]:
        """Inverse kinematics of the target: the joint-angle error to the nearer of the two
        solutions (elbow one way or the other), wrapped to [-pi, pi)."""
        l1, l2 = self.l1, self.l2
        cos2 = max(-1.0, min(1.0, (tx * tx + ty * ty - l1 * l1 - l2 * l2) / (2.0 * l1 * l2)))
        best = (math.inf, 0.0, 0.0)
        for elbow in (math.acos(cos2), -math.acos(cos2)):
            shoulder = math.atan2(ty, tx) - math.atan2(
                l2 * math.sin(elbow), l1 + l2 * math.cos(elbow)
            )
            e1, e2 = _wrap(shoulder - q1), _wrap(elbow - q2)
            if abs(e1) + abs(e2) < best[0]:
                best = (abs(e1) + abs(e2), e1, e2)
        return best[1], best[2]


#: the reacher's base policy: bang-bang PD on the joint error, gains in N*m per rad and rad/s
REACHER_KP = 8.0
REACHER_KD = 2.0
REACHER_DEADBAND = 0.3
#: control steps the reacher's lookahead simulates per candidate action (0.4 s)
REACHER_HORIZON = 10


def reacher_pd_action(model: ReacherModel, state: tuple[float, ...], tx: float, ty: float) -> int:
    """Bang-bang PD toward the inverse-kinematics solution: ``u = 8 e - 2 q_dot`` per joint;
    full torque on the joint with the larger ``|u|`` in its sign, no torque if both are below
    0.3."""
    q1, q2, v1, v2 = state
    e1, e2 = model.joint_error(q1, q2, tx, ty)
    u1 = REACHER_KP * e1 - REACHER_KD * v1
    u2 = REACHER_KP * e2 - REACHER_KD * v2
    if max(abs(u1), abs(u2)) < REACHER_DEADBAND:
        return 0
    if abs(u1) >= abs(u2):
        return 1 if u1 > 0 else 2
    return 3 if u2 > 0 else 4


def reacher_controller(horizon: int = REACHER_HORIZON) -> ActFn:
    """Reacher: one-step lookahead on the nominal model over a bang-bang PD base policy.

    Nominal values (``REACHER_DYNAMICS``): links 0.5 m and 1 kg each (solid rods), no payload,
    joint damping 0.1 N*m*s/rad, bearing friction 0.1, torques 4 (shoulder) and 2 N*m (elbow)
    at gain 1, shoulder motor mounted normally; 25 Hz, 4 substeps (:class:`ReacherModel`).
    The base policy is :func:`reacher_pd_action` (inverse kinematics of the target, bang-bang
    PD on the joint farthest off). Each step, every one of the 5 actions is simulated on the
    model followed by ``horizon - 1`` steps of the base policy, and the action with the
    smallest summed fingertip-to-target distance (the negative return over that horizon) is
    taken (a rollout improvement of the base policy: at least as good as it on the model).
    The joint state comes from the observation (cos/sin of the angles, velocities), the
    target from its entries 6-7.
    """
    model = ReacherModel()
    n_actions = len(model.torques)

    def act(obs: np.ndarray) -> int:
        o = np.asarray(obs, np.float64)
        start = (math.atan2(o[1], o[0]), math.atan2(o[3], o[2]), float(o[4]), float(o[5]))
        tx, ty = float(o[6]), float(o[7])
        best, choice = math.inf, 0
        for action in range(n_actions):
            state = model.step(*start, action)
            cost = model.distance(state[0], state[1], tx, ty)
            for _ in range(horizon - 1):
                state = model.step(*state, reacher_pd_action(model, state, tx, ty))
                cost += model.distance(state[0], state[1], tx, ty)
                if cost >= best:
                    break
            if cost < best:
                best, choice = cost, action
        return choice

    return act


# ----------------------------------------------------------------------------- arm reach

#: the Kuka's Cartesian P gain: commanded end-effector velocity per metre of error, 1/s
ARM_GAIN = 50.0


def armreach_controller() -> ActFn:
    """ArmReach: Cartesian P control of the end effector, nearest velocity action.

    The action set already is Cartesian (each move commands 1 m/s along one world axis; the
    env maps it to joint velocities with its damped least-squares Jacobian inverse), so no
    joint-space Jacobian is needed here. The desired end-effector velocity is ``v = 50/s *
    (target - end effector)`` (entries 6-8 of the observation), capped at the nominal
    ``EE_SPEED`` of 1 m/s, and the action is the nearest of the 7 velocities it can command
    (+-1 m/s along x, y or z, or 0): the axis of the largest error, or stay once every error
    is below ``EE_SPEED / (2 * 50/s)`` = 1 cm. That is the axis-greedy policy the env's
    docstring quotes (about +80 per episode on the nominal robot).
    """
    speed = arm_reach.EE_SPEED
    velocities = np.zeros((7, 3))
    for axis in range(3):
        velocities[2 * axis, axis] = speed
        velocities[2 * axis + 1, axis] = -speed
    # velocities[6] stays zero: the "stay" action (noop_action)

    def act(obs: np.ndarray) -> int:
        error = np.asarray(obs[6:9], np.float64)
        v = ARM_GAIN * error
        norm = float(np.linalg.norm(v))
        if norm > speed:
            v *= speed / norm
        return int(np.argmin(((velocities - v) ** 2).sum(axis=1)))

    return act


# ----------------------------------------------------------------------------- diff drive

#: heading gain of the pursuit: commanded yaw rate per radian of goal bearing, 1/s
DIFFDRIVE_HEADING_GAIN = 4.0


def diffdrive_commands() -> np.ndarray:
    """(forward speed m/s, yaw rate rad/s) of every action on the nominal robot."""
    nom = diff_drive.DIFF_DRIVE_DYNAMICS.nominal()
    speed = diff_drive.WHEEL_SPEED * nom["actuator_gain"] * nom["wheel_radius"]
    half = math.sqrt(nom["left_right_mismatch"])
    out = []
    for left, right in diff_drive.DiffDriveEnv._ACTION_SPEEDS:
        vl, vr = speed * half * nom["motor_sign"] * left, speed / half * right
        out.append(((vl + vr) / 2.0, (vr - vl) / (2.0 * diff_drive.HALF_TRACK)))
    return np.array(out)


def diffdrive_controller() -> ActFn:
    """DiffDrive: pursuit of the goal, nearest (speed, yaw rate) action.

    Nominal values (``DIFF_DRIVE_DYNAMICS``): wheels of 0.1 m radius commanded at 10 rad/s
    (1 m/s forward), 0.17 m from the centre line (turning on the spot at +-0.4 of full speed:
    2.35 rad/s), no left/right mismatch, motors mounted normally. With the goal bearing ``b``
    (entries 1-2 of the observation), the command is forward speed ``1 m/s * max(cos b, 0)``
    and yaw rate ``4/s * b`` capped at 2.35 rad/s; the action is the nearest of the five
    (stop, forward, backward, turn left, turn right) after scaling speed by 1 m/s and yaw rate
    by 2.35 rad/s: forward while the goal is within about 0.55 rad of straight ahead, else turn
    toward it on the spot.
    """
    commands = diffdrive_commands()
    scale = np.abs(commands).max(axis=0)  # full forward speed, full turning rate
    units = commands / scale

    def act(obs: np.ndarray) -> int:
        bearing = math.atan2(float(obs[2]), float(obs[1]))
        v = max(math.cos(bearing), 0.0) * scale[0]
        w = max(-scale[1], min(scale[1], DIFFDRIVE_HEADING_GAIN * bearing))
        want = np.array([v, w]) / scale
        return int(np.argmin(((units - want) ** 2).sum(axis=1)))

    return act


# ----------------------------------------------------------------------------- lookup

_CONTROLLERS: dict[str, tuple[type, Callable[[], ActFn]]] = {
    "cartpole": (cartpole.CartPoleEnv, cartpole_controller),
    "reacher": (reacher.ReacherEnv, reacher_controller),
    "armreach": (arm_reach.ArmReachEnv, armreach_controller),
    "diffdrive": (diff_drive.DiffDriveEnv, diffdrive_controller),
}


def family_name(env_id: str) -> str:
    """The family name (``cartpole``, ...) of an env id or of a family name itself."""
    for name, full in FAMILY_IDS.items():
        if env_id in (name, full):
            return name
    known = ", ".join(f"{full} ({name})" for name, full in FAMILY_IDS.items())
    raise ValueError(f"no reference controller for family {env_id!r}; known families: {known}")


def reference_controller(env_id: str, env: Any = None) -> ActFn:
    """The scripted reference controller of a family (see each ``*_controller`` for what it
    does, with which nominal values).

    ``env_id``: the env id (``robometa/CartPole-v0``) or family name (``cartpole``). ``env``:
    optional, the env it will act in (any wrapper): checked to be of that family. The
    controller reads only the observation; it never looks at the env's task.
    """
    name = family_name(env_id)
    cls, make = _CONTROLLERS[name]
    if env is not None:
        inner = getattr(env, "unwrapped", env)
        if not isinstance(inner, cls):
            raise ValueError(
                f"the reference controller of {FAMILY_IDS[name]} needs a {cls.__name__}, "
                f"got {type(inner).__name__}"
            )
    return make()
