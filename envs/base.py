"""The shared machinery of every robometa robot family.

:class:`RobotEnv` owns one PyBullet client in DIRECT mode, the task API (``sample_tasks``,
``set_task``, ``get_task``), actuation latency, observation noise, the episode time limit,
physics blow-up detection and headless ``rgb_array`` rendering. A family subclass supplies the
world (``_build``), the one place a task is applied to it (``_apply_task``), the state reset,
the action mapping, the observation and the reward, and may adapt the physics time step to the
task (``_set_time_step``, which always runs first).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient
from robometa.envs.dynamics import DynamicsSpace, Split, Task


class _Client(BulletClient):
    """A ``BulletClient`` that binds each pybullet function once.

    ``BulletClient`` builds a new ``functools.partial`` on every attribute access, which costs
    more than many of the calls it wraps; this keeps the first one (except ``disconnect``).
    It also connects without an ``options`` string: PyBullet prints ``argv[0]=`` to stdout for
    every DIRECT connection that passes one, which would litter every log.
    """

    def __init__(self, connection_mode: int) -> None:
        self._shapes: dict = {}
        self._pid = os.getpid()
        self._client = pybullet.connect(connection_mode)
        if self._client < 0:
            raise RuntimeError(f"PyBullet could not connect (mode {connection_mode})")

    def __getattr__(self, name: str) -> Any:
        attribute = super().__getattr__(name)
        if name != "disconnect" and isinstance(attribute, functools.partial):
            self.__dict__[name] = attribute
        return attribute


class RobotEnv(gym.Env[np.ndarray, np.int64]):
    """Base class of a robot family with randomized dynamics (see the subclasses for specs).

    Args:
        render_mode: ``None`` or ``"rgb_array"`` (headless, works in DIRECT mode).
        task: the robot configuration to start with (a mapping; missing parameters take their
            nominal value). Defaults to the nominal robot.
        dynamics: overrides of the dynamics space's ranges, ``{param: {train: [lo, hi], ...}}``.
        max_episode_steps: episode length before truncation (defaults to the family's).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}
    dynamics_space: ClassVar[DynamicsSpace]
    #: parameters whose change needs the world rebuilt (regenerated URDF).
    geometry_params: ClassVar[tuple[str, ...]] = ()
    #: parameters that only change the simulation through ``_apply_task``.
    default_max_episode_steps: ClassVar[int] = 200
    control_dt: ClassVar[float] = 0.02
    substeps: ClassVar[int] = 4
    noop_action: ClassVar[int] = 0
    #: names of the observation entries, in order (documentation and bundle manifests).
    observation_names: ClassVar[tuple[str, ...]] = ()
    #: names of the discrete actions, in order.
    action_names: ClassVar[tuple[str, ...]] = ()
    render_size: ClassVar[tuple[int, int]] = (320, 240)

    def __init__(
        self,
        render_mode: str | None = None,
        task: Mapping[str, float] | None = None,
        dynamics: Mapping[str, Mapping[str, Any]] | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; allowed: "
                f"{self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        space = type(self).dynamics_space
        self.dynamics_space = space.with_overrides(dynamics) if dynamics else space
        self.max_episode_steps = int(max_episode_steps or self.default_max_episode_steps)
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self._pending: Task = self.dynamics_space.make_task(task or {})
        self._task: Task | None = None
        self._geometry: tuple[float, ...] | None = None
        self._client: BulletClient | None = _Client(connection_mode=pybullet.DIRECT)
        self._tmpdir: Path | None = None
        self._actions: deque[int] = deque()
        self._elapsed = 0
        self._last_obs: np.ndarray | None = None
        self._obs_noise = 0.0
        self._state_bound: tuple[Any, list[float]] = (None, [])

    # ------------------------------------------------------------------ task API

    def sample_tasks(self, n: int, seed: int | None = None, split: Split = "train") -> list[Task]:
        """Draw ``n`` robot configurations from the ``train`` or (wider) ``test`` ranges."""
        return self.dynamics_space.sample(n, seed=seed, split=split)

    def set_task(self, task: Mapping[str, float]) -> None:
        """Set the robot configuration; it takes effect at the next ``reset``."""
        self._pending = self.dynamics_space.make_task(task)

    def get_task(self) -> Task:
        """The task most recently set (the one the next or current episode uses)."""
        return self._pending

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        task = self._pending
        client = self._require_client()
        geometry = tuple(float(task[name]) for name in self.geometry_params)
        if geometry != self._geometry:
            client.resetSimulation()  # also resets the time step to PyBullet's default
            client.setGravity(0, 0, -9.81)
            client.setPhysicsEngineParameter(
                fixedTimeStep=self.control_dt,
                numSubSteps=self.substeps,
                deterministicOverlappingPairs=1,
            )
            client.setAdditionalSearchPath(pybullet_data.getDataPath())
            self._build(client, task)
            self._geometry = geometry
        self._task = task
        self._set_time_step(client, task)
        self._apply_task(client, task)
        self._reset_state(client, self.np_random)
        self._obs_noise = float(task.get("obs_noise", 0.0))
        latency = int(task.get("latency_steps", 0))
        self._actions = deque([self.noop_action] * latency)
        self._elapsed = 0
        obs = self._noisy(self._observe(client))
        self._last_obs = obs
        return obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._task is None:
            raise RuntimeError("call reset() before step()")
        a = self._check_action(action)
        client = self._require_client()
        self._actions.append(a)
        applied = self._actions.popleft()
        self._apply_action(client, applied)
        client.stepSimulation()
        self._elapsed += 1
        raw = self._observe(client)
        info: dict[str, Any] = {"physics_error": False, "applied_action": applied}
        if not self._state_ok(raw):
            # A blow-up never leaks NaN or absurd values: end the episode on the last good obs.
            info["physics_error"] = True
            return self._last_obs.copy(), 0.0, False, True, info
        reward, terminated = self._reward(raw, applied)
        truncated = self._elapsed >= self.max_episode_steps and not terminated
        obs = self._noisy(raw)
        self._last_obs = obs
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        client = self._require_client()
        target, distance, yaw, pitch = self._camera()
        width, height = self.render_size
        view = client.computeViewMatrixFromYawPitchRoll(target, distance, yaw, pitch, 0.0, 2)
        proj = client.computeProjectionMatrixFOV(60, width / height, 0.05, 50.0)
        _, _, rgba, _, _ = client.getCameraImage(
            width, height, view, proj, renderer=pybullet.ER_TINY_RENDERER
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            except pybullet.error:
                pass  # already disconnected by PyBullet itself at interpreter shutdown
            self._client = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ------------------------------------------------------------------ helpers for subclasses

    def _load_urdf(self, client: BulletClient, name: str, text: str, **kwargs: Any) -> int:
        """Write a generated URDF into this env's private temp dir and load it (``kwargs``).

        PyBullet caches every file it reads by path for the client's lifetime: a URDF
        regenerated at the same path would load as the first one read there. The cache is off
        while this one loads, and stays on for the static assets (plane, meshes).
        """
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="robometa-"))
        path = self._tmpdir / f"{name}.urdf"
        path.write_text(text)
        client.setPhysicsEngineParameter(enableFileCaching=0)
        try:
            return client.loadURDF(str(path), **kwargs)
        finally:
            client.setPhysicsEngineParameter(enableFileCaching=1)

    @staticmethod
    def _disable_motors(client: BulletClient, body: int, joints: list[int]) -> None:
        """PyBullet's default velocity motors resist torque control until switched off."""
        for j in joints:
            client.setJointMotorControl2(body, j, pybullet.VELOCITY_CONTROL, force=0.0)

    def _noisy(self, raw: np.ndarray) -> np.ndarray:
        std = self._obs_noise if self._task is not None else 0.0
        obs = raw
        if std > 0.0:
            obs = raw + self.np_random.normal(0.0, std, raw.shape) * self.obs_scale
        # Cast, then clip in place to the (float32) bounds: the same values as clipping first,
        # at a fraction of np.clip's per-call cost on these small arrays.
        out = obs.astype(np.float32)
        np.maximum(out, self.observation_space.low, out=out)
        return np.minimum(out, self.observation_space.high, out=out)

    def _state_ok(self, raw: np.ndarray) -> bool:
        space = self.observation_space
        if self._state_bound[0] is not space:
            self._state_bound = (space, (10.0 * space.high).tolist())
        # A plain loop beats numpy's per-call overhead on these few entries; NaN compares
        # False, so non-finite values are rejected too.
        for value, bound in zip(raw.tolist(), self._state_bound[1], strict=True):
            if not -bound <= value <= bound:
                return False
        return True

    def _check_action(self, action: Any) -> int:
        try:
            a = int(action)
        except (TypeError, ValueError):
            raise ValueError(
                f"action {action!r} is not an integer in [0, {self.action_space.n - 1}]"
            ) from None
        if a != action or not 0 <= a < self.action_space.n:
            raise ValueError(
                f"action {action!r} is outside the action space [0, {self.action_space.n - 1}]"
            )
        return a

    def _require_client(self) -> BulletClient:
        if self._client is None:
            raise RuntimeError("the environment is closed")
        return self._client

    # ------------------------------------------------------------------ family hooks

    #: typical magnitude of each observation entry; observation noise is ``obs_noise`` times it.
    obs_scale: np.ndarray

    def _build(self, client: BulletClient, task: Task) -> None:
        """Load the world for ``task``'s geometry (called after ``resetSimulation``)."""
        raise NotImplementedError

    def _set_time_step(self, client: BulletClient, task: Task) -> None:
        """Put ``task``'s physics time step in force; runs at every reset, before ``_apply_task``.

        PyBullet turns a motor's force cap into an impulse cap with the time step in force when
        the motor is set (``force * fixedTimeStep``), so whatever ``_apply_task`` and the later
        hooks set must see this episode's time step, not the one a rebuild or the previous task
        left. The default: ``control_dt``, split by PyBullet into ``substeps`` substeps.
        """
        client.setPhysicsEngineParameter(fixedTimeStep=self.control_dt, numSubSteps=self.substeps)

    def _apply_task(self, client: BulletClient, task: Task) -> None:
        """Apply every non-geometry parameter of ``task`` to the loaded world.

        Runs after ``_set_time_step``: the episode's time step is already in force.
        """
        raise NotImplementedError

    def _reset_state(self, client: BulletClient, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _apply_action(self, client: BulletClient, action: int) -> None:
        raise NotImplementedError

    def _observe(self, client: BulletClient) -> np.ndarray:
        """The noise-free observation as float64."""
        raise NotImplementedError

    def _reward(self, raw_obs: np.ndarray, action: int) -> tuple[float, bool]:
        raise NotImplementedError

    def _camera(self) -> tuple[list[float], float, float, float]:
        """(target, distance, yaw, pitch) of the render camera."""
        return [0.0, 0.0, 0.0], 3.0, 0.0, -20.0
