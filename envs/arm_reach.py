"""7-DoF Kuka iiwa arm reaching a 3-D target, with randomized dynamics (``robometa/ArmReach-v0``)."""

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

URDF = "kuka_iiwa/model.urdf"
JOINTS = (0, 1, 2, 3, 4, 5, 6)
#: the joints that move the end effector: A1 (base yaw), A2 (shoulder), A4 (elbow).
ARM = (0, 1, 3)
#: the joints held at their home angle: A3, A5, A6, A7 (the wrist).
WRIST = (2, 4, 5, 6)
#: the joint whose motor ``motor_sign = -1`` mounts reversed (A1, base yaw).
REVERSIBLE_JOINT = 0
EE_LINK = 6
HOME = (0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0)
#: nominal torque limits of the joint servos (on top of gravity compensation), N*m, A1..A7.
SERVO_TORQUE = (60.0, 60.0, 110.0, 30.0, 110.0, 40.0, 40.0)
#: commanded end-effector speed of a move action, m/s (2 cm per 50 Hz control step).
EE_SPEED = 1.0
MAX_JOINT_SPEED = 2.0
#: position gain of the wrist servos (PyBullet's POSITION_CONTROL ``positionGain``).
WRIST_GAIN = 0.5
IK_DAMPING = 0.05
#: the box targets are drawn from, m (in front of the robot, which faces +x).
TARGET_LOW = (0.40, -0.30, 0.20)
TARGET_HIGH = (0.70, 0.30, 0.60)
SUCCESS_RADIUS = 0.05
SUCCESS_BONUS = 1.0
PAYLOAD_RADIUS = 0.05

ARM_REACH_DYNAMICS = DynamicsSpace(
    "ArmReach",
    (
        Param(
            "link_mass_scale",
            "x nominal",
            1.0,
            (0.5, 2.0),
            (0.25, 4.0),
            "loguniform",
            (1e-3, 100.0),
            doc="multiplies every link's mass and inertia (17.5 kg in all); gravity-compensated",
        ),
        Param(
            "payload_mass",
            "kg",
            0.0,
            (0.0, 3.0),
            (0.0, 7.0),
            "uniform",
            (0.0, 50.0),
            doc="point mass at the flange (last link's centre of mass); not gravity-compensated",
        ),
        Param(
            "lateral_friction",
            "-",
            0.05,
            (0.0, 0.25),
            (0.0, 0.5),
            "uniform",
            (0.0, 2.0),
            doc="Coulomb friction torque of A1, A2, A4, as a fraction of their nominal servo torque",
        ),
        Param(
            "joint_damping",
            "N*m*s/rad",
            2.0,
            (0.4, 40.0),
            (0.1, 100.0),
            "loguniform",
            (0.0, 1000.0),
            doc="viscous damping of A1, A2, A4",
        ),
        actuator_gain_param("multiplies every servo's torque limit"),
        motor_sign_param(
            "-1: the base-yaw motor (A1) is mounted reversed (+y moves the arm to -y)"
        ),
        LATENCY_STEPS,
        OBS_NOISE,
    ),
)

_ZEROS7 = [0.0] * 7
_ONES7 = [1.0] * 7
_ORIGIN = [0.0, 0.0, 0.0]


