"""``robometa play``: watch a trained run or an exported bundle act on one robot.

The source decides the code path, so what the video shows is what evaluation and deployment do:

* a **run directory** (``policy.pt``, written by ``robometa train``): the torch policy. A
  method that adapts collects ``support_size`` transitions with its meta-parameters at the
  run's ``adaptation.support_epsilon`` and adapts ``adapt_steps`` steps, through what the
  evaluation harness uses: the family's evaluation method
  (:meth:`robometa.methods.base.Method.evaluation_method`) and :func:`~robometa.rollout.collect`;
* a **bundle directory** (``manifest.json``, written by ``robometa export``): the on-device
  runtime. :class:`robometa.deploy.Adapter` collects the support with
  :func:`robometa.deploy.loop.collect` at the bundle's support epsilon and runs its guarded
  ``adapt``; the "before" panel acts with the meta-parameters (``acting_with_meta``).

A run of an algorithm that does not adapt (per :mod:`robometa.algorithms`: ``dqn``,
``oracle``; no inner learning rates) plays one panel, its greedy policy; ``robometa eval``'s
DR + fine-tuning baseline (a learning rate tuned on training tasks) is not replayed here,
while a bundle exported from such a run fine-tunes every parameter at the bundle's learning
rate, as the runtime does.

Seeds: greedy episode ``e`` (0-based) of every panel starts from ``reset(seed=SEED + e)``, so
before and after start from the same state; the support collection draws its exploration and
its reset seeds from ``numpy.random.default_rng(SEED)``, as ``robometa eval`` does for a task
whose seed is SEED (``robometa play RUN --seed 10000`` reproduces eval's first task's returns
when that task is the robot).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robometa import algorithms
from robometa.config import AdaptationConfig
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE
from robometa.deploy.loop import collect as deploy_collect
from robometa.envs import FAMILIES, Task, load_tasks
from robometa.policy import POLICY_FILE, Policy
from robometa.render import VIDEO_SUFFIXES, episode_frames, side_by_side, write_video
from robometa.rollout import ActFn, collect, make_env, seed_from


@dataclass(frozen=True)
class Actor:
    """One panel of the video: a greedy actor, its title, and the context it acts in."""

    title: str
    act: ActFn
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


@dataclass
class PanelResult:
    """Per-episode greedy returns and lengths of one panel."""

    title: str
    returns: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))


@dataclass
class PlayResult:
    """What ``play`` did: the robot, the returns of each panel, the video written."""

    source: Path
    kind: str  # "run" or "bundle"
    algorithm: str
    env_id: str
    robot: str  # how the robot was chosen, e.g. "--sample-test-task 0"
    task: Task
    before: PanelResult
    after: PanelResult | None  # None: the policy does not adapt, or --no-adapt
    adaptation: str  # e.g. "5 steps on 200 transitions"; why not, when after is None
    video: Path
    frames: int
    fps: int

    def lines(self) -> list[str]:
        """The report ``robometa play`` prints."""
        params = ", ".join(f"{k}={v:g}" for k, v in self.task.items())
        out = [
            f"{self.kind} {self.source}: {self.algorithm} on {self.env_id}",
            f"robot ({self.robot}): {params}",
        ]
        if self.after is None:
            out.append(f"{self.adaptation}")
            out.append(f"{self.before.title}: {_returns_text(self.before.returns)}")
        else:
            out.append(f"before adapting: {_returns_text(self.before.returns)}")
            out.append(f"after {self.adaptation}: {_returns_text(self.after.returns)}")
        out.append(f"wrote {self.video} ({self.frames} frames at {self.fps} fps)")
        return out


def _returns_text(returns: Sequence[float]) -> str:
    if len(returns) == 1:
        return f"return {returns[0]:.1f}"
    listed = ", ".join(f"{r:.1f}" for r in returns)
    return f"returns {listed} (mean {float(np.mean(returns)):.1f})"


# ------------------------------------------------------------------------------ choices


def check_video_path(out: str | Path) -> Path:
    """``--out``'s suffix and, for MP4, its writer, checked before any episode is run."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"--out {out}: suffix {out.suffix or '(none)'!r} is not one of "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    if out.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(
            f"--out {out}: writing MP4 needs the ffmpeg backend (pip install imageio-ffmpeg); "
            "or give a .gif"
        )
    return out


