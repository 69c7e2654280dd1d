"""Running policies on robot families: env construction, training tasks, greedy actors,
collection (through the one loop of :mod:`robometa.deploy.collection`) and greedy returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import robometa.envs
from robometa.deploy import collection
from robometa.deploy.collection import ActFn, Episode, StoreFn
from robometa.envs import DynamicsSpace, Task
from robometa.envs.wrappers import PrivilegedObservation
from robometa.networks import Params, QNetwork, q_values
from robometa.replay import ReplayBuffer


def make_env(
    env_id: str,
    dynamics: Mapping[str, Any] | None = None,
    max_episode_steps: int = 0,
    privileged: bool = False,
    render_mode: str | None = None,
) -> gym.Env:
    """A robot family env with the experiment's dynamics overrides (and oracle input)."""
    if env_id not in robometa.envs.FAMILIES:
        raise ValueError(
            f"unknown env id {env_id!r}; registered: {', '.join(robometa.envs.FAMILIES)}"
        )
    kwargs: dict[str, Any] = {"dynamics": dict(dynamics or {})}
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    if render_mode:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **kwargs)
    return PrivilegedObservation(env) if privileged else env


def seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def train_tasks(
    space: DynamicsSpace, which: str, n: int, seed: int | np.random.Generator
) -> list[Task]:
    """``n`` training tasks as ``env.tasks`` (``which``) says: the nominal robot ``n`` times
    (``nominal``: nothing is drawn), else ``n`` draws from the train split seeded by ``seed``.
    A generator ``seed`` gives that seed (:func:`seed_from`) only when tasks are drawn, so a
    nominal run's generator is not advanced."""
    if which == "nominal":
        return [space.nominal()] * n
    if isinstance(seed, np.random.Generator):
        seed = seed_from(seed)
    return space.sample(n, seed=seed, split="train")


def greedy_act_fn(net: torch.nn.Module, params: Params) -> ActFn:
    """Greedy single-observation actor: the Q path of ``net`` under ``params``.

    Acting runs once per environment step, where torch's per-call overhead would dominate, so
    the network's numpy actor (:meth:`QNetwork.numpy_actor <robometa.networks.QNetwork.numpy_actor>`)
    is used when it has one; otherwise (another family's network) :func:`torch_act_fn`. Either
    equals ``q_values(net, params, obs).argmax()``.
    """
    numpy_actor = getattr(net, "numpy_actor", None)
    act = numpy_actor(params) if callable(numpy_actor) else None
    return act if act is not None else torch_act_fn(net, params)


def torch_act_fn(net: torch.nn.Module, params: Params) -> ActFn:
    """Greedy single-observation actor through torch: ``q_values(net, params, obs).argmax()``."""

    def act(obs: np.ndarray) -> int:
        x = torch.from_numpy(np.asarray(obs, np.float32)).unsqueeze(0)
        with torch.no_grad():
            return int(q_values(net, params, x).argmax(1)[0])

    return act


def episode_return(env: gym.Env, act: ActFn, task: Task, seed: int) -> float:
    """Return of one episode on ``task`` with a deterministic start (``seed``)."""
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    observe = collection.observer(act)
    while not done:
        action = act(obs)
        nxt, r, term, trunc, info = env.step(action)
        if observe is not None and not info.get("physics_error", False):
            observe(obs, action, r, nxt, bool(term))
        obs = nxt
        total += r
        done = term or trunc
    return total


def collect(
    env: gym.Env,
    act: ActFn,
    task: Task,
    n: int,
    epsilon: float,
    rng: np.random.Generator,
    buffer: ReplayBuffer | None = None,
) -> ReplayBuffer:
    """``n`` epsilon-greedy transitions on ``task`` (episodes restart as needed), through
    :func:`robometa.deploy.collection.collect`; a step the physics rejected is not stored."""
    buf = buffer if buffer is not None else ReplayBuffer(n, env.observation_space.shape[0])
    env.unwrapped.set_task(task)

    def restart() -> np.ndarray:
        return env.reset(seed=seed_from(rng))[0]

    episode = Episode(restart())
    collection.collect(
        env, episode, act, n, epsilon, rng, int(env.action_space.n), store_into(buf), restart
    )
    return buf


def store_into(*buffers: ReplayBuffer) -> StoreFn:
    """A collection ``store`` that adds each transition to ``buffers`` unless the env reported
    a physics error for the step (``info["physics_error"]``)."""

    def store(
        obs: np.ndarray, action: int, reward: float, nxt: np.ndarray, term: bool, info: dict
    ) -> None:
        if not info.get("physics_error", False):
            for buf in buffers:
                buf.add(obs, action, reward, nxt, term)

    return store


def fit_normalization(
    net: QNetwork, env: gym.Env, tasks: list[Task], steps: int, rng: np.random.Generator
) -> None:
    """Fix the network's observation and state-change scales from random-action rollouts."""
    per_task = max(1, steps // max(1, len(tasks)))
    obs, nxt = [], []
    n_actions = env.action_space.n
    for task in tasks:
        buf = collect(env, lambda o: int(rng.integers(n_actions)), task, per_task, 1.0, rng)
        obs.append(buf.obs[: len(buf)])
        nxt.append(buf.next_obs[: len(buf)])
    o, n = np.concatenate(obs), np.concatenate(nxt)
    std = o.std(0)
    # Random actions barely leave the start region (a random cart-pole episode moves the cart
    # ~0.1 m), while a trained policy goes many of those stds further: scale by at least the
    # family's typical magnitude of each entry, or such states become huge network inputs.
    scale = np.asarray(getattr(env.unwrapped, "obs_scale", ()), np.float32)
    std[: len(scale)] = np.maximum(std[: len(scale)], scale)
    with torch.no_grad():
        net.set_normalization(
            torch.from_numpy(o.mean(0)),
            torch.from_numpy(std),
            torch.from_numpy((n - o).std(0)),
        )
