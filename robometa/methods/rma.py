"""The ``rma`` family: Rapid Motor Adaptation (Kumar et al. 2021), a privileged teacher and
an adaptation module that estimates its extrinsics from recent history.

Network (:class:`RMAQNetwork`, the :class:`~robometa.networks.QNetwork` with the same
normalization buffers and heads; :class:`RMASpec` adds ``extrinsics_dim`` and ``history``):

* the *teacher encoder* ``mu`` (``teacher.*``): the dynamics parameters ``e`` the privileged
  observation carries (:class:`robometa.envs.wrappers.PrivilegedObservation`, normalized to
  about [-1, 1]) -> the extrinsics ``z`` (``network.context_dim``), one hidden layer;
* the *adaptation module* ``phi`` (``history_embed.*``, ``history_out``, ``history_prior``):
  a window of the last ``memory.history`` transitions, each stored raw as ``[s, one_hot(a),
  s' - s]`` (:func:`window_row`) and embedded as ``[(s - mean) / std, one_hot(a), (s' - s) /
  delta_std, one_hot(a) x (s' - s) / delta_std]`` by an MLP of ``network.hidden`` layers; the
  masked mean of the embeddings goes through a linear layer to ``z``. The window is
  zero-padded at the front with a validity mask when shorter. An empty window gives its own
  parameter ``history_prior`` (not ``history_out.bias``, the intercept every non-empty window
  shares): the "no adaptation" extrinsics, set during training to the MSE-best constant of
  the empty-window pairs, i.e. the mean ``mu(e)`` over the robots the student met (the
  closed-form minimizer of the same ``|z - mu(e)|^2`` the module is trained on);
* the base policy ``Q(s, z)``: the body reads ``[(s - mean) / std, z]``.

The deployed policy reads only the unprivileged observation and its own history:
``forward(obs, with_model, z)`` takes ``z`` from ``phi`` (``None``: the empty window's).

Training (:class:`RMALearner`, the DQN harness of :mod:`robometa.methods.dqn` on privileged
envs, a new train-split robot every episode):

1. *teacher*, the first ``memory.teacher_fraction`` of ``dqn.total_steps``: Double DQN of
   ``Q(s, mu(e))`` end to end (``mu`` learns through the TD loss), acting with it;
2. *adaptation module*, the rest: ``Q`` and ``mu`` frozen; acting with ``Q(s,
   phi(window))``, the window of each env updated every step and cleared at every new robot
   (RMA's on-policy scheme: the data comes from the student's own behaviour). The student
   acts at ``dqn.epsilon_end`` (:meth:`RMALearner.epsilon`), the greedy online policy of
   deployment; ``rma_check`` requires ``dqn.exploration_fraction <=
   memory.teacher_fraction``, so the teacher's own schedule has ended with its phase. (The
   support that fills the window at evaluation is collected at ``adaptation.support_epsilon``;
   collecting half the student's windows at that epsilon was tried: on the shipped CartPole
   config, one seed, the adapted returns were lower.) Each step's ``(window, e)`` goes into a
   ring of :data:`REGRESSION_CAPACITY`, and ``gradient_steps`` Adam steps every
   ``train_freq`` steps minimize ``|phi(window) - mu(e)|^2`` over ``dqn.batch_size`` of
   them; before them ``history_prior`` is set to the mean ``mu(e)`` of the ring's
   empty-window pairs (one per episode: each robot once; all pairs while there are none).

Why a masked mean of per-step embeddings rather than RMA's 1-D convolution over time: each
stored transition carries ``s' - s`` with its action, so the dynamics are visible in every
row alone; the mean takes any window length from 0 to ``memory.history`` with one set of
weights and is exact under padding, and on the device a history update is one small graph
over at most ``memory.history`` rows.

Evaluation (:class:`RMAMethod`): ``0`` adaptation steps is the empty window's ``z``
(``history_prior``) held fixed (no adaptation); ``>= 1`` is the online policy, its window
filled with the last ``memory.history`` support transitions, then updated after every step
(:class:`HistoryActor`, a stateful actor of :func:`robometa.deploy.collection.observer`).
The bundle kind is ``history`` (:mod:`robometa.bundle_history`, :mod:`robometa.deploy.history`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from robometa.adaptation import Batch, InnerLoss, double_dqn_target
from robometa.config import Config
from robometa.deploy.collection import ActFn
from robometa.evaluate import TrainedMethod
from robometa.methods.base import refuse_learning_rates
from robometa.methods.dqn import DQN
from robometa.networks import ACTIVATIONS, NUMPY_ACTIVATIONS, NetworkSpec, Params, QNetwork
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.rollout import fit_normalization, make_env, train_tasks

#: the most (window, extrinsics) pairs the adaptation module regresses on (the most recent)
REGRESSION_CAPACITY = 20_000
#: parameter-name prefixes of the teacher encoder and the adaptation module
TEACHER_PREFIX = "teacher."
HISTORY_PREFIXES = ("history_embed.", "history_out.", "history_prior")
#: the empty window's extrinsics (a parameter of the adaptation module, set in closed form)
PRIOR = "history_prior"


@dataclass(frozen=True)
class RMASpec(NetworkSpec):
    """:class:`NetworkSpec` plus the teacher's input size (``extrinsics_dim``: the dynamics
    parameters) and the adaptation module's window (``history`` transitions)."""

    extrinsics_dim: int = 1
    history: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_dim < 1:
            raise ValueError(
                f"an rma network needs context_dim >= 1 (network.context_dim, the extrinsics "
                f"size), got {self.context_dim}"
            )
        if self.extrinsics_dim < 1 or self.history < 1:
            raise ValueError(
                f"extrinsics_dim and history (memory.history) must be >= 1, got {self}"
            )


