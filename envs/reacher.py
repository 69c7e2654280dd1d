"""Planar two-link arm reaching a random target, with randomized dynamics (``robometa/Reacher-v0``)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient
from robometa.envs.base import RobotEnv
from robometa.envs.dynamics import (
    LATENCY_STEPS,
    OBS_NOISE,
    DynamicsSpace,
    Param,
    Task,
    actuator_gain_param,
    motor_sign_param,
)

#: peak joint torques (N*m) of the shoulder and the elbow motor at ``actuator_gain = 1``.
SHOULDER_TORQUE = 4.0
ELBOW_TORQUE = 2.0
#: lever arm (m) of the joint bearings: Coulomb friction torque = mu * g * supported mass * it.
BEARING_RADIUS = 0.05
GRAVITY = 9.81
LINK_RADIUS = 0.025
ARM_HEIGHT = 0.05  # the arm moves in the horizontal plane z = ARM_HEIGHT above the floor
#: largest velocity fraction joint damping may remove in one physics substep (stability).
MAX_DAMPING_PER_SUBSTEP = 0.5
MAX_SUBSTEPS = 64
JOINTS = [0, 1]  # shoulder, elbow

REACHER_DYNAMICS = DynamicsSpace(
    "Reacher",
    (
        Param("link1_mass", "kg", 1.0, (0.5, 2.0), (0.25, 4.0), "loguniform", (1e-3, 100.0)),
        Param("link2_mass", "kg", 1.0, (0.5, 2.0), (0.25, 4.0), "loguniform", (1e-3, 100.0)),
        Param(
            "link1_length",
            "m",
            0.5,
            (0.35, 0.65),
            (0.25, 0.8),
            "uniform",
            (0.05, 5.0),
            doc="upper arm length, shoulder to elbow (regenerates the URDF)",
        ),
        Param(
            "link2_length",
            "m",
            0.5,
            (0.35, 0.65),
            (0.25, 0.8),
            "uniform",
            (0.05, 5.0),
            doc="forearm length, elbow to fingertip (regenerates the URDF)",
        ),
        Param(
            "payload_mass",
            "kg",
            0.0,
            (0.0, 0.5),
            (0.0, 1.0),
            "uniform",
            (0.0, 20.0),
            doc="point mass held at the fingertip",
        ),
        Param(
            "lateral_friction",
            "-",
            0.1,
            (0.0, 0.3),
            (0.0, 0.6),
            "uniform",
            (0.0, 5.0),
            doc="Coulomb friction coefficient of the joint bearings",
        ),
        Param(
            "joint_damping",
            "N*m*s/rad",
            0.1,
            (0.05, 0.2),
            (0.02, 0.5),
            "loguniform",
            (0.0, 10.0),
            doc="viscous damping of both joints",
        ),
        actuator_gain_param("multiplies both joint torques"),
        motor_sign_param("-1: the shoulder motor is mounted reversed"),
        LATENCY_STEPS,
        OBS_NOISE,
    ),
)


def _rod(name: str, length: float, mass: float, rgba: str) -> str:
    """A link shaped as a solid rod along +x from its joint; inertia of a solid cylinder."""
    r2 = LINK_RADIUS**2
    i_axial = mass * r2 / 2.0
    i_cross = mass * (3.0 * r2 + length**2) / 12.0
    half = length / 2.0
    return f"""  <link name="{name}">
    <visual><origin xyz="{half!r} 0 0" rpy="0 1.5707963267948966 0"/>
      <geometry><cylinder radius="{LINK_RADIUS!r}" length="{length!r}"/></geometry>
      <material name="{name}"><color rgba="{rgba}"/></material></visual>
    <inertial><origin xyz="{half!r} 0 0"/><mass value="{mass!r}"/>
      <inertia ixx="{i_axial!r}" ixy="0" ixz="0" iyy="{i_cross!r}" iyz="0" izz="{i_cross!r}"/></inertial>
  </link>
"""


def reacher_urdf(
    link1_length: float, link2_length: float, link1_mass: float, link2_mass: float, payload: float
) -> str:
    """A fixed-base planar arm with two vertical-axis joints; inertias from the geometry.

    The links have no collision shapes: the arm moves in a horizontal plane above the floor and
    nothing can touch it, so the simulation skips collision detection entirely.
    """
    payload = max(payload, 1e-6)
    i_payload = 0.4 * payload * 0.03**2
    return f"""<?xml version="1.0"?>
