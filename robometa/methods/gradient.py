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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

import robometa.algorithms
from robometa.adaptation import (
    Batch,
    InnerLoss,
    adapt_step,
    batched_adapt_step,
    batched_supported,
    batched_td_loss,
    td_loss,
)
from robometa.config import Config
from robometa.deploy import collection
from robometa.deploy.collection import ActFn, Episode
from robometa.envs import Task
from robometa.methods.base import Method
from robometa.methods.dqn import linear_epsilon
from robometa.networks import Params, head_names
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.rollout import (
    fit_normalization,
    greedy_act_fn,
    make_env,
    seed_from,
    store_into,
    train_tasks,
)

if TYPE_CHECKING:
    from robometa.distributed import Backend, TaskPool

REPLAY_PER_TASK = 5000
LR_FLOOR = 1e-6


@dataclass(frozen=True)
class Variant:
    """How one gradient meta-learner differs from MAML: which parameters the inner loop
    changes (``all`` but the context, the output ``heads``, or only the ``context``), whether
    the second-order terms are always dropped, whether the inner rates are learned per entry
    (Meta-SGD), and whether the outer update moves toward the adapted parameters (Reptile)
    instead of following the outer loss's gradient."""

    adapts: str = "all"
    first_order: bool = False
    per_entry_lrs: bool = False
    reptile: bool = False


#: the family's members; a plug-in variant registers its name and, in a subclass of
#: :class:`MetaLearner`, sets ``variants = {**VARIANTS, name: Variant(...)}``
VARIANTS: dict[str, Variant] = {
    "maml": Variant(),
    "fomaml": Variant(first_order=True),
    "metasgd": Variant(per_entry_lrs=True),
    "anil": Variant(adapts="heads"),
    "cavia": Variant(adapts="context"),
    "reptile": Variant(first_order=True, reptile=True),
}


def adapted_names(algorithm: str | Variant, names: list[str]) -> list[str]:
    """Which parameters the inner loop changes for ``algorithm`` (a name or a variant)."""
    variant = VARIANTS[algorithm] if isinstance(algorithm, str) else algorithm
    if variant.adapts == "context":
        return ["context"]
    if variant.adapts == "heads":
        return list(head_names(names))
    return [n for n in names if n != "context"]


def _stack(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(field) for field in zip(*batches, strict=True)))


