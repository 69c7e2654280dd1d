"""Cart-pole with randomized dynamics (``robometa/CartPole-v0``)."""

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

FORCE_NEWTONS = 10.0
THETA_LIMIT = 12.0 * 2.0 * math.pi / 360.0
X_LIMIT = 2.4

CARTPOLE_DYNAMICS = DynamicsSpace(
    "CartPole",
    (
        Param("cart_mass", "kg", 1.0, (0.5, 2.0), (0.25, 4.0), "loguniform", (1e-3, 100.0)),
        Param("pole_mass", "kg", 0.1, (0.05, 0.2), (0.025, 0.4), "loguniform", (1e-4, 10.0)),
        Param(
            "pole_length",
            "m",
            1.0,
            (0.6, 1.4),
            (0.4, 2.0),
            "uniform",
            (0.05, 10.0),
            doc="full length of the pole (regenerates the URDF)",
        ),
        Param(
            "payload_mass",
            "kg",
            0.0,
            (0.0, 0.05),
            (0.0, 0.15),
            "uniform",
            (0.0, 10.0),
            doc="point mass at the pole tip",
        ),
        Param(
            "lateral_friction",
            "-",
            0.01,
            (0.0, 0.05),
            (0.0, 0.1),
            "uniform",
            (0.0, 2.0),
            doc="Coulomb friction coefficient of the cart on its rail",
        ),
        Param(
            "joint_damping",
            "N*m*s/rad",
            0.002,
            (0.0004, 0.04),
            (0.0001, 0.1),
            "loguniform",
            (0.0, 10.0),
            doc="viscous damping of the pole hinge",
        ),
        actuator_gain_param("multiplies the 10 N push"),
        motor_sign_param("-1: the motor is mounted reversed (push right moves left)"),
        LATENCY_STEPS,
        OBS_NOISE,
    ),
)


def cartpole_urdf(cart_mass: float, pole_mass: float, pole_length: float) -> str:
    """A cart on a rail with a uniform pole; inertias computed from mass and geometry."""
    pole_i = pole_mass * pole_length**2 / 12.0
    cart_i = cart_mass * (0.5**2 + 0.2**2) / 12.0
    half = pole_length / 2.0
    return f"""<?xml version="1.0"?>
<robot name="cartpole">
  <link name="rail">
    <visual><geometry><box size="6 0.05 0.05"/></geometry>
      <material name="rail"><color rgba="0.2 0.7 0.7 1"/></material></visual>
    <inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
  </link>
  <link name="cart">
    <visual><geometry><box size="0.5 0.5 0.2"/></geometry>
      <material name="cart"><color rgba="0.1 0.2 0.8 1"/></material></visual>
    <inertial><mass value="{cart_mass!r}"/>
      <inertia ixx="{cart_i!r}" ixy="0" ixz="0" iyy="{cart_i!r}" iyz="0" izz="{cart_i!r}"/></inertial>
  </link>
  <joint name="slider" type="prismatic">
    <axis xyz="1 0 0"/><parent link="rail"/><child link="cart"/>
    <limit effort="1000.0" lower="-100" upper="100" velocity="1000"/>
  </joint>
  <link name="pole">
    <visual><origin xyz="0 0 {half!r}"/><geometry><box size="0.05 0.05 {pole_length!r}"/></geometry>
      <material name="pole"><color rgba="0.9 0.6 0.1 1"/></material></visual>
    <inertial><origin xyz="0 0 {half!r}"/><mass value="{pole_mass!r}"/>
      <inertia ixx="{pole_i!r}" ixy="0" ixz="0" iyy="{pole_i!r}" iyz="0" izz="1e-6"/></inertial>
  </link>
  <joint name="hinge" type="continuous">
    <axis xyz="0 1 0"/><parent link="cart"/><child link="pole"/>
  </joint>
  <link name="payload">
    <visual><geometry><sphere radius="0.06"/></geometry>
      <material name="payload"><color rgba="0.8 0.1 0.1 1"/></material></visual>
    <inertial><mass value="1e-6"/><inertia ixx="1e-9" ixy="0" ixz="0" iyy="1e-9" iyz="0" izz="1e-9"/></inertial>
  </link>
  <joint name="tip" type="fixed">
    <origin xyz="0 0 {pole_length!r}"/><parent link="pole"/><child link="payload"/>
  </joint>
</robot>
"""


