"""The ``recurrent`` family (RL^2 / R2D2-style): a GRU over the robot's transitions so far
conditions the Q-network online.

Adapting is memory, not gradient steps: every transition ``(s, a, r, s', done)`` the robot
makes advances a GRU state ``h``, and the Q-network reads ``[(s - mean) / std, h]``. On a new
robot the state starts at zero (the policy before it has seen anything) and is warmed by the
support transitions in their order; it keeps following every later step, across episodes of
the same robot, until ``reset()``. On the device the state is an explicit graph input and
output (``policy.onnx`` reads it, ``memory.onnx`` advances it: :mod:`robometa.deploy.recurrent`).

Network (:class:`RecurrentQNetwork`, the :class:`~robometa.networks.QNetwork` with the same
normalization buffers and heads; its ``spec.context_dim`` is the GRU's size,
``memory.hidden_size``): a transition becomes ``[(s - mean) / std, one_hot(a), r, (s' - s) /
delta_std, done, one_hot(a) x (s' - s) / delta_std]`` (the last: the state change in the taken
action's slot, which makes a reversed motor a linear feature, as in the ``context`` encoder),
one GRU cell step (:func:`gru_step`, PyTorch's gate equations, parameters ``memory.*``) maps it
and ``h`` to the next ``h``; the body, the Q head and the dynamics head read ``[(s - mean) /
std, h]``. ``Q(s_t, h_t)``: ``h_t`` summarizes the transitions before ``s_t``.

Training (:class:`RecurrentLearner`), ``env.num_envs`` envs stepped together. Each env keeps
its robot (a train task) for one *life* shaped as evaluation uses it:

1. *support*: ``n`` steps at ``adaptation.support_epsilon``, ``n`` drawn per life (0 with
   probability :data:`EMPTY_SUPPORT_FRACTION`, else uniform in ``[1,
   adaptation.support_size]``), episodes restarting on the same robot;
2. *acting*: :data:`ACTING_EPISODES` fresh episodes at the DQN schedule's epsilon;

then a new robot and a zero state. The state carries across every episode of a life, so the
cross-episode memory the support gives is what is trained. Each life's transitions, with the
online state before each, are cut into sequences of ``memory.sequence_length`` steps that
overlap by ``memory.burn_in`` (R2D2): a stored sequence keeps the state it started from
(computed by the acting network, so stale by the time it is replayed), its first
``memory.burn_in`` steps only warm that state up (no loss, no gradient through them), and the
steps after carry the loss, so every transition gets it once. A sequence that starts a life
starts from the exact zero state and has the loss on every step. The last, shorter sequence
of a life is padded and masked.

The loss, on ``dqn.batch_size`` sequences (not transitions) per gradient step: Double DQN
along each sequence, ``r_t + gamma (1 - d_t) Q_target(s'_t, h'_{t+1})[argmax_a Q(s'_t,
h_{t+1})]`` with ``h_{t+1}`` the state after transition ``t`` (the target network unrolls its
own GRU from the same stored state), Huber, plus with ``adaptation.loss: td+model``
``adaptation.model_weight`` times the dynamics head's error on the normalized state change.
Adam, gradient clipping, the learning-rate decay and target-network updates are DQN's
(``dqn.*``). Checkpoints are taken at :meth:`RecurrentLearner.boundary`, where every env starts
a new life (the sequences not yet stored are dropped in the run and in its resume alike, so a
resumed run continues exactly).

Evaluation (:class:`RecurrentMethod`, ``robometa eval``): this family adapts *online*, so its
``k`` means something other than other families' gradient or inference steps, and every actor,
``k = 0`` included, keeps advancing its own state with every step of the evaluation episodes
(the state carries across a task's evaluation episodes, as across a life's acting episodes):

- ``k = 0``: *cold start, online memory*. The evaluation episodes start from the zero state,
  ignoring the support, and the memory follows the robot from there (a life with an empty
  support, as :data:`EMPTY_SUPPORT_FRACTION` of training lives are). It is not the
  unadapted policy of other families' ``k = 0`` (which never changes while it acts): the
  within-episode adaptation is counted in it. The memoryless baseline (the zero state held
  fixed) is not one of ``robometa eval``'s rows.
- ``k >= 1`` (all the same, warming is one pass): *warm start, online memory*. The state after
  the support transitions in their order, then following the robot as ``k = 0`` does.

So ``k >= 1`` minus ``k = 0`` is what the support adds, not what adapting adds overall.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from robometa.adaptation import Batch, InnerLoss, double_dqn_target
from robometa.config import Config
from robometa.deploy import collection
from robometa.deploy.collection import Episode
from robometa.evaluate import TrainedMethod
from robometa.methods.base import Method, refuse_learning_rates
from robometa.methods.dqn import linear_epsilon, update_target
from robometa.networks import NUMPY_ACTIVATIONS, NetworkSpec, Params, QNetwork
from robometa.policy import Policy
from robometa.rollout import fit_normalization, make_env, seed_from, train_tasks

#: share of the lives whose support phase is empty (the zero-state policy acts at once)
EMPTY_SUPPORT_FRACTION = 0.2
#: episodes of a life's acting phase
ACTING_EPISODES = 2
#: the parameters of the GRU cell (``memory.weight_ih``, ``memory.weight_hh``, biases)
MEMORY_PREFIX = "memory."


def memory_input_dim(spec: NetworkSpec) -> int:
    """One transition's GRU input: normalized s, one-hot a, r, normalized s' - s, done, and
    the change again in the taken action's slot."""
    return 2 * spec.obs_dim + spec.n_actions + 2 + spec.n_actions * spec.obs_dim