class ArmReachEnv(RobotEnv):
    """Move the end effector of a 7-DoF Kuka LBR iiwa to a random 3-D target.

    The arm (``kuka_iiwa/model.urdf`` from ``pybullet_data``, 17.5 kg, fixed base at the origin,
    facing +x, on a floor plane) is driven through its joints. A move action commands an
    end-effector velocity of 1 m/s along one world axis (2 cm per 50 Hz control step). The
    controller maps it to velocity targets of the three positioning joints A1 (base yaw),
    A2 (shoulder) and A4 (elbow) with the damped least-squares inverse (damping 0.05) of their
    positional Jacobian at the measured joint angles, scaled down uniformly if a joint would
    exceed 2 rad/s. PyBullet velocity servos (``POSITION_CONTROL`` with position gain 0,
    velocity gain 1) track those targets with torque limits of 60, 60 and 30 N*m times
    ``actuator_gain``; the wrist joints A3, A5, A6, A7 hold their home angles (position servos,
    110, 110, 40, 40 N*m times ``actuator_gain``). On top, every joint gets a gravity-compensation
    torque for the arm's own links (``calculateInverseDynamics`` at zero velocity, minus the
    payload's share: the payload is an unknown load). The servos are torque-limited while the
    arm accelerates and brakes (about 3 steps from rest to full speed at nominal), so heavier
    links, a payload, a weaker motor, friction and damping all make the arm slower and overshoot
    more, and a heavy payload on a weak arm sags.

    ## Action space
    ``Discrete(7)``:

    | action | meaning |
    |---|---|
    | 0 | move the end effector +x (away from the robot) |
    | 1 | move the end effector -x |
    | 2 | move the end effector +y (to the robot's left) |
    | 3 | move the end effector -y |
    | 4 | move the end effector +z (up) |
    | 5 | move the end effector -z |
    | 6 | stay (every velocity target zero: the servos brake and hold) |

    With ``motor_sign = -1`` the base-yaw motor (A1) is mounted reversed: its commanded velocity
    is negated, so +y moves the end effector toward -y and -y toward +y (a mirror image in
    front of the robot), and +-x curve sideways away from y = 0.

    ## Observation space
    ``Box(9,)`` float32, noise-free values plus ``obs_noise`` Gaussian noise. The end effector is
    the centre of mass of the last link (the flange, where the payload sits):

    | index | observation | unit | bounds |
    |---|---|---|---|
    | 0-2 | end-effector position x, y, z (world frame, base at the origin) | m | +-1.5 |
    | 3-5 | end-effector velocity x, y, z | m/s | +-5 |
    | 6-8 | target minus end-effector position x, y, z | m | +-3 |

    ## Reward
    ``-distance`` (metres from the end effector to the target) on every step, plus a bonus of
    +1 on every step that ends with the end effector within 5 cm of the target. A policy that
    moves along the axis of largest error scores about +79 per episode on the nominal robot,
    a uniformly random one about -27.

    ## Episode end
    Never terminates; truncates after 100 steps (2 s, ``max_episode_steps``) or on a physics
    blow-up (``info["physics_error"]``). At reset the arm is at rest at its home angles
    ``(0, 0.6, 0, -1.4, 0, 1.1, 0)`` rad with A1, A2, A4 perturbed uniformly by +-0.1 rad
    (end effector near (0.6, 0, 0.44) m), and the target is drawn uniformly from the box
    x in [0.4, 0.7], y in [-0.3, 0.3], z in [0.2, 0.6] m (a red sphere when rendered).
    Control runs at 50 Hz with 4 physics substeps.

    ## Dynamics parameters
    | parameter | unit | nominal | train | test | distribution |
    |---|---|---|---|---|---|
    | `link_mass_scale` | x nominal | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `payload_mass` | kg | 0 | [0, 3] | [0, 7] | uniform |
    | `lateral_friction` | - | 0.05 | [0, 0.25] | [0, 0.5] | uniform |
    | `joint_damping` | N*m*s/rad | 2 | [0.4, 40] log | [0.1, 100] log | loguniform |
    | `actuator_gain` | - | 1 | [0.5, 2] log | [0.25, 4] log | loguniform |
    | `motor_sign` | - | 1 | {1, -1} | {1, -1} | choice |
    | `latency_steps` | steps | 0 | {0, 1} | {0, 1, 2, 3} | choice |
    | `obs_noise` | x obs scale | 0 | [0, 0.02] | [0, 0.05] | uniform |

    Every parameter is applied in ``_apply_task``; the world is built once.

    * ``link_mass_scale`` multiplies each link's mass *and* inertia diagonal, set together with
      ``changeDynamics`` (the URDF is loaded with ``URDF_USE_INERTIA_FROM_FILE``; a mass change
      alone makes PyBullet recompute the inertia from the collision shape). The gravity
      compensation knows the link masses, so they change the arm's inertia, not its sag.
    * ``payload_mass`` is added to the last link's mass at its centre of mass, with the inertia
      of a 5 cm solid sphere; it is not gravity-compensated (it loads the servos) and adds
      inertia at the tip.
    * ``actuator_gain`` multiplies every servo's torque limit. The limits are passed to PyBullet
      divided by the substep count, because PyBullet caps a motor's impulse in each substep at
      ``force * control step``.
    * ``lateral_friction`` (Coulomb) and ``joint_damping`` (viscous) act on A1, A2, A4 as a
      joint torque ``-sign(w) * min(c * |w| + mu * L0, L)`` (``w`` measured joint velocity,
      ``c`` = ``joint_damping``, ``mu`` = ``lateral_friction``, ``L0`` the joint's nominal servo
      torque limit, ``L`` its actual one), computed once per control step and held over the
      substeps. The cap at ``L`` keeps it stable: the constraint-based servo can always cancel
      it, whereas an uncapped explicit torque (and PyBullet's own ``jointDamping``, set to 0
      here) reverses a joint within a step and blows up for large coefficients. With a servo
      that is not torque-saturated they only cost torque; they slow the arm when it is.
    * ``motor_sign`` negates A1's velocity target (see the action space).
    * ``latency_steps`` and ``obs_noise`` are handled by ``RobotEnv``.

    In the weak, heavy corner of the test ranges (``actuator_gain`` near 0.25 with a payload
    above about 4 kg) the servos cannot hold the payload up and the arm sinks toward the floor.

    ## Version history
    * v0: initial release.
    """

    dynamics_space = ARM_REACH_DYNAMICS
    geometry_params = ()
    default_max_episode_steps = 100
    noop_action = 6
    observation_names = (
        "ee_x",
        "ee_y",
        "ee_z",
        "ee_vx",
        "ee_vy",
        "ee_vz",
        "target_dx",
        "target_dy",
        "target_dz",
    )
    action_names = ("+x", "-x", "+y", "-y", "+z", "-z", "stay")
    obs_scale = np.array([0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        high = np.array([1.5] * 3 + [5.0] * 3 + [3.0] * 3, dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(7)
        self._body = -1
        self._marker = -1
        self._target = np.zeros(3)
        self._masses: list[float] = []
        self._inertias: list[np.ndarray] = []
        self._forces: list[float] = list(SERVO_TORQUE)
        self._gains = [WRIST_GAIN if j in WRIST else 0.0 for j in JOINTS]
        self._sign = [1.0, 1.0, 1.0]
        self._damping = 0.0
        self._friction = [0.0, 0.0, 0.0]
        self._limits = [SERVO_TORQUE[j] for j in ARM]
        self._mass_scale = 1.0

    # ------------------------------------------------------------------ world and task

    def _build(self, client: BulletClient, task: Task) -> None:
        client.loadURDF("plane.urdf")
        self._body = client.loadURDF(
            URDF, useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE
        )
        self._masses = [client.getDynamicsInfo(self._body, j)[0] for j in JOINTS]
        self._inertias = [np.array(client.getDynamicsInfo(self._body, j)[2]) for j in JOINTS]
        # PyBullet builds a body's inverse-dynamics model at its first use and never updates it
        # after changeDynamics: build it now, with the URDF's masses, so that it never holds
        # those of whichever task happened to step first (_apply_action scales its torques).
        client.calculateInverseDynamics(self._body, list(HOME), _ZEROS7, _ZEROS7)
        for j in JOINTS:  # explicit jointDamping is unstable; see _apply_action
            client.changeDynamics(self._body, j, jointDamping=0.0)
        marker = client.createVisualShape(
            pybullet.GEOM_SPHERE, radius=0.03, rgbaColor=[0.9, 0.1, 0.1, 1.0]
        )
        self._marker = client.createMultiBody(
            baseMass=0.0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=marker
        )

    def _apply_task(self, client: BulletClient, task: Task) -> None:
        scale = float(task["link_mass_scale"])
        payload = float(task["payload_mass"])
        for j in JOINTS:
            mass = self._masses[j] * scale
            inertia = self._inertias[j] * scale
            if j == EE_LINK:
                mass += payload
                inertia = inertia + 0.4 * payload * PAYLOAD_RADIUS**2
            client.changeDynamics(self._body, j, mass=mass, localInertiaDiagonal=list(inertia))
        gain = float(task["actuator_gain"])
        self._forces = [t * gain / self.substeps for t in SERVO_TORQUE]
        self._sign = [float(task["motor_sign"]) if j == REVERSIBLE_JOINT else 1.0 for j in ARM]
        self._damping = float(task["joint_damping"])
        self._friction = [float(task["lateral_friction"]) * SERVO_TORQUE[j] for j in ARM]
        self._limits = [SERVO_TORQUE[j] * gain for j in ARM]
        self._mass_scale = scale

    def _reset_state(self, client: BulletClient, rng: np.random.Generator) -> None:
        q = np.array(HOME)
        q[list(ARM)] += rng.uniform(-0.1, 0.1, size=len(ARM))
        for j in JOINTS:
            client.resetJointState(self._body, j, q[j], 0.0)
        self._target = rng.uniform(TARGET_LOW, TARGET_HIGH)
        client.resetBasePositionAndOrientation(self._marker, self._target.tolist(), [0, 0, 0, 1])

    # ------------------------------------------------------------------ control

    def _apply_action(self, client: BulletClient, action: int) -> None:
        # Plain Python on 3x3 matrices: numpy's per-call overhead would dominate the step.
        body = self._body
        states = client.getJointStates(body, JOINTS)
        q = [s[0] for s in states]
        jac = client.calculateJacobian(body, EE_LINK, _ORIGIN, q, _ZEROS7, _ZEROS7)[0]
        velocities = [0.0] * 7
        if action != self.noop_action:
            velocities = self._joint_velocities(jac, action)
        client.setJointMotorControlArray(
            body,
            JOINTS,
            pybullet.POSITION_CONTROL,
            targetPositions=HOME,
            targetVelocities=velocities,
            forces=self._forces,
            positionGains=self._gains,
            velocityGains=_ONES7,
        )
        # Gravity compensation of the arm's own links (the payload is an unknown load). The
        # inverse-dynamics model has the URDF's masses (see _build): gravity torques at rest are
        # linear in the masses, so scaling them gives those of the task's links.
        scale = self._mass_scale
        torque = [scale * t for t in client.calculateInverseDynamics(body, q, _ZEROS7, _ZEROS7)]
        # Viscous damping and Coulomb friction of A1, A2, A4: explicit torques opposing the
        # measured joint velocity, held over the substeps. Capped at the servo's torque limit, so
        # the (implicit, constraint-based) servo can always cancel them: uncapped, large
        # coefficients reverse a joint within a step and the simulation blows up.
        c = self._damping
        for i, j in enumerate(ARM):
            w = states[j][1]
            if w != 0.0:
                loss = min(c * abs(w) + self._friction[i], self._limits[i])
                torque[j] -= loss if w > 0.0 else -loss
        client.setJointMotorControlArray(body, JOINTS, pybullet.TORQUE_CONTROL, forces=torque)

    def _joint_velocities(self, jac, action: int) -> list[float]:
        """Damped least-squares joint velocities of A1, A2, A4 for one Cartesian direction."""
        rows = [[r[j] for j in ARM] for r in jac]
        lam = IK_DAMPING**2
        a = rows[0][0] ** 2 + rows[0][1] ** 2 + rows[0][2] ** 2 + lam
        d = rows[1][0] ** 2 + rows[1][1] ** 2 + rows[1][2] ** 2 + lam
        f = rows[2][0] ** 2 + rows[2][1] ** 2 + rows[2][2] ** 2 + lam
        b = sum(x * y for x, y in zip(rows[0], rows[1], strict=True))
        c = sum(x * y for x, y in zip(rows[0], rows[2], strict=True))
        e = sum(x * y for x, y in zip(rows[1], rows[2], strict=True))
        cof = (
            (d * f - e * e, c * e - b * f, b * e - c * d),
            (c * e - b * f, a * f - c * c, b * c - a * e),
            (b * e - c * d, b * c - a * e, a * d - b * b),
        )
        det = a * cof[0][0] + b * cof[0][1] + c * cof[0][2]
        axis, sign = divmod(action, 2)
        speed = (EE_SPEED if sign == 0 else -EE_SPEED) / det
        x = [cof[r][axis] * speed for r in range(3)]  # (J J^T + lam I)^-1 v
        w = [sum(rows[r][i] * x[r] for r in range(3)) for i in range(3)]  # J^T x
        top = max(abs(v) for v in w)
        scale = min(1.0, MAX_JOINT_SPEED / top) if top > 0.0 else 1.0
        velocities = [0.0] * 7
        for i, j in enumerate(ARM):
            velocities[j] = w[i] * scale * self._sign[i]
        return velocities

    def _observe(self, client: BulletClient) -> np.ndarray:
        state = client.getLinkState(self._body, EE_LINK, computeLinkVelocity=1)
        pos, vel = state[0], state[6]
        t = self._target
        return np.array([*pos, *vel, t[0] - pos[0], t[1] - pos[1], t[2] - pos[2]], dtype=np.float64)

    def _reward(self, raw_obs: np.ndarray, action: int) -> tuple[float, bool]:
        distance = math.sqrt(raw_obs[6] ** 2 + raw_obs[7] ** 2 + raw_obs[8] ** 2)
        return -distance + (SUCCESS_BONUS if distance < SUCCESS_RADIUS else 0.0), False

    def _camera(self) -> tuple[list[float], float, float, float]:
        return [0.3, 0.0, 0.35], 1.3, 30.0, -20.0