class CartPoleEnv(RobotEnv):
    """Keep a pole upright on a cart pushed left or right, with randomized dynamics.

    ## Action space
    ``Discrete(3)``:

    | action | meaning |
    |---|---|
    | 0 | push the cart left (force ``-10 N * actuator_gain * motor_sign``) |
    | 1 | no push |
    | 2 | push the cart right (force ``+10 N * actuator_gain * motor_sign``) |

    With ``motor_sign = -1`` the motor is mounted reversed: "push right" moves the cart left.

    ## Observation space
    ``Box(4,)`` float32, noise-free values plus ``obs_noise`` Gaussian noise:

    | index | observation | unit | bounds |
    |---|---|---|---|
    | 0 | cart position | m | +-4.8 |
    | 1 | cart velocity | m/s | +-20 |
    | 2 | pole angle from upright (positive leans toward +x) | rad | +-pi |
    | 3 | pole angular velocity | rad/s | +-50 |

    ## Reward
    +1 for every step, the terminating step included.

    ## Episode end
    Terminates when ``|cart position| > 2.4`` or ``|pole angle| > 12 deg``; truncates after
    200 steps (``max_episode_steps``) or on a physics blow-up (``info["physics_error"]``).
    The start state is uniform in +-0.05 for every entry. Control runs at 50 Hz with 4
    physics substeps.

    ## Dynamics parameters
    | parameter | unit | nominal | train | test | distribution |
    |---|---|---|---|---|---|
    | `cart_mass` | kg | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `pole_mass` | kg | 0.1 | [0.05, 0.2] log | [0.025, 0.4] log | loguniform |
    | `pole_length` | m | 1 | [0.6, 1.4] | [0.4, 2] | uniform |
    | `payload_mass` | kg | 0 | [0, 0.05] | [0, 0.15] | uniform |
    | `lateral_friction` | - | 0.01 | [0, 0.05] | [0, 0.1] | uniform |
    | `joint_damping` | N*m*s/rad | 0.002 | [0.0004, 0.04] log | [0.0001, 0.1] log | loguniform |
    | `actuator_gain` | - | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `motor_sign` | - | 1 | {1, -1} | {1, -1} | choice |
    | `latency_steps` | steps | 0 | {0, 1} | {0, 1, 2, 3} | choice |
    | `obs_noise` | x obs scale | 0 | [0, 0.02] | [0, 0.05] | uniform |

    Masses and pole length regenerate the URDF (inertias from geometry, loaded with
    ``URDF_USE_INERTIA_FROM_FILE``); friction is a velocity motor on the rail with force
    ``lateral_friction * total mass * g``; damping is the hinge's ``jointDamping``.

    ## Version history
    * v0: initial release.
    """

    dynamics_space = CARTPOLE_DYNAMICS
    geometry_params = ("cart_mass", "pole_mass", "pole_length", "payload_mass")
    default_max_episode_steps = 200
    noop_action = 1
    observation_names = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
    action_names = ("push_left", "none", "push_right")
    obs_scale = np.array([1.0, 1.0, 0.2, 1.0])

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        high = np.array([2 * X_LIMIT, 20.0, math.pi, 50.0], dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self._body = -1
        self._force = FORCE_NEWTONS

    def _build(self, client: BulletClient, task: Task) -> None:
        urdf = cartpole_urdf(task["cart_mass"], task["pole_mass"], task["pole_length"])
        self._body = self._load_urdf(
            client,
            "cartpole",
            urdf,
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            useFixedBase=True,
        )
        # The tip payload is a fixed link; its mass is set here so the URDF stays generic.
        client.changeDynamics(self._body, 2, mass=max(float(task["payload_mass"]), 1e-6))
        self._disable_motors(client, self._body, [1])

    def _apply_task(self, client: BulletClient, task: Task) -> None:
        total = task["cart_mass"] + task["pole_mass"] + task["payload_mass"]
        client.setJointMotorControl2(
            self._body,
            0,
            pybullet.VELOCITY_CONTROL,
            targetVelocity=0.0,
            # PyBullet scales a motor force limit by the substep count: divide it back out.
            force=task["lateral_friction"] * total * 9.81 / self.substeps,
        )
        client.changeDynamics(self._body, 1, jointDamping=task["joint_damping"])
        client.changeDynamics(self._body, 0, jointDamping=0.0)
        self._force = FORCE_NEWTONS * task["actuator_gain"] * task["motor_sign"]

    def _reset_state(self, client: BulletClient, rng: np.random.Generator) -> None:
        x, xd, th, thd = rng.uniform(-0.05, 0.05, size=4)
        client.resetJointState(self._body, 0, x, xd)
        client.resetJointState(self._body, 1, th, thd)

    def _apply_action(self, client: BulletClient, action: int) -> None:
        # Force control via an external force keeps the rail's friction motor in place.
        client.applyExternalForce(
            self._body,
            0,
            [self._force * (action - 1), 0.0, 0.0],
            [0.0, 0.0, 0.0],
            pybullet.LINK_FRAME,
        )

    def _observe(self, client: BulletClient) -> np.ndarray:
        (x, xd, _, _), (th, thd, _, _) = client.getJointStates(self._body, [0, 1])
        return np.array([x, xd, th, thd], dtype=np.float64)

    def _reward(self, raw_obs: np.ndarray, action: int) -> tuple[float, bool]:
        x, _, th, _ = raw_obs
        return 1.0, bool(abs(x) > X_LIMIT or abs(th) > THETA_LIMIT)

    def _camera(self) -> tuple[list[float], float, float, float]:
        return [0.0, 0.0, 0.5], 4.0, 0.0, -10.0