class _TaskSlot:
    """One training task: its env (episodes continue across outer steps) and its data. The
    env is built on first use: a learner whose tasks run on remote workers
    (:mod:`robometa.distributed`) never builds one."""

    def __init__(
        self, task: Task, make: Callable[[], Any], obs_dim: int, support_size: int, seed: int
    ) -> None:
        self.task = task
        self.make = make
        self.seed = seed
        self.episode: Episode | None = None
        self._env: Any = None
        self.clear(support_size, obs_dim)

    @property
    def env(self) -> Any:
        if self._env is None:
            self._env = self.make()
        return self._env

    def clear(self, support_size: int, obs_dim: int) -> None:
        """Empty data: the support ring and the replay buffer."""
        self.support = ReplayBuffer(support_size, obs_dim)
        self.replay = ReplayBuffer(REPLAY_PER_TASK, obs_dim)

    def reset_env(self, rng: np.random.Generator) -> np.ndarray:
        """Start an episode on the slot's task; its first observation."""
        self.env.unwrapped.set_task(self.task)
        obs, _ = self.env.reset(seed=seed_from(rng))
        return obs

    def restart(self, rng: np.random.Generator) -> None:
        self.episode = Episode(self.reset_env(rng))

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class MetaLearner(Method):
    """Meta-trains a Q-network initialization (``algorithm`` in maml, fomaml, metasgd, anil,
    cavia, reptile); same harness interface as :class:`robometa.methods.dqn.DQN`."""

    #: the variants this class trains, by algorithm name
    variants: ClassVar[dict[str, Variant]] = VARIANTS

    #: where the tasks' work can run (:mod:`robometa.distributed`)
    backends: ClassVar[tuple[str, ...]] = ("local", "ray")

    def __init__(self, cfg: Config, backend: Backend | None = None) -> None:
        self._settings(cfg)
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        _check_rules(cfg, self.variant)
        self.net = self._fitted_network()
        self.meta_params: dict[str, torch.nn.Parameter] = dict(self.net.named_parameters())
        self.lrs = self._inner_learning_rates()
        self.optimizer = self._outer_optimizer()
        self.target = {k: v.detach().clone() for k, v in self.meta_params.items()}
        self.slots = self._task_slots()
        self.env_steps = 0
        self.outer_steps = 0
        self.skipped_updates = 0
        #: the remote workers that own the task slots' envs and data, or None: every task
        #: runs here (the slots then hold the only copy of the data; with a pool they mirror it)
        self.pool: TaskPool | None = None
        if backend is not None and backend.name != "local":
            self.pool = backend.task_pool(self)
        self.boundary()

    def _settings(self, cfg: Config) -> None:
        """What the config fixes about the learner: its variant and inner loss."""
        self.cfg = cfg
        self.algorithm = cfg.algorithm
        if cfg.algorithm not in self.variants:
            raise ValueError(
                f"{type(self).__name__} trains {', '.join(self.variants)}, not "
                f"{cfg.algorithm!r} (give its Variant in the class's 'variants')"
            )
        self.variant = self.variants[cfg.algorithm]
        a, m = cfg.adaptation, cfg.meta
        self.inner = InnerLoss(a.loss, cfg.dqn.gamma, cfg.dqn.huber_delta, a.model_weight)
        self.first_order = m.first_order or self.variant.first_order

    @classmethod
    def worker(cls, cfg: Config, spec: dict[str, Any]) -> MetaLearner:
        """A learner that only runs tasks' work for another one (a remote worker of
        :mod:`robometa.distributed`): the same network (``spec``: :meth:`worker_spec`) and
        inner loop, no envs, no optimizer, no slots until given some."""
        self = cls.__new__(cls)
        self._settings(cfg)
        self.rng = np.random.default_rng(cfg.seed)
        self.obs_dim, self.n_actions = int(spec["obs_dim"]), int(spec["n_actions"])
        self.net = self.network_from_config(cfg, self.obs_dim, self.n_actions)
        self.net.load_state_dict(spec["net"])
        self.meta_params = dict(self.net.named_parameters())
        self.lrs = {
            k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in spec["lrs"].items()
        }
        self.target = {k: v.detach().clone() for k, v in self.meta_params.items()}
        self.slots = []
        self.env_steps = self.outer_steps = self.skipped_updates = 0
        self.pool = None
        return self

    def worker_spec(self) -> dict[str, Any]:
        """What :meth:`worker` needs to rebuild this learner's network and inner loop."""
        return {
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "net": self.net.state_dict(),
            "lrs": {
                k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in self.lrs.items()
            },
        }

    def new_slot(self, index: int, state: dict[str, Any]) -> _TaskSlot:
        """Task slot ``index`` of this run rebuilt from ``state`` (:meth:`slot_state`)."""
        e = self.cfg.env
        make = partial(make_env, e.id, e.dynamics, e.max_episode_steps)
        slot = _TaskSlot(
            Task(state["task"]), make, self.obs_dim, self.cfg.adaptation.support_size, index
        )
        slot.support.load_state_dict(state["support"])
        slot.replay.load_state_dict(state["replay"])
        return slot

    @staticmethod
    def slot_state(slot: _TaskSlot) -> dict[str, Any]:
        """One slot's task and data (what a checkpoint and a new worker take)."""
        return {
            "task": dict(slot.task),
            "support": slot.support.state_dict(),
            "replay": slot.replay.state_dict(),
        }

    # -------------------------------------------------------------- building

    def _fitted_network(self) -> torch.nn.Module:
        """The family's network, its input scales fitted on random-action rollouts of a
        probe env (which also tells the dynamics space and the sizes)."""
        e = self.cfg.env
        probe = make_env(e.id, e.dynamics, e.max_episode_steps)
        self.space = probe.unwrapped.dynamics_space
        self.obs_dim = probe.observation_space.shape[0]
        self.n_actions = int(probe.action_space.n)
        net = self.network_from_config(self.cfg, self.obs_dim, self.n_actions)
        fit_normalization(net, probe, self.space.sample(8, seed_from(self.rng)), 2000, self.rng)
        probe.close()
        return net

    def _inner_learning_rates(self) -> dict[str, torch.Tensor]:
        """One per adapted parameter: a scalar, or (Meta-SGD) one per entry; learned for
        Meta-SGD and with ``meta.learn_lrs``."""
        a = self.cfg.adaptation
        per_entry = self.variant.per_entry_lrs
        learned = per_entry or self.cfg.meta.learn_lrs
        lrs = {}
        for n in adapted_names(self.variant, list(self.meta_params)):
            shape = self.meta_params[n].shape if per_entry else ()
            lrs[n] = torch.full(shape, a.lr).requires_grad_(learned)
        return lrs

    def _outer_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the meta-parameters (never the context) and the learned inner rates."""
        outer = [p for n, p in self.meta_params.items() if n != "context"]
        outer += [lr for lr in self.lrs.values() if lr.requires_grad]
        return torch.optim.Adam(outer, lr=self.cfg.meta.outer_lr)

    def _task_slots(self) -> list[_TaskSlot]:
        """The pool of ``meta.task_pool`` tasks (or, with 0, ``meta_batch`` slots that get
        fresh tasks every round), one env each."""
        cfg, e, m = self.cfg, self.cfg.env, self.cfg.meta
        n_slots = m.task_pool if m.task_pool > 0 else m.meta_batch
        tasks = train_tasks(self.space, e.tasks, n_slots, self.rng)
        make = partial(make_env, e.id, e.dynamics, e.max_episode_steps)
        return [
            _TaskSlot(t, make, self.obs_dim, cfg.adaptation.support_size, i)
            for i, t in enumerate(tasks)
        ]

    @property
    def steps_per_iteration(self) -> int:
        """One round: support and query collection on each task of a meta-batch."""
        m = self.cfg.meta
        tasks = min(m.meta_batch, len(self.slots)) if m.task_pool > 0 else len(self.slots)
        return 2 * m.collect_steps * tasks

    def boundary(self) -> None:
        if self.pool is not None:
            self.pool.restart(self.slots, self.rng)
            return
        for slot in self.slots:
            slot.restart(self.rng)

    # -------------------------------------------------------------- one round

    def iterate(self) -> dict[str, Any]:
        """One round of collection on a meta-batch of tasks, then the outer steps."""
        slots = self._round_slots()
        eps = self.epsilon()
        returns: list[float] = []
        meta_now = {k: v.detach() for k, v in self.meta_params.items()}
        if self.pool is not None:
            returns = self.pool.collect(self, slots, meta_now, eps)
            self.env_steps += 2 * self.cfg.meta.collect_steps * len(slots)
        else:
            for slot in slots:
                returns += self._support_and_query(slot, meta_now, eps)
        losses = [self._outer_step() for _ in range(self.cfg.meta.updates_per_collect)]
        return {
            "returns": returns,
            "loss": [x for x in losses if math.isfinite(x)],
            "epsilon": eps,
            "skipped_updates": self.skipped_updates,
        }

    def epsilon(self) -> float:
        """The query collection's exploration rate: the DQN schedule."""
        d = self.cfg.dqn
        return linear_epsilon(
            self.env_steps, d.total_steps, d.epsilon_start, d.epsilon_end, d.exploration_fraction
        )

    def _round_slots(self) -> list[_TaskSlot]:
        """This round's tasks: a random meta-batch of the pool, or (``meta.task_pool`` 0)
        every slot with a fresh task, empty data and a restarted episode."""
        m = self.cfg.meta
        if m.task_pool > 0:
            size = min(m.meta_batch, len(self.slots))
            chosen = self.rng.choice(len(self.slots), size=size, replace=False)
            return [self.slots[int(i)] for i in chosen]
        tasks = train_tasks(self.space, self.cfg.env.tasks, len(self.slots), self.rng)
        for slot, task in zip(self.slots, tasks, strict=True):
            slot.task = task
            slot.clear(self.cfg.adaptation.support_size, self.obs_dim)
        if self.pool is not None:
            self.pool.reset(self.slots, self.rng)
        else:
            for slot in self.slots:
                slot.restart(self.rng)
        return self.slots

    def _support_and_query(self, slot: _TaskSlot, meta: Params, epsilon: float) -> list[float]:
        """Collect the support with the meta-parameters, adapt on it, collect the query with
        the adapted parameters (module docstring, steps 1-3); the returns of the episodes
        that ended."""
        a, n = self.cfg.adaptation, self.cfg.meta.collect_steps
        returns = self._collect(slot, meta, n, a.support_epsilon, into_support=True)
        with torch.no_grad():
            adapted = self._adapt_one(dict(meta), slot.support.all())
        return returns + self._collect(slot, adapted, n, epsilon, into_support=False)

    def _adapt_one(self, params: Params, batch: Batch) -> Params:
        """First-order :meth:`_adapt` of one task for acting on it: through the batched path
        with a task axis of one where the network has one (the same numbers as
        :func:`adapt_step`, to the bit, in fewer and larger ops: about a fifth faster), the
        task axis dropped again."""
        if not batched_supported(self.net):
            return self._adapt(params, batch, first_order=True)
        one = Batch(*(field.unsqueeze(0) for field in batch))
        adapted = self._adapt(params, one, first_order=True)
        return {k: v[0] if v.dim() > params[k].dim() else v for k, v in adapted.items()}

    def _collect(
        self, slot: _TaskSlot, params: Params, n: int, epsilon: float, into_support: bool
    ) -> list[float]:
        """``n`` epsilon-greedy steps on the slot's task (:mod:`robometa.deploy.collection`) into its
        replay buffer (and support ring); the returns of the episodes that ended."""
        return self._collect_acting(slot, greedy_act_fn(self.net, params), n, epsilon, into_support)

    def _collect_acting(
        self, slot: _TaskSlot, act: ActFn, n: int, epsilon: float, into_support: bool
    ) -> list[float]:
        """``n`` epsilon-greedy steps of ``act`` on the slot's task (what :meth:`_collect`
        does for the greedy actor of a parameter dict; a family acting otherwise calls this)."""
        buffers = (slot.replay, slot.support) if into_support else (slot.replay,)
        with torch.no_grad():
            returns = collection.collect(
                slot.env,
                slot.episode,
                act,
                n,
                epsilon,
                self.rng,
                self.n_actions,
                store_into(*buffers),
                partial(slot.reset_env, self.rng),
            )
        self.env_steps += n
        return returns

    def _adapt(self, params: Params, batch: Batch, first_order: bool) -> Params:
        """``adaptation.steps`` inner steps on one task's batch, or (a batch with a leading
        task axis, inside :meth:`_task_losses`) on every task of the meta-batch at once."""
        step = batched_adapt_step if batch.obs.dim() == 3 else adapt_step
        for _ in range(self.cfg.adaptation.steps):
            params, _ = step(self.net, params, self.lrs, batch, self.inner, first_order=first_order)
        return params

    # -------------------------------------------------------------- one outer step

    def _sample_slots(self) -> list[_TaskSlot]:
        m = self.cfg.meta
        if m.task_pool == 0:
            return self.slots
        ready = [s for s in self.slots if len(s.support)] or self.slots
        chosen = self.rng.choice(len(ready), size=min(m.meta_batch, len(ready)), replace=False)
        return [ready[int(i)] for i in chosen]

    def _task_loss(
        self, support: Batch, query: Batch, batched: bool = False
    ) -> tuple[torch.Tensor, Params]:
        """Outer loss of one task (vmapped over the meta-batch) and its adaptation delta; with
        ``batched``, of every task at once (batches and parameters with a task axis)."""
        d = self.cfg.dqn
        td = batched_td_loss if batched else td_loss
        meta = dict(self.meta_params)
        adapted = self._adapt(meta, support, self.first_order)
        delta = {k: adapted[k] - meta[k] for k in self.lrs}
        # The target network takes the same adaptation displacement as the online one.
        target = {k: v + delta[k].detach() if k in delta else v for k, v in self.target.items()}
        # The model term (all but a TD-only inner loss) shares the TD term's forward pass.
        weight = None if self.inner.kind == "td" else self.inner.model_weight
        loss = td(self.net, adapted, target, query, d.gamma, d.huber_delta, model_weight=weight)
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
        """One meta-update on a fresh meta-batch of tasks (module docstring, step 4); the mean
        of the finite task losses (NaN when none is)."""
        if self.cfg.meta.outer_lr_end_fraction != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.outer_lr()
        self.optimizer.zero_grad(set_to_none=True)
        if self.pool is not None:
            losses = self.pool.outer(self, self._sample_slots())
        else:
            support, query = self._meta_batch()
            if self.variant.reptile:
                losses = self._reptile_update(support, query)
            else:
                losses = self._gradient_update(support, query)
        self._after_update()
        finite = losses.detach()[torch.isfinite(losses.detach())]
        return float(finite.mean()) if finite.numel() else math.nan

    def _meta_batch(self) -> tuple[Batch, Batch]:
        """Support and query batches of a fresh meta-batch of tasks."""
        return self._batches(self._sample_slots())

    def _batches(self, slots: list[_TaskSlot]) -> tuple[Batch, Batch]:
        """Support and query batches of ``slots``, stacked along a task axis."""
        return self._batches_at(slots, self._batch_indices(slots))

    def _batch_indices(self, slots: list[_TaskSlot]) -> list[tuple[Any, Any]]:
        """Which transitions the batches of ``slots`` take, drawn from the learner's stream
        (every support first, then every query): per slot the support ring's indices (None:
        the whole ring, once it is full) and the replay buffer's."""
        support = [
            None
            if len(s.support) == s.support.capacity
            else s.support.indices(s.support.capacity, self.rng)
            for s in slots
        ]
        query = [s.replay.indices(self.cfg.meta.query_batch, self.rng) for s in slots]
        return list(zip(support, query, strict=True))

    @staticmethod
    def _batches_at(slots: list[_TaskSlot], indices: list[tuple[Any, Any]]) -> tuple[Batch, Batch]:
        """The batches of ``slots`` at ``indices`` (:meth:`_batch_indices`), stacked."""
        support = _stack(
            [
                s.support.all() if i is None else s.support.batch(i)
                for s, (i, _) in zip(slots, indices, strict=True)
            ]
        )
        query = _stack([s.replay.batch(j) for s, (_, j) in zip(slots, indices, strict=True)])
        return support, query

    def _task_losses(self, support: Batch, query: Batch) -> tuple[torch.Tensor, Params]:
        """:meth:`_task_loss` of every task at once, batched over the task axis
        (:func:`robometa.adaptation.batched_adapt_step`): the inner losses, adapted parameters
        and outer losses of vmapping it to the bit; the meta-gradients too for first-order
        variants, and to float rounding where the outer gradient differentiates through the
        inner gradient (MAML, Meta-SGD, CAVIA, ANIL's heads: autograd sums some terms in
        another order). A network the batched forward does not cover is vmapped."""
        if batched_supported(self.net):
            return self._batched_task_losses(support, query)
        return self._vmapped_task_losses(support, query)

    def _vmapped_task_losses(self, support: Batch, query: Batch) -> tuple[torch.Tensor, Params]:
        """:meth:`_task_loss` vmapped over the task axis."""

        def per_task(sup: tuple, qry: tuple) -> tuple[torch.Tensor, Params]:
            return self._task_loss(Batch(*sup), Batch(*qry))

        return torch.func.vmap(per_task)(tuple(support), tuple(query))

    def _batched_task_losses(self, support: Batch, query: Batch) -> tuple[torch.Tensor, Params]:
        """:meth:`_task_loss` with a leading task axis on the batches and the adapted
        parameters: the numbers of vmapping it (to float rounding where the outer gradient is
        of second order in the body or the context, see :mod:`robometa.adaptation`)."""
        return self._task_loss(support, query, batched=True)

    def _reptile_update(self, support: Batch, query: Batch) -> torch.Tensor:
        """Move the meta-parameters a (scheduled) fraction of the way to the adapted ones."""
        with torch.no_grad():
            losses, deltas = self._task_losses(support, query)
        self._reptile_step({k: delta.mean(0) for k, delta in deltas.items()})
        return losses

    def _reptile_step(self, mean_delta: Params) -> None:
        """Reptile's move along the tasks' mean adaptation displacement."""
        step = self.cfg.meta.reptile_step
        with torch.no_grad():
            for k, delta in mean_delta.items():
                self.meta_params[k].add_(step * self.outer_scale() * delta)

    def _gradient_update(self, support: Batch, query: Batch) -> torch.Tensor:
        """Adam on the mean outer loss, differentiated through the inner steps; skipped (and
        counted) when an inner loop diverged on some task, rather than let NaN reach the
        meta-parameters. Learned inner rates stay above :data:`LR_FLOOR`."""
        losses, _ = self._task_losses(support, query)
        losses.mean().backward()
        return self._gradient_step(losses)

    def outer_parameters(self) -> dict[str, torch.Tensor]:
        """What the outer optimizer steps, by name: the meta-parameters but the context
        (``param:NAME``) and the learned inner rates (``lr:NAME``)."""
        named = {f"param:{k}": v for k, v in self.meta_params.items() if k != "context"}
        named.update({f"lr:{k}": v for k, v in self.lrs.items() if v.requires_grad})
        return named

    def _gradient_step(self, losses: torch.Tensor) -> torch.Tensor:
        """Clip the outer gradients now in ``.grad`` and step Adam, or skip a non-finite one."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.dqn.max_grad_norm if self.cfg.dqn.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if torch.isfinite(norm) and torch.isfinite(losses).all():
            self.optimizer.step()
        else:
            self.skipped_updates += 1
        with torch.no_grad():
            for lr in self.lrs.values():
                if lr.requires_grad:
                    lr.clamp_(min=LR_FLOOR)
        return losses

    def _after_update(self) -> None:
        """CAVIA's context back to zero (every task starts from it); the target network's
        copy every ``meta.target_update_interval`` outer steps."""
        if "context" in self.meta_params:
            with torch.no_grad():
                self.meta_params["context"].zero_()
        self.outer_steps += 1
        if self.outer_steps % self.cfg.meta.target_update_interval == 0:
            with torch.no_grad():
                for k, v in self.meta_params.items():
                    self.target[k].copy_(v)

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "lrs": {k: v.detach().clone() for k, v in self.lrs.items()},
            "target": {k: v.clone() for k, v in self.target.items()},
            "optimizer": self.optimizer.state_dict(),
            "slots": [self.slot_state(s) for s in self.slots],
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
        if self.pool is not None:
            self.pool.load(self)
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
        if getattr(self, "pool", None) is not None:
            self.pool.close()
            self.pool = None
        for slot in self.slots:
            slot.close()


def _check_rules(cfg: Config, variant: Variant) -> None:
    """The algorithm's config rules (:mod:`robometa.algorithms`) again, for a config handed to
    the learner directly rather than validated by :mod:`robometa.config`, and the rules its
    variant implies (a plug-in variant registered without a ``check`` gets them too)."""
    check = robometa.algorithms.get(cfg.algorithm).check
    if check is not None:
        check(cfg, "")
    robometa.algorithms.gradient_check(variant.adapts, variant.reptile)(cfg, "")
