"""Differential-drive robot driving to a random goal, with randomized dynamics
(``robometa/DiffDrive-v0``)."""

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

#: wheel speed (rad/s) of a "forward" command at ``actuator_gain = 1``.
WHEEL_SPEED = 10.0
#: torque limit (N*m) of each wheel motor.
MOTOR_TORQUE = 0.8
#: lateral distance (m) of each wheel from the robot's centre line (track = 2 * this).
HALF_TRACK = 0.17
WHEEL_WIDTH = 0.04
CASTER_OFFSET = 0.15
#: the centre of mass of chassis and payload sits this far behind the axle (m), so the robot
#: rests on its wheels and the back caster (a determinate tripod: about 13 % of the weight on
#: the caster); the front caster hangs 1 cm above the floor and only catches forward pitching.
COM_BEHIND_AXLE = 0.02
FRONT_CASTER_CLEARANCE = 0.01
CASTER_MASS = 0.05
GOAL_RADIUS = 0.2
PROGRESS_SCALE = 10.0
GOAL_BONUS = 10.0
CHASSIS, LEFT_WHEEL, RIGHT_WHEEL, PAYLOAD = -1, 0, 1, 4  # link indices
CASTERS = (2, 3)  # front, back
#: constraint solver iterations per substep (PyBullet's default 50 costs ~30 % more time for
#: no visible change in the motion of this robot).
SOLVER_ITERATIONS = 20
WHEELS = [LEFT_WHEEL, RIGHT_WHEEL]
MOTOR_TORQUES = [MOTOR_TORQUE, MOTOR_TORQUE]
#: largest velocity fraction axle damping may remove in one physics substep (stability).
MAX_DAMPING_PER_SUBSTEP = 0.5
MAX_SUBSTEPS = 64

DIFF_DRIVE_DYNAMICS = DynamicsSpace(
    "DiffDrive",
    (
        Param("chassis_mass", "kg", 4.0, (2.0, 8.0), (1.0, 16.0), "loguniform", (1e-2, 1000.0)),
        Param("wheel_mass", "kg", 0.3, (0.15, 0.6), (0.075, 1.2), "loguniform", (1e-3, 100.0)),
        Param(
            "payload_mass",
            "kg",
            0.0,
            (0.0, 2.0),
            (0.0, 5.0),
            "uniform",
            (0.0, 1000.0),
            doc="load carried on top of the chassis, above the axle",
        ),
        Param(
            "wheel_radius",
            "m",
            0.1,
            (0.08, 0.12),
            (0.06, 0.15),
            "uniform",
            (0.03, 0.5),
            doc="radius of both driven wheels (regenerates the URDF)",
        ),
        Param(
            "lateral_friction",
            "-",
            0.8,
            (0.5, 1.1),
            (0.2, 1.5),
            "uniform",
            (0.0, 5.0),
            doc="Coulomb friction coefficient between the driven wheels and the floor",
        ),
        Param(
            "joint_damping",
            "N*m*s/rad",
            0.01,
            (0.004, 0.025),
            (0.002, 0.1),
            "loguniform",
            (0.0, 10.0),
            doc="viscous damping of the wheel axles",
        ),
        actuator_gain_param("multiplies the commanded wheel speeds"),
        Param(
            "left_right_mismatch",
            "-",
            1.0,
            (0.8, 1.25),
            (0.6, 1.667),
            "loguniform",
            (0.01, 100.0),
            doc="left / right wheel speed ratio for the same command ('forward' curves)",
        ),
        motor_sign_param("-1: the left wheel motor is mounted reversed"),
        LATENCY_STEPS,
        OBS_NOISE,
    ),
)


def _inertial(mass: float, ixx: float, iyy: float, izz: float, xyz: str = "0 0 0") -> str:
    return (
        f'<inertial><origin xyz="{xyz}"/><mass value="{mass!r}"/>'
        f'<inertia ixx="{ixx!r}" ixy="0" ixz="0" iyy="{iyy!r}" iyz="0" izz="{izz!r}"/></inertial>'
    )


