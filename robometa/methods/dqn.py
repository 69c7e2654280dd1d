"""Deep Q-learning over the task distribution: the domain-randomized baseline and the oracle.

Double-DQN targets, Huber loss, a target network (hard copy or Polyak), a replay buffer, a
linear epsilon schedule, gradient clipping, and collection from several envs at once, each on
its own robot configuration (a new train task every episode when ``env.tasks = train``). The
privileged oracle is the same agent whose observation carries the true dynamics parameters.
"""

from __future__ import annotations

import copy
from collections import deque
from functools import cache, partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

import robometa.algorithms
from robometa.adaptation import Batch, InnerLoss, double_dqn_target
from robometa.config import Config
from robometa.deploy import collection
from robometa.deploy.collection import Episode
from robometa.methods.base import Method
from robometa.networks import QNetwork
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.rollout import fit_normalization, make_env, seed_from, train_tasks


def linear_epsilon(step: int, total: int, start: float, end: float, fraction: float) -> float:
    """Linear decay from ``start`` to ``end`` over the first ``fraction`` of ``total`` steps."""
    horizon = max(1.0, fraction * total)
    return end + (start - end) * max(0.0, 1.0 - step / horizon)


class DQN(Method):
    """DQN / domain-randomized DQN / privileged oracle (``algorithm: dqn | oracle``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.privileged = robometa.algorithms.get(cfg.algorithm).privileged
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        e = cfg.env
        self.envs = [
            make_env(e.id, e.dynamics, e.max_episode_steps, self.privileged)
            for _ in range(e.num_envs)
        ]
        self.space = self.envs[0].unwrapped.dynamics_space
        obs_dim = self.envs[0].observation_space.shape[0]
        self.n_actions = int(self.envs[0].action_space.n)
        self.net = self._fitted_network(obs_dim)
        # The target network is a frozen module copy; ``target`` names its parameter tensors
        # (updated in place), the functional form ``adaptation.td_loss`` takes.
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.target = dict(self.target_net.named_parameters())
        self.optimizer = torch.optim.Adam(
            self.net.parameters(), lr=cfg.dqn.learning_rate, fused=True
        )
        self.buffer = ReplayBuffer(cfg.dqn.buffer_size, obs_dim)
        self.env_steps = 0
        self.grad_steps = 0
        # Per env: its observation (one row each: the batched greedy forward pass reads them
        # all), where its episode stands, and the transitions not yet folded into an n-step one.
        self.obs = np.zeros((e.num_envs, obs_dim), np.float32)
        self.episodes: list[Episode] = []
        self.pending: list[deque] = [deque() for _ in range(e.num_envs)]
        self.boundary()

    def _fitted_network(self, obs_dim: int) -> QNetwork:
        """The family's network, its input scales fitted on random-action rollouts."""
        net = self.network_from_config(self.cfg, obs_dim, self.n_actions)
        tasks = train_tasks(self.space, self.cfg.env.tasks, 8, self.rng)
        fit_normalization(net, self.envs[0], tasks, 2000, self.rng)
        if self.privileged:
            # The appended dynamics parameters are normalized already (the wrapper maps the
            # train range to [-1, 1]); statistics over 8 draws would skew them, and a choice
            # parameter equal on all 8 would get the 1e-3 floor as its scale.
            base = self.envs[0].unwrapped.observation_space.shape[0]
            with torch.no_grad():
                net.obs_mean[base:] = 0.0
                net.obs_std[base:] = 1.0
        return net

    # -------------------------------------------------------------- environment side

    @property
    def steps_per_iteration(self) -> int:
        """One vector step: every env steps once."""
        return len(self.envs)

    def boundary(self) -> None:
        """Restart every env: checkpoints are taken here, so a resumed run continues exactly."""
        self.episodes = [Episode(self._restart(i)) for i in range(len(self.envs))]
        for i, episode in enumerate(self.episodes):
            self.obs[i] = episode.obs

    def _restart(self, i: int) -> np.ndarray:
        """Start env ``i``'s next episode on a new training task; its first observation."""
        env = self.envs[i]
        env.unwrapped.set_task(train_tasks(self.space, self.cfg.env.tasks, 1, self.rng)[0])
        obs, _ = env.reset(seed=seed_from(self.rng))
        self.pending[i].clear()
        return obs

    def epsilon(self) -> float:
        d = self.cfg.dqn
        return linear_epsilon(
            self.env_steps, d.total_steps, d.epsilon_start, d.epsilon_end, d.exploration_fraction
        )

    # -------------------------------------------------------------- learning

    def iterate(self) -> dict[str, Any]:
        """One vector step of every env, then the scheduled gradient updates."""
        eps = self.epsilon()
        returns = self._step_every_env(eps)
        self.env_steps += len(self.envs)
        losses = self._scheduled_updates()
        return {"returns": returns, "loss": losses, "epsilon": eps}

    def _step_every_env(self, epsilon: float) -> list[float]:
        """Step each env once, epsilon-greedy (:mod:`robometa.deploy.collection`); the returns of
        the episodes that ended. The greedy actions of all envs come from one batched forward
        pass, taken at the first env that acts greedily (none when every env explores)."""
        batched = cache(self._greedy_actions)

        def greedy(i: int) -> int:
            return int(batched()[i])

        returns = []
        for i in range(len(self.envs)):
            action = collection.epsilon_greedy(
                self.rng, epsilon, self.n_actions, partial(greedy, i)
            )
            finished = self._step_env(i, action)
            if finished is not None:
                returns.append(finished)
        return returns

    def _greedy_actions(self) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.from_numpy(self.obs), False)[0].argmax(1).numpy()

    def _step_env(self, i: int, action: int) -> float | None:
        """Env ``i`` takes ``action``; its transition is stored (unless the physics rejected
        the step) and a finished episode restarts. Returns the finished episode's return."""
        episode = self.episodes[i]
        store, restart = partial(self._store_unless_rejected, i), partial(self._restart, i)
        finished = collection.step(self.envs[i], episode, action, store, restart)
        self.obs[i] = episode.obs
        return finished

    def _store_unless_rejected(
        self,
        i: int,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        info: dict,
    ) -> None:
        """Env ``i``'s collection ``store`` (its ``obs`` is still ``self.obs[i]``): a step the
        physics rejected is not learned from."""
        if not info.get("physics_error", False):
            self._store(i, action, reward, next_obs, terminated)

    def _scheduled_updates(self) -> list[float]:
        """``gradient_steps`` updates every ``train_freq`` vector steps after
        ``learning_starts``; their losses."""
        d = self.cfg.dqn
        vector_steps = self.env_steps // len(self.envs)
        if self.env_steps < d.learning_starts or vector_steps % d.train_freq != 0:
            return []
        return [self._gradient_step() for _ in range(d.gradient_steps)]

    def _store(self, i: int, action: int, reward: float, next_obs: np.ndarray, term: bool) -> None:
        """Add env ``i``'s transition, as an ``n_step`` transition once enough have arrived.

        An n-step transition holds ``sum_k gamma^k r_k`` and the observation n steps later;
        its target bootstraps with ``gamma^n``. At a termination the shorter tails are added
        too (nothing to bootstrap); at a time-limit truncation they are dropped, since they
        would need ``gamma^k`` for ``k < n``.
        """
        n, gamma = self.cfg.dqn.n_step, self.cfg.dqn.gamma
        if n == 1:
            self.buffer.add(self.obs[i], action, reward, next_obs, term)
            return
        window = self.pending[i]
        window.append((self.obs[i].copy(), action, reward))
        while window and (len(window) == n or term):
            ret = sum(gamma**k * r for k, (_, _, r) in enumerate(window))
            obs, a, _ = window.popleft()
            self.buffer.add(obs, a, ret, next_obs, term)

    def td_loss(self, batch: Batch) -> Tensor:
        """``adaptation.td_loss`` of the online and target networks, called as modules.

        The same Double-DQN Huber loss without ``functional_call`` and without the dynamics
        head: this is the hot path of training (tests check both give the same number).
        """
        d = self.cfg.dqn
        q = self.net(batch.obs, False)[0]
        q_sa = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            online_next = self.net(batch.next_obs, False)[0]
            target_next = self.target_net(batch.next_obs, False)[0]
            target = double_dqn_target(
                online_next, target_next, batch.reward, batch.terminated, d.gamma**d.n_step
            )
        return torch.nn.functional.huber_loss(q_sa, target, delta=d.huber_delta)

    def learning_rate(self) -> float:
        """Linear decay from ``learning_rate`` to ``lr_end_fraction`` of it at ``total_steps``."""
        d = self.cfg.dqn
        progress = min(1.0, self.env_steps / d.total_steps)
        return d.learning_rate * (1.0 - (1.0 - d.lr_end_fraction) * progress)

    def _gradient_step(self) -> float:
        """One Adam step on a replayed batch, then the target network's update."""
        d = self.cfg.dqn
        if d.lr_end_fraction != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        loss = self.td_loss(self.buffer.sample(d.batch_size, self.rng))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if d.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), d.max_grad_norm)
        self.optimizer.step()
        self.grad_steps += 1
        self._update_target()
        return float(loss.detach())

    def _update_target(self) -> None:
        update_target(self.net, self.target, self.cfg.dqn, self.grad_steps)

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "target": {k: v.detach().clone() for k, v in self.target.items()},
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "env_steps": self.env_steps,
            "grad_steps": self.grad_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        # The target module's buffers (input normalization) follow the online network's.
        self.target_net.load_state_dict({**state["target"], **dict(self.net.named_buffers())})
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.env_steps = int(state["env_steps"])
        self.grad_steps = int(state["grad_steps"])

    def policy(self) -> Policy:
        a = self.cfg.adaptation
        # Not meta-trained: adaptation is plain TD fine-tuning of every parameter.
        lrs = {k: torch.tensor(a.fine_tune_lr) for k, _ in self.net.named_parameters()}
        if self.privileged:
            return self.trained_policy({}, 0, True)
        return self.trained_policy(lrs, a.steps, False)

    def trained_policy(
        self, lrs: dict[str, torch.Tensor], adapt_steps: int, privileged: bool
    ) -> Policy:
        """The :class:`Policy` of this run's network and config with the TD inner loss (what
        the DQN-trained families hand back, each with its own rates, steps and privilege)."""
        a = self.cfg.adaptation
        return Policy(
            algorithm=self.cfg.algorithm,
            env_id=self.cfg.env.id,
            net=self.net,
            params=self.net.params(),
            lrs=lrs,
            inner=InnerLoss("td", self.cfg.dqn.gamma, self.cfg.dqn.huber_delta, a.model_weight),
            adapt_steps=adapt_steps,
            support_size=a.support_size,
            privileged=privileged,
            dynamics=dict(self.cfg.env.dynamics),
            config=self.cfg.to_dict(),
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


def update_target(
    net: torch.nn.Module, target: dict[str, Tensor], dqn: Any, grad_steps: int
) -> None:
    """The target network's update after gradient step ``grad_steps``: Polyak averaging
    (``dqn.tau`` < 1), else a hard copy every ``dqn.target_update_interval`` gradient
    steps (the DQN harness's and the recurrent family's)."""
    with torch.no_grad():
        if dqn.tau < 1.0:
            for k, v in net.named_parameters():
                target[k].lerp_(v, dqn.tau)
        elif grad_steps % dqn.target_update_interval == 0:
            for k, v in net.named_parameters():
                target[k].copy_(v)