<robot name="reacher">
  <link name="base">
    <visual><geometry><cylinder radius="0.05" length="0.1"/></geometry>
      <material name="base"><color rgba="0.3 0.3 0.3 1"/></material></visual>
    <inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
  </link>
{_rod("upper_arm", link1_length, link1_mass, "0.1 0.3 0.8 1")}  <joint name="shoulder" type="continuous">
    <origin xyz="0 0 {ARM_HEIGHT!r}"/><axis xyz="0 0 1"/><parent link="base"/><child link="upper_arm"/>
  </joint>
{_rod("forearm", link2_length, link2_mass, "0.2 0.6 0.9 1")}  <joint name="elbow" type="continuous">
    <origin xyz="{link1_length!r} 0 0"/><axis xyz="0 0 1"/><parent link="upper_arm"/><child link="forearm"/>
  </joint>
  <link name="fingertip">
    <visual><geometry><sphere radius="0.03"/></geometry>
      <material name="fingertip"><color rgba="0.9 0.6 0.1 1"/></material></visual>
    <inertial><mass value="{payload!r}"/>
      <inertia ixx="{i_payload!r}" ixy="0" ixz="0" iyy="{i_payload!r}" iyz="0" izz="{i_payload!r}"/></inertial>
  </link>
  <joint name="tip" type="fixed">
    <origin xyz="{link2_length!r} 0 0"/><parent link="forearm"/><child link="fingertip"/>
  </joint>
