"""The ``context`` family: a deterministic context encoder over support transitions
(PEARL/MQL-style, without PEARL's sampling), trained end to end with the TD loss.

Adapting is inference, not gradient steps: a permutation-invariant encoder maps the support
transitions ``(s, a, r, s' - s)`` of a robot to a context vector ``z``, and the Q-network is
conditioned on ``z``. On a new robot that is one forward pass over the collected transitions
(``encoder.onnx`` on the device, :mod:`robometa.deploy.context`).

Network (:class:`ContextQNetwork`, the :class:`~robometa.networks.QNetwork` with the same
normalization buffers and heads): each transition becomes ``[(s - mean) / std, one_hot(a), r,
(s' - s) / delta_std, one_hot(a) x (s' - s) / delta_std]`` (the last: the state change in the
taken action's slot, which makes the motor's sign a linear feature); an MLP of ``network.hidden`` layers and a linear output of
``network.context_dim`` embeds it; ``z`` is the mean of the embeddings (zeros for an empty
support, so "0 transitions" is the unadapted policy, the one that collects the support). The
Q-network and the dynamics head read ``[(s - mean) / std, z]``.

Meta-training (:class:`ContextLearner`, the gradient meta-learner's harness: task pool,
per-task support ring and replay, epsilon-greedy collection, outer Adam, target network,
checkpoints and model selection), per round on each task of a meta-batch:

1. *support*: ``meta.collect_steps`` transitions acting with ``z = 0`` at
   ``adaptation.support_epsilon`` (as on a new robot) into the task's support ring of
   ``adaptation.support_size`` and its replay buffer;
2. *query*: ``meta.collect_steps`` transitions acting with ``z`` of the whole support ring
   (epsilon from the DQN schedule) into the replay buffer;
3. *outer loss* (``meta.updates_per_collect`` times per round, each on a fresh meta-batch):
   ``z = encoder(S)`` for a random subset ``S`` of the task's support ring, then the
   Double-DQN TD loss of ``Q(s, z)`` on ``meta.query_batch`` replayed transitions of the task,
   against the target network's ``Q(s', z')`` with ``z'`` its own encoder's on the same ``S``;
   with ``adaptation.loss: td+model`` plus ``adaptation.model_weight`` times the dynamics
   head's error on the normalized state change (an auxiliary loss that makes ``z`` describe
   the dynamics: the motor sign, masses). Gradients reach the encoder through ``z``.

The support subset's size is drawn per task and outer step so that one ``z`` works for 10 as
for 200 transitions: empty (``z = 0``) for a fraction :data:`EMPTY_SUPPORT_FRACTION` of the
tasks (that trains the policy that collects the support), else uniform in ``[1,
adaptation.support_size]``, capped by what the ring holds (measured on CartPole at the shipped
budget: log-uniform sizes, half of them below 15, left the Q-network ignoring the noisier
``z`` and acting as domain randomization does; the whole ring every time learned, but only
for full supports); the transitions are drawn without replacement and averaged
with a mask, so the tasks of a meta-batch run as one batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from robometa.adaptation import Batch, double_dqn_target
from robometa.deploy.collection import ActFn
from robometa.evaluate import TrainedMethod
from robometa.methods.base import refuse_learning_rates
from robometa.methods.gradient import MetaLearner, Variant, _TaskSlot
from robometa.networks import ACTIVATIONS, NUMPY_ACTIVATIONS, NetworkSpec, Params, QNetwork
from robometa.policy import Policy

#: share of the tasks of an outer step whose support is empty (``z = 0``)
EMPTY_SUPPORT_FRACTION = 0.125

#: the parameters of the encoder (``encoder.<i>.weight``/``bias``)
ENCODER_PREFIX = "encoder."


def encoder_input_dim(spec: NetworkSpec) -> int:
    """One transition's encoder input: normalized s, one-hot a, r, normalized s' - s, and
    that change again in the taken action's slot (``one_hot(a) x (s' - s)``)."""
    return 2 * spec.obs_dim + spec.n_actions + 1 + spec.n_actions * spec.obs_dim


class ContextQNetwork(QNetwork):
    """The Q-network conditioned on an inferred context ``z`` (see the module docstring).

    ``forward(obs, with_model, z)`` takes ``z`` of shape ``obs.shape[:-2] + (context_dim,)``
    (one context per leading index, shared by the rows; ``None``: zeros, the unadapted
    policy), so :func:`robometa.networks.q_values` without ``z`` is the policy that collects
    the support. The encoder is :meth:`encode`.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        if spec.context_dim < 1:
            raise ValueError(
                f"a context network needs context_dim >= 1 (network.context_dim), got {spec}"
            )
        super().__init__(spec)
        del self.context  # z is inferred from the support, never a parameter
        sizes = [encoder_input_dim(spec), *spec.hidden, spec.context_dim]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def features(self, obs: Tensor, z: Tensor | None = None) -> Tensor:
        shape = (*obs.shape[:-1], self.spec.context_dim)
        z = obs.new_zeros(shape) if z is None else z.unsqueeze(-2).expand(shape)
        return self.body_features(obs, z)

    def forward(
        self, obs: Tensor, with_model: bool = True, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Q-values ``(..., B, A)`` and the predicted normalized state change ``(..., B, A,
        obs_dim)`` (``None`` with ``with_model=False``) under the context ``z``."""
        return self.heads(self.features(obs, z), obs, with_model)

    def encode(self, support: Batch, mask: Tensor | None = None) -> Tensor:
        """The context of ``support`` under the network's own parameters (:func:`encode`)."""
        return encode(self, dict(self.named_parameters()), support, mask)

    def numpy_actor(self, params: Params, z: Tensor | None = None) -> ActFn | None:
        """The greedy single-observation actor under ``params`` and context ``z`` (zeros:
        ``None``), in numpy: equals ``context_q(self, params, obs, z).argmax()``."""
        spec = self.spec

        def array(name: str, transpose: bool = False) -> np.ndarray:
            value = params[name].detach().numpy()
            return (value.T if transpose else value).copy()

        layers = [
            (array(f"body.{i}.weight", True), array(f"body.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        w_q, b_q = array("q_head.weight", True), array("q_head.bias")
        mean, std = self.obs_mean.numpy().copy(), self.obs_std.numpy().copy()
        context = (
            np.zeros(spec.context_dim, np.float32)
            if z is None
            else z.detach().numpy().astype(np.float32)
        )
        activation = NUMPY_ACTIVATIONS[spec.activation]

        def act(obs: np.ndarray) -> int:
            x = np.concatenate([(np.asarray(obs, np.float32) - mean) / std, context])
            for w, b in layers:
                x = activation(x @ w + b)
            return int(np.argmax(x @ w_q + b_q))

        return act


# ---------------------------------------------------------------------------- functional forms


def encoder_params(params: Params) -> Params:
    """The encoder's parameters, named as in the network (``encoder.<i>.*``)."""
    return {k: v for k, v in params.items() if k.startswith(ENCODER_PREFIX)}


def encode(
    net: ContextQNetwork, params: Params, support: Batch, mask: Tensor | None = None
) -> Tensor:
    """``z`` of ``support`` under ``params`` (fields with any leading axes before the
    transition axis; ``mask`` as :meth:`ContextQNetwork.encode`): the one encoder that
    training, evaluation and ``encoder.onnx`` run."""
    spec = net.spec
    s = (support.obs - net.obs_mean) / net.obs_std
    change = (support.next_obs - support.obs) / net.delta_std
    actions = torch.arange(spec.n_actions, device=support.action.device)
    one_hot = (support.action.unsqueeze(-1) == actions).to(s.dtype)
    per_action = (one_hot.unsqueeze(-1) * change.unsqueeze(-2)).flatten(-2)
    x = torch.cat([s, one_hot, support.reward.unsqueeze(-1), change, per_action], dim=-1)
    act = ACTIVATIONS[spec.activation]
    last = len(net.encoder) - 1
    for i in range(last + 1):
        w, b = params[f"{ENCODER_PREFIX}{i}.weight"], params[f"{ENCODER_PREFIX}{i}.bias"]
        x = torch.nn.functional.linear(x, w, b)
        if i < last:
            x = act(x)
    if mask is None:
        if x.shape[-2] == 0:
            return x.new_zeros((*x.shape[:-2], spec.context_dim))
        return x.mean(dim=-2)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=-2) / m.sum(dim=-2).clamp_min(1.0)


def context_q_and_delta(
    net: ContextQNetwork, params: Params, obs: Tensor, z: Tensor | None, with_model: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Q-values (and state changes) of ``obs`` under ``params`` and the context ``z``."""
    return functional_call(net, params, (obs, with_model, z))


def context_q(net: ContextQNetwork, params: Params, obs: Tensor, z: Tensor | None) -> Tensor:
    return context_q_and_delta(net, params, obs, z, with_model=False)[0]


@dataclass(frozen=True)
class OuterLoss:
    """Settings of the outer loss (:func:`context_losses`)."""

    gamma: float
    huber_delta: float
    model_weight: float  # 0: TD only


def context_losses(
    net: ContextQNetwork,
    params: Params,
    target: Params,
    support: Batch,
    mask: Tensor,
    query: Batch,
    loss: OuterLoss,
) -> Tensor:
    """The outer loss of each task ``(T,)``: Double-DQN TD of ``Q(s, z)`` on the query batch
    (``z`` from ``support`` masked by ``mask``, the target network's ``z`` from its own
    encoder on the same support), plus the weighted model loss."""
    z = encode(net, params, support, mask)
    with torch.no_grad():
        z_target = encode(net, target, support, mask)
        online_next = context_q(net, params, query.next_obs, z)
        target_next = context_q(net, target, query.next_obs, z_target)
    bootstrap = double_dqn_target(
        online_next, target_next, query.reward, query.terminated, loss.gamma
    )
    q, delta = context_q_and_delta(net, params, query.obs, z, with_model=loss.model_weight > 0)
    q_sa = q.gather(-1, query.action.unsqueeze(-1)).squeeze(-1)
    huber = torch.nn.functional.huber_loss(
        q_sa, bootstrap.detach(), reduction="none", delta=loss.huber_delta
    )
    total = huber.mean(dim=-1)
    if loss.model_weight > 0:
        assert delta is not None
        idx = query.action[..., None, None].expand(*query.action.shape, 1, delta.shape[-1])
        pred = delta.gather(-2, idx).squeeze(-2)
        change = (query.next_obs - query.obs) / net.delta_std
        total = total + loss.model_weight * ((pred - change) ** 2).mean(dim=(-2, -1))
    return total


def context_actor(net: ContextQNetwork, params: Params, z: Tensor | None) -> ActFn:
    """The greedy single-observation actor of ``Q(., z)`` (numpy)."""
    act = net.numpy_actor(params, z)
    assert act is not None
    return act


def draw_support_size(held: int, capacity: int, rng: np.random.Generator) -> int:
    """How many of the ``held`` support transitions one task's outer loss encodes: 0 with
    probability :data:`EMPTY_SUPPORT_FRACTION`, else uniform in ``[1, capacity]``, at most
    ``held``."""
    if held == 0 or rng.random() < EMPTY_SUPPORT_FRACTION:
        return 0
    return min(int(rng.integers(1, capacity + 1)), held)


def stack_supports(
    slots: Sequence[_TaskSlot], sizes: Sequence[int], rng: np.random.Generator
) -> tuple[Batch, Tensor]:
    """The supports of ``slots`` (``sizes[i]`` transitions of slot ``i``'s ring, drawn
    without replacement), padded to the largest and stacked, and their mask ``(T, K)``."""
    width = max(1, *sizes)
    obs_dim = slots[0].support.obs.shape[1]
    t = len(slots)
    obs = np.zeros((t, width, obs_dim), np.float32)
    nxt = np.zeros((t, width, obs_dim), np.float32)
    action = np.zeros((t, width), np.int64)
    reward = np.zeros((t, width), np.float32)
    term = np.zeros((t, width), np.float32)
    mask = np.zeros((t, width), np.float32)
    for i, (slot, k) in enumerate(zip(slots, sizes, strict=True)):
        if k == 0:
            continue
        idx = rng.choice(len(slot.support), size=k, replace=False)
        ring = slot.support
        obs[i, :k], nxt[i, :k] = ring.obs[idx], ring.next_obs[idx]
        action[i, :k], reward[i, :k], term[i, :k] = (
            ring.action[idx],
            ring.reward[idx],
            ring.terminated[idx],
        )
        mask[i, :k] = 1.0
    batch = Batch(*(torch.from_numpy(a) for a in (obs, action, reward, nxt, term)))
    return batch, torch.from_numpy(mask)


# ---------------------------------------------------------------------------- the trainer


class ContextLearner(MetaLearner):
    """Meta-trains the context encoder and the Q-network it conditions (module docstring);
    the harness interface of :class:`robometa.methods.gradient.MetaLearner`."""

    network_class: ClassVar[type[QNetwork]] = ContextQNetwork
    #: its config rules are the registry's (``robometa.algorithms.context_check``); the
    #: variant only gives the gradient family's rules that apply (a context, rounds)
    variants: ClassVar[dict[str, Variant]] = {
        "context": Variant(adapts="context", first_order=True)
    }
    backends: ClassVar[tuple[str, ...]] = ("local",)
    bundle_writer: ClassVar[str] = "robometa.bundle_context"

    net: ContextQNetwork

    def _settings(self, cfg: Any) -> None:
        super()._settings(cfg)
        a = cfg.adaptation
        weight = a.model_weight if a.loss != "td" else 0.0
        self.outer = OuterLoss(cfg.dqn.gamma, cfg.dqn.huber_delta, weight)

    def _inner_learning_rates(self) -> dict[str, Tensor]:
        """None: adapting is a forward pass of the encoder."""
        return {}

    # -------------------------------------------------------------- collection

    def _support_and_query(self, slot: _TaskSlot, meta: Params, epsilon: float) -> list[float]:
        """Support acting with ``z = 0``, then query acting with ``z`` of the whole ring."""
        a, n = self.cfg.adaptation, self.cfg.meta.collect_steps
        returns = self._collect_acting(
            slot, context_actor(self.net, meta, None), n, a.support_epsilon, True
        )
        with torch.no_grad():
            z = encode(self.net, meta, slot.support.all())
        act = context_actor(self.net, meta, z)
        return returns + self._collect_acting(slot, act, n, epsilon, False)

    # -------------------------------------------------------------- one outer step

    def _outer_step(self) -> float:
        """One Adam step on the mean outer loss of a fresh meta-batch (module docstring,
        step 3); skipped (and counted) when it is not finite."""
        if self.cfg.meta.outer_lr_end_fraction != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.outer_lr()
        self.optimizer.zero_grad(set_to_none=True)
        slots = self._sample_slots()
        capacity = self.cfg.adaptation.support_size
        sizes = [draw_support_size(len(s.support), capacity, self.rng) for s in slots]
        support, mask = stack_supports(slots, sizes, self.rng)
        query = Batch(
            *(
                torch.stack(field)
                for field in zip(
                    *(s.replay.sample(self.cfg.meta.query_batch, self.rng) for s in slots),
                    strict=True,
                )
            )
        )
        losses = context_losses(
            self.net, dict(self.meta_params), self.target, support, mask, query, self.outer
        )
        if torch.isfinite(losses).all():
            losses.mean().backward()
        self._gradient_step(losses)
        self._after_update()
        finite = losses.detach()[torch.isfinite(losses.detach())]
        return float(finite.mean()) if finite.numel() else math.nan

    # -------------------------------------------------------------- the result

    def policy(self) -> Policy:
        policy = super().policy()
        policy.adapt_steps = 1  # one forward pass of the encoder
        return policy

    # -------------------------------------------------------------- what the family owns

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, Tensor] | None = None,
    ) -> ContextMethod:
        """Adapting is one forward pass over the support (:class:`ContextMethod`); ``lrs``
        ``{}`` evaluates the policy as it is (``z = 0``). Gradient fine-tuning rates are
        refused: the family adapts by inference."""
        refuse_learning_rates(
            policy,
            lrs,
            "adapts by inferring a context from the support; it has no gradient fine-tuning",
        )
        return ContextMethod(name, policy, support_epsilon, infers=lrs is None)


@dataclass
class ContextMethod(TrainedMethod):
    """A trained context policy in the evaluation harness (:mod:`robometa.evaluate`): the
    initial actor acts with ``z = 0``; adapting (any ``k >= 1`` of the curve: the steps of
    a forward pass are one) acts with ``z`` of the support. ``support_size`` overrides the
    policy's (the transitions collected before adapting); ``infers=False`` never adapts."""

    infers: bool = True

    @property
    def net(self) -> ContextQNetwork:
        return self.policy.net  # type: ignore[return-value]

    def context(self, support: Batch) -> Tensor:
        """``z`` of the support transitions."""
        with torch.no_grad():
            return encode(self.net, self.policy.params, support)

    def initial_actor(self) -> ActFn:
        return context_actor(self.net, self.policy.params, None)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        z = self.context(support) if self.infers and any(k > 0 for k in steps) else None
        return [context_actor(self.net, self.policy.params, z if k > 0 else None) for k in steps]


def untrained_policy(
    env_id: str = "robometa/CartPole-v0",
    *,
    hidden: tuple[int, ...] = (16, 16),
    context_dim: int = 3,
    support_size: int = 64,
    seed: int = 0,
    network_class: type[ContextQNetwork] | None = None,
    algorithm: str = "context",
) -> Policy:
    """A randomly initialized ``context`` policy (for export and runtime tests without
    training), its normalization that of :func:`robometa.testing.random_policy`;
    ``network_class`` and ``algorithm``: another method of the family (e.g. ``hyper``)."""
    from robometa.adaptation import InnerLoss
    from robometa.testing import random_policy

    shaped = random_policy("dqn", env_id=env_id, hidden=hidden, seed=seed)
    spec = shaped.net.spec
    torch.manual_seed(seed)
    net = (network_class or ContextQNetwork)(
        NetworkSpec(spec.obs_dim, spec.n_actions, hidden, context_dim)
    )
    with torch.no_grad():
        net.set_normalization(shaped.net.obs_mean, shaped.net.obs_std, shaped.net.delta_std)
        net.q_head.weight.normal_(0.0, 1.0)
    return Policy(
        algorithm=algorithm,
        env_id=env_id,
        net=net,
        params=net.params(),
        lrs={},
        inner=InnerLoss("td+model"),
        adapt_steps=1,
        support_size=support_size,
        config={"adaptation": {"support_epsilon": 0.3}, "random_policy": True},
    )