class RecurrentQNetwork(QNetwork):
    """The Q-network conditioned on a GRU state ``h`` of size ``spec.context_dim`` (module
    docstring).

    ``forward(obs, with_model, h)``: ``h`` of shape ``obs.shape[:-1] + (H,)`` (one state per
    row), ``(H,)`` (one state for every row) or ``None`` (zeros: the policy before it has
    seen a transition). The GRU step is :func:`gru_step` (:meth:`step`).
    """

    def __init__(self, spec: NetworkSpec) -> None:
        if spec.context_dim < 1:
            raise ValueError(
                f"a recurrent network needs a GRU state of size >= 1 (memory.hidden_size), got "
                f"{spec}"
            )
        super().__init__(spec)
        del self.context  # h is the robot's own history, never a parameter
        self.memory = nn.GRUCell(memory_input_dim(spec), spec.context_dim)

    @property
    def hidden_size(self) -> int:
        return self.spec.context_dim

    def features(self, obs: Tensor, h: Tensor | None = None) -> Tensor:
        shape = (*obs.shape[:-1], self.spec.context_dim)
        return self.body_features(obs, obs.new_zeros(shape) if h is None else h.expand(shape))

    def forward(
        self, obs: Tensor, with_model: bool = True, h: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Q-values ``(..., A)`` and the predicted normalized state change ``(..., A,
        obs_dim)`` (``None`` with ``with_model=False``) under the state ``h``."""
        return self.heads(self.features(obs, h), obs, with_model)

    def step(self, h: Tensor, transitions: Batch) -> Tensor:
        """The state after ``transitions`` (one per row of ``h``) under the own parameters."""
        return advance(self, dict(self.named_parameters()), h, transitions)

    def numpy_actor(self, params: Params) -> RecurrentActor:  # type: ignore[override]
        """A fresh stateful greedy actor under ``params`` (zero state)."""
        return RecurrentActor(self, params)


# ---------------------------------------------------------------------------- functional forms


def memory_params(params: Params) -> Params:
    """The GRU cell's parameters, named as in the network (``memory.*``)."""
    return {k: v for k, v in params.items() if k.startswith(MEMORY_PREFIX)}


def memory_input(net: RecurrentQNetwork, t: Batch) -> Tensor:
    """The GRU input of transitions ``t`` (fields with any leading axes)."""
    spec = net.spec
    s = (t.obs - net.obs_mean) / net.obs_std
    change = (t.next_obs - t.obs) / net.delta_std
    actions = torch.arange(spec.n_actions, device=t.action.device)
    one_hot = (t.action.unsqueeze(-1) == actions).to(s.dtype)
    per_action = (one_hot.unsqueeze(-1) * change.unsqueeze(-2)).flatten(-2)
    reward, done = t.reward.to(s.dtype).unsqueeze(-1), t.terminated.to(s.dtype).unsqueeze(-1)
    return torch.cat([s, one_hot, reward, change, done, per_action], dim=-1)


def gru_step(params: Params, h: Tensor, x: Tensor) -> Tensor:
    """One GRU cell step (PyTorch's ``GRUCell``: reset, update, new gates in that order):
    ``r = sig(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sig(...)``, ``n = tanh(W_in x + b_in + r
    (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``; written out so ONNX export and the numpy
    actor are the same arithmetic."""
    gi = nn.functional.linear(x, params["memory.weight_ih"], params["memory.bias_ih"])
    gh = nn.functional.linear(h, params["memory.weight_hh"], params["memory.bias_hh"])
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


def advance(net: RecurrentQNetwork, params: Params, h: Tensor, t: Batch) -> Tensor:
    """The state after one transition per row: the one step training, evaluation and
    ``memory.onnx`` run."""
    return gru_step(params, h, memory_input(net, t))


def warm_state(net: RecurrentQNetwork, params: Params, support: Batch) -> Tensor:
    """The state ``(H,)`` after the support transitions in their order, from zero."""
    h = torch.zeros(net.hidden_size)
    x = memory_input(net, support)
    for i in range(x.shape[0]):
        h = gru_step(params, h, x[i])
    return h


def recurrent_q_and_delta(
    net: RecurrentQNetwork, params: Params, obs: Tensor, h: Tensor | None, with_model: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Q-values (and state changes) of ``obs`` under ``params`` and the state ``h``."""
    return functional_call(net, params, (obs, with_model, h))


def recurrent_q(net: RecurrentQNetwork, params: Params, obs: Tensor, h: Tensor | None) -> Tensor:
    return recurrent_q_and_delta(net, params, obs, h, with_model=False)[0]


def unroll(
    net: RecurrentQNetwork, params: Params, h0: Tensor, seq: Batch, detach_at: Tensor | None = None
) -> Tensor:
    """The states along sequences ``seq`` (fields ``(B, T, ...)``) from ``h0`` ``(B, H)``:
    ``(B, T + 1, H)``, entry ``t`` the state before step ``t``. ``detach_at`` ``(B,)``: per
    sequence, the step whose state is cut from the gradient (R2D2's burn-in; 0: none)."""
    x = memory_input(net, seq)
    hs, h = [h0], h0
    for t in range(x.shape[1]):
        h = gru_step(params, h, x[:, t])
        if detach_at is not None:
            cut = (detach_at == t + 1).unsqueeze(-1)
            if bool(cut.any()):
                h = torch.where(cut, h.detach(), h)
        hs.append(h)
    return torch.stack(hs, dim=1)


@dataclass(frozen=True)
class SequenceLoss:
    """Settings of the sequence loss (:func:`sequence_loss`)."""

    gamma: float
    huber_delta: float
    model_weight: float  # 0: TD only


def sequence_loss(
    net: RecurrentQNetwork,
    params: Params,
    target: Params,
    seq: Batch,
    h0: Tensor,
    mask: Tensor,
    loss_from: Tensor,
    loss: SequenceLoss,
) -> Tensor:
    """The mean loss over the masked steps (``mask`` ``(B, T)``: valid steps at or after
    ``loss_from`` ``(B,)``) of sequences ``seq`` starting from the stored states ``h0``: Double
    DQN of ``Q(s_t, h_t)`` against the target network's own unroll, plus the weighted model
    loss (module docstring)."""
    hs = unroll(net, params, h0, seq, detach_at=loss_from)
    with torch.no_grad():
        hs_target = unroll(net, target, h0, seq)
        online_next = recurrent_q(net, params, seq.next_obs, hs[:, 1:].detach())
        target_next = recurrent_q(net, target, seq.next_obs, hs_target[:, 1:])
    bootstrap = double_dqn_target(online_next, target_next, seq.reward, seq.terminated, loss.gamma)
    q, delta = recurrent_q_and_delta(
        net, params, seq.obs, hs[:, :-1], with_model=loss.model_weight > 0
    )
    q_sa = q.gather(-1, seq.action.unsqueeze(-1)).squeeze(-1)
    huber = nn.functional.huber_loss(
        q_sa, bootstrap.detach(), reduction="none", delta=loss.huber_delta
    )
    steps = torch.arange(seq.reward.shape[1]).unsqueeze(0)
    m = mask * (steps >= loss_from.unsqueeze(1)).to(mask.dtype)
    total = (huber * m).sum()
    if loss.model_weight > 0:
        assert delta is not None
        idx = seq.action[..., None, None].expand(*seq.action.shape, 1, delta.shape[-1])
        pred = delta.gather(-2, idx).squeeze(-2)
        change = (seq.next_obs - seq.obs) / net.delta_std
        total = total + loss.model_weight * (((pred - change) ** 2).mean(-1) * m).sum()
    return total / m.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------- acting (numpy)


class RecurrentActor:
    """A greedy stateful actor (numpy): ``actor(obs)`` is the argmax of ``Q(obs, h)``,
    ``observe(obs, action, reward, next_obs, terminated)`` advances ``h`` (the hook of
    :func:`robometa.deploy.collection.observer`, called after every kept step), ``reset()``
    zeros it. Equals :func:`recurrent_q` and :func:`advance` of torch (float32)."""

    def __init__(self, net: RecurrentQNetwork, params: Params) -> None:
        spec = net.spec

        def array(name: str, transpose: bool = False) -> np.ndarray:
            value = params[name].detach().numpy().astype(np.float32)
            return (value.T if transpose else value).copy()

        self._layers = [
            (array(f"body.{i}.weight", True), array(f"body.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        self._w_q, self._b_q = array("q_head.weight", True), array("q_head.bias")
        self._w_ih, self._b_ih = array("memory.weight_ih", True), array("memory.bias_ih")
        self._w_hh, self._b_hh = array("memory.weight_hh", True), array("memory.bias_hh")
        self._mean = net.obs_mean.numpy().astype(np.float32).copy()
        self._std = net.obs_std.numpy().astype(np.float32).copy()
        self._delta_std = net.delta_std.numpy().astype(np.float32).copy()
        self._activation = NUMPY_ACTIVATIONS[spec.activation]
        self._n_actions = spec.n_actions
        self.hidden = np.zeros(spec.context_dim, np.float32)

    def copy(self) -> RecurrentActor:
        """An independent actor with the same weights and the same current state."""
        other = copy.copy(self)
        other.hidden = self.hidden.copy()
        return other

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.concatenate([(np.asarray(obs, np.float32) - self._mean) / self._std, self.hidden])
        for w, b in self._layers:
            x = self._activation(x @ w + b)
        return x @ self._w_q + self._b_q

    def __call__(self, obs: np.ndarray) -> int:
        return int(np.argmax(self.q_values(obs)))

    def observe(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        s = np.asarray(obs, np.float32)
        change = (np.asarray(next_obs, np.float32) - s) / self._delta_std
        one_hot = np.zeros(self._n_actions, np.float32)
        one_hot[int(action)] = 1.0
        x = np.concatenate(
            [
                (s - self._mean) / self._std,
                one_hot,
                np.float32([reward]),
                change,
                np.float32([float(terminated)]),
                np.outer(one_hot, change).ravel(),
            ]
        )
        gi = x @ self._w_ih + self._b_ih
        gh = self.hidden @ self._w_hh + self._b_hh
        i_r, i_z, i_n = np.split(gi, 3)
        h_r, h_z, h_n = np.split(gh, 3)
        r = 1.0 / (1.0 + np.exp(-(i_r + h_r)))
        z = 1.0 / (1.0 + np.exp(-(i_z + h_z)))
        n = np.tanh(i_n + r * h_n)
        self.hidden = ((1.0 - z) * n + z * self.hidden).astype(np.float32)

    def warm(self, support: Batch) -> RecurrentActor:
        """Advance over the support transitions in their order; returns ``self``."""
        fields = [f.detach().numpy() for f in support]
        for row in zip(*fields, strict=True):
            self.observe(*row)
        return self

    def reset(self) -> None:
        """Back to the zero state (a new robot)."""
        self.hidden = np.zeros_like(self.hidden)


# ---------------------------------------------------------------------------- replay


class SequenceReplay:
    """A ring of stored sequences: transitions ``(N, T, ...)``, the valid-step mask, the state
    each started from and the step its loss starts at (0 for a life's first sequence, else
    ``memory.burn_in``)."""

    def __init__(self, capacity: int, length: int, obs_dim: int, hidden: int) -> None:
        self.capacity, self.length = int(capacity), int(length)
        self.obs = np.zeros((capacity, length, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, length, obs_dim), np.float32)
        self.action = np.zeros((capacity, length), np.int64)
        self.reward = np.zeros((capacity, length), np.float32)
        self.terminated = np.zeros((capacity, length), np.float32)
        self.mask = np.zeros((capacity, length), np.float32)
        self.h0 = np.zeros((capacity, hidden), np.float32)
        self.loss_from = np.zeros(capacity, np.int64)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, steps: Sequence[tuple], h0: np.ndarray, loss_from: int) -> None:
        """Store ``steps`` (``(obs, action, reward, next_obs, terminated)`` tuples, at most
        ``length``; the rest of the row is padding, masked out)."""
        i, n = self.pos, len(steps)
        for column in (self.obs, self.next_obs, self.action, self.reward, self.terminated):
            column[i] = 0
        for t, (o, a, r, o2, d) in enumerate(steps):
            self.obs[i, t], self.action[i, t], self.reward[i, t] = o, a, r
            self.next_obs[i, t], self.terminated[i, t] = o2, float(d)
        self.mask[i] = 0.0
        self.mask[i, :n] = 1.0
        self.h0[i] = h0
        self.loss_from[i] = loss_from
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Batch, Tensor, Tensor, Tensor]:
        """``n`` sequences drawn with replacement: (transitions, h0, mask, loss_from)."""
        idx = rng.integers(0, self.size, size=n)
        seq = Batch(
            *(
                torch.from_numpy(a[idx])
                for a in (self.obs, self.action, self.reward, self.next_obs, self.terminated)
            )
        )
        return (
            seq,
            torch.from_numpy(self.h0[idx]),
            torch.from_numpy(self.mask[idx]),
            torch.from_numpy(self.loss_from[idx]),
        )

    _FIELDS = ("obs", "next_obs", "action", "reward", "terminated", "mask", "h0", "loss_from")

    def state_dict(self) -> dict[str, Any]:
        """The stored sequences oldest first, with ``pos`` (the next slot written): enough to
        rebuild the exact ring layout, so a resumed run samples and overwrites the same
        slots as the uninterrupted one."""
        order = (self.pos - self.size + np.arange(self.size)) % self.capacity
        state: dict[str, Any] = {"capacity": self.capacity, "size": self.size, "pos": self.pos}
        for name in self._FIELDS:
            state[name] = torch.from_numpy(getattr(self, name)[order].copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s sequences to the slots they were saved from."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"sequence replay of capacity {state['capacity']} does not fit this run's "
                f"{self.capacity}"
            )
        n, pos = int(state["size"]), int(state["pos"])
        if not (0 <= n <= self.capacity and 0 <= pos < self.capacity):
            raise ValueError(
                f"sequence replay state of size {n} at pos {pos} does not fit capacity "
                f"{self.capacity}"
            )
        idx = (pos - n + np.arange(n)) % self.capacity
        for name in self._FIELDS:
            getattr(self, name)[idx] = state[name].numpy()
        self.size, self.pos = n, pos


# ---------------------------------------------------------------------------- the trainer


@dataclass
class _Life:
    """One env's current robot: its phase, the online state and the steps not yet stored."""

    support_left: int  # support steps still to go
    acting: bool  # in the acting phase (the support phase is over)
    acting_left: int  # acting episodes still to go
    hidden: np.ndarray  # the online state the next action is chosen with
    pending: list = field(
        default_factory=list
    )  # (transition, state before it) of the next sequence
    at_start: bool = True  # pending[0] is the life's first step (loss on every step)
    fresh: int = 0  # steps of pending not yet given the loss


class RecurrentLearner(Method):
    """Trains the recurrent Q-network over the task distribution (module docstring)."""

    network_class: ClassVar[type[QNetwork]] = RecurrentQNetwork
    backends: ClassVar[tuple[str, ...]] = ("local",)
    bundle_writer: ClassVar[str] = "robometa.bundle_recurrent"

    net: RecurrentQNetwork

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        check = _registry_check(cfg.algorithm)
        if check is not None:
            check(cfg, "")
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        e, d, m, a = cfg.env, cfg.dqn, cfg.memory, cfg.adaptation
        self.envs = [make_env(e.id, e.dynamics, e.max_episode_steps) for _ in range(e.num_envs)]
        self.space = self.envs[0].unwrapped.dynamics_space
        self.obs_dim = self.envs[0].observation_space.shape[0]
        self.n_actions = int(self.envs[0].action_space.n)
        self.net = self.network_from_config(cfg, self.obs_dim, self.n_actions)
        tasks = train_tasks(self.space, e.tasks, 8, self.rng)
        fit_normalization(self.net, self.envs[0], tasks, 2000, self.rng)
        self.params = dict(self.net.named_parameters())
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.target = dict(self.target_net.named_parameters())
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=d.learning_rate)
        stride = m.sequence_length - m.burn_in
        self.replay = SequenceReplay(
            max(1, d.buffer_size // stride), m.sequence_length, self.obs_dim, m.hidden_size
        )
        weight = a.model_weight if a.loss != "td" else 0.0
        self.loss = SequenceLoss(d.gamma, d.huber_delta, weight)
        self.env_steps = 0
        self.grad_steps = 0
        self.obs = np.zeros((e.num_envs, self.obs_dim), np.float32)
        self.episodes: list[Episode] = []
        self.lives: list[_Life] = []
        self.boundary()

    @classmethod
    def network_from_config(cls, cfg: Config, obs_dim: int, n_actions: int) -> QNetwork:
        """The GRU's size is ``memory.hidden_size`` (the spec's ``context_dim``)."""
        n = cfg.network
        spec = NetworkSpec(
            obs_dim, n_actions, tuple(n.hidden), cfg.memory.hidden_size, n.activation
        )
        return cls.network_class(spec)

    # -------------------------------------------------------------- lives and episodes

    @property
    def steps_per_iteration(self) -> int:
        """One vector step: every env steps once."""
        return len(self.envs)

    def boundary(self) -> None:
        """Every env starts a new life (new robot, zero state); steps not yet stored in a
        sequence are dropped (in a run and in its resume alike)."""
        self.lives = [self._new_life(i) for i in range(len(self.envs))]
        self.episodes = [Episode(self._reset(i)) for i in range(len(self.envs))]
        for i, episode in enumerate(self.episodes):
            self.obs[i] = episode.obs

    def _new_life(self, i: int) -> _Life:
        """A new train task on env ``i`` and its support length (module docstring)."""
        self.envs[i].unwrapped.set_task(train_tasks(self.space, self.cfg.env.tasks, 1, self.rng)[0])
        empty = self.rng.random() < EMPTY_SUPPORT_FRACTION
        n = 0 if empty else int(self.rng.integers(1, self.cfg.adaptation.support_size + 1))
        zero = np.zeros(self.cfg.memory.hidden_size, np.float32)
        return _Life(n, n == 0, ACTING_EPISODES, zero)

    def _reset(self, i: int) -> np.ndarray:
        return self.envs[i].reset(seed=seed_from(self.rng))[0]

    def epsilon(self) -> float:
        d = self.cfg.dqn
        return linear_epsilon(
            self.env_steps, d.total_steps, d.epsilon_start, d.epsilon_end, d.exploration_fraction
        )

    # -------------------------------------------------------------- one vector step

    def iterate(self) -> dict[str, Any]:
        """One step of every env (greedy actions under each env's own state, epsilon the
        support's or the schedule's), the states advanced by the kept transitions, the
        phases moved on, then the scheduled gradient steps."""
        eps = self.epsilon()
        support_eps = self.cfg.adaptation.support_epsilon
        batched = cache(self._greedy_actions)
        kept: list[tuple[int, tuple]] = []
        ended: list[bool] = []
        returns: list[float] = []
        for i, life in enumerate(self.lives):
            action = collection.epsilon_greedy(
                self.rng,
                eps if life.acting else support_eps,
                self.n_actions,
                partial(_row, batched, i),
            )
            transition, done = self._step_env(i, action)
            if transition is not None:
                kept.append((i, transition))
            if done and life.acting:
                returns.append(self.episodes[i].ret)
            ended.append(done)
        self._advance(kept)
        for i, done in enumerate(ended):
            self._next_phase(i, done)
        self.env_steps += len(self.envs)
        losses = self._scheduled_updates()
        return {"returns": returns, "loss": losses, "epsilon": eps}

    def _greedy_actions(self) -> np.ndarray:
        h = torch.from_numpy(np.stack([life.hidden for life in self.lives]))
        with torch.no_grad():
            q = recurrent_q(self.net, self.params, torch.from_numpy(self.obs), h)
        return q.argmax(-1).numpy()

    def _step_env(self, i: int, action: int) -> tuple[tuple | None, bool]:
        """Env ``i`` takes ``action``: its transition (``None`` when the physics rejected the
        step: not learned from, not remembered) and whether the episode ended."""
        raw, reward, terminated, truncated, info = self.envs[i].step(action)
        episode = self.episodes[i]
        episode.ret += reward
        episode.length += 1
        transition = None
        if not info.get("physics_error", False):
            nxt = np.asarray(raw, np.float32)
            transition = (self.obs[i].copy(), int(action), float(reward), nxt, bool(terminated))
        episode.obs = raw
        return transition, bool(terminated or truncated)

    def _advance(self, kept: list[tuple[int, tuple]]) -> None:
        """Store each kept transition with the state it was acted on, and advance those envs'
        states in one batched GRU step."""
        if not kept:
            return
        rows = [t for _, t in kept]
        batch = Batch(
            torch.from_numpy(np.stack([r[0] for r in rows])),
            torch.tensor([r[1] for r in rows], dtype=torch.int64),
            torch.tensor([r[2] for r in rows], dtype=torch.float32),
            torch.from_numpy(np.stack([r[3] for r in rows])),
            torch.tensor([float(r[4]) for r in rows], dtype=torch.float32),
        )
        h = torch.from_numpy(np.stack([self.lives[i].hidden for i, _ in kept]))
        with torch.no_grad():
            new = advance(self.net, self.params, h, batch).numpy()
        for (i, transition), h_next in zip(kept, new, strict=True):
            life = self.lives[i]
            self._store(life, transition)
            life.hidden = h_next.copy()

    def _store(self, life: _Life, transition: tuple) -> None:
        """Append to the life's next sequence; a full one goes to the replay, and the next
        starts with its last ``memory.burn_in`` steps (and the state before them)."""
        m = self.cfg.memory
        life.pending.append((transition, life.hidden.copy()))
        life.fresh += 1
        if len(life.pending) == m.sequence_length:
            self._flush(life)
            life.pending = life.pending[len(life.pending) - m.burn_in :] if m.burn_in else []
            life.at_start = False

    def _flush(self, life: _Life) -> None:
        """The life's pending steps as one stored sequence, if any of them has not had the
        loss yet."""
        if life.fresh > 0:
            loss_from = 0 if life.at_start else len(life.pending) - life.fresh
            self.replay.add([t for t, _ in life.pending], life.pending[0][1], loss_from)
        life.fresh = 0

    def _next_phase(self, i: int, ended: bool) -> None:
        """After env ``i``'s step: the support phase's last step starts the acting phase on a
        fresh episode of the same robot; an episode's end starts the next one, or after the
        acting phase's last, a new life."""
        life = self.lives[i]
        restart = ended
        if not life.acting:
            life.support_left -= 1
            if life.support_left <= 0:
                life.acting, restart = True, True
        elif ended:
            life.acting_left -= 1
            if life.acting_left <= 0:
                self._flush(life)
                self.lives[i] = self._new_life(i)
        if restart:
            self.episodes[i] = Episode(self._reset(i))
        self.obs[i] = self.episodes[i].obs

    # -------------------------------------------------------------- learning

    def _scheduled_updates(self) -> list[float]:
        d = self.cfg.dqn
        vector_steps = self.env_steps // len(self.envs)
        if (
            self.env_steps < d.learning_starts
            or vector_steps % d.train_freq
            or not self.replay.size
        ):
            return []
        return [self._gradient_step() for _ in range(d.gradient_steps)]

    def learning_rate(self) -> float:
        d = self.cfg.dqn
        progress = min(1.0, self.env_steps / d.total_steps)
        return d.learning_rate * (1.0 - (1.0 - d.lr_end_fraction) * progress)

    def _gradient_step(self) -> float:
        """One Adam step on ``dqn.batch_size`` replayed sequences, then the target update."""
        d = self.cfg.dqn
        if d.lr_end_fraction != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        seq, h0, mask, loss_from = self.replay.sample(d.batch_size, self.rng)
        loss = sequence_loss(
            self.net, self.params, self.target, seq, h0, mask, loss_from, self.loss
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if d.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), d.max_grad_norm)
        self.optimizer.step()
        self.grad_steps += 1
        update_target(self.net, self.target, d, self.grad_steps)
        return float(loss.detach())

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "target": {k: v.detach().clone() for k, v in self.target.items()},
            "optimizer": self.optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "env_steps": self.env_steps,
            "grad_steps": self.grad_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.target_net.load_state_dict({**state["target"], **dict(self.net.named_buffers())})
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.env_steps = int(state["env_steps"])
        self.grad_steps = int(state["grad_steps"])

    def policy(self) -> Policy:
        a, d = self.cfg.adaptation, self.cfg.dqn
        return Policy(
            algorithm=self.cfg.algorithm,
            env_id=self.cfg.env.id,
            net=self.net,
            params=self.net.params(),
            lrs={},
            inner=InnerLoss(a.loss, d.gamma, d.huber_delta, a.model_weight),
            adapt_steps=1,  # warming the state on the support: one pass
            support_size=a.support_size,
            dynamics=dict(self.cfg.env.dynamics),
            config=self.cfg.to_dict(),
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # -------------------------------------------------------------- what the family owns

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, Tensor] | None = None,
    ) -> RecurrentMethod:
        """Adapting is warming the state on the support (:class:`RecurrentMethod`): ``k = 0``
        is a cold start (the zero state) and ``k >= 1`` a warm start (the state after the
        support), and both keep following the robot online during the evaluation episodes,
        so ``k = 0`` is not a frozen, unadapted policy (module docstring, *Evaluation*).
        ``lrs`` ``{}`` evaluates every ``k`` as the cold start. Gradient fine-tuning rates are
        refused: the family adapts by memory."""
        refuse_learning_rates(
            policy, lrs, "adapts through its recurrent state; it has no gradient fine-tuning"
        )
        return RecurrentMethod(name, policy, support_epsilon, warms=lrs is None)


def _row(actions: Any, i: int) -> int:
    """Row ``i`` of the batched greedy actions (computed at the first env that acts greedily)."""
    return int(actions()[i])


def _registry_check(algorithm: str) -> Any:
    import robometa.algorithms

    return robometa.algorithms.get(algorithm).check


@dataclass
class RecurrentMethod(TrainedMethod):
    """A trained recurrent policy in the evaluation harness (:mod:`robometa.evaluate`).

    Every actor is a fresh, independent :class:`RecurrentActor` that keeps following the
    robot online through ``observe`` (module docstring, *Evaluation*): the initial actor
    (which collects the support, as a training life's support phase) and the ``k = 0`` one
    start from the zero state (``k = 0`` is a *cold start with online memory*, not a frozen,
    unadapted policy); adapting (any ``k >= 1``: warming is one pass) starts from the state
    after the support transitions in their order (none: zero). ``support_transitions``
    overrides the policy's support size; ``warms=False`` never warms (every ``k`` a cold
    start).
    """

    warms: bool = True

    @property
    def net(self) -> RecurrentQNetwork:
        return self.policy.net  # type: ignore[return-value]

    def initial_actor(self) -> RecurrentActor:
        return RecurrentActor(self.net, self.policy.params)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[RecurrentActor]:
        cold = RecurrentActor(self.net, self.policy.params)
        warm = cold.copy().warm(support) if self.warms and any(k > 0 for k in steps) else cold
        return [(warm if k > 0 else cold).copy() for k in steps]


def untrained_policy(
    env_id: str = "robometa/CartPole-v0",
    *,
    hidden: tuple[int, ...] = (16, 16),
    hidden_size: int = 8,
    support_size: int = 64,
    seed: int = 0,
) -> Policy:
    """A randomly initialized ``recurrent`` policy (for export and runtime tests without
    training), its normalization that of :func:`robometa.testing.random_policy`, its Q head
    and GRU weights scaled up so that the state visibly changes the greedy action."""
    from robometa.testing import random_policy

    shaped = random_policy("dqn", env_id=env_id, hidden=hidden, seed=seed)
    spec = shaped.net.spec
    torch.manual_seed(seed)
    net = RecurrentQNetwork(NetworkSpec(spec.obs_dim, spec.n_actions, hidden, hidden_size))
    with torch.no_grad():
        net.set_normalization(shaped.net.obs_mean, shaped.net.obs_std, shaped.net.delta_std)
        net.q_head.weight.normal_(0.0, 1.0)
        net.memory.weight_ih.mul_(3.0)
    return Policy(
        algorithm="recurrent",
        env_id=env_id,
        net=net,
        params=net.params(),
        lrs={},
        inner=InnerLoss("td+model"),
        adapt_steps=1,
        support_size=support_size,
        config={"adaptation": {"support_epsilon": 0.3}, "random_policy": True},
    )


__all__ = [
    "ACTING_EPISODES",
    "EMPTY_SUPPORT_FRACTION",
    "RecurrentActor",
    "RecurrentLearner",
    "RecurrentMethod",
    "RecurrentQNetwork",
    "SequenceReplay",
    "advance",
    "gru_step",
    "memory_input",
    "recurrent_q",
    "sequence_loss",
    "unroll",
    "untrained_policy",
    "warm_state",
]
