"""The ``dr-history`` baseline: domain-randomized DQN whose input is its own recent history.

Chen et al. (ICLR 2022, "Understanding Domain Randomization for Sim-to-real Transfer") show
that what makes a domain-randomized policy transfer is that it depends on its history: a
memoryless policy must act the same on every robot, a history-dependent one can behave like
an identify-then-act policy. This family is that baseline in the same harness as the
meta-learners. It is *not* a meta-learner: it is trained by plain Double DQN (the DQN
harness of :mod:`robometa.methods.dqn`, its settings and schedules) over the randomized
train tasks, with no privileged input, no adaptation phase and no support set; it only
reads the last ``memory.history`` transitions of the current episode.

Network (:class:`DRHistoryQNetwork`, the :class:`~robometa.networks.QNetwork` with its
normalization buffers and heads; :class:`DRHistorySpec` adds ``history``):

* the window: the last ``k = memory.history`` transitions of the episode, each stored raw
  in RMA's row format ``[s, one_hot(a), s' - s]`` (:func:`robometa.methods.rma.window_row`),
  oldest first, zero-padded at the front with a validity mask (empty at every episode start);
* ``z`` (:func:`history_features`): the masked window itself, each row normalized as
  ``[(s - mean) / std, one_hot(a), (s' - s) / delta_std]`` and followed by its mask bit,
  flattened: ``k * (2 obs_dim + n_actions + 1)`` numbers (``NetworkSpec.context_dim``,
  derived; ``network.context_dim`` must be 0). No parameters: a padded row is all zeros, so
  the empty window's ``z`` is the zero vector;
* ``Q(s, z)``: the body reads ``[(s - mean) / std, z]`` (a frame-stacking MLP over the
  current observation and the window).

Training (:class:`DRHistoryDQN`): DQN's loop over the train tasks (a new robot every
episode). Each env keeps its window, cleared whenever its episode restarts and updated after
every step the physics did not reject. The replay buffer (:class:`WindowReplay`) stores, with
each transition, the window the action was taken with and the window after the transition
(the one before ``s'``: with ``dqn.n_step`` > 1, the one ``n`` steps later), so the TD
target ``r + gamma^n Q_target(s', z', argmax_a Q(s', z', a))`` reads the right history.
Checkpoints come at episode boundaries (every window empty), so a run resumes exactly.

Evaluation (:class:`DRHistoryMethod`): the method does not adapt; ``robometa eval``
measures it at ``0`` steps like DR, with its memory running (:class:`DRHistoryActor`, a
stateful actor: :func:`robometa.deploy.collection.observer`). The actor clears its window
at every episode start, as training does: after a terminal transition, and when it is asked
to act on an observation that is not the last observed ``next_obs`` (the harness's episodes
of one robot follow each other through ``act``/``observe`` only; a time-limit truncation or
a physics blow-up ends an episode without a terminal flag, and the next one starts from a
reset observation).

Bundle: the ``history`` kind (:mod:`robometa.bundle_dr_history` writes it,
:mod:`robometa.deploy.history` serves it unchanged): ``history.onnx`` maps ``(window, mask)``
to ``z`` (no parameters), ``policy.onnx`` maps ``(obs, z)`` to Q. The manifest marks the
memory ``episodic``: the runtime empties the window after a terminal transition and at
``begin_episode()``, which :func:`robometa.deploy.loop.greedy_return` and
:func:`robometa.deploy.loop.collect` call after every reset, so on the device the policy acts
as it does here (the same return per robot and episode seed).

``oracle-history`` is the same learner on the privileged observation (the true dynamics
parameters appended, as ``oracle`` sees them): the protocol's upper bound with memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from robometa.adaptation import Batch, InnerLoss, double_dqn_target
from robometa.config import Config
from robometa.deploy.collection import ActFn
from robometa.evaluate import TrainedMethod
from robometa.methods.base import refuse_learning_rates
from robometa.methods.dqn import DQN
from robometa.methods.rma import ordered_window, window_row, window_width
from robometa.networks import NUMPY_ACTIVATIONS, NetworkSpec, Params, QNetwork
from robometa.policy import Policy
from robometa.replay import ReplayBuffer

#: the most bytes the replay's two windows per transition may take (checked before training)
MAX_WINDOW_BYTES = 4 * 2**30


def history_dim(obs_dim: int, n_actions: int, history: int) -> int:
    """Size of ``z``: ``history`` rows of ``[s, one_hot(a), s' - s]`` and a mask bit each."""
    return history * (2 * obs_dim + n_actions + 1)


@dataclass(frozen=True)
class DRHistorySpec(NetworkSpec):
    """:class:`NetworkSpec` plus the window length (``history``: ``memory.history``);
    ``context_dim`` is the flattened window's size, :func:`history_dim`."""

    history: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.history < 1:
            raise ValueError(f"history (memory.history) must be >= 1, got {self.history}")
        expected = history_dim(self.obs_dim, self.n_actions, self.history)
        if self.context_dim != expected:
            raise ValueError(
                f"a dr-history network's context_dim is its flattened window, history x "
                f"(2 obs_dim + n_actions + 1) = {expected}, got {self.context_dim}"
            )


def history_features(net: QNetwork, window: Tensor, mask: Tensor) -> Tensor:
    """``z`` ``(..., history_dim)`` of raw windows ``(..., K, W)`` (:func:`window_row` rows)
    with validity ``mask`` ``(..., K)``: each row normalized by the network's scales, zeroed
    where masked out (whatever it holds), followed by its mask bit, flattened oldest first.
    The one function training, evaluation and ``history.onnx`` run."""
    d, n = net.spec.obs_dim, net.spec.n_actions
    s = (window[..., :d] - net.obs_mean) / net.obs_std
    one_hot = window[..., d : d + n]
    change = window[..., d + n :] / net.delta_std
    rows = torch.cat([s, one_hot, change], dim=-1)
    m = mask.to(rows.dtype).unsqueeze(-1)
    rows = torch.where(m > 0, rows, torch.zeros_like(rows))
    return torch.cat([rows, m], dim=-1).flatten(-2)


class DRHistoryQNetwork(QNetwork):
    """``Q(s, z)`` over the current observation and the flattened window (module docstring)."""

    spec: DRHistorySpec

    def __init__(self, spec: DRHistorySpec) -> None:
        if not isinstance(spec, DRHistorySpec):
            raise TypeError(
                f"a dr-history network needs a DRHistorySpec, got {type(spec).__name__}"
            )
        super().__init__(spec)
        del self.context  # z is the window, never a parameter

    def features(self, obs: Tensor, z: Tensor | None = None) -> Tensor:
        shape = (*obs.shape[:-1], self.spec.context_dim)
        if z is None:  # the empty window's z
            z = torch.zeros(self.spec.context_dim, dtype=obs.dtype)
        return self.body_features(obs, z.expand(shape))

    def forward(
        self, obs: Tensor, with_model: bool = True, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Q-values ``(..., B, A)`` (and the normalized state change) of ``obs`` with window
        features ``z``: one ``(C,)`` for every row, or one per row (``None``: the empty
        window)."""
        return self.heads(self.features(obs, z), obs, with_model)

    def history_z(self, window: Tensor, mask: Tensor) -> Tensor:
        """``z`` of raw windows and their masks (:func:`history_features`)."""
        return history_features(self, window, mask)

    def numpy_actor(self, params: Params) -> ActFn | None:
        """None: acting goes through :class:`DRHistoryActor` (or torch)."""
        return None


def dr_history_q(net: DRHistoryQNetwork, params: Params, obs: Tensor, z: Tensor | None) -> Tensor:
    """Q-values of ``obs`` under ``params`` and window features ``z``."""
    return functional_call(net, params, (obs, False, z))[0]


def window_masks(counts: np.ndarray, length: int) -> np.ndarray:
    """Front-padded validity masks ``(N, length)`` of windows holding ``counts`` rows."""
    positions = np.arange(length)
    return (positions[None] >= length - np.asarray(counts)[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------- acting


class DRHistoryActor:
    """The trained policy as a stateful actor: ``actor(obs)`` is the greedy action of
    ``Q(obs, z(window))``; ``observe(obs, action, reward, next_obs, terminated)`` pushes the
    transition into the window of the last ``history`` ones (``reward`` is not read);
    ``reset()`` empties it. The window is per episode, as in training: it is cleared after a
    terminal transition and when the actor acts on (or observes a transition from) an
    observation other than the last observed ``next_obs``, i.e. at a new episode's first
    step. ``rows``: window rows to start from (tests, the export check). numpy, equal to
    :func:`history_features` and :func:`dr_history_q` (tests check)."""

    def __init__(
        self, net: DRHistoryQNetwork, params: Params, rows: Sequence[np.ndarray] = ()
    ) -> None:
        spec = net.spec

        def array(name: str) -> np.ndarray:
            return params[name].detach().numpy().astype(np.float32).copy()

        self.spec = spec
        self.width = window_width(spec)
        d, n = spec.obs_dim, spec.n_actions
        self._mean, self._std = net.obs_mean.numpy().copy(), net.obs_std.numpy().copy()
        # one row's normalization: (row - shift) / scale, the one-hot slots unscaled
        self._shift = np.concatenate([self._mean, np.zeros(n + d, np.float32)])
        self._scale = np.concatenate(
            [self._std, np.ones(n, np.float32), net.delta_std.numpy().copy()]
        )
        self._body = [
            (array(f"body.{i}.weight").T.copy(), array(f"body.{i}.bias"))
            for i in range(len(spec.hidden))
        ]
        self._q = (array("q_head.weight").T.copy(), array("q_head.bias"))
        self._activation = NUMPY_ACTIVATIONS[spec.activation]
        self._rows: deque[np.ndarray] = deque(maxlen=spec.history)
        self._features = np.zeros((spec.history, self.width + 1), np.float32)
        self._expected: np.ndarray | None = None
        for row in list(rows)[-spec.history :]:
            self._push(np.asarray(row, np.float32))

    @property
    def z(self) -> np.ndarray:
        """The current window features (a copy)."""
        return self._features.ravel().copy()

    @property
    def window(self) -> tuple[Tensor, Tensor]:
        """The current window (front-padded, oldest first) and its mask."""
        return ordered_window(list(self._rows), self.spec.history, self.width)

    def _push(self, row: np.ndarray) -> None:
        self._rows.append(row)
        self._features[:-1] = self._features[1:]  # the padding in front stays all zero
        self._features[-1, :-1] = (row - self._shift) / self._scale
        self._features[-1, -1] = 1.0

    def _new_episode_unless_continuing(self, obs: np.ndarray) -> None:
        if self._expected is not None and not np.array_equal(obs, self._expected):
            self.reset()

    def observe(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool
    ) -> None:
        o = np.asarray(obs, np.float32)
        self._new_episode_unless_continuing(o)
        self._push(window_row(o, action, next_obs, self.spec.n_actions))
        if terminated:  # the next step is a new episode's first
            self.reset()
        else:
            self._expected = np.asarray(next_obs, np.float32).copy()

    def reset(self) -> None:
        self._rows.clear()
        self._features[...] = 0.0
        self._expected = None

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = (np.asarray(obs, np.float32) - self._mean) / self._std
        x = np.concatenate([x, self._features.ravel()])
        for w, b in self._body:
            x = self._activation(x @ w + b)
        w, b = self._q
        return x @ w + b

    def __call__(self, obs: np.ndarray) -> int:
        o = np.asarray(obs, np.float32)
        self._new_episode_unless_continuing(o)
        return int(np.argmax(self.q_values(o)))


@dataclass
class DRHistoryMethod(TrainedMethod):
    """A trained dr-history policy in the evaluation harness (:mod:`robometa.evaluate`): it
    does not adapt, so every actor (the initial one, and one per entry of ``steps``) is a
    fresh :class:`DRHistoryActor` with an empty window whose memory runs online; the support
    set is not read."""

    @property
    def net(self) -> DRHistoryQNetwork:
        return self.policy.net  # type: ignore[return-value]

    def initial_actor(self) -> DRHistoryActor:
        return DRHistoryActor(self.net, self.policy.params)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        return [DRHistoryActor(self.net, self.policy.params) for _ in steps]


# ---------------------------------------------------------------------------- replay


class WindowBatch(NamedTuple):
    """A replayed batch with the window each action was taken with and the next window."""

    batch: Batch
    window: Tensor  # (B, K, W)
    mask: Tensor  # (B, K)
    next_window: Tensor
    next_mask: Tensor


class WindowReplay(ReplayBuffer):
    """:class:`ReplayBuffer` whose every transition also holds the window before ``s`` and
    the window before ``s'`` (raw rows and their counts; the masks are rebuilt from them)."""

    def __init__(self, capacity: int, obs_dim: int, length: int, width: int) -> None:
        super().__init__(capacity, obs_dim)
        self.length = length
        self.window = np.zeros((capacity, length, width), np.float32)
        self.next_window = np.zeros((capacity, length, width), np.float32)
        self.count = np.zeros(capacity, np.int64)
        self.next_count = np.zeros(capacity, np.int64)

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        window: np.ndarray,
        count: int,
        next_window: np.ndarray,
        next_count: int,
    ) -> None:
        i = self.pos
        self.window[i], self.count[i] = window, count
        self.next_window[i], self.next_count[i] = next_window, next_count
        super().add(obs, action, reward, next_obs, terminated)

    def sample(self, n: int, rng: np.random.Generator) -> WindowBatch:  # type: ignore[override]
        idx = self.indices(n, rng)
        return WindowBatch(
            self.batch(idx),
            torch.from_numpy(self.window[idx]),
            torch.from_numpy(window_masks(self.count[idx], self.length)),
            torch.from_numpy(self.next_window[idx]),
            torch.from_numpy(window_masks(self.next_count[idx], self.length)),
        )

    def _order(self) -> np.ndarray:
        return (self.pos - self.size + np.arange(self.size)) % self.capacity

    def state_dict(self) -> dict[str, Any]:
        order = self._order()
        return super().state_dict() | {
            "window": torch.from_numpy(self.window[order].copy()),
            "count": torch.from_numpy(self.count[order].copy()),
            "next_window": torch.from_numpy(self.next_window[order].copy()),
            "next_count": torch.from_numpy(self.next_count[order].copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        order = self._order()  # the layout the parent restored
        self.window[order] = state["window"].numpy()
        self.count[order] = state["count"].numpy()
        self.next_window[order] = state["next_window"].numpy()
        self.next_count[order] = state["next_count"].numpy()


# ---------------------------------------------------------------------------- the trainer


def check_window_memory(cfg: Config, width: int) -> None:
    """``ValueError`` naming ``dqn.buffer_size`` and ``memory.history`` when the replay's
    windows (two per transition, ``width`` floats a row) would take more than
    :data:`MAX_WINDOW_BYTES`."""
    size, k = cfg.dqn.buffer_size, cfg.memory.history
    need = 2 * size * k * width * 4
    if need > MAX_WINDOW_BYTES:
        raise ValueError(
            f"config keys 'dqn.buffer_size' ({size}) and 'memory.history' ({k}): "
            f"{cfg.algorithm}'s replay stores two windows of {k} rows of {width} float32 per "
            f"transition, {need / 2**30:.1f} GiB, more than the {MAX_WINDOW_BYTES // 2**30} GiB "
            f"allowed; lower dqn.buffer_size to at most "
            f"{MAX_WINDOW_BYTES // (2 * k * width * 4)} or memory.history"
        )


class DRHistoryDQN(DQN):
    """Domain-randomized Double DQN on ``Q(s, z(window))`` (module docstring): DQN's
    collection, schedules, targets and checkpoints, with a window per env and a replay that
    stores the windows."""

    network_class: ClassVar[type[QNetwork]] = DRHistoryQNetwork
    bundle_writer: ClassVar[str] = "robometa.bundle_dr_history"
    net: DRHistoryQNetwork

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)  # starts every env's episode: every window is empty
        spec = self.net.spec
        self.length, self.width = spec.history, window_width(spec)
        try:
            check_window_memory(cfg, self.width)
        except ValueError:
            self.close()
            raise
        self.buffer = WindowReplay(cfg.dqn.buffer_size, spec.obs_dim, self.length, self.width)
        self.windows = np.zeros((cfg.env.num_envs, self.length, self.width), np.float32)
        self.counts = np.zeros(cfg.env.num_envs, np.int64)

    @classmethod
    def network_from_config(cls, cfg: Config, obs_dim: int, n_actions: int) -> DRHistoryQNetwork:
        n, k = cfg.network, cfg.memory.history
        spec = DRHistorySpec(
            obs_dim,
            n_actions,
            tuple(n.hidden),
            history_dim(obs_dim, n_actions, k),
            n.activation,
            history=k,
        )
        return DRHistoryQNetwork(spec)

    @classmethod
    def network_from_spec(cls, spec: Mapping[str, Any]) -> DRHistoryQNetwork:
        spec = dict(spec)
        spec["hidden"] = tuple(spec["hidden"])
        return DRHistoryQNetwork(DRHistorySpec(**spec))

    # -------------------------------------------------------------- acting

    def _restart(self, i: int) -> np.ndarray:
        if hasattr(self, "windows"):  # a new episode (and robot): an empty window
            self.windows[i] = 0.0
            self.counts[i] = 0
        return super()._restart(i)

    def masks(self) -> np.ndarray:
        """Every env's window mask."""
        return window_masks(self.counts, self.length)

    def _greedy_actions(self) -> np.ndarray:
        obs = torch.from_numpy(self.obs)
        with torch.no_grad():
            z = self.net.history_z(torch.from_numpy(self.windows), torch.from_numpy(self.masks()))
            return self.net(obs, False, z)[0].argmax(1).numpy()

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
        """A step the physics rejected is neither learned from nor remembered (its episode
        ends there). Otherwise the transition enters env ``i``'s window and the replay, with
        the window before it and the one after."""
        if info.get("physics_error", False):
            return
        before, count = self.windows[i].copy(), int(self.counts[i])
        self.windows[i, :-1] = self.windows[i, 1:]
        self.windows[i, -1] = window_row(self.obs[i], action, next_obs, self.n_actions)
        self.counts[i] = min(count + 1, self.length)
        self._store_windows(i, action, reward, next_obs, terminated, before, count)

    def _store_windows(
        self,
        i: int,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        term: bool,
        window: np.ndarray,
        count: int,
    ) -> None:
        """:meth:`DQN._store` with windows: ``window``/``count`` are the window the action
        was taken with; the next window is env ``i``'s now (the one before ``next_obs``)."""
        n, gamma = self.cfg.dqn.n_step, self.cfg.dqn.gamma
        nxt, nxt_count = self.windows[i], int(self.counts[i])
        if n == 1:
            self.buffer.add(
                self.obs[i], action, reward, next_obs, term, window, count, nxt, nxt_count
            )
            return
        pending = self.pending[i]
        pending.append((self.obs[i].copy(), action, reward, window, count))
        while pending and (len(pending) == n or term):
            ret = sum(gamma**k * r for k, (_, _, r, _, _) in enumerate(pending))
            obs, a, _, w, c = pending.popleft()
            self.buffer.add(obs, a, ret, next_obs, term, w, c, nxt, nxt_count)

    # -------------------------------------------------------------- learning

    def td_loss(self, batch: WindowBatch) -> Tensor:  # type: ignore[override]
        """The Double-DQN Huber loss of ``Q(s, z(window))``, the target at ``(s', z(next
        window))``."""
        d = self.cfg.dqn
        b = batch.batch
        z = self.net.history_z(batch.window, batch.mask)
        q = self.net(b.obs, False, z)[0]
        q_sa = q.gather(1, b.action.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            z_next = self.net.history_z(batch.next_window, batch.next_mask)
            online_next = self.net(b.next_obs, False, z_next)[0]
            target_next = self.target_net(b.next_obs, False, z_next)[0]
            target = double_dqn_target(
                online_next, target_next, b.reward, b.terminated, d.gamma**d.n_step
            )
        return torch.nn.functional.huber_loss(q_sa, target, delta=d.huber_delta)

    # -------------------------------------------------------------- persistence

    def policy(self) -> Policy:
        """The trained policy: not adapted, not fine-tuned; privileged for ``oracle-history``
        (the observation, and so every window row, carries the true dynamics parameters)."""
        return self.trained_policy({}, 0, self.privileged)

    # -------------------------------------------------------------- what the family owns

    @classmethod
    def evaluation_method(
        cls,
        policy: Policy,
        name: str,
        support_epsilon: float,
        lrs: Mapping[str, Tensor] | None = None,
    ) -> DRHistoryMethod:
        """The policy as trained, its memory running (:class:`DRHistoryMethod`); fine-tuning
        learning rates are refused."""
        refuse_learning_rates(
            policy,
            lrs,
            "does not adapt and is not fine-tuned: it acts on its own history within each episode",
        )
        return DRHistoryMethod(name, policy, support_epsilon)


def untrained_policy(
    env_id: str = "robometa/CartPole-v0",
    *,
    hidden: tuple[int, ...] = (16, 16),
    history: int = 4,
    support_size: int = 64,
    seed: int = 0,
) -> Policy:
    """A randomly initialized ``dr-history`` policy (export and runtime tests without
    training), its normalization that of :func:`robometa.testing.random_policy`, the Q head
    scaled up so that the actions and the window's effect are visible."""
    from robometa.testing import random_policy

    shaped = random_policy("dqn", env_id=env_id, hidden=hidden, seed=seed)
    base = shaped.net.spec
    torch.manual_seed(seed)
    spec = DRHistorySpec(
        base.obs_dim,
        base.n_actions,
        hidden,
        history_dim(base.obs_dim, base.n_actions, history),
        history=history,
    )
    net = DRHistoryQNetwork(spec)
    with torch.no_grad():
        net.set_normalization(shaped.net.obs_mean, shaped.net.obs_std, shaped.net.delta_std)
        net.q_head.weight.normal_(0.0, 1.0)
        net.body[0].weight.mul_(3.0)
    return Policy(
        algorithm="dr-history",
        env_id=env_id,
        net=net,
        params=net.params(),
        lrs={},
        inner=InnerLoss("td"),
        adapt_steps=0,
        support_size=support_size,
        config={"adaptation": {"support_epsilon": 0.3}, "random_policy": True},
    )