def diff_drive_urdf(chassis_mass: float, wheel_mass: float, payload: float, radius: float) -> str:
    """Chassis with two driven wheels and two frictionless casters; inertias from geometry.

    The base frame sits on the wheel axle, ``radius`` above the floor. Wheels collide as spheres
    (a single contact point, like a thin tyre); the chassis and payload have no collision shape.
    """
    lx, ly, lz = 0.4, 0.26, 0.06
    com = f"{-COM_BEHIND_AXLE!r} 0 0"
    chassis = _inertial(
        chassis_mass,
        chassis_mass * (ly**2 + lz**2) / 12.0,
        chassis_mass * (lx**2 + lz**2) / 12.0,
        chassis_mass * (lx**2 + ly**2) / 12.0,
        com,
    )
    w_axial = wheel_mass * radius**2 / 2.0
    w_cross = wheel_mass * (3.0 * radius**2 + WHEEL_WIDTH**2) / 12.0
    wheel = _inertial(wheel_mass, w_cross, w_axial, w_cross)
    caster_r = 0.4 * radius
    i_caster = 0.4 * CASTER_MASS * caster_r**2
    caster = _inertial(CASTER_MASS, i_caster, i_caster, i_caster)
    payload = max(payload, 1e-6)
    i_payload = payload * 2.0 * 0.12**2 / 12.0
    payload_inertial = _inertial(payload, i_payload, i_payload, i_payload)
    caster_z = -(radius - caster_r)

    def wheel_link(name: str, y: float) -> str:
        return f"""  <link name="{name}">
    <visual><origin rpy="1.5707963267948966 0 0"/>
      <geometry><cylinder radius="{radius!r}" length="{WHEEL_WIDTH!r}"/></geometry>
      <material name="tyre"><color rgba="0.1 0.1 0.1 1"/></material></visual>
    <collision><geometry><sphere radius="{radius!r}"/></geometry></collision>
    {wheel}
  </link>
  <joint name="{name}_axle" type="continuous">
    <origin xyz="0 {y!r} 0"/><axis xyz="0 1 0"/><parent link="chassis"/><child link="{name}"/>
  </joint>
"""

    def caster_link(name: str, x: float, z: float) -> str:
        return f"""  <link name="{name}">
    <visual><geometry><sphere radius="{caster_r!r}"/></geometry>
      <material name="caster"><color rgba="0.6 0.6 0.6 1"/></material></visual>
    <collision><geometry><sphere radius="{caster_r!r}"/></geometry></collision>
    {caster}
  </link>
  <joint name="{name}_mount" type="fixed">
    <origin xyz="{x!r} 0 {z!r}"/><parent link="chassis"/><child link="{name}"/>
  </joint>
"""

    return f"""<?xml version="1.0"?>
<robot name="diff_drive">
  <link name="chassis">
    <visual><origin xyz="{com}"/><geometry><box size="{lx} {ly} {lz}"/></geometry>
      <material name="chassis"><color rgba="0.1 0.3 0.8 1"/></material></visual>
    {chassis}
  </link>
{wheel_link("left_wheel", HALF_TRACK)}{wheel_link("right_wheel", -HALF_TRACK)}{caster_link("front_caster", CASTER_OFFSET, caster_z + FRONT_CASTER_CLEARANCE)}{caster_link("back_caster", -CASTER_OFFSET, caster_z)}  <link name="payload">
    <visual><geometry><box size="0.12 0.12 0.12"/></geometry>
      <material name="payload"><color rgba="0.9 0.6 0.1 1"/></material></visual>
    {payload_inertial}
  </link>
  <joint name="payload_mount" type="fixed">
    <origin xyz="{-COM_BEHIND_AXLE!r} 0 {lz / 2 + 0.06!r}"/><parent link="chassis"/><child link="payload"/>
  </joint>
</robot>
"""


