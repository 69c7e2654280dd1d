"""The ``recurrent`` bundle kind: a GRU state that follows the robot, advanced by ``memory.onnx``.

The ``recurrent`` method family (:mod:`robometa.methods.recurrent`, RL^2 / R2D2-style) exports
this kind. Its bundles hold :data:`RECURRENT_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | ``obs`` (B, obs_dim), ``hidden`` (hidden_size,) and the ``param:`` inputs Q uses -> ``q_values``, ``action`` (the first maximum) |
| ``memory`` (``memory.onnx``) | the GRU's ``param:`` inputs, ``hidden`` (B, hidden_size) and one transition per row (``obs``, ``action`` int64, ``reward``, ``next_obs``, ``terminated``; any B >= 1) -> ``new:hidden`` (B, hidden_size): the state after that transition |

and ``params.npz`` (every network parameter), plus the manifest section ``recurrent``
(``hidden_size``; ``support_size``: the longest support of a training life, the buffer's
default capacity; ``initial``: ``"zeros"``).

:class:`RecurrentAdapter` keeps the state between calls: ``act`` and ``q_values`` read it
(they never change it), every transition ``observe`` accepts is buffered *and* advances it
(one run of ``memory.onnx``), ``follow`` advances it without buffering (the greedy episodes of
:func:`robometa.deploy.loop.greedy_return`, so the policy acts online as it was trained to;
``run_rounds`` puts the measured state back afterwards), and ``reset`` zeros it. ``adapt`` re-derives the state from the buffered transitions, oldest
first from zeros: what training and ``robometa eval`` do with a support set, and it bounds the
history the state summarizes to the buffer's (training lives are a support of at most
``support_size`` steps and two episodes; a state that followed a robot for hours would be far
outside them). Its ``params`` are ``{"hidden": h}`` (what ``save_state``, ``load_state`` and
``restore_params`` carry); the network's parameters never change.

A GRU state started at zero stays within ``[-1, 1]`` (each step mixes the previous state with
a ``tanh``), so ``load_state`` and ``restore_params`` refuse a state with an entry outside
``[-HIDDEN_BOUND, HIDDEN_BOUND]`` (:data:`HIDDEN_SLACK` of float rounding allowed). A
transition whose step gives a non-finite state leaves the state as it was; such steps are
counted (:attr:`RecurrentAdapter.non_finite_states`, since the last ``reset``), warned about
(``RuntimeWarning``) and named in the ``reason`` of every ``adapt`` report after them.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.adapter import Adapter
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    BATCH_INPUTS,
    MANIFEST_FILE,
    MAX_BUFFER_BYTES,
    MAX_SUPPORT_SIZE,
    NEW_PREFIX,
    OBS_INPUT,
    PARAM_PREFIX,
    PARAMS_ARRAY,
    POLICY_GRAPH,
    Q_OUTPUT,
    Bundle,
    BundleError,
    BundleLayout,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_int,
    check_object,
    check_parameters,
    manifest_key,
    tensor_spec,
)
from robometa.deploy.checks import FLOAT32, check_count, check_real, frozen, param_problem
from robometa.deploy.files import atomic_write, remove_stale_temp_files
from robometa.deploy.gradient import POLICY_GRAPH_SPEC
from robometa.deploy.guard import MAX_ADAPT_STEPS, AdaptReport
from robometa.deploy.sessions import (
    MAX_THREADS,
    PROVIDERS,
    BoundPolicy,
    open_session,
    param_inputs,
    session_options,
)
from robometa.deploy.state import StateError, parse_state, read_state, state_arrays
from robometa.deploy.transitions import MAX_CAPACITY, TransitionBuffer, Transitions, rejection

#: the kind's name (the manifest's ``kind``) and its manifest section
KIND = "recurrent"
MEMORY_GRAPH = "memory.onnx"
#: the state: an input of both graphs, and the adapter's parameter
HIDDEN = "hidden"
#: the memory graph's output
NEW_HIDDEN = NEW_PREFIX + HIDDEN
#: the memory graph's transition inputs
MEMORY_INPUTS: tuple[str, ...] = BATCH_INPUTS
MAX_HIDDEN_SIZE = 4096  # the config's memory.hidden_size range
#: a GRU state from zero stays in [-1, 1]: the largest |entry| a loaded or restored state may
#: have, plus float rounding
HIDDEN_BOUND = 1.0
HIDDEN_SLACK = 1e-6


def hidden_problem(value: np.ndarray) -> str:
    """What is wrong with ``value`` (already a finite float32 array of the state's shape) as
    a GRU state ('' if nothing): an entry outside ``[-HIDDEN_BOUND, HIDDEN_BOUND]``."""
    worst = float(np.abs(value).max()) if value.size else 0.0
    if worst > HIDDEN_BOUND + HIDDEN_SLACK:
        i = int(np.argmax(np.abs(value)))
        return (
            f"entry [{i}] is {float(value.flat[i])!r}, outside [-{HIDDEN_BOUND:g}, "
            f"{HIDDEN_BOUND:g}] (a GRU state started at zero stays within it)"
        )
    return ""


# ---------------------------------------------------------------------- the bundle layout


def _hidden_size(manifest: Mapping[str, Any]) -> int:
    return int(manifest[KIND]["hidden_size"])


def _policy_io(graph: GraphContext) -> GraphIO:
    obs_dim, n = graph.manifest["observation"]["shape"][0], graph.manifest["action"]["n"]
    size = _hidden_size(graph.manifest)
    return GraphIO(
        inputs={
            OBS_INPUT: tensor_spec("float", (obs_dim,), batch=True),
            HIDDEN: tensor_spec("float", (size,)),
        },
        feeds={OBS_INPUT: np.zeros((2, obs_dim), np.float32), HIDDEN: np.zeros(size, np.float32)},
        outputs={
            Q_OUTPUT: tensor_spec("float", (n,), batch=True),
            ACTION_OUTPUT: tensor_spec("int64", (), batch=True),
        },
    )


def _memory_io(graph: GraphContext) -> GraphIO:
    obs_dim = graph.manifest["observation"]["shape"][0]
    size = _hidden_size(graph.manifest)
    inputs = {HIDDEN: tensor_spec("float", (size,), batch=True)}
    feeds = {HIDDEN: np.zeros((2, size), np.float32)}
    shapes = [(obs_dim,), (), (), (obs_dim,), ()]
    for name, shape in zip(MEMORY_INPUTS, shapes, strict=True):
        dtype = "int64" if name == "action" else "float"
        inputs[name] = tensor_spec(dtype, shape, batch=True)
        feeds[name] = np.zeros((2, *shape), np.int64 if dtype == "int64" else np.float32)
    outputs = {NEW_HIDDEN: tensor_spec("float", (size,), batch=True)}
    return GraphIO(inputs, feeds, outputs)


def check_recurrent_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The recurrent kind's sections: ``parameters`` (shapes) and ``recurrent``
    (``hidden_size`` in ``[1, MAX_HIDDEN_SIZE]``, ``support_size`` in ``[1,
    MAX_SUPPORT_SIZE]`` whose transition buffer fits in ``MAX_BUFFER_BYTES``)."""
    check_parameters(manifest, where)
    section = check_object(where, KIND, manifest[KIND])
    size = manifest_key(section, "hidden_size", where, f"{KIND}.")
    check_int(where, f"{KIND}.hidden_size", size, 1, MAX_HIDDEN_SIZE)
    support = manifest_key(section, "support_size", where, f"{KIND}.")
    check_int(where, f"{KIND}.support_size", support, 1, MAX_SUPPORT_SIZE)
    buffer = support * (2 * obs_dim + 3) * 4
    if buffer > MAX_BUFFER_BYTES:
        raise BundleError(
            f"{where}: {KIND}.support_size {support} transitions of obs_dim {obs_dim} need a "
            f"{buffer}-byte buffer, more than the {MAX_BUFFER_BYTES} allowed"
        )


#: a recurrent bundle: ``policy.onnx``, ``memory.onnx``, ``params.npz``, and the manifest
#: sections ``recurrent`` and ``parameters``.
RECURRENT_LAYOUT = BundleLayout(
    graphs={
        "policy": GraphSpec(POLICY_GRAPH, _policy_io, POLICY_GRAPH_SPEC.check_probe),
        "memory": GraphSpec(MEMORY_GRAPH, _memory_io),
    },
    arrays=(PARAMS_ARRAY,),
    sections=(KIND, "parameters"),
    check_manifest=check_recurrent_manifest,
)


# ---------------------------------------------------------------------- the runtime


class RecurrentAdapter(Adapter):
    """Acts with a GRU state that every observed transition advances (module docstring).

    Args:
        bundle: a verified :class:`Bundle` of kind ``recurrent``.
        capacity: ring-buffer size in ``[1, MAX_CAPACITY]``; ``None``: the manifest's
            ``recurrent.support_size``.
        min_transitions: fewer buffered transitions than this (in ``[1, MAX_CAPACITY]``) and
            ``adapt`` keeps the current state (reported as not accepted).
        threads: intra-op threads per session, in ``[1, MAX_THREADS]``.

    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    layout = RECURRENT_LAYOUT
    #: support is collected acting with the current state, which follows the robot online
    #: (as a training life's support phase does), not with the zero state
    from_meta = False

    def __init__(
        self,
        bundle: Bundle,
        *,
        capacity: int | None = None,
        min_transitions: int = 1,
        threads: int = 1,
    ) -> None:
        self.min_transitions = check_count(
            "min_transitions", min_transitions, 1, MAX_CAPACITY, "MAX_CAPACITY"
        )
        threads = check_count("threads", threads, 1, MAX_THREADS, "MAX_THREADS")
        if capacity is not None:
            capacity = check_count("capacity", capacity, 1, MAX_CAPACITY, "MAX_CAPACITY")
        self._set_bundle(bundle)
        self.hidden_size = _hidden_size(bundle.manifest)
        support = int(bundle.manifest[KIND]["support_size"])
        if capacity is None and support > MAX_CAPACITY:
            raise BundleError(
                f"{bundle.path / MANIFEST_FILE}: {KIND}.support_size is {support}, more than "
                f"MAX_CAPACITY ({MAX_CAPACITY}) of robometa.deploy.transitions"
            )
        self.support_size = support
        self._weights = {k: frozen(v) for k, v in bundle.params.items()}
        self._zero = frozen(np.zeros(self.hidden_size, np.float32))
        options = session_options(threads)
        self._policy = open_session(bundle, POLICY_GRAPH, options, PROVIDERS)
        self._memory = open_session(bundle, MEMORY_GRAPH, options, PROVIDERS)
        self._policy_params = param_inputs(
            [i.name for i in self._policy.get_inputs()],
            {OBS_INPUT, HIDDEN},
            self._weights,
            bundle.file(POLICY_GRAPH),
        )
        memory_params = param_inputs(
            [i.name for i in self._memory.get_inputs()],
            {HIDDEN, *MEMORY_INPUTS},
            self._weights,
            bundle.file(MEMORY_GRAPH),
        )
        self._memory_feeds: dict[str, Any] = {
            PARAM_PREFIX + k: self._weights[k] for k in memory_params
        }
        self._bound = BoundPolicy(self._policy, self.obs_dim, self.n_actions)
        self._bound.bind_params(self._policy_params, self._weights)
        self._hidden = self._zero
        self._acting_meta = False
        self._non_finite = 0
        self._bind_hidden()
        self.buffer = TransitionBuffer(capacity or support, self.obs_dim)

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """How it adapts: the state's size and the support it was trained on."""
        section = bundle.manifest[KIND]
        return [
            (
                "adapts",
                f"a {section['hidden_size']}-d GRU state advanced by {MEMORY_GRAPH} with every "
                f"observed transition; adapt re-derives it from up to {section['support_size']} "
                "buffered transitions",
            )
        ]

    # ------------------------------------------------------------------ acting

    def _acting_hidden(self) -> np.ndarray:
        return self._zero if self._acting_meta else self._hidden

    def _bind_hidden(self) -> None:
        self._bound.bind_input(HIDDEN, self._acting_hidden())

    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)`` under the current
        state, which it leaves unchanged (``ValueError`` for a wrong shape or a non-finite
        entry; ``BundleError`` for an action outside ``[0, n_actions)``)."""
        buf = self._bound.obs[0]
        if type(obs) is np.ndarray and obs.dtype is FLOAT32 and obs.shape == self._obs_shape:
            buf[...] = obs
        else:
            buf[...] = self._checked_obs(obs, self._obs_shape, "obs")
        if not all(map(math.isfinite, buf.tolist())):
            raise ValueError(self._non_finite_message(buf, "obs"))
        self._policy.run_with_iobinding(self._bound.binding)
        action = self._bound.action.item()
        if not 0 <= action < self.n_actions:
            raise BundleError(
                f"{self.bundle.file(POLICY_GRAPH)}: output {ACTION_OUTPUT!r} is {action}, "
                f"outside [0, {self.n_actions}) (action.n of the manifest)"
            )
        return action

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)`` under the
        current state."""
        array = check_real(obs, "obs")
        single = array.ndim == 1
        batch = self._checked_obs(array[None] if single else array, None, "obs")
        bad = ~np.isfinite(batch).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(self._non_finite_message(batch[row], f"obs[{row}]"))
        feeds = {PARAM_PREFIX + k: self._weights[k] for k in self._policy_params}
        feeds[OBS_INPUT] = batch
        feeds[HIDDEN] = self._acting_hidden()
        q = self._policy.run([Q_OUTPUT], feeds)[0]
        return q[0] if single else q

    # ------------------------------------------------------------------ the state

    @property
    def hidden(self) -> np.ndarray:
        """The current state (read-only)."""
        return self._hidden

    @property
    def non_finite_states(self) -> int:
        """Transitions (observed or followed) since the last ``reset`` whose GRU step gave a
        non-finite state, so the state was left as it was."""
        return self._non_finite

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"hidden": h}``: what following the robot and adapting change."""
        return {HIDDEN: self._hidden}

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        """``{"hidden": zeros}``: the policy before it has seen a transition."""
        return {HIDDEN: self._zero}

    def memory_step(self, hidden: np.ndarray, data: Transitions) -> np.ndarray:
        """One raw run of ``memory.onnx``: the states ``(B, hidden_size)`` after one
        transition per row of ``data`` from the states ``hidden`` ``(B, hidden_size)``."""
        feeds = dict(self._memory_feeds)
        feeds[HIDDEN] = np.asarray(hidden, np.float32)
        feeds.update(zip(MEMORY_INPUTS, data, strict=True))
        return self._memory.run([NEW_HIDDEN], feeds)[0]

    def _advance(
        self, obs: np.ndarray, action: int, reward: float, nxt: np.ndarray, term: float
    ) -> bool:
        """The state after one (accepted, float32) transition; whether it was taken. A
        non-finite result is discarded (the state stays what it was), counted in
        :attr:`non_finite_states` and warned about."""
        data = Transitions(
            obs[None],
            np.array([action], np.int64),
            np.array([reward], np.float32),
            nxt[None],
            np.array([term], np.float32),
        )
        new = self.memory_step(self._hidden[None], data)[0]
        if not np.isfinite(new).all():
            self._non_finite += 1
            warnings.warn(
                f"{self.bundle.file(MEMORY_GRAPH)}: a transition gave a non-finite GRU state; "
                "the previous state is kept (counted in non_finite_states and reported by adapt)",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._hidden = frozen(new)
        self._bind_hidden()
        return True

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """Store one transition (:meth:`Adapter.observe`'s rules) and, when it is accepted,
        advance the state by it; return whether it was accepted (stored). A stored transition
        whose step gives a non-finite state leaves the state as it was and is counted in
        :attr:`non_finite_states`."""
        if not super().observe(obs, action, reward, next_obs, terminated):
            return False
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        self._advance(o, int(action), float(reward), o2, float(terminated))
        return True

    def follow(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """Advance the state by one transition without storing it (greedy evaluation
        episodes); whether the state advanced. A transition ``observe`` would reject is
        skipped (False), not counted; one whose step gives a non-finite state is skipped
        (False) and counted in :attr:`non_finite_states`."""
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        if rejection(
            o, action, reward, o2, terminated, self.obs_low, self.obs_high, self.n_actions
        ):
            return False
        return self._advance(o, int(action), float(reward), o2, float(terminated))

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[RecurrentAdapter]:
        """Within the block ``act`` and ``q_values`` use the zero state (``observe`` still
        advances the current one); afterwards the current state again."""
        outer = self._acting_meta
        self._acting_meta = True
        self._bind_hidden()
        try:
            yield self
        finally:
            self._acting_meta = outer
            self._bind_hidden()

    def derive(self, data: Transitions) -> np.ndarray:
        """The state after ``data``'s transitions in their order, from zeros."""
        h = np.zeros((1, self.hidden_size), np.float32)
        for i in range(len(data.reward)):
            h = self.memory_step(h, data.take(np.array([i])))
        return h[0]

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """Re-derive the state from the buffered transitions, oldest first from zeros
        (``steps`` in ``[0, MAX_ADAPT_STEPS]``, default 1: any ``steps >= 1`` is that one
        pass, ``0`` keeps the current state). ``from_meta`` (a bool or None) changes nothing:
        the pass always starts from zeros. A non-finite state is discarded (``rolled_back``)."""
        steps = (
            1
            if steps is None
            else check_count("steps", steps, 0, MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS")
        )
        if from_meta is not None and not isinstance(from_meta, (bool, np.bool_)):
            raise TypeError(
                f"from_meta must be True, False or None, got {type(from_meta).__name__} "
                f"{from_meta!r}"
            )
        start = time.perf_counter()
        data = self.buffer.ordered()
        n = len(data.reward)
        accepted, rolled_back = False, False
        if steps == 0:
            reason = "0 steps: the current state is kept"
        elif n < self.min_transitions:
            reason = f"only {n} transitions buffered, need at least {self.min_transitions}"
        else:
            h = self.derive(data)
            if np.isfinite(h).all():
                self._hidden = frozen(h)
                self._bind_hidden()
                accepted = True
                reason = f"state re-derived from {n} transitions"
            else:
                rolled_back = True
                reason = "the re-derived state is not finite; the previous one is kept"
        if self._non_finite:
            reason += (
                f"; {self._non_finite} transition(s) since the last reset gave a non-finite "
                "state and were not followed (non_finite_states)"
            )
        nan = math.nan
        return AdaptReport(
            steps=min(steps, 1),
            accepted=accepted,
            rolled_back=rolled_back,
            reason=reason,
            loss_before=nan,
            loss_after=nan,
            train_loss_before=nan,
            train_loss_after=nan,
            n_transitions=n,
            n_train=n if accepted or rolled_back else 0,
            n_holdout=0,
            n_rejected=sum(self._rejected.values()),
            rejected=dict(self._rejected),
            seconds=time.perf_counter() - start,
        )

    def reset(self) -> None:
        """Back to the zero state, with an empty buffer, no rejection counts and no
        non-finite state count."""
        self._hidden = self._zero
        self._bind_hidden()
        self.buffer.clear()
        self._rejected.clear()
        self._non_finite = 0

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current state (``ValueError`` naming
        the key for an unknown key, a missing state, or one that is not a finite float32
        array of its shape within ``[-HIDDEN_BOUND, HIDDEN_BOUND]``)."""
        unknown = sorted(set(params) - {HIDDEN})
        if unknown:
            raise ValueError(f"restore_params: unknown parameters {unknown} (only {HIDDEN!r})")
        if HIDDEN not in params:
            raise ValueError(f"restore_params: {HIDDEN!r} is missing")
        problem = param_problem(params[HIDDEN], self._zero) or hidden_problem(params[HIDDEN])
        if problem:
            raise ValueError(f"restore_params: {HIDDEN} {problem}")
        self._hidden = frozen(params[HIDDEN])
        self._bind_hidden()

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write the state and the buffer to ``path`` (``.npz``) atomically (the state file of
        :mod:`robometa.deploy.state`, ``param:hidden`` its parameter)."""
        path = Path(path)
        arrays = state_arrays(
            self.bundle.identity, {HIDDEN: self._hidden}, self.buffer.ordered(), self._rejected
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle; everything is
        checked before anything changes (``StateError`` naming the file and key; the state
        must be within ``[-HIDDEN_BOUND, HIDDEN_BOUND]``)."""
        path = Path(path)
        remove_stale_temp_files(path)
        params, data, rejected = parse_state(
            path,
            read_state(path),
            identity=self.bundle.identity,
            meta={HIDDEN: self._zero},
            adapted=(HIDDEN,),
            obs_dim=self.obs_dim,
            obs_low=self.obs_low,
            obs_high=self.obs_high,
            n_actions=self.n_actions,
        )
        problem = hidden_problem(np.asarray(params[HIDDEN]))
        if problem:
            raise StateError(f"{path}: {PARAM_PREFIX + HIDDEN} {problem}")
        self._hidden = frozen(params[HIDDEN])
        self._bind_hidden()
        self.buffer.clear()
        keep = max(0, len(data.reward) - self.buffer.capacity)
        for row in zip(*(a[keep:] for a in data), strict=True):
            self.buffer.add(*row)
        self._rejected = Counter(rejected)