def choose_robot(
    space: Any, tasks: str | Path | None, task_index: int | None, test_task: int
) -> tuple[Task, str]:
    """The robot to play on: ``tasks[task_index]`` of a task file, else a test-split draw."""
    if tasks is None:
        if task_index is not None:
            raise ValueError(f"--task-index {task_index} needs --tasks FILE")
        return space.sample(1, seed=test_task, split="test")[0], f"--sample-test-task {test_task}"
    loaded = load_tasks(tasks, space)
    index = 0 if task_index is None else task_index
    if not 0 <= index < len(loaded):
        raise ValueError(
            f"--task-index {index} is outside [0, {len(loaded) - 1}] "
            f"({len(loaded)} tasks in {tasks})"
        )
    return loaded[index], f"--tasks {tasks} --task-index {index}"


def source_kind(source: str | Path) -> str:
    """``"bundle"`` for a directory with ``manifest.json``, ``"run"`` for one with
    ``policy.pt`` (or that file itself); anything else is an error naming the path."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"RUN_OR_BUNDLE {path}: no such run or bundle directory")
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return "bundle"
    if (path.is_dir() and (path / POLICY_FILE).is_file()) or path.name == POLICY_FILE:
        return "run"
    looks_like_run = path.is_dir() and any(
        (path / name).exists() for name in ("config.yaml", "checkpoint.pt")
    )
    hint = " (the run has no policy.pt yet: has it finished?)" if looks_like_run else ""
    raise ValueError(
        f"RUN_OR_BUNDLE {path} is neither a run directory (with {POLICY_FILE}) nor a bundle "
        f"directory (with {MANIFEST_FILE}){hint}"
    )


# ------------------------------------------------------------------------------ playing


def render_episodes(
    env: Any, actors: Sequence[Actor], task: Task, seed: int, episodes: int, every: int
) -> tuple[list[np.ndarray], list[PanelResult]]:
    """Greedy episodes ``seed, seed+1, ...`` of every actor, panels side by side per episode,
    the episodes one after another."""
    results = [PanelResult(a.title) for a in actors]
    video: list[np.ndarray] = []
    for e in range(episodes):
        panels = []
        for actor, result in zip(actors, results, strict=True):
            title = actor.title if episodes == 1 else f"episode {e + 1}/{episodes}: {actor.title}"
            with actor.context():
                frames, ret, steps = episode_frames(env, actor.act, task, seed + e, title, every)
            panels.append(frames)
            result.returns.append(ret)
            result.steps.append(steps)
        video.extend(side_by_side(panels) if len(panels) > 1 else panels[0])
    return video, results


@dataclass
class Scene:
    """What a source plays: the env (rendering), the robot, the panels' actors, and what the
    adaptation did (or why there is none)."""

    env: Any
    task: Task
    robot: str
    actors: list[Actor]
    algorithm: str
    env_id: str
    adaptation: str


def run_scene(
    source: Path, choose: Callable[[Any], tuple[Task, str]], seed: int, adapt: bool
) -> Scene:
    """A trained run: the meta-parameters, then (for a method that adapts) the parameters
    after ``adapt_steps`` steps on support collected exactly as ``robometa eval`` does."""
    policy = Policy.load(source)  # an algorithm not registered here is an error naming it
    spec = algorithms.get(policy.algorithm)
    adaptation = policy.config.get("adaptation", {})
    eps = float(adaptation.get("support_epsilon", AdaptationConfig.support_epsilon))
    method = spec.load().evaluation_method(
        policy, policy.algorithm, eps, lrs=None if spec.adapts else {}
    )
    env = make_env(
        policy.env_id, policy.dynamics, privileged=policy.privileged, render_mode="rgb_array"
    )
    try:
        task, robot = choose(env.unwrapped.dynamics_space)
        scene = Scene(env, task, robot, [], policy.algorithm, policy.env_id, "")
        initial = method.initial_actor()
        if not spec.adapts or not policy.adapt_steps:
            # As in robometa eval: DR and the oracle act as trained (eval's DR + fine-tuning
            # tunes its rate on training robots first; play shows the policy as it is).
            scene.actors = [Actor("greedy policy", initial)]
            scene.adaptation = f"{policy.algorithm} does not adapt (not meta-trained)"
            return scene
        scene.actors = [Actor("before adapting", initial)]
        if not adapt:
            scene.adaptation = "--no-adapt: the meta-parameters only"
            return scene
        rng = np.random.default_rng(seed)
        support = collect(env, initial, task, method.support_size, eps, rng).all()
        k = policy.adapt_steps
        (adapted,) = method.adapted_actors(support, [k])
        scene.actors.append(Actor(f"after {k} steps", adapted))
        scene.adaptation = f"{k} steps on {len(support.reward)} transitions"
        return scene
    except BaseException:
        env.close()
        raise


def bundle_scene(
    source: Path, choose: Callable[[Any], tuple[Task, str]], seed: int, adapt: bool
) -> Scene:
    """A bundle through the runtime: the meta-parameters, then the adapter after collecting
    its support (``deploy.loop.collect``) and one guarded ``adapt``."""
    adapter = Adapter.load(source)
    manifest = adapter.bundle.manifest
    env_id = adapter.bundle.env_id
    if env_id not in FAMILIES:  # never hand an unchecked id to gymnasium.make
        raise ValueError(
            f"{source / MANIFEST_FILE}: env_id {env_id!r} is not a robometa robot family "
            f"(known: {', '.join(FAMILIES)})"
        )
    overrides = (manifest.get("dynamics") or {}).get("overrides") or {}
    privileged = bool(manifest.get("privileged", False))
    env = make_env(env_id, overrides, privileged=privileged, render_mode="rgb_array")
    try:
        obs_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)
        if (obs_dim, n_actions) != (adapter.obs_dim, adapter.n_actions):
            raise ValueError(
                f"{env_id} has obs_dim {obs_dim} and {n_actions} actions, the bundle {source} "
                f"expects {adapter.obs_dim} and {adapter.n_actions}"
            )
        task, robot = choose(env.unwrapped.dynamics_space)
        algorithm = str(manifest.get("algorithm", "?"))
        scene = Scene(
            env,
            task,
            robot,
            [Actor("before adapting", adapter.act)],
            algorithm,
            env_id,
            "--no-adapt: the meta-parameters only",
        )
        if not adapt:
            return scene
        env.unwrapped.set_task(task)
        rng = np.random.default_rng(seed)
        n = adapter.buffer.capacity
        deploy_collect(adapter, env, n, adapter.support_epsilon, rng, seed=seed_from(rng))
        report = adapter.adapt()
        if report.accepted:
            status, title = "accepted", f"after {report.steps} steps"
        else:
            status = f"rolled back: {report.reason}; the meta-parameters act"
            title = f"after {report.steps} steps (rolled back)"
        scene.actors = [
            Actor("before adapting", adapter.act, adapter.acting_with_meta),
            Actor(title, adapter.act),
        ]
        scene.adaptation = (
            f"{report.steps} steps on {report.n_train} transitions "
            f"({report.n_holdout} held out, {status})"
        )
        return scene
    except BaseException:
        env.close()
        raise


def play(
    source: str | Path,
    *,
    out: str | Path = "play.gif",
    tasks: str | Path | None = None,
    task_index: int | None = None,
    test_task: int = 0,
    episodes: int = 1,
    seed: int = 0,
    adapt: bool = True,
    fps: int = 25,
    every: int = 2,
) -> PlayResult:
    """Render greedy episodes of a run or bundle on one robot (before/after adapting) to a
    GIF or MP4; see the module docstring for what each source does."""
    for flag, value, low in (("--episodes", episodes, 1), ("--fps", fps, 1), ("--every", every, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    out = check_video_path(out)
    kind = source_kind(source)
    source = Path(source)

    def choose(space: Any) -> tuple[Task, str]:
        return choose_robot(space, tasks, task_index, test_task)

    scene = (bundle_scene if kind == "bundle" else run_scene)(source, choose, seed, adapt)
    try:
        frames, panels = render_episodes(scene.env, scene.actors, scene.task, seed, episodes, every)
    finally:
        scene.env.close()
    video = write_video(out, frames, fps=fps)
    return PlayResult(
        source=source,
        kind=kind,
        algorithm=scene.algorithm,
        env_id=scene.env_id,
        robot=scene.robot,
        task=scene.task,
        before=panels[0],
        after=panels[1] if len(panels) > 1 else None,
        adaptation=scene.adaptation,
        video=video,
        frames=len(frames),
        fps=fps,
    )