</robot>
"""


class ReacherEnv(RobotEnv):
    """Move the fingertip of a planar two-link arm onto a random target (randomized dynamics).

    A fixed-base arm with a shoulder and an elbow joint, both turning about the vertical axis,
    moves in a horizontal plane (gravity does not act on the joints). Each control step applies
    one joint torque (or none) for 0.04 s.

    ## Action space
    ``Discrete(5)``, joint torques ``tau = torque * actuator_gain`` (shoulder also times
    ``motor_sign``), positive counter-clockwise seen from above:

    | action | meaning |
    |---|---|
    | 0 | no torque |
    | 1 | shoulder ``+4 N*m`` |
    | 2 | shoulder ``-4 N*m`` |
    | 3 | elbow ``+2 N*m`` |
    | 4 | elbow ``-2 N*m`` |

    With ``motor_sign = -1`` the shoulder motor is mounted reversed: action 1 turns the arm
    clockwise.

    ## Observation space
    ``Box(10,)`` float32, noise-free values plus ``obs_noise`` Gaussian noise (std
    ``obs_noise * obs_scale``):

    | index | observation | unit | bounds |
    |---|---|---|---|
    | 0 | cos of shoulder angle ``q1`` (from the +x axis) | - | +-1 |
    | 1 | sin of shoulder angle ``q1`` | - | +-1 |
    | 2 | cos of elbow angle ``q2`` (relative to the upper arm) | - | +-1 |
    | 3 | sin of elbow angle ``q2`` | - | +-1 |
    | 4 | shoulder angular velocity | rad/s | +-30 |
    | 5 | elbow angular velocity | rad/s | +-30 |
    | 6 | target x (shoulder at the origin) | m | +-2 |
    | 7 | target y | m | +-2 |
    | 8 | target x minus fingertip x | m | +-4 |
    | 9 | target y minus fingertip y | m | +-4 |

    ## Reward
    ``-distance`` from the fingertip to the target (m) after every step: about 0 when the tip
    sits on the target, down to ``-2 * reach``.

    ## Episode end
    No termination; truncates after 100 steps (4 s, ``max_episode_steps``) or on a physics
    blow-up (``info["physics_error"]``). At reset the shoulder angle is uniform in +-pi, the
    elbow angle uniform in +-2.5 rad, joint velocities uniform in +-0.1 rad/s; the target is
    uniform in direction and at a radius uniform in ``[|l1 - l2| + 0.15 * reach, 0.9 * reach]``
    with ``reach = l1 + l2``. Control runs at 25 Hz; the joint torque is held
    during a control step, simulated in 4 physics substeps of 0.01 s (more, shorter ones for
    light, strongly damped arms, see below).

    ## Dynamics parameters
    | parameter | unit | nominal | train | test | distribution |
    |---|---|---|---|---|---|
    | `link1_mass` | kg | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `link2_mass` | kg | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `link1_length` | m | 0.5 | [0.35, 0.65] | [0.25, 0.8] | uniform |
    | `link2_length` | m | 0.5 | [0.35, 0.65] | [0.25, 0.8] | uniform |
    | `payload_mass` | kg | 0 | [0, 0.5] | [0, 1] | uniform |
    | `lateral_friction` | - | 0.1 | [0, 0.3] | [0, 0.6] | uniform |
    | `joint_damping` | N*m*s/rad | 0.1 | [0.05, 0.2] log | [0.02, 0.5] log | loguniform |
    | `actuator_gain` | - | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `motor_sign` | - | 1 | {1, -1} | {1, -1} | choice |
    | `latency_steps` | steps | 0 | {0, 1} | {0, 1, 2, 3} | choice |
    | `obs_noise` | x obs scale | 0 | [0, 0.02] | [0, 0.05] | uniform |

    Masses and lengths regenerate the URDF (links are solid rods of radius 0.025 m, the payload
    a point mass at the fingertip; inertias from geometry, loaded with
    ``URDF_USE_INERTIA_FROM_FILE``). ``lateral_friction`` is the Coulomb friction of the joint
    bearings: a velocity motor with target 0 and maximal torque ``lateral_friction * g *
    (mass outboard of the joint) * 0.05 m``. ``joint_damping`` is both joints' ``jointDamping``.
    PyBullet applies that damping explicitly, once per ``stepSimulation`` call, so the env calls
    ``stepSimulation`` once per substep and uses enough substeps that one removes at most half
    of a joint velocity (``joint_damping * dt / smallest mass-matrix eigenvalue <= 0.5``): the
    damping stays accurate and stable over the whole test range.

    ## Version history
    * v0: initial release.
    """

    dynamics_space = REACHER_DYNAMICS
    geometry_params = ("link1_mass", "link2_mass", "link1_length", "link2_length", "payload_mass")
    default_max_episode_steps = 100
    control_dt = 0.04
    substeps = 4
    noop_action = 0
    observation_names = (
        "cos_shoulder",
        "sin_shoulder",
        "cos_elbow",
        "sin_elbow",
        "shoulder_velocity",
        "elbow_velocity",
        "target_x",
        "target_y",
        "target_minus_tip_x",
        "target_minus_tip_y",
    )
    action_names = ("none", "shoulder_ccw", "shoulder_cw", "elbow_ccw", "elbow_cw")
    obs_scale = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5])

    #: (shoulder, elbow) torque direction of every action.
    _ACTION_TORQUES = ((0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        high = np.array([1, 1, 1, 1, 30, 30, 2, 2, 4, 4], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(5)
        self._body = -1
        self._marker = -1
        self._lengths = (0.5, 0.5)
        self._torques = ((0.0, 0.0),) * 5
        self._target = (0.0, 0.0)
        self._min_inertia = 1.0
        self._substeps = self.substeps
        self._cid = self._require_client()._client

    def _build(self, client: BulletClient, task: Task) -> None:
        l1, l2 = float(task["link1_length"]), float(task["link2_length"])
        urdf = reacher_urdf(l1, l2, task["link1_mass"], task["link2_mass"], task["payload_mass"])
        client.loadURDF("plane.urdf")
        self._body = self._load_urdf(
            client,
            "reacher",
            urdf,
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            useFixedBase=True,
        )
        for link in (0, 1, 2):  # PyBullet's default 0.04 velocity damping would hide ours
            client.changeDynamics(self._body, link, linearDamping=0.0, angularDamping=0.0)
        visual = client.createVisualShape(
            pybullet.GEOM_SPHERE, radius=0.04, rgbaColor=[0.9, 0.1, 0.1, 1.0]
        )
        self._marker = client.createMultiBody(baseMass=0.0, baseVisualShapeIndex=visual)
        self._lengths = (l1, l2)
        # The smallest eigenvalue of the joint-space mass matrix (lowest at a stretched arm)
        # bounds how fast viscous damping can act: see _set_time_step.
        self._min_inertia = min(
            float(
                np.linalg.eigvalsh(
                    np.asarray(client.calculateMassMatrix(self._body, [0.0, q2]))
                ).min()
            )
            for q2 in np.linspace(0.0, math.pi, 5)
        )

    def _set_time_step(self, client: BulletClient, task: Task) -> None:
        # PyBullet applies joint damping explicitly, once per stepSimulation call: it is stable
        # and accurate only while damping / inertia * dt is small. Light, short, strongly damped
        # arms (test range corners) therefore get more, shorter substeps.
        rate = task["joint_damping"] / self._min_inertia
        self._substeps = min(
            max(self.substeps, math.ceil(self.control_dt * rate / MAX_DAMPING_PER_SUBSTEP)),
            MAX_SUBSTEPS,
        )
        client.setPhysicsEngineParameter(
            fixedTimeStep=self.control_dt / self._substeps, numSubSteps=1
        )

    def _apply_task(self, client: BulletClient, task: Task) -> None:
        outboard = (
            task["link1_mass"] + task["link2_mass"] + task["payload_mass"],
            task["link2_mass"] + task["payload_mass"],
        )
        # The bearing friction motors' torque caps become impulse caps with the substep time
        # step set just before (_set_time_step).
        client.setJointMotorControlArray(
            self._body,
            [0, 1],
            pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0, 0.0],
            forces=[task["lateral_friction"] * GRAVITY * m * BEARING_RADIUS for m in outboard],
        )
        for joint in (0, 1):
            client.changeDynamics(self._body, joint, jointDamping=task["joint_damping"])
        shoulder = SHOULDER_TORQUE * task["actuator_gain"] * task["motor_sign"]
        elbow = ELBOW_TORQUE * task["actuator_gain"]
        self._torques = tuple((shoulder * a, elbow * b) for a, b in self._ACTION_TORQUES)

    def _reset_state(self, client: BulletClient, rng: np.random.Generator) -> None:
        q1 = rng.uniform(-math.pi, math.pi)
        q2 = rng.uniform(-2.5, 2.5)
        v1, v2 = rng.uniform(-0.1, 0.1, size=2)
        client.resetJointState(self._body, 0, q1, v1)
        client.resetJointState(self._body, 1, q2, v2)
        l1, l2 = self._lengths
        reach = l1 + l2
        outer = 0.9 * reach
        radius = rng.uniform(min(abs(l1 - l2) + 0.15 * reach, outer), outer)
        angle = rng.uniform(-math.pi, math.pi)
        self._target = (radius * math.cos(angle), radius * math.sin(angle))
        client.resetBasePositionAndOrientation(
            self._marker, [*self._target, ARM_HEIGHT], [0.0, 0.0, 0.0, 1.0]
        )

    def _apply_action(self, client: BulletClient, action: int) -> None:
        # PyBullet clears joint torques and evaluates joint damping once per stepSimulation call,
        # so the env steps the substeps itself: the torque is re-applied before each one, and the
        # base class's stepSimulation call after this hook is the last substep.
        # Direct pybullet calls: BulletClient's attribute lookup costs more than the call.
        forces, body, cid = self._torques[action], self._body, self._cid
        for _ in range(self._substeps - 1):
            pybullet.setJointMotorControlArray(
                body, JOINTS, pybullet.TORQUE_CONTROL, forces=forces, physicsClientId=cid
            )
            pybullet.stepSimulation(physicsClientId=cid)
        pybullet.setJointMotorControlArray(
            body, JOINTS, pybullet.TORQUE_CONTROL, forces=forces, physicsClientId=cid
        )

    def _observe(self, client: BulletClient) -> np.ndarray:
        (q1, v1, _, _), (q2, v2, _, _) = pybullet.getJointStates(
            self._body, JOINTS, physicsClientId=self._cid
        )
        l1, l2 = self._lengths
        tx, ty = self._target
        tip_x = l1 * math.cos(q1) + l2 * math.cos(q1 + q2)
        tip_y = l1 * math.sin(q1) + l2 * math.sin(q1 + q2)
        return np.array(
            [
                math.cos(q1),
                math.sin(q1),
                math.cos(q2),
                math.sin(q2),
                v1,
                v2,
                tx,
                ty,
                tx - tip_x,
                ty - tip_y,
            ],
            dtype=np.float64,
        )

    def _reward(self, raw_obs: np.ndarray, action: int) -> tuple[float, bool]:
        return -math.hypot(raw_obs[8], raw_obs[9]), False

    def _camera(self) -> tuple[list[float], float, float, float]:
        reach = sum(self._lengths)
        return [0.0, 0.0, 0.0], 1.6 * reach + 0.5, 0.0, -75.0
