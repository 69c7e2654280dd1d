"""Running policies on robot families: env construction, collection and greedy returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import robometa.envs
from robometa.envs import Task
from robometa.envs.wrappers import PrivilegedObservation
from robometa.networks import Params, QNetwork
from robometa.replay import ReplayBuffer

ActFn = Callable[[np.ndarray], int]


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


_NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


def greedy_act_fn(net: QNetwork, params: Params) -> ActFn:
    """Greedy single-observation actor: the Q path of ``net`` under ``params``, in numpy.

    Acting runs once per environment step, where torch's per-call overhead would dominate; the
    weights are copied once, and the result equals ``q_values(net, params, obs).argmax()``.
    """
    spec = net.spec
    layers = [
        (
            params[f"body.{i}.weight"].detach().numpy().T.copy(),
            params[f"body.{i}.bias"].detach().numpy().copy(),
        )
        for i in range(len(spec.hidden))
    ]
    w_q = params["q_head.weight"].detach().numpy().T.copy()
    b_q = params["q_head.bias"].detach().numpy().copy()
    mean, std = net.obs_mean.numpy().copy(), net.obs_std.numpy().copy()
    context = params["context"].detach().numpy().copy() if spec.context_dim else None
    activation = _NUMPY_ACTIVATIONS[spec.activation]

    def act(obs: np.ndarray) -> int:
        x = (np.asarray(obs, np.float32) - mean) / std
        if context is not None:
            x = np.concatenate([x, context])
        for w, b in layers:
            x = activation(x @ w + b)
        return int(np.argmax(x @ w_q + b_q))

    return act


def episode_return(env: gym.Env, act: ActFn, task: Task, seed: int) -> float:
    """Return of one episode on ``task`` with a deterministic start (``seed``)."""
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(act(obs))
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
    """``n`` epsilon-greedy transitions on ``task`` (episodes restart as needed)."""
    buf = buffer if buffer is not None else ReplayBuffer(n, env.observation_space.shape[0])
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed_from(rng))
    n_actions = env.action_space.n
    for _ in range(n):
        a = int(rng.integers(n_actions)) if rng.random() < epsilon else act(obs)
        nxt, r, term, trunc, info = env.step(a)
        if not info.get("physics_error", False):
            buf.add(obs, a, r, nxt, term)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset(seed=seed_from(rng))
    return buf


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
