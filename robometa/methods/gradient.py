"""Gradient-based meta-learners for DQN: MAML, FO-MAML, Meta-SGD, ANIL, CAVIA, Reptile.

One outer step, for each task of a meta-batch:

1. *support*: ``collect_steps`` transitions on the task with the meta-parameters
   (epsilon-greedy at ``adaptation.support_epsilon``, as on a new robot), into the task's
   support ring of ``adaptation.support_size`` transitions and its replay buffer;
2. *adapt*: ``adaptation.steps`` calls of :func:`robometa.adaptation.adapt_step` on the support
   ring (the same function evaluation runs and ``adapt.onnx`` exports);
3. *query*: ``collect_steps`` transitions with the adapted parameters (epsilon from the DQN
   schedule) into the task's replay buffer;
4. *outer loss* (``meta.updates_per_collect`` times per round of collection, each on a fresh
   meta-batch of tasks that have data): the Double-DQN TD loss of the adapted parameters on a batch from the task's
   replay buffer (off-policy: old data is reused), against the target network moved by the
   same adaptation displacement; plus the model loss when the inner loss uses the model, so the dynamics head
   is meta-learned too.

The outer loss is averaged over tasks and differentiated through the inner steps (second
order for MAML, Meta-SGD, ANIL and CAVIA unless ``meta.first_order``; FO-MAML drops those
terms), and Adam updates the meta-parameters (and, for Meta-SGD, the per-parameter inner
learning rates, kept positive by clamping). Reptile instead moves the meta-parameters a
fraction ``meta.reptile_step`` of the way toward the adapted ones.

Which parameters adapt: all (MAML, FO-MAML, Meta-SGD, Reptile), the output heads (ANIL), or only
the context vector fed to the network, reset to zero for every task (CAVIA).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from robometa.adaptation import Batch, InnerLoss, adapt_step, model_loss, td_loss
from robometa.config import Config
from robometa.methods.base import Method
from robometa.methods.dqn import build_network, linear_epsilon
from robometa.envs import Task
from robometa.networks import Params
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.rollout import fit_normalization, greedy_act_fn, make_env, seed_from

REPLAY_PER_TASK = 5000
LR_FLOOR = 1e-6


def adapted_names(algorithm: str, names: list[str]) -> list[str]:
    """Which parameters the inner loop changes for ``algorithm``."""
    if algorithm == "cavia":
        return ["context"]
    if algorithm == "anil":
        return [n for n in names if n.startswith(("q_head.", "model_head."))]
    return [n for n in names if n != "context"]


def _stack(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(field) for field in zip(*batches, strict=True)))


class _TaskSlot:
    """One training task: its env (episodes continue across outer steps) and its data."""

    def __init__(self, task: Task, env: Any, obs_dim: int, support_size: int, seed: int) -> None:
        self.task = task
        self.env = env
        self.support = ReplayBuffer(support_size, obs_dim)
        self.replay = ReplayBuffer(REPLAY_PER_TASK, obs_dim)
        self.seed = seed
        self.obs: np.ndarray | None = None
        self.ep_return = 0.0

    def restart(self, rng: np.random.Generator) -> None:
        self.env.unwrapped.set_task(self.task)
        self.obs, _ = self.env.reset(seed=seed_from(rng))
        self.ep_return = 0.0


class MetaLearner(Method):
    """Meta-trains a Q-network initialization (``algorithm`` in maml, fomaml, metasgd, anil,
    cavia, reptile); same harness interface as :class:`robometa.methods.dqn.DQN`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.algorithm = cfg.algorithm
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        a, m = cfg.adaptation, cfg.meta
        if self.algorithm == "reptile" and a.loss == "model":
            raise ValueError(
                "config key 'adaptation.loss': reptile learns Q only through its inner loop, "
                "so it needs 'td' or 'td+model', got 'model'"
            )
        self.inner = InnerLoss(a.loss, cfg.dqn.gamma, cfg.dqn.huber_delta, a.model_weight)
        self.first_order = m.first_order or self.algorithm in ("fomaml", "reptile")
        e = cfg.env
        probe = make_env(e.id, e.dynamics, e.max_episode_steps)
        self.space = probe.unwrapped.dynamics_space
        self.obs_dim = probe.observation_space.shape[0]
        self.n_actions = int(probe.action_space.n)
        self.net = build_network(cfg, self.obs_dim, self.n_actions)
        fit_normalization(
            self.net, probe, self.space.sample(8, seed_from(self.rng)), 2000, self.rng
        )
        probe.close()
        self.meta_params: dict[str, torch.nn.Parameter] = dict(self.net.named_parameters())
        names = adapted_names(self.algorithm, list(self.meta_params))
        learn_lrs = self.algorithm == "metasgd" or m.learn_lrs
        self.lrs: dict[str, torch.Tensor] = {}
        for n in names:
            shape = self.meta_params[n].shape if self.algorithm == "metasgd" else ()
            self.lrs[n] = torch.full(shape, a.lr).requires_grad_(learn_lrs)
        outer = [p for n, p in self.meta_params.items() if n != "context"]
        if learn_lrs:
            outer += list(self.lrs.values())
        self.optimizer = torch.optim.Adam(outer, lr=m.outer_lr)
        self.target = {k: v.detach().clone() for k, v in self.meta_params.items()}
        n_slots = m.task_pool if m.task_pool > 0 else m.meta_batch
        tasks = self._fresh_tasks(n_slots)
        self.slots = [
            _TaskSlot(
                t, make_env(e.id, e.dynamics, e.max_episode_steps), self.obs_dim, a.support_size, i
            )
            for i, t in enumerate(tasks)
        ]
        self.env_steps = 0
        self.outer_steps = 0
        self.skipped_updates = 0
        self.boundary()

    def _fresh_tasks(self, n: int) -> list[Task]:
        if self.cfg.env.tasks == "nominal":
            return [self.space.nominal()] * n
        return self.space.sample(n, seed=seed_from(self.rng), split="train")

    @property
    def steps_per_iteration(self) -> int:
        """One round: support and query collection on each task of a meta-batch."""
        m = self.cfg.meta
        tasks = min(m.meta_batch, len(self.slots)) if m.task_pool > 0 else len(self.slots)
        return 2 * m.collect_steps * tasks

    def boundary(self) -> None:
        for slot in self.slots:
            slot.restart(self.rng)

    # -------------------------------------------------------------- data collection

    def _collect(
        self,
        slot: _TaskSlot,
        params: Params,
        n: int,
        epsilon: float,
        into_support: bool,
        returns: list[float],
    ) -> None:
        env = slot.env
        greedy = greedy_act_fn(self.net, params)
        with torch.no_grad():
            for _ in range(n):
                if self.rng.random() < epsilon:
                    act = int(self.rng.integers(self.n_actions))
                else:
                    act = greedy(slot.obs)
                nxt, r, term, trunc, info = env.step(act)
                if not info.get("physics_error", False):
                    slot.replay.add(slot.obs, act, r, nxt, term)
                    if into_support:
                        slot.support.add(slot.obs, act, r, nxt, term)
                slot.ep_return += r
                slot.obs = nxt
                if term or trunc:
                    returns.append(slot.ep_return)
                    slot.restart(self.rng)
        self.env_steps += n

    # -------------------------------------------------------------- one outer step

    def _adapt(self, params: Params, batch: Batch, first_order: bool) -> Params:
        for _ in range(self.cfg.adaptation.steps):
            params, _ = adapt_step(
                self.net, params, self.lrs, batch, self.inner, first_order=first_order
            )
        return params

    def _sample_slots(self) -> list[_TaskSlot]:
        m = self.cfg.meta
        if m.task_pool == 0:
            return self.slots
        ready = [s for s in self.slots if len(s.support)] or self.slots
        chosen = self.rng.choice(len(ready), size=min(m.meta_batch, len(ready)), replace=False)
        return [ready[int(i)] for i in chosen]

    def iterate(self) -> dict[str, Any]:
        """One round of collection on a meta-batch of tasks, then the outer steps."""
        cfg, m, d = self.cfg, self.cfg.meta, self.cfg.dqn
        if m.task_pool > 0:
            chosen = self.rng.choice(
                len(self.slots), size=min(m.meta_batch, len(self.slots)), replace=False
            )
            slots = [self.slots[int(i)] for i in chosen]
        else:
            slots = self.slots
            for slot, task in zip(slots, self._fresh_tasks(len(slots)), strict=True):
                slot.task = task
                slot.support = ReplayBuffer(cfg.adaptation.support_size, self.obs_dim)
                slot.replay = ReplayBuffer(REPLAY_PER_TASK, self.obs_dim)
                slot.restart(self.rng)
        eps = linear_epsilon(
            self.env_steps, d.total_steps, d.epsilon_start, d.epsilon_end, d.exploration_fraction
        )
        returns: list[float] = []
        meta_now = {k: v.detach() for k, v in self.meta_params.items()}
        for slot in slots:
            self._collect(
                slot, meta_now, m.collect_steps, cfg.adaptation.support_epsilon, True, returns
            )
            with torch.no_grad():
                adapted = self._adapt(dict(meta_now), slot.support.all(), first_order=True)
            self._collect(slot, adapted, m.collect_steps, eps, False, returns)
        losses = [self._outer_step() for _ in range(m.updates_per_collect)]
        return {
            "returns": returns,
            "loss": [x for x in losses if math.isfinite(x)],
            "epsilon": eps,
            "skipped_updates": self.skipped_updates,
        }

    def _support_batch(self, slot: _TaskSlot) -> Batch:
        """The task's support ring; resampled to full size while it is still filling."""
        buf = slot.support
        return buf.all() if len(buf) == buf.capacity else buf.sample(buf.capacity, self.rng)

    def _task_loss(self, support: Batch, query: Batch) -> tuple[torch.Tensor, Params]:
        """Outer loss of one task (vmapped over the meta-batch) and its adaptation delta."""
        d = self.cfg.dqn
        meta = dict(self.meta_params)
        adapted = self._adapt(meta, support, self.first_order)
        delta = {k: adapted[k] - meta[k] for k in self.lrs}
        # The target network takes the same adaptation displacement as the online one.
        target = {k: v + delta[k].detach() if k in delta else v for k, v in self.target.items()}
        loss = td_loss(self.net, adapted, target, query, d.gamma, d.huber_delta)
        if self.inner.kind != "td":
            loss = loss + self.inner.model_weight * model_loss(self.net, adapted, query)
        return loss, delta

    def outer_scale(self) -> float:
        """Linear decay from 1 to ``meta.outer_lr_end_fraction`` over ``dqn.total_steps``: the
        factor on the outer learning rate (and on Reptile's step, annealed as in Nichol et al.
        2018)."""
        progress = min(1.0, self.env_steps / self.cfg.dqn.total_steps)
        return 1.0 - (1.0 - self.cfg.meta.outer_lr_end_fraction) * progress

    def outer_lr(self) -> float:
        return self.cfg.meta.outer_lr * self.outer_scale()

    def _outer_step(self) -> float:
        m = self.cfg.meta
        if m.outer_lr_end_fraction != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.outer_lr()
        slots = self._sample_slots()
        support = _stack([self._support_batch(s) for s in slots])
        query = _stack([s.replay.sample(m.query_batch, self.rng) for s in slots])

        def per_task(sup: tuple, qry: tuple) -> tuple[torch.Tensor, Params]:
            return self._task_loss(Batch(*sup), Batch(*qry))

        self.optimizer.zero_grad(set_to_none=True)
        if self.algorithm == "reptile":
            with torch.no_grad():
                losses, deltas = torch.func.vmap(per_task)(tuple(support), tuple(query))
                for k, delta in deltas.items():
                    self.meta_params[k].add_(m.reptile_step * self.outer_scale() * delta.mean(0))
        else:
            losses, _ = torch.func.vmap(per_task)(tuple(support), tuple(query))
            losses.mean().backward()
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            max_norm = self.cfg.dqn.max_grad_norm if self.cfg.dqn.max_grad_norm > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if torch.isfinite(norm) and torch.isfinite(losses).all():
                self.optimizer.step()
            else:
                # An inner loop that diverged on some task: skip the update rather than let
                # NaN reach the meta-parameters; the count shows in the metrics.
                self.skipped_updates += 1
            with torch.no_grad():
                for lr in self.lrs.values():
                    if lr.requires_grad:
                        lr.clamp_(min=LR_FLOOR)
        if "context" in self.meta_params:
            with torch.no_grad():
                self.meta_params["context"].zero_()  # CAVIA: every task starts from zero
        self.outer_steps += 1
        if self.outer_steps % m.target_update_interval == 0:
            with torch.no_grad():
                for k, v in self.meta_params.items():
                    self.target[k].copy_(v)
        finite = losses.detach()[torch.isfinite(losses.detach())]
        return float(finite.mean()) if finite.numel() else math.nan

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "lrs": {k: v.detach().clone() for k, v in self.lrs.items()},
            "target": {k: v.clone() for k, v in self.target.items()},
            "optimizer": self.optimizer.state_dict(),
            "slots": [
                {
                    "task": dict(s.task),
                    "support": s.support.state_dict(),
                    "replay": s.replay.state_dict(),
                }
                for s in self.slots
            ],
            "env_steps": self.env_steps,
            "outer_steps": self.outer_steps,
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        with torch.no_grad():
            for k, v in state["lrs"].items():
                self.lrs[k].copy_(v)
        self.target = {k: v.clone() for k, v in state["target"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        for slot, s in zip(self.slots, state["slots"], strict=True):
            slot.task = self.space.make_task(s["task"])
            slot.support.load_state_dict(s["support"])
            slot.replay.load_state_dict(s["replay"])
        self.env_steps = int(state["env_steps"])
        self.outer_steps = int(state["outer_steps"])
        self.skipped_updates = int(state.get("skipped_updates", 0))

    def policy(self) -> Policy:
        a = self.cfg.adaptation
        return Policy(
            algorithm=self.algorithm,
            env_id=self.cfg.env.id,
            net=self.net,
            params=self.net.params(),
            lrs={k: v.detach().clone() for k, v in self.lrs.items()},
            inner=self.inner,
            adapt_steps=a.steps,
            support_size=a.support_size,
            dynamics=dict(self.cfg.env.dynamics),
            config=self.cfg.to_dict(),
        )

    def close(self) -> None:
        for slot in self.slots:
            slot.env.close()
