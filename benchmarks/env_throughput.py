"""Env throughput: steps/s of every robometa robot family against a bare PyBullet loop.

For each family the env runs through ``gymnasium.make`` with uniformly random actions (resets
counted), and a *bare* loop written here with raw ``pybullet`` calls does the same physics
work: the same URDF (the family's generated URDF for the nominal task, or the same
``pybullet_data`` file), the same floor and target marker, the same time step and substeps,
the same control calls per step and the same state reads, resetting on the same episode
ends. What the bare loop leaves out is exactly the env's own overhead: gymnasium's wrapper,
the task and latency machinery, observation arrays, noise and clipping, blow-up checks,
reward. Both loops see the same action sequence and alternate within each repeat (side by
side); speeds are medians over repeats and the ratio is the median of the per-repeat ratios.

Timing uses the CPU time of this process (``time.process_time``) so that other load on a
shared machine does not count, and the process is pinned to one CPU core by default.
Targets: env at least half the speed of the bare loop for every family, and CartPole above
10,000 env steps/s on one core. Torch is never imported.

    python benchmarks/env_throughput.py --out /tmp/env_throughput.json
    python benchmarks/env_throughput.py --out x.json --steps 2000 --repeats 3 --families CartPole
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet
import pybullet_data
import robometa.envs

RATIO_TARGET = 0.5
CARTPOLE_ENV_TARGET = 10_000.0

# --------------------------------------------------------------------------- bare loops


class BareLoop:
    """A raw-pybullet twin of one family's env at its nominal task.

    ``reset(rng)`` starts an episode; ``step(action)`` advances one control step and returns
    whether the episode is over (the env's termination or time limit).
    """

    def __init__(self, env: gym.Env) -> None:
        self.unwrapped = env.unwrapped
        self.task = self.unwrapped.dynamics_space.nominal()
        self.max_steps = self.unwrapped.max_episode_steps
        self.t = 0
        self.tmpdir = Path(tempfile.mkdtemp(prefix="robometa-bench-"))
        self.cid = pybullet.connect(pybullet.DIRECT)

    def world(self, dt: float, substeps: int) -> None:
        cid = self.cid
        pybullet.resetSimulation(physicsClientId=cid)
        pybullet.setGravity(0, 0, -9.81, physicsClientId=cid)
        pybullet.setPhysicsEngineParameter(
            fixedTimeStep=dt,
            numSubSteps=substeps,
            deterministicOverlappingPairs=1,
            physicsClientId=cid,
        )
        pybullet.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)

    def urdf(self, name: str, text: str) -> str:
        path = self.tmpdir / f"{name}.urdf"
        path.write_text(text)
        return str(path)

    def marker(self, shape: int, **kwargs: Any) -> int:
        visual = pybullet.createVisualShape(shape, physicsClientId=self.cid, **kwargs)
        return pybullet.createMultiBody(
            baseMass=0.0, baseVisualShapeIndex=visual, physicsClientId=self.cid
        )

    def close(self) -> None:
        pybullet.disconnect(self.cid)
        for path in self.tmpdir.iterdir():
            path.unlink()
        self.tmpdir.rmdir()


class CartPoleBare(BareLoop):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from robometa.envs import cartpole as m

        task, cid = self.task, self.cid
        self.world(m.CartPoleEnv.control_dt, m.CartPoleEnv.substeps)
        text = m.cartpole_urdf(task["cart_mass"], task["pole_mass"], task["pole_length"])
        self.body = body = pybullet.loadURDF(
            self.urdf("cartpole", text),
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            useFixedBase=True,
            physicsClientId=cid,
        )
        pybullet.changeDynamics(
            body, 2, mass=max(float(task["payload_mass"]), 1e-6), physicsClientId=cid
        )
        pybullet.setJointMotorControl2(
            body, 1, pybullet.VELOCITY_CONTROL, force=0.0, physicsClientId=cid
        )
        total = task["cart_mass"] + task["pole_mass"] + task["payload_mass"]
        pybullet.setJointMotorControl2(
            body,
            0,
            pybullet.VELOCITY_CONTROL,
            targetVelocity=0.0,
            force=task["lateral_friction"] * total * 9.81,
            physicsClientId=cid,
        )
        pybullet.changeDynamics(body, 1, jointDamping=task["joint_damping"], physicsClientId=cid)
        pybullet.changeDynamics(body, 0, jointDamping=0.0, physicsClientId=cid)
        self.force = m.FORCE_NEWTONS * task["actuator_gain"] * task["motor_sign"]
        self.x_limit, self.theta_limit = m.X_LIMIT, m.THETA_LIMIT

    def reset(self, rng: np.random.Generator) -> None:
        x, xd, th, thd = rng.uniform(-0.05, 0.05, size=4)
        pybullet.resetJointState(self.body, 0, x, xd, physicsClientId=self.cid)
        pybullet.resetJointState(self.body, 1, th, thd, physicsClientId=self.cid)
        self.t = 0

    def step(self, action: int) -> bool:
        body, cid = self.body, self.cid
        pybullet.applyExternalForce(
            body,
            0,
            [self.force * (action - 1), 0.0, 0.0],
            [0.0, 0.0, 0.0],
            pybullet.LINK_FRAME,
            physicsClientId=cid,
        )
        pybullet.stepSimulation(physicsClientId=cid)
        (x, _, _, _), (th, _, _, _) = pybullet.getJointStates(body, [0, 1], physicsClientId=cid)
        self.t += 1
        return abs(x) > self.x_limit or abs(th) > self.theta_limit or self.t >= self.max_steps


class ArmReachBare(BareLoop):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from robometa.envs import arm_reach as m

        self.m = m
        task, cid = self.task, self.cid
        self.world(m.ArmReachEnv.control_dt, m.ArmReachEnv.substeps)
        pybullet.loadURDF("plane.urdf", physicsClientId=cid)
        self.body = body = pybullet.loadURDF(
            m.URDF,
            useFixedBase=True,
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            physicsClientId=cid,
        )
        scale, payload = task["link_mass_scale"], task["payload_mass"]
        for j in m.JOINTS:
            mass, _, inertia = pybullet.getDynamicsInfo(body, j, physicsClientId=cid)[:3]
            pybullet.changeDynamics(
                body,
                j,
                jointDamping=0.0,
                mass=mass * scale + (payload if j == m.EE_LINK else 0.0),
                localInertiaDiagonal=[i * scale for i in inertia],
                physicsClientId=cid,
            )
        self.target_marker = self.marker(pybullet.GEOM_SPHERE, radius=0.03, rgbaColor=[1, 0, 0, 1])
        gain = task["actuator_gain"]
        self.forces = [t * gain / m.ArmReachEnv.substeps for t in m.SERVO_TORQUE]
        self.gains = [m.WRIST_GAIN if j in m.WRIST else 0.0 for j in m.JOINTS]
        self.damping = task["joint_damping"]
        self.friction = [task["lateral_friction"] * m.SERVO_TORQUE[j] for j in m.ARM]
        self.limits = [m.SERVO_TORQUE[j] * gain for j in m.ARM]
        self.zeros = [0.0] * 7

    def reset(self, rng: np.random.Generator) -> None:
        m, cid = self.m, self.cid
        q = list(m.HOME)
        for j in m.ARM:
            q[j] += rng.uniform(-0.1, 0.1)
        for j in m.JOINTS:
            pybullet.resetJointState(self.body, j, q[j], 0.0, physicsClientId=cid)
        target = rng.uniform(m.TARGET_LOW, m.TARGET_HIGH).tolist()
        pybullet.resetBasePositionAndOrientation(
            self.target_marker, target, [0, 0, 0, 1], physicsClientId=cid
        )
        self.t = 0

    def step(self, action: int) -> bool:
        m, body, cid, zeros = self.m, self.body, self.cid, self.zeros
        states = pybullet.getJointStates(body, m.JOINTS, physicsClientId=cid)
        q = [s[0] for s in states]
        jac = pybullet.calculateJacobian(
            body, m.EE_LINK, [0.0] * 3, q, zeros, zeros, physicsClientId=cid
        )[0]
        velocities = [0.0] * 7
        if action != 6:  # Jacobian transpose: the cheapest Cartesian-to-joint mapping
            axis, sign = divmod(action, 2)
            row = jac[axis]
            for j in m.ARM:
                velocities[j] = row[j] if sign == 0 else -row[j]
        pybullet.setJointMotorControlArray(
            body,
            m.JOINTS,
            pybullet.POSITION_CONTROL,
            targetPositions=m.HOME,
            targetVelocities=velocities,
            forces=self.forces,
            positionGains=self.gains,
            velocityGains=[1.0] * 7,
            physicsClientId=cid,
        )
        torque = list(pybullet.calculateInverseDynamics(body, q, zeros, zeros, physicsClientId=cid))
        c = self.damping
        for i, j in enumerate(m.ARM):
            w = states[j][1]
            if w:
                torque[j] -= math.copysign(min(c * abs(w) + self.friction[i], self.limits[i]), w)
        pybullet.setJointMotorControlArray(
            body, m.JOINTS, pybullet.TORQUE_CONTROL, forces=torque, physicsClientId=cid
        )
        pybullet.stepSimulation(physicsClientId=cid)
        pybullet.getLinkState(body, m.EE_LINK, computeLinkVelocity=1, physicsClientId=cid)
        self.t += 1
        return self.t >= self.max_steps


class ReacherBare(BareLoop):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from robometa.envs import reacher as m

        task, cid = self.task, self.cid
        cls = m.ReacherEnv
        self.substeps = getattr(self.unwrapped, "_substeps", cls.substeps)
        self.world(cls.control_dt, cls.substeps)
        l1, l2 = float(task["link1_length"]), float(task["link2_length"])
        text = m.reacher_urdf(l1, l2, task["link1_mass"], task["link2_mass"], task["payload_mass"])
        pybullet.loadURDF("plane.urdf", physicsClientId=cid)
        self.body = body = pybullet.loadURDF(
            self.urdf("reacher", text),
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            useFixedBase=True,
            physicsClientId=cid,
        )
        for link in (0, 1, 2):
            pybullet.changeDynamics(
                body, link, linearDamping=0.0, angularDamping=0.0, physicsClientId=cid
            )
        self.target_marker = self.marker(pybullet.GEOM_SPHERE, radius=0.04, rgbaColor=[1, 0, 0, 1])
        outboard = (
            task["link1_mass"] + task["link2_mass"] + task["payload_mass"],
            task["link2_mass"] + task["payload_mass"],
        )
        pybullet.setJointMotorControlArray(
            body,
            [0, 1],
            pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0, 0.0],
            forces=[task["lateral_friction"] * m.GRAVITY * w * m.BEARING_RADIUS for w in outboard],
            physicsClientId=cid,
        )
        for joint in (0, 1):
            pybullet.changeDynamics(
                body, joint, jointDamping=task["joint_damping"], physicsClientId=cid
            )
        pybullet.setPhysicsEngineParameter(
            fixedTimeStep=cls.control_dt / self.substeps, numSubSteps=1, physicsClientId=cid
        )
        shoulder = m.SHOULDER_TORQUE * task["actuator_gain"] * task["motor_sign"]
        elbow = m.ELBOW_TORQUE * task["actuator_gain"]
        self.torques = [[shoulder * a, elbow * b] for a, b in cls._ACTION_TORQUES]
        self.lengths = (l1, l2)

    def reset(self, rng: np.random.Generator) -> None:
        cid = self.cid
        q1, q2 = rng.uniform(-math.pi, math.pi), rng.uniform(-2.5, 2.5)
        v1, v2 = rng.uniform(-0.1, 0.1, size=2)
        pybullet.resetJointState(self.body, 0, q1, v1, physicsClientId=cid)
        pybullet.resetJointState(self.body, 1, q2, v2, physicsClientId=cid)
        reach = sum(self.lengths)
        radius, angle = rng.uniform(0.3 * reach, 0.9 * reach), rng.uniform(-math.pi, math.pi)
        pybullet.resetBasePositionAndOrientation(
            self.target_marker,
            [radius * math.cos(angle), radius * math.sin(angle), 0.05],
            [0, 0, 0, 1],
            physicsClientId=cid,
        )
        self.t = 0

    def step(self, action: int) -> bool:
        body, cid, forces = self.body, self.cid, self.torques[action]
        for _ in range(self.substeps):
            pybullet.setJointMotorControlArray(
                body, [0, 1], pybullet.TORQUE_CONTROL, forces=forces, physicsClientId=cid
            )
            pybullet.stepSimulation(physicsClientId=cid)
        pybullet.getJointStates(body, [0, 1], physicsClientId=cid)
        self.t += 1
        return self.t >= self.max_steps


class DiffDriveBare(BareLoop):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from robometa.envs import diff_drive as m

        self.m = m
        task, cid = self.task, self.cid
        cls = m.DiffDriveEnv
        self.substeps = getattr(self.unwrapped, "_substeps", cls.substeps)
        self.world(cls.control_dt, cls.substeps)
        self.radius = radius = float(task["wheel_radius"])
        text = m.diff_drive_urdf(
            task["chassis_mass"], task["wheel_mass"], task["payload_mass"], radius
        )
        floor = pybullet.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=pybullet.createCollisionShape(
                pybullet.GEOM_PLANE, physicsClientId=cid
            ),
            baseVisualShapeIndex=pybullet.createVisualShape(
                pybullet.GEOM_MESH, fileName="plane100.obj", physicsClientId=cid
            ),
            physicsClientId=cid,
        )
        pybullet.changeDynamics(floor, -1, lateralFriction=1.0, physicsClientId=cid)
        self.body = body = pybullet.loadURDF(
            self.urdf("diff_drive", text),
            basePosition=[0.0, 0.0, radius],
            flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
            physicsClientId=cid,
        )
        for link in (m.CHASSIS, *m.WHEELS, *m.CASTERS, m.PAYLOAD):
            pybullet.changeDynamics(
                body, link, linearDamping=0.0, angularDamping=0.0, physicsClientId=cid
            )
        for caster in m.CASTERS:
            pybullet.changeDynamics(
                body,
                caster,
                lateralFriction=0.0,
                rollingFriction=0.0,
                spinningFriction=0.0,
                physicsClientId=cid,
            )
        self.target_marker = self.marker(
            pybullet.GEOM_CYLINDER, radius=m.GOAL_RADIUS, length=0.01, rgbaColor=[1, 0, 0, 1]
        )
        pybullet.setPhysicsEngineParameter(
            numSolverIterations=m.SOLVER_ITERATIONS, physicsClientId=cid
        )
        for wheel in m.WHEELS:
            pybullet.changeDynamics(
                body,
                wheel,
                lateralFriction=task["lateral_friction"],
                jointDamping=task["joint_damping"],
                physicsClientId=cid,
            )
        pybullet.setPhysicsEngineParameter(
            fixedTimeStep=cls.control_dt / self.substeps, numSubSteps=1, physicsClientId=cid
        )
        speed = m.WHEEL_SPEED * task["actuator_gain"]
        half = math.sqrt(task["left_right_mismatch"])
        left, right = speed * half * task["motor_sign"], speed / half
        self.speeds = [[left * a, right * b] for a, b in cls._ACTION_SPEEDS]
        self.goal = (0.0, 0.0)

    def reset(self, rng: np.random.Generator) -> None:
        m, body, cid = self.m, self.body, self.cid
        yaw = rng.uniform(-math.pi, math.pi)
        pybullet.resetBasePositionAndOrientation(
            body,
            [0.0, 0.0, self.radius],
            pybullet.getQuaternionFromEuler([0.0, 0.0, yaw]),
            physicsClientId=cid,
        )
        pybullet.resetBaseVelocity(body, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], physicsClientId=cid)
        for wheel in m.WHEELS:
            pybullet.resetJointState(body, wheel, 0.0, 0.0, physicsClientId=cid)
        pybullet.setJointMotorControlArray(
            body,
            m.WHEELS,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0, 0.0],
            forces=m.MOTOR_TORQUES,
            physicsClientId=cid,
        )
        distance, direction = rng.uniform(1.0, 3.0), rng.uniform(-math.pi, math.pi)
        self.goal = (distance * math.cos(direction), distance * math.sin(direction))
        pybullet.resetBasePositionAndOrientation(
            self.target_marker, [*self.goal, 0.005], [0, 0, 0, 1], physicsClientId=cid
        )
        self.t = 0

    def step(self, action: int) -> bool:
        m, body, cid = self.m, self.body, self.cid
        pybullet.setJointMotorControlArray(
            body,
            m.WHEELS,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=self.speeds[action],
            forces=m.MOTOR_TORQUES,
            physicsClientId=cid,
        )
        for _ in range(self.substeps):
            pybullet.stepSimulation(physicsClientId=cid)
        (x, y, _), _ = pybullet.getBasePositionAndOrientation(body, physicsClientId=cid)
        pybullet.getBaseVelocity(body, physicsClientId=cid)
        pybullet.getJointStates(body, m.WHEELS, physicsClientId=cid)
        self.t += 1
        reached = math.hypot(self.goal[0] - x, self.goal[1] - y) < m.GOAL_RADIUS
        return reached or self.t >= self.max_steps


BARE_LOOPS: dict[str, Callable[[gym.Env], BareLoop]] = {
    "robometa/CartPole-v0": CartPoleBare,
    "robometa/ArmReach-v0": ArmReachBare,
    "robometa/Reacher-v0": ReacherBare,
    "robometa/DiffDrive-v0": DiffDriveBare,
}

# --------------------------------------------------------------------------- timing


def time_env(env: gym.Env, actions: list[int], seed: int) -> float:
    env.reset(seed=seed)
    start = time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return len(actions) / max(time.process_time() - start, 1e-9)


def time_bare(bare: BareLoop, actions: list[int], seed: int) -> float:
    rng = np.random.default_rng(seed)
    bare.reset(rng)
    start = time.process_time()
    for a in actions:
        if bare.step(a):
            bare.reset(rng)
    return len(actions) / max(time.process_time() - start, 1e-9)


def measure(env_id: str, steps: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    env = gym.make(env_id)
    env.reset(seed=seed)
    bare = BARE_LOOPS[env_id](env)
    try:
        rng = np.random.default_rng(seed)
        actions = rng.integers(env.action_space.n, size=steps).tolist()
        warmup = actions[: max(1, min(1000, steps // 10))]
        time_env(env, warmup, seed)
        time_bare(bare, warmup, seed)
        env_runs, bare_runs = [], []
        for r in range(repeats):  # side by side, alternating which goes first
            if r % 2 == 0:
                env_runs.append(time_env(env, actions, seed + r))
                bare_runs.append(time_bare(bare, actions, seed + r))
            else:
                bare_runs.append(time_bare(bare, actions, seed + r))
                env_runs.append(time_env(env, actions, seed + r))
    finally:
        bare.close()
        env.close()
    ratios = [e / b for e, b in zip(env_runs, bare_runs, strict=True)]
    result: dict[str, Any] = {
        "env_steps_per_s": statistics.median(env_runs),
        "bare_steps_per_s": statistics.median(bare_runs),
        "ratio": statistics.median(ratios),
        "env_runs": env_runs,
        "bare_runs": bare_runs,
        "ratio_runs": ratios,
        "targets": {"ratio_min": RATIO_TARGET},
    }
    checks = [result["ratio"] >= RATIO_TARGET]
    if env_id == "robometa/CartPole-v0":
        result["targets"]["env_steps_per_s_min"] = CARTPOLE_ENV_TARGET
        checks.append(result["env_steps_per_s"] >= CARTPOLE_ENV_TARGET)
    result["pass"] = all(checks)
    return result


def select(names: list[str] | None) -> list[str]:
    if not names:
        return list(robometa.envs.FAMILIES)
    chosen = []
    for name in names:
        hits = [i for i in robometa.envs.FAMILIES if name.lower() in i.lower()]
        if len(hits) != 1:
            raise SystemExit(
                f"--families: {name!r} matches {hits or 'no family'}; known: "
                f"{', '.join(robometa.envs.FAMILIES)}"
            )
        chosen.append(hits[0])
    return chosen


def pin_to_one_cpu(cpu: int | None) -> list[int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    if cpu is None:
        cpu = min(os.sched_getaffinity(0))
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=20_000, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per loop")
    parser.add_argument("--families", nargs="+", help="ids or parts of them (default: all)")
    parser.add_argument(
        "--cpu", type=int, default=None, help="core to pin to (default: the first; -1: no pin)"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    families = select(args.families)
    affinity = pin_to_one_cpu(args.cpu)

    results = {}
    print(f"{'family':<24}{'env steps/s':>13}{'bare steps/s':>14}{'ratio':>8}  pass")
    for env_id in families:
        r = measure(env_id, args.steps, args.repeats)
        results[env_id] = r
        target = "" if r["pass"] else "  FAIL"
        print(
            f"{env_id:<24}{r['env_steps_per_s']:>13,.0f}{r['bare_steps_per_s']:>14,.0f}"
            f"{r['ratio']:>8.2f}  {'yes' if r['pass'] else 'no'}{target}"
        )
    print(
        f"targets: ratio >= {RATIO_TARGET} for every family; "
        f"CartPole env >= {CARTPOLE_ENV_TARGET:,.0f} steps/s (CPU time, one core)"
    )
    report = {
        "benchmark": "env_throughput",
        "command": " ".join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "steps": args.steps,
        "repeats": args.repeats,
        "clock": "process_time",
        "cpu_affinity": affinity,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pybullet_api_version": pybullet.getAPIVersion(),
        "torch_imported": "torch" in sys.modules,
        "families": results,
        "pass": all(r["pass"] for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