def window_width(spec: NetworkSpec) -> int:
    """One raw window row: ``s``, ``one_hot(a)``, ``s' - s``."""
    return 2 * spec.obs_dim + spec.n_actions


def history_input_dim(spec: NetworkSpec) -> int:
    """One embedded row: normalized ``s``, ``one_hot(a)``, normalized ``s' - s``, and that
    change in the taken action's slot."""
    return 2 * spec.obs_dim + spec.n_actions + spec.n_actions * spec.obs_dim


def window_row(obs: Any, action: int, next_obs: Any, n_actions: int) -> np.ndarray:
    """The raw window row of one transition, float32 (the runtime stores the same)."""
    o = np.asarray(obs, np.float32)
    o2 = np.asarray(next_obs, np.float32)
    one_hot = np.zeros(n_actions, np.float32)
    one_hot[int(action)] = 1.0
    return np.concatenate([o, one_hot, o2 - o])


class RMAQNetwork(QNetwork):
    """Teacher encoder, adaptation module and base policy (see the module docstring)."""

    spec: RMASpec

    def __init__(self, spec: RMASpec) -> None:
        if not isinstance(spec, RMASpec):
            raise TypeError(f"an rma network needs an RMASpec, got {type(spec).__name__}")
        super().__init__(spec)
        del self.context  # z comes from the teacher or the history, never a parameter
        width = spec.hidden[0]
        self.teacher = nn.ModuleList(
            [nn.Linear(spec.extrinsics_dim, width), nn.Linear(width, spec.context_dim)]
        )
        sizes = [history_input_dim(spec), *spec.hidden]
        self.history_embed = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.history_out = nn.Linear(sizes[-1], spec.context_dim)
        self.history_prior = nn.Parameter(torch.zeros(spec.context_dim))

    def features(self, obs: Tensor, z: Tensor | None = None) -> Tensor:
        shape = (*obs.shape[:-1], self.spec.context_dim)
        if z is None:
            z = self.history_prior  # the empty window's extrinsics
        return self.body_features(obs, z.expand(shape))

    def forward(
        self, obs: Tensor, with_model: bool = True, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Q-values ``(..., B, A)`` (and the normalized state change) of the unprivileged
        ``obs`` under extrinsics ``z``: one ``(C,)`` for every row, or one per row."""
        return self.heads(self.features(obs, z), obs, with_model)

    def teacher_z(self, extrinsics: Tensor) -> Tensor:
        """``mu(e)``: the extrinsics of the normalized dynamics parameters."""
        act = ACTIVATIONS[self.spec.activation]
        return self.teacher[1](act(self.teacher[0](extrinsics)))

    def teacher_q(self, privileged_obs: Tensor) -> Tensor:
        """The teacher's Q-values: ``Q(s, mu(e))`` of ``[s, e]`` rows."""
        d = self.spec.obs_dim
        z = self.teacher_z(privileged_obs[..., d:])
        return self.forward(privileged_obs[..., :d], False, z)[0]

    def numpy_actor(self, params: Params) -> ActFn | None:
        """None: acting goes through :class:`HistoryActor` (or torch)."""
        return None


# ---------------------------------------------------------------------------- functional forms


def history_params(params: Params) -> Params:
    """The adaptation module's parameters (``history_embed.*``, ``history_out.*``,
    ``history_prior``)."""
    return {k: v for k, v in params.items() if k.startswith(HISTORY_PREFIXES)}


def history_context(net: RMAQNetwork, params: Params, window: Tensor, mask: Tensor) -> Tensor:
    """``phi``: extrinsics ``(..., C)`` of raw windows ``(..., K, W)`` (:func:`window_row`
    rows) with validity ``mask`` ``(..., K)``: the one function training, evaluation and
    ``history.onnx`` run. A window without valid rows gives ``history_prior``."""
    spec = net.spec
    d, n = spec.obs_dim, spec.n_actions
    s = (window[..., :d] - net.obs_mean) / net.obs_std
    one_hot = window[..., d : d + n]
    change = window[..., d + n :] / net.delta_std
    per_action = (one_hot.unsqueeze(-1) * change.unsqueeze(-2)).flatten(-2)
    x = torch.cat([s, one_hot, change, per_action], dim=-1)
    act = ACTIVATIONS[spec.activation]
    for i in range(len(spec.hidden)):
        w, b = params[f"history_embed.{i}.weight"], params[f"history_embed.{i}.bias"]
        x = act(torch.nn.functional.linear(x, w, b))
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(dim=-2)
    pooled = (x * m).sum(dim=-2) / count.clamp_min(1.0)
    z = torch.nn.functional.linear(pooled, params["history_out.weight"], params["history_out.bias"])
    return torch.where(count > 0, z, params[PRIOR])


def rma_q(net: RMAQNetwork, params: Params, obs: Tensor, z: Tensor | None) -> Tensor:
    """Q-values of ``obs`` under ``params`` and extrinsics ``z`` (``None``: the empty
    window's)."""
    return functional_call(net, params, (obs, False, z))[0]


def ordered_window(rows: Sequence[np.ndarray], length: int, width: int) -> tuple[Tensor, Tensor]:
    """The last ``length`` of ``rows`` (oldest first) as a front-padded window and its mask."""
    window = np.zeros((length, width), np.float32)
    mask = np.zeros(length, np.float32)
    kept = list(rows)[-length:] if length else []
    if kept:
        window[length - len(kept) :] = np.stack(kept)
        mask[length - len(kept) :] = 1.0
    return torch.from_numpy(window), torch.from_numpy(mask)


def support_rows(support: Batch, n_actions: int) -> list[np.ndarray]:
    """The raw window rows of a support batch, in collection order."""
    return [
        window_row(o, int(a), o2, n_actions)
        for o, a, o2 in zip(
            support.obs.numpy(), support.action.numpy(), support.next_obs.numpy(), strict=True
        )
    ]


class HistoryActor:
    """The deployed policy as a stateful actor: ``actor(obs)`` is the greedy action of
    ``Q(obs, z)``; ``observe(obs, action, reward, next_obs, terminated)`` pushes the
    transition into the window of the last ``history`` ones and recomputes ``z`` (one
    history update; ``reward`` and ``terminated`` are not read); ``reset()`` empties it.
    ``online=False``: ``observe`` changes nothing (the fixed extrinsics of the window it
    started with). numpy, equal to :func:`history_context` and :func:`rma_q` (tests check).
    """

    def __init__(
        self,
        net: RMAQNetwork,
        params: Params,
        rows: Sequence[np.ndarray] = (),
        online: bool = True,
    ) -> None:
        spec = net.spec

        def array(name: str) -> np.ndarray:
            return params[name].detach().numpy().astype(np.float32).copy()

        self.spec, self.online = spec, online
        self._mean, self._std = net.obs_mean.numpy().copy(), net.obs_std.numpy().copy()
        self._delta_std = net.delta_std.numpy().copy()
        self._embed = [
            (array(f"history_embed.{i}.weight").T.copy(), array(f"history_embed.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        self._out = (array("history_out.weight").T.copy(), array("history_out.bias"))
        self._prior = array(PRIOR)
        self._body = [
            (array(f"body.{i}.weight").T.copy(), array(f"body.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        self._q = (array("q_head.weight").T.copy(), array("q_head.bias"))
        self._activation = NUMPY_ACTIVATIONS[spec.activation]
        self._rows: list[np.ndarray] = []
        self._embeddings: list[np.ndarray] = []
        self.z = self._prior.copy()
        for row in list(rows)[-spec.history :]:
            self._push(row)
        self._update()

    @property
    def window(self) -> tuple[Tensor, Tensor]:
        """The current window (front-padded, oldest first) and its mask."""
        return ordered_window(self._rows, self.spec.history, window_width(self.spec))

    def _embedding(self, row: np.ndarray) -> np.ndarray:
        d, n = self.spec.obs_dim, self.spec.n_actions
        s = (row[:d] - self._mean) / self._std
        one_hot, change = row[d : d + n], row[d + n :] / self._delta_std
        x = np.concatenate([s, one_hot, change, np.outer(one_hot, change).ravel()])
        for w, b in self._embed:
            x = self._activation(x @ w + b)
        return x

    def _push(self, row: np.ndarray) -> None:
        self._rows.append(np.asarray(row, np.float32))
        self._embeddings.append(self._embedding(self._rows[-1]))
        if len(self._rows) > self.spec.history:
            del self._rows[0], self._embeddings[0]

    def _update(self) -> None:
        if not self._embeddings:
            self.z = self._prior.copy()
            return
        w, b = self._out
        pooled = np.mean(self._embeddings, axis=0)
        self.z = (pooled.astype(np.float32) @ w + b).astype(np.float32)

    def observe(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        if self.online:
            self._push(window_row(obs, action, next_obs, self.spec.n_actions))
            self._update()

    def reset(self) -> None:
        self._rows.clear()
        self._embeddings.clear()
        self._update()

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.concatenate([(np.asarray(obs, np.float32) - self._mean) / self._std, self.z])
        for w, b in self._body:
            x = self._activation(x @ w + b)
        w, b = self._q
        return x @ w + b

    def __call__(self, obs: np.ndarray) -> int:
        return int(np.argmax(self.q_values(obs)))


# ---------------------------------------------------------------------------- the trainer


class RegressionBuffer:
    """A ring of the adaptation module's training pairs: raw windows with their masks and
    the dynamics parameters of the robot they came from (``empty``: the pairs whose window
    holds no transition, the first step on each robot)."""

    def __init__(self, capacity: int, length: int, width: int, extrinsics_dim: int) -> None:
        self.windows = np.zeros((capacity, length, width), np.float32)
        self.masks = np.zeros((capacity, length), np.float32)
        self.extrinsics = np.zeros((capacity, extrinsics_dim), np.float32)
        self.empty = np.zeros(capacity, bool)
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        return len(self.windows) if self.full else self.pos

    def add(self, window: np.ndarray, mask: np.ndarray, extrinsics: np.ndarray) -> None:
        self.windows[self.pos], self.masks[self.pos] = window, mask
        self.extrinsics[self.pos] = extrinsics
        self.empty[self.pos] = not np.any(mask)
        self.pos = (self.pos + 1) % len(self.windows)
        self.full = self.full or self.pos == 0

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor, Tensor]:
        idx = rng.integers(0, len(self), size=n)
        return tuple(torch.from_numpy(a[idx]) for a in (self.windows, self.masks, self.extrinsics))

    def state_dict(self) -> dict[str, Any]:
        n = len(self)
        return {
            "windows": torch.from_numpy(self.windows[:n].copy()),
            "masks": torch.from_numpy(self.masks[:n].copy()),
            "extrinsics": torch.from_numpy(self.extrinsics[:n].copy()),
            "pos": self.pos,
            "full": self.full,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = len(state["windows"])
        self.windows[:n] = state["windows"].numpy()
        self.masks[:n] = state["masks"].numpy()
        self.extrinsics[:n] = state["extrinsics"].numpy()
        self.empty[:n] = ~self.masks[:n].any(axis=1)
        self.pos, self.full = int(state["pos"]), bool(state["full"])

    def prior_extrinsics(self) -> np.ndarray:
        """The dynamics parameters the empty window faces: those of the empty-window pairs
        (each robot once), or every pair's while there are none."""
        n = len(self)
        empty = self.empty[:n]
        return self.extrinsics[:n][empty] if empty.any() else self.extrinsics[:n]


class RMALearner(DQN):
    """Trains the teacher, then the adaptation module (module docstring); the DQN harness's
    collection, replay, targets and checkpoints, on privileged envs."""

    network_class: ClassVar[type[QNetwork]] = RMAQNetwork
    bundle_writer: ClassVar[str] = "robometa.bundle_history"
    net: RMAQNetwork

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)  # unprivileged envs: the network's normalization is fitted there
        e = cfg.env
        for env in self.envs:
            env.close()
        self.envs = [
            make_env(e.id, e.dynamics, e.max_episode_steps, privileged=True)
            for _ in range(e.num_envs)
        ]
        spec = self.net.spec
        self.base_dim, self.length, self.width = spec.obs_dim, spec.history, window_width(spec)
        full = spec.obs_dim + spec.extrinsics_dim
        self.buffer = ReplayBuffer(cfg.dqn.buffer_size, full)
        self.obs = np.zeros((e.num_envs, full), np.float32)
        self.teacher_steps = int(cfg.memory.teacher_fraction * cfg.dqn.total_steps)
        self.student_optimizer = torch.optim.Adam(
            self._student_params().values(), lr=cfg.dqn.learning_rate
        )
        student_steps = max(1, cfg.dqn.total_steps - self.teacher_steps)
        self.regression = RegressionBuffer(
            min(REGRESSION_CAPACITY, student_steps), self.length, self.width, spec.extrinsics_dim
        )
        self.windows = np.zeros((e.num_envs, self.length, self.width), np.float32)
        self.counts = np.zeros(e.num_envs, np.int64)
        self.boundary()

    @classmethod
    def network_from_config(cls, cfg: Config, obs_dim: int, n_actions: int) -> RMAQNetwork:
        env = make_env(cfg.env.id, cfg.env.dynamics)
        extrinsics = len(env.unwrapped.dynamics_space)
        env.close()
        return cls._network(cfg, obs_dim, n_actions, extrinsics)

    @classmethod
    def _network(cls, cfg: Config, obs_dim: int, n_actions: int, extrinsics: int) -> RMAQNetwork:
        n = cfg.network
        spec = RMASpec(
            obs_dim,
            n_actions,
            tuple(n.hidden),
            n.context_dim,
            n.activation,
            extrinsics_dim=extrinsics,
            history=cfg.memory.history,
        )
        return RMAQNetwork(spec)

    @classmethod
    def network_from_spec(cls, spec: Mapping[str, Any]) -> RMAQNetwork:
        spec = dict(spec)
        spec["hidden"] = tuple(spec["hidden"])
        return RMAQNetwork(RMASpec(**spec))

    def _fitted_network(self, obs_dim: int) -> QNetwork:
        net = self._network(self.cfg, obs_dim, self.n_actions, len(self.space))
        tasks = train_tasks(self.space, self.cfg.env.tasks, 8, self.rng)
        fit_normalization(net, self.envs[0], tasks, 2000, self.rng)
        return net

    # -------------------------------------------------------------- phases

    @property
    def student_phase(self) -> bool:
        """Past the teacher's share of the budget: the adaptation module trains and acts."""
        return self.env_steps >= self.teacher_steps

    @property
    def selectable(self) -> bool:
        """Model selection ranks the deployed (student) policy only once its adaptation module
        has trained: a teacher-phase checkpoint acts with an untrained module, and its
        empty-window return could otherwise win the selection (seen: a CartPole seed kept its
        20k-step policy, whose module had never trained)."""
        return self.env_steps > self.teacher_steps

    def learning_rate(self) -> float:
        """Linear decay to ``lr_end_fraction`` of ``learning_rate`` within each phase."""
        d = self.cfg.dqn
        if self.student_phase:
            span = max(1, d.total_steps - self.teacher_steps)
            progress = (self.env_steps - self.teacher_steps) / span
        else:
            progress = self.env_steps / max(1, self.teacher_steps)
        return d.learning_rate * (1.0 - (1.0 - d.lr_end_fraction) * min(1.0, progress))

    # -------------------------------------------------------------- acting

    def _restart(self, i: int) -> np.ndarray:
        if hasattr(self, "windows"):  # a new robot: an empty history
            self.windows[i] = 0.0
            self.counts[i] = 0
        return super()._restart(i)

    def epsilon(self) -> float:
        """The teacher's: DQN's schedule; the student's: ``dqn.epsilon_end``, explicitly
        (``rma_check`` makes the schedule end within the teacher's phase anyway)."""
        if self.student_phase:
            return self.cfg.dqn.epsilon_end
        return super().epsilon()

    def masks(self) -> np.ndarray:
        positions = np.arange(self.length)
        return (positions[None] >= self.length - self.counts[:, None]).astype(np.float32)

    def _greedy_actions(self) -> np.ndarray:
        obs = torch.from_numpy(self.obs)
        with torch.no_grad():
            if not self.student_phase:
                return self.net.teacher_q(obs).argmax(1).numpy()
            params = dict(self.net.named_parameters())
            z = history_context(
                self.net, params, torch.from_numpy(self.windows), torch.from_numpy(self.masks())
            )
            return self.net(obs[:, : self.base_dim], False, z)[0].argmax(1).numpy()

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
        """Teacher phase: the replay (as DQN); student phase: the (window acted with,
        dynamics parameters) pair. Then the transition enters env ``i``'s window."""
        if info.get("physics_error", False):
            return
        d = self.base_dim
        if self.student_phase:
            self.regression.add(self.windows[i], self.masks()[i], self.obs[i][d:])
        else:
            self._store(i, action, reward, next_obs, terminated)
        row = window_row(self.obs[i][:d], action, next_obs[:d], self.n_actions)
        self.windows[i, :-1] = self.windows[i, 1:]
        self.windows[i, -1] = row
        self.counts[i] = min(self.counts[i] + 1, self.length)

    # -------------------------------------------------------------- learning

    def td_loss(self, batch: Batch) -> Tensor:
        """The Double-DQN Huber loss of the teacher ``Q(s, mu(e))`` on privileged rows."""
        d = self.cfg.dqn
        q = self.net.teacher_q(batch.obs)
        q_sa = q.gather(1, batch.action.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            online_next = self.net.teacher_q(batch.next_obs)
            target_next = self.target_net.teacher_q(batch.next_obs)
            target = double_dqn_target(
                online_next, target_next, batch.reward, batch.terminated, d.gamma**d.n_step
            )
        return torch.nn.functional.huber_loss(q_sa, target, delta=d.huber_delta)

    def _scheduled_updates(self) -> list[float]:
        if not self.student_phase:
            return super()._scheduled_updates()
        d = self.cfg.dqn
        vector_steps = self.env_steps // len(self.envs)
        if len(self.regression) < d.batch_size or vector_steps % d.train_freq != 0:
            return []
        self.fit_prior()
        return [self._student_step() for _ in range(d.gradient_steps)]

    def _student_params(self) -> Params:
        """What the student's Adam steps: the adaptation module but its prior."""
        params = history_params(dict(self.net.named_parameters()))
        return {k: v for k, v in params.items() if k != PRIOR}

    def fit_prior(self) -> None:
        """``history_prior`` := the mean ``mu(e)`` of the regression ring's empty-window
        pairs, the constant that minimizes the student loss on them (``mu`` is frozen)."""
        extrinsics = torch.from_numpy(self.regression.prior_extrinsics())
        with torch.no_grad():
            self.net.history_prior.copy_(self.net.teacher_z(extrinsics).mean(0))

    def student_loss(self, window: Tensor, mask: Tensor, extrinsics: Tensor) -> Tensor:
        """``|phi(window) - mu(e)|^2`` (mean over the batch and the extrinsics); the prior
        of empty windows is a constant here (:meth:`fit_prior` sets it)."""
        params = dict(self.net.named_parameters())
        params[PRIOR] = params[PRIOR].detach()
        with torch.no_grad():
            target = self.net.teacher_z(extrinsics)
        return ((history_context(self.net, params, window, mask) - target) ** 2).mean()

    def _student_step(self) -> float:
        d = self.cfg.dqn
        if d.lr_end_fraction != 1.0:
            for group in self.student_optimizer.param_groups:
                group["lr"] = self.learning_rate()
        loss = self.student_loss(*self.regression.sample(d.batch_size, self.rng))
        self.student_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        module = self._student_params().values()
        if d.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(module, d.max_grad_norm)
        self.student_optimizer.step()
        return float(loss.detach())

    # -------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "student_optimizer": self.student_optimizer.state_dict(),
            "regression": self.regression.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.student_optimizer.load_state_dict(state["student_optimizer"])
        self.regression.load_state_dict(state["regression"])

    def policy(self) -> Policy:
        """The deployed policy: unprivileged observations, extrinsics from the history."""
        return self.trained_policy({}, 1, False)  # one history update per step

    # -------------------------------------------------------------- what the family owns

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, Tensor] | None = None,
    ) -> RMAMethod:
        """Online history adaptation (:class:`RMAMethod`); ``lrs`` ``{}`` evaluates the
        policy as it is (the empty window's extrinsics, fixed). Gradient fine-tuning rates
        are refused: the family adapts by inference."""
        refuse_learning_rates(
            policy,
            lrs,
            "adapts by estimating its extrinsics from recent history; it has no gradient fine-tuning",
        )
        return RMAMethod(name, policy, support_epsilon, infers=lrs is None)


@dataclass
class RMAMethod(TrainedMethod):
    """A trained rma policy in the evaluation harness (:mod:`robometa.evaluate`): the support
    is collected by the online policy from an empty window; ``0`` steps acts with the empty
    window's extrinsics, fixed (no adaptation); ``k >= 1`` (one history update per step) with
    a window filled from the last ``memory.history`` support transitions and updated online.
    ``support_transitions`` overrides the policy's support size; ``infers=False`` never
    adapts."""

    infers: bool = True

    @property
    def privileged(self) -> bool:
        return False  # the deployed policy reads the unprivileged observation

    @property
    def net(self) -> RMAQNetwork:
        return self.policy.net  # type: ignore[return-value]

    def initial_actor(self) -> HistoryActor:
        return HistoryActor(self.net, self.policy.params, online=self.infers)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        rows = support_rows(support, self.net.spec.n_actions)
        return [
            HistoryActor(self.net, self.policy.params, rows, online=True)
            if self.infers and k > 0
            else HistoryActor(self.net, self.policy.params, online=False)
            for k in steps
        ]


def untrained_policy(
    env_id: str = "robometa/CartPole-v0",
    *,
    hidden: tuple[int, ...] = (16, 16),
    context_dim: int = 3,
    history: int = 8,
    support_size: int = 64,
    seed: int = 0,
) -> Policy:
    """A randomly initialized ``rma`` policy (for export and runtime tests without training),
    its normalization that of :func:`robometa.testing.random_policy`; the Q head and the
    history output are scaled up so that actions and extrinsics visibly differ, and the
    empty window's prior is drawn apart from the history output's bias."""
    from robometa.testing import random_policy

    shaped = random_policy("dqn", env_id=env_id, hidden=hidden, seed=seed)
    base = shaped.net.spec
    env = make_env(env_id)
    extrinsics = len(env.unwrapped.dynamics_space)
    env.close()
    torch.manual_seed(seed)
    spec = RMASpec(
        base.obs_dim,
        base.n_actions,
        hidden,
        context_dim,
        extrinsics_dim=extrinsics,
        history=history,
    )
    net = RMAQNetwork(spec)
    with torch.no_grad():
        net.set_normalization(shaped.net.obs_mean, shaped.net.obs_std, shaped.net.delta_std)
        net.q_head.weight.normal_(0.0, 1.0)
        net.history_out.weight.mul_(5.0)
        net.history_prior.normal_(0.0, 1.0)
    return Policy(
        algorithm="rma",
        env_id=env_id,
        net=net,
        params=net.params(),
        lrs={},
        inner=InnerLoss("td"),
        adapt_steps=1,
        support_size=support_size,
        config={"adaptation": {"support_epsilon": 0.3}, "random_policy": True},
    )


def teacher_context(net: RMAQNetwork, params: Params, extrinsics: Tensor) -> Tensor:
    """``mu(e)`` under ``params`` (the regression target of the adaptation module)."""
    act = ACTIVATIONS[net.spec.activation]
    w0, b0 = params["teacher.0.weight"], params["teacher.0.bias"]
    h = act(torch.nn.functional.linear(extrinsics, w0, b0))
    return torch.nn.functional.linear(h, params["teacher.1.weight"], params["teacher.1.bias"])