class DiffDriveEnv(RobotEnv):
    """Drive a two-wheeled differential-drive robot to a random goal on the floor.

    A chassis on two velocity-controlled wheels (and two frictionless casters) drives on a flat
    floor; the goal is a point 1 to 3 m away in a random direction.

    ## Action space
    ``Discrete(5)``, wheel speed commands (left, right) as fractions of ``10 rad/s *
    actuator_gain`` (1 m/s on the nominal 0.1 m wheels); each wheel motor tracks its speed with
    at most 0.8 N*m of torque:

    | action | meaning | left | right |
    |---|---|---|---|
    | 0 | stop (brake) | 0 | 0 |
    | 1 | forward | +1 | +1 |
    | 2 | backward | -1 | -1 |
    | 3 | turn left on the spot | -0.4 | +0.4 |
    | 4 | turn right on the spot | +0.4 | -0.4 |

    The left command is further multiplied by ``sqrt(left_right_mismatch) * motor_sign`` and
    the right one divided by ``sqrt(left_right_mismatch)``: a mismatch makes "forward" curve,
    and ``motor_sign = -1`` (left motor mounted reversed) makes "forward" spin the robot and
    "turn" drive it straight.

    ## Observation space
    ``Box(8,)`` float32 in the robot frame (x forward, y left), noise-free values plus
    ``obs_noise`` Gaussian noise (std ``obs_noise * obs_scale``):

    | index | observation | unit | bounds |
    |---|---|---|---|
    | 0 | distance to the goal | m | [0, 20] |
    | 1 | cos of the goal bearing (0 = straight ahead) | - | +-1 |
    | 2 | sin of the goal bearing (positive = to the left) | - | +-1 |
    | 3 | forward velocity | m/s | +-10 |
    | 4 | lateral velocity (leftward) | m/s | +-10 |
    | 5 | yaw rate (counter-clockwise) | rad/s | +-60 |
    | 6 | left wheel angular velocity (positive drives forward) | rad/s | +-60 |
    | 7 | right wheel angular velocity | rad/s | +-60 |

    ## Reward
    ``10 * (previous distance - distance)`` to the goal (m) after every step (progress toward
    the goal), plus 10 on the step that reaches it.

    ## Episode end
    Terminates when the robot's centre is within 0.2 m of the goal; truncates after 200 steps
    (10 s, ``max_episode_steps``) or on a physics blow-up (``info["physics_error"]``). At reset
    the robot stands still at the origin with a heading uniform in +-pi; the goal is uniform in
    direction at a distance uniform in [1, 3] m. Control runs at 20 Hz with 3 physics substeps
    (more for strongly damped light wheels, see below) of 20 solver iterations each.

    ## Dynamics parameters
    | parameter | unit | nominal | train | test | distribution |
    |---|---|---|---|---|---|
    | `chassis_mass` | kg | 4 | [2, 8] log | [1, 16] log | loguniform |
    | `wheel_mass` | kg | 0.3 | [0.15, 0.6] log | [0.075, 1.2] log | loguniform |
    | `payload_mass` | kg | 0 | [0, 2] | [0, 5] | uniform |
    | `wheel_radius` | m | 0.1 | [0.08, 0.12] | [0.06, 0.15] | uniform |
    | `lateral_friction` | - | 0.8 | [0.5, 1.1] | [0.2, 1.5] | uniform |
    | `joint_damping` | N*m*s/rad | 0.01 | [0.004, 0.025] log | [0.002, 0.1] log | loguniform |
    | `actuator_gain` | - | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `left_right_mismatch` | - | 1 | [0.8, 1.25] log | [0.6, 1.667] log | loguniform |
    | `motor_sign` | - | 1 | {1, -1} | {1, -1} | choice |
    | `latency_steps` | steps | 0 | {0, 1} | {0, 1, 2, 3} | choice |
    | `obs_noise` | x obs scale | 0 | [0, 0.02] | [0, 0.05] | uniform |

    Masses and the wheel radius regenerate the URDF (inertias from geometry, loaded with
    ``URDF_USE_INERTIA_FROM_FILE``). The centre of mass of chassis and payload lies 2 cm behind
    the axle: the robot rests on its wheels and a back caster ball (which carries about 13 % of
    the weight); a front caster hangs 1 cm above the floor and catches forward pitching. Both
    casters are frictionless balls of 0.4 wheel radii and 0.05 kg. ``lateral_friction`` is the
    wheels' contact friction (the floor's is 1 and PyBullet multiplies the two).
    ``joint_damping`` is the wheel axles' ``jointDamping``. PyBullet applies that damping
    explicitly, once per ``stepSimulation`` call, so the env calls ``stepSimulation`` once per
    substep and uses enough substeps that one removes at most half of the wheel speed
    (``joint_damping * dt / (wheel inertia + half the robot's mass * radius^2) <= 0.5``).

    ## Version history
    * v0: initial release.
    """

    dynamics_space = DIFF_DRIVE_DYNAMICS
    geometry_params = ("chassis_mass", "wheel_mass", "payload_mass", "wheel_radius")
    default_max_episode_steps = 200
    control_dt = 0.05
    substeps = 3
    noop_action = 0
    observation_names = (
        "goal_distance",
        "cos_goal_bearing",
        "sin_goal_bearing",
        "forward_velocity",
        "lateral_velocity",
        "yaw_rate",
        "left_wheel_velocity",
        "right_wheel_velocity",
    )
    action_names = ("stop", "forward", "backward", "turn_left", "turn_right")
    obs_scale = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 1.0, 5.0, 5.0])

    #: (left, right) wheel speed command of every action.
    _ACTION_SPEEDS = ((0.0, 0.0), (1.0, 1.0), (-1.0, -1.0), (-0.4, 0.4), (0.4, -0.4))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        high = np.array([20, 1, 1, 10, 10, 60, 60, 60], dtype=np.float32)
        low = -high
        low[0] = 0.0
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(5)
        self._body = -1
        self._marker = -1
        self._radius = 0.1
        self._speeds = ((0.0, 0.0),) * 5
        self._goal = (0.0, 0.0)
        self._distance = 0.0
        self._wheel_inertia = 1.0
        self._substeps = self.substeps
        self._cid = self._require_client()._client

    def _build(self, client: BulletClient, task: Task) -> None:
        radius = float(task["wheel_radius"])
        urdf = diff_drive_urdf(
            task["chassis_mass"], task["wheel_mass"], task["payload_mass"], radius
        )
        # An infinite collision plane is much cheaper to collide with than plane.urdf's box.
        floor = client.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=client.createCollisionShape(pybullet.GEOM_PLANE),
            baseVisualShapeIndex=client.createVisualShape(
                pybullet.GEOM_MESH, fileName="plane100.obj"
            ),
        )
        client.changeDynamics(floor, -1, lateralFriction=1.0)
        self._body = self._load_urdf(
            client,
            "diff_drive",
            urdf,
            basePosition=[0.0, 0.0, radius],
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
        )
        for link in (CHASSIS, *WHEELS, *CASTERS, PAYLOAD):
            # PyBullet's default 0.04 velocity damping would act as hidden air drag.
            client.changeDynamics(self._body, link, linearDamping=0.0, angularDamping=0.0)
        for caster in CASTERS:  # the caster balls roll without friction
            client.changeDynamics(
                self._body, caster, lateralFriction=0.0, rollingFriction=0.0, spinningFriction=0.0
            )
        visual = client.createVisualShape(
            pybullet.GEOM_CYLINDER, radius=GOAL_RADIUS, length=0.01, rgbaColor=[0.9, 0.1, 0.1, 1]
        )
        self._marker = client.createMultiBody(baseMass=0.0, baseVisualShapeIndex=visual)
        self._radius = radius
        total = task["chassis_mass"] + task["payload_mass"] + 2 * (task["wheel_mass"] + CASTER_MASS)
        # Inertia a gripping wheel's axle damping acts on: the wheel plus half the robot.
        self._wheel_inertia = (task["wheel_mass"] / 2.0 + total / 2.0) * radius**2
        client.setPhysicsEngineParameter(numSolverIterations=SOLVER_ITERATIONS)

    def _set_time_step(self, client: BulletClient, task: Task) -> None:
        # PyBullet applies joint damping explicitly, once per stepSimulation call: the env calls
        # it once per substep and uses enough substeps for damping * dt / inertia <= 0.5.
        rate = task["joint_damping"] / self._wheel_inertia
        self._substeps = min(
            max(self.substeps, math.ceil(self.control_dt * rate / MAX_DAMPING_PER_SUBSTEP)),
            MAX_SUBSTEPS,
        )
        client.setPhysicsEngineParameter(
            fixedTimeStep=self.control_dt / self._substeps, numSubSteps=1
        )

    def _apply_task(self, client: BulletClient, task: Task) -> None:
        for wheel in (LEFT_WHEEL, RIGHT_WHEEL):
            client.changeDynamics(
                self._body,
                wheel,
                lateralFriction=task["lateral_friction"],
                jointDamping=task["joint_damping"],
            )
        speed = WHEEL_SPEED * task["actuator_gain"]
        half = math.sqrt(task["left_right_mismatch"])
        left = speed * half * task["motor_sign"]
        right = speed / half
        self._speeds = tuple((left * a, right * b) for a, b in self._ACTION_SPEEDS)

    def _reset_state(self, client: BulletClient, rng: np.random.Generator) -> None:
        yaw = rng.uniform(-math.pi, math.pi)
        client.resetBasePositionAndOrientation(
            self._body, [0.0, 0.0, self._radius], client.getQuaternionFromEuler([0.0, 0.0, yaw])
        )
        client.resetBaseVelocity(self._body, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
        for wheel in (LEFT_WHEEL, RIGHT_WHEEL):
            client.resetJointState(self._body, wheel, 0.0, 0.0)
        client.setJointMotorControlArray(
            self._body,
            [LEFT_WHEEL, RIGHT_WHEEL],
            pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0, 0.0],
            forces=[MOTOR_TORQUE, MOTOR_TORQUE],
        )
        distance = rng.uniform(1.0, 3.0)
        direction = rng.uniform(-math.pi, math.pi)
        self._goal = (distance * math.cos(direction), distance * math.sin(direction))
        self._distance = distance
        client.resetBasePositionAndOrientation(
            self._marker, [*self._goal, 0.005], [0.0, 0.0, 0.0, 1.0]
        )

    def _apply_action(self, client: BulletClient, action: int) -> None:
        # Direct pybullet calls: BulletClient's attribute lookup costs more than the call.
        pybullet.setJointMotorControlArray(
            self._body,
            WHEELS,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=self._speeds[action],
            forces=MOTOR_TORQUES,
            physicsClientId=self._cid,
        )
        # PyBullet evaluates joint damping once per stepSimulation call, so the env steps the
        # substeps itself; the base class's stepSimulation call after this hook is the last one.
        for _ in range(self._substeps - 1):
            pybullet.stepSimulation(physicsClientId=self._cid)

    def _observe(self, client: BulletClient) -> np.ndarray:
        cid = self._cid
        (x, y, _), (qx, qy, qz, qw) = pybullet.getBasePositionAndOrientation(
            self._body, physicsClientId=cid
        )
        (vx, vy, _), (_, _, wz) = pybullet.getBaseVelocity(self._body, physicsClientId=cid)
        (_, left, _, _), (_, right, _, _) = pybullet.getJointStates(
            self._body, WHEELS, physicsClientId=cid
        )
        yaw = math.atan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))
        c, s = math.cos(yaw), math.sin(yaw)
        gx, gy = self._goal[0] - x, self._goal[1] - y
        distance = math.hypot(gx, gy)
        bearing = math.atan2(gy, gx) - yaw
        return np.array(
            [
                distance,
                math.cos(bearing),
                math.sin(bearing),
                c * vx + s * vy,
                -s * vx + c * vy,
                wz,
                left,
                right,
            ],
            dtype=np.float64,
        )

    def _reward(self, raw_obs: np.ndarray, action: int) -> tuple[float, bool]:
        distance = float(raw_obs[0])
        reward = PROGRESS_SCALE * (self._distance - distance)
        self._distance = distance
        reached = distance < GOAL_RADIUS
        return reward + (GOAL_BONUS if reached else 0.0), reached

    def _camera(self) -> tuple[list[float], float, float, float]:
        (x, y, _), _ = self._require_client().getBasePositionAndOrientation(self._body)
        gx, gy = self._goal
        span = math.hypot(gx - x, gy - y)
        return [(x + gx) / 2.0, (y + gy) / 2.0, 0.0], 1.5 + 1.2 * span, 0.0, -60.0
