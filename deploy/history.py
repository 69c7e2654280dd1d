"""The ``history`` bundle kind: the policy acts on extrinsics ``history.onnx`` estimates from
its last transitions, updated after every step.

The ``rma`` method family (:mod:`robometa.methods.rma`, Rapid Motor Adaptation) exports this
kind. Its bundles hold :data:`HISTORY_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | ``obs`` (B, obs_dim), ``context`` (context_dim,) and the ``param:`` inputs Q uses -> ``q_values``, ``action`` (the first maximum) |
| ``history`` (``history.onnx``) | the adaptation module's ``param:`` inputs, ``window`` (length, width) float32 and ``mask`` (length,) float32 -> ``context`` (context_dim,) |

A window row is one transition stored raw, ``[obs, one_hot(action), next_obs - obs]`` (width
``2 * obs_dim + n_actions``); the window holds the last ``length`` of them, oldest first and
zero-padded at the front, ``mask`` 1 for the rows that hold one. ``params.npz`` holds every
network parameter; the manifest section ``history`` gives ``length``, ``width``,
``context_dim`` and ``support_size`` (the buffer's default capacity).

:class:`HistoryAdapter` is stateful: ``observe`` stores the transition in the buffer (as
every kind does) *and* pushes it into the window and recomputes the context (one history
update), so the policy adapts online, step by step; ``follow`` does the update without
storing the transition (the greedy evaluation episodes of
:func:`robometa.deploy.loop.greedy_return`, so the policy acts online there too). After
loading and ``reset`` the window is empty and the context is the empty window's (the
learned prior). ``adapt`` rebuilds the window from the last ``length`` buffered transitions
(one history update); there is no loss to guard, so a context is kept unless it is not
finite. A transition whose history update gives a non-finite estimate is refused whole by
``observe`` (not buffered, the window and context unchanged) and counted as
:data:`NON_FINITE_CONTEXT` in ``rejected`` and the adapt report; ``follow`` skips and counts
it the same way. Its ``params`` are ``{"context", "window", "mask"}`` (what ``save_state``,
``load_state`` and ``restore_params`` carry, each checked to be a state the runtime can
reach: :meth:`HistoryAdapter.restore_params`); the network's parameters never change.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.adapter import Adapter
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    MANIFEST_FILE,
    MAX_BUFFER_BYTES,
    MAX_SUPPORT_SIZE,
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
from robometa.deploy.state import (
    REJECTED_PREFIX,
    StateError,
    parse_state,
    read_state,
    state_arrays,
)
from robometa.deploy.transitions import MAX_CAPACITY, TransitionBuffer, rejection

#: the kind's name (the manifest's ``kind``) and its manifest section
KIND = "history"
SECTION = "history"
HISTORY_GRAPH = "history.onnx"
#: the policy graph's extrinsics input, the history graph's output, an adapter parameter
CONTEXT = "context"
#: the history graph's inputs (and adapter parameters)
WINDOW = "window"
MASK = "mask"
MAX_CONTEXT_DIM = 1024  # the config's network.context_dim range
MAX_HISTORY = 1000  # the config's memory.history range
#: the rejection reason of a transition whose history update estimated non-finite extrinsics
#: (besides :data:`robometa.deploy.transitions.REJECTION_REASONS`, which ``observe`` applies)
NON_FINITE_CONTEXT = "non_finite_context"
#: a restored context must equal ``history.onnx``'s estimate of the restored window within
#: this, relative to ``max(1, |estimate|)``
STATE_CONTEXT_TOLERANCE = 1e-4
#: slack on ``obs + (next_obs - obs)`` against the observation bounds (the stored change is
#: rounded to float32), relative to ``max(1, |bound|)``
_BOUND_SLACK = 1e-5

# ---------------------------------------------------------------------- the bundle layout


def _section(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    return manifest[SECTION]


def _policy_io(graph: GraphContext) -> GraphIO:
    obs_dim, n = graph.manifest["observation"]["shape"][0], graph.manifest["action"]["n"]
    dim = int(_section(graph.manifest)["context_dim"])
    return GraphIO(
        inputs={
            OBS_INPUT: tensor_spec("float", (obs_dim,), batch=True),
            CONTEXT: tensor_spec("float", (dim,)),
        },
        feeds={
            OBS_INPUT: np.zeros((2, obs_dim), np.float32),
            CONTEXT: np.zeros(dim, np.float32),
        },
        outputs={
            Q_OUTPUT: tensor_spec("float", (n,), batch=True),
            ACTION_OUTPUT: tensor_spec("int64", (), batch=True),
        },
    )


def _history_io(graph: GraphContext) -> GraphIO:
    section = _section(graph.manifest)
    length, width = int(section["length"]), int(section["width"])
    return GraphIO(
        inputs={
            WINDOW: tensor_spec("float", (length, width)),
            MASK: tensor_spec("float", (length,)),
        },
        feeds={
            WINDOW: np.zeros((length, width), np.float32),
            MASK: np.zeros(length, np.float32),
        },
        outputs={CONTEXT: tensor_spec("float", (int(section["context_dim"]),))},
    )


def check_history_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The history kind's sections: ``parameters`` (shapes) and ``history`` (``length`` in
    ``[1, MAX_HISTORY]``, ``width`` = ``2 * obs_dim + n_actions``, ``context_dim`` in ``[1,
    MAX_CONTEXT_DIM]``, ``support_size`` in ``[1, MAX_SUPPORT_SIZE]`` whose transition
    buffer fits in ``MAX_BUFFER_BYTES``)."""
    check_parameters(manifest, where)
    section = check_object(where, SECTION, manifest[SECTION])

    def key(name: str) -> Any:
        return manifest_key(section, name, where, f"{SECTION}.")

    check_int(where, "history.length", key("length"), 1, MAX_HISTORY)
    check_int(where, "history.context_dim", key("context_dim"), 1, MAX_CONTEXT_DIM)
    width = 2 * obs_dim + int(manifest["action"]["n"])
    check_int(where, "history.width", key("width"), width, width)
    support = key("support_size")
    check_int(where, "history.support_size", support, 1, MAX_SUPPORT_SIZE)
    buffer = support * (2 * obs_dim + 3) * 4
    if buffer > MAX_BUFFER_BYTES:
        raise BundleError(
            f"{where}: history.support_size {support} transitions of obs_dim {obs_dim} need a "
            f"{buffer}-byte buffer, more than the {MAX_BUFFER_BYTES} allowed"
        )


#: a history bundle: ``policy.onnx``, ``history.onnx``, ``params.npz``, and the manifest
#: sections ``history`` and ``parameters``.
HISTORY_LAYOUT = BundleLayout(
    graphs={
        "policy": GraphSpec(POLICY_GRAPH, _policy_io, POLICY_GRAPH_SPEC.check_probe),
        "history": GraphSpec(HISTORY_GRAPH, _history_io),
    },
    arrays=(PARAMS_ARRAY,),
    sections=(SECTION, "parameters"),
    check_manifest=check_history_manifest,
)


# ---------------------------------------------------------------------- the runtime


class HistoryAdapter(Adapter):
    """Acts with the extrinsics ``history.onnx`` estimates from the last transitions.

    Args:
        bundle: a verified :class:`Bundle` of kind ``history``.
        capacity: ring-buffer size in ``[1, MAX_CAPACITY]``; ``None``: the manifest's
            ``history.support_size``.
        min_transitions: fewer buffered transitions than this (in ``[1, MAX_CAPACITY]``) and
            ``adapt`` keeps the current window (reported as not accepted).
        threads: intra-op threads per session, in ``[1, MAX_THREADS]``.

    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    layout = HISTORY_LAYOUT
    #: support is collected by the online policy itself, as in training
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
        section = _section(bundle.manifest)
        self.length, self.width = int(section["length"]), int(section["width"])
        self.context_dim = int(section["context_dim"])
        support = int(section["support_size"])
        if capacity is None and support > MAX_CAPACITY:
            raise BundleError(
                f"{bundle.path / MANIFEST_FILE}: history.support_size is {support}, more than "
                f"MAX_CAPACITY ({MAX_CAPACITY}) of robometa.deploy.transitions"
            )
        self.support_size = support
        self._weights = {k: frozen(v) for k, v in bundle.params.items()}
        options = session_options(threads)
        self._policy = open_session(bundle, POLICY_GRAPH, options, PROVIDERS)
        self._history = open_session(bundle, HISTORY_GRAPH, options, PROVIDERS)
        self._policy_params = param_inputs(
            [i.name for i in self._policy.get_inputs()],
            {OBS_INPUT, CONTEXT},
            self._weights,
            bundle.file(POLICY_GRAPH),
        )
        self._history_params = param_inputs(
            [i.name for i in self._history.get_inputs()],
            {WINDOW, MASK},
            self._weights,
            bundle.file(HISTORY_GRAPH),
        )
        self._history_feeds: dict[str, Any] = {
            PARAM_PREFIX + k: self._weights[k] for k in self._history_params
        }
        self._bound = BoundPolicy(self._policy, self.obs_dim, self.n_actions)
        self._bound.bind_params(self._policy_params, self._weights)
        self._empty_window = frozen(np.zeros((self.length, self.width), np.float32))
        self._empty_mask = frozen(np.zeros(self.length, np.float32))
        self._window = np.zeros((self.length, self.width), np.float32)
        self._mask = np.zeros(self.length, np.float32)
        # the next window is built here and swapped in once its estimate is finite
        self._next_window = np.zeros((self.length, self.width), np.float32)
        self._next_mask = np.zeros(self.length, np.float32)
        self._empty_context = frozen(self.estimate(self._empty_window, self._empty_mask))
        self._context = self._empty_context
        self._acting_meta = False
        self._bind_context()
        self.buffer = TransitionBuffer(capacity or support, self.obs_dim)

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """How it adapts: the extrinsics' size and the window it reads."""
        section = _section(bundle.manifest)
        return [
            (
                "adapts",
                f"a {section['context_dim']}-d extrinsics vector {HISTORY_GRAPH} estimates "
                f"from the last {section['length']} transitions, after every observed step",
            )
        ]

    # ------------------------------------------------------------------ acting

    def _acting_context(self) -> np.ndarray:
        return self._empty_context if self._acting_meta else self._context

    def _bind_context(self) -> None:
        self._bound.bind_input(CONTEXT, self._acting_context())

    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)`` under the current
        extrinsics (``ValueError`` for a wrong shape or a non-finite entry; ``BundleError``
        for an action outside ``[0, n_actions)``)."""
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
        """Q-values for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)``."""
        array = check_real(obs, "obs")
        single = array.ndim == 1
        batch = self._checked_obs(array[None] if single else array, None, "obs")
        bad = ~np.isfinite(batch).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(self._non_finite_message(batch[row], f"obs[{row}]"))
        feeds = {PARAM_PREFIX + k: self._weights[k] for k in self._policy_params}
        feeds[OBS_INPUT] = batch
        feeds[CONTEXT] = self._acting_context()
        q = self._policy.run([Q_OUTPUT], feeds)[0]
        return q[0] if single else q

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[HistoryAdapter]:
        """Within the block ``act`` and ``q_values`` use the empty window's extrinsics (the
        unadapted policy); the window still follows ``observe``. Afterwards the current
        extrinsics again."""
        outer = self._acting_meta
        self._acting_meta = True
        self._bind_context()
        try:
            yield self
        finally:
            self._acting_meta = outer
            self._bind_context()

    # ------------------------------------------------------------------ the history

    @property
    def context(self) -> np.ndarray:
        """The current extrinsics (read-only)."""
        return self._context

    @property
    def window(self) -> np.ndarray:
        """The current window (a read-only copy, oldest row first)."""
        return frozen(self._window.copy())

    @property
    def mask(self) -> np.ndarray:
        """Which rows of :attr:`window` hold a transition (a read-only copy)."""
        return frozen(self._mask.copy())

    def estimate(self, window: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The extrinsics ``history.onnx`` gives for ``window`` and ``mask``."""
        feeds = dict(self._history_feeds)
        feeds[WINDOW], feeds[MASK] = window, mask
        return self._history.run([CONTEXT], feeds)[0]

    def _row(self, obs: np.ndarray, action: int, next_obs: np.ndarray) -> np.ndarray:
        row = np.zeros(self.width, np.float32)
        d = self.obs_dim
        row[:d] = obs
        row[d + action] = 1.0
        row[d + self.n_actions :] = next_obs - obs
        return row

    def _set_context(self, z: np.ndarray) -> bool:
        if not np.isfinite(z).all():
            return False
        self._context = frozen(z)
        self._bind_context()
        return True

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """Store one transition, push it into the window and recompute the extrinsics (one
        history update); return whether it was accepted. Refused and counted, not stored:
        what :meth:`Adapter.observe` rejects, and a transition that makes ``history.onnx``
        estimate non-finite extrinsics (:data:`NON_FINITE_CONTEXT`; the window and
        extrinsics stay as they were)."""
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        reason = rejection(
            o, action, reward, o2, terminated, self.obs_low, self.obs_high, self.n_actions
        ) or self._push(o, action, o2)
        if reason:
            self._rejected[reason] += 1
            return False
        self.buffer.add(o, int(action), float(reward), o2, float(terminated))
        return True

    def follow(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """One history update without storing the transition (greedy evaluation episodes);
        a transition ``observe`` would reject is skipped (False), not counted, and one whose
        estimate is not finite is skipped and counted (:data:`NON_FINITE_CONTEXT`)."""
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        if rejection(
            o, action, reward, o2, terminated, self.obs_low, self.obs_high, self.n_actions
        ):
            return False
        reason = self._push(o, action, o2)
        if reason:
            self._rejected[reason] += 1
            return False
        return True

    def _push(self, o: np.ndarray, action: Any, o2: np.ndarray) -> str:
        """Slide the window by one valid transition and recompute the extrinsics; a
        non-finite estimate changes nothing and gives its reason ('' when it worked)."""
        window, mask = self._next_window, self._next_mask
        window[:-1] = self._window[1:]
        window[-1] = self._row(o, int(action), o2)
        mask[:-1] = self._mask[1:]
        mask[-1] = 1.0
        if not self._set_context(self.estimate(window, mask)):
            return NON_FINITE_CONTEXT
        self._next_window, self._next_mask = self._window, self._mask
        self._window, self._mask = window, mask
        return ""

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"context", "window", "mask"}``: the online state adapting changes."""
        return {CONTEXT: self._context, WINDOW: self.window, MASK: self.mask}

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        """The empty window and its extrinsics: the unadapted policy."""
        return {CONTEXT: self._empty_context, WINDOW: self._empty_window, MASK: self._empty_mask}

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """Rebuild the window from the last ``length`` buffered transitions and recompute the
        extrinsics (``steps`` in ``[0, MAX_ADAPT_STEPS]``, default 1: any ``steps >= 1`` is
        that one update, ``0`` keeps the current state). ``from_meta`` (a bool or None)
        changes nothing. A non-finite estimate is discarded (``rolled_back``)."""
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
            reason = "0 steps: the current window is kept"
        elif n < self.min_transitions:
            reason = f"only {n} transitions buffered, need at least {self.min_transitions}"
        else:
            window = np.zeros((self.length, self.width), np.float32)
            mask = np.zeros(self.length, np.float32)
            k = min(n, self.length)
            for j in range(k):
                i = n - k + j
                window[self.length - k + j] = self._row(
                    data.obs[i], int(data.action[i]), data.next_obs[i]
                )
            mask[self.length - k :] = 1.0
            z = self.estimate(window, mask)
            if np.isfinite(z).all():
                self._window, self._mask = window, mask
                self._set_context(z)
                accepted = True
                reason = f"extrinsics estimated from the last {k} of {n} transitions"
            else:
                rolled_back = True
                reason = "the estimated extrinsics are not finite; the previous ones are kept"
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
            n_train=min(n, self.length) if accepted or rolled_back else 0,
            n_holdout=0,
            n_rejected=sum(self._rejected.values()),
            rejected=dict(self._rejected),
            seconds=time.perf_counter() - start,
        )

    def reset(self) -> None:
        """Back to the empty window and its extrinsics, with an empty buffer and no rejection
        counts."""
        self._window[...] = 0.0
        self._mask[...] = 0.0
        self._context = self._empty_context
        self._bind_context()
        self.buffer.clear()
        self._rejected.clear()

    def _checked_state(self, params: Mapping[str, np.ndarray], what: str, prefix: str = "") -> None:
        """``params`` are a state the runtime can reach (``ValueError`` naming ``what``, the
        key as ``prefix + key`` and what is allowed): a window, a mask and a context of the
        right shapes, finite float32; a mask of 0/1 entries whose ones are one block at the
        end (the window is front-padded, oldest row first); masked-out rows all 0; every
        valid row ``[obs, one_hot(action), next_obs - obs]`` with exactly one action slot
        set and ``obs`` and ``obs + (next_obs - obs)`` inside the observation bounds; and a
        context equal to ``history.onnx``'s estimate of the window and mask (within
        :data:`STATE_CONTEXT_TOLERANCE` relative to ``max(1, |estimate|)``)."""
        expected = self.meta_params
        unknown = sorted(set(params) - set(expected))
        if unknown:
            raise ValueError(f"{what}: unknown parameters {unknown} (only {sorted(expected)})")
        for key, meta in expected.items():
            if key not in params:
                raise ValueError(f"{what}: {key!r} is missing")
            problem = param_problem(params[key], meta)
            if problem:
                raise ValueError(f"{what}: {prefix}{key} {problem}")
        window, mask = np.asarray(params[WINDOW]), np.asarray(params[MASK])
        context = np.asarray(params[CONTEXT])
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError(f"{what}: {prefix}{MASK} entries must be 0 or 1, got {mask.tolist()}")
        length, k = self.length, int(mask.sum())
        start = length - k
        if not (mask[:start] == 0.0).all():
            raise ValueError(
                f"{what}: {prefix}{MASK} is {mask.tolist()}: the window is front-padded "
                f"(oldest row first), so its {k} valid rows must be one block at the end, "
                f"[0.0] * {start} + [1.0] * {k}"
            )
        padding = np.flatnonzero((window[:start] != 0.0).any(axis=1))
        if padding.size:
            i = int(padding[0])
            raise ValueError(
                f"{what}: {prefix}{WINDOW}[{i}] is masked out ({prefix}{MASK}[{i}] = 0) but "
                f"holds {window[i].tolist()}: padding rows must be all 0"
            )
        d, n = self.obs_dim, self.n_actions
        rows = window[start:].astype(np.float64)
        slots = rows[:, d : d + n]
        one_hot = np.isin(slots, (0.0, 1.0)).all(axis=1) & (slots.sum(axis=1) == 1.0)
        checks = [(~one_hot, f"action slots (columns {d}..{d + n - 1})", slots, None)]
        obs, change = rows[:, :d], rows[:, d + n :]
        low = self.obs_low.astype(np.float64)
        high = self.obs_high.astype(np.float64)
        outside = ((obs < low) | (obs > high)).any(axis=1)
        checks.append((outside, f"observation (columns 0..{d - 1})", obs, None))
        with np.errstate(invalid="ignore", over="ignore"):
            nxt = obs + change
            slack_low = _BOUND_SLACK * np.maximum(1.0, np.abs(low))
            slack_high = _BOUND_SLACK * np.maximum(1.0, np.abs(high))
            beyond = ((nxt < low - slack_low) | (nxt > high + slack_high)).any(axis=1)
        checks.append((beyond, f"next_obs - obs (columns {d + n}..{self.width - 1})", change, nxt))
        bounds = (
            f"the observation bounds low {self.obs_low.tolist()}, high {self.obs_high.tolist()}"
        )
        for bad, part, values, nxt_values in checks:
            if not bad.any():
                continue
            j = int(np.argmax(bad))
            where = f"{what}: {prefix}{WINDOW}[{start + j}] {part} is {values[j].tolist()}"
            if part.startswith("action"):
                raise ValueError(
                    f"{where}: a valid row holds one_hot(action), exactly one 1 and "
                    f"{n - 1} zeros ({int(bad.sum())} bad rows)"
                )
            if nxt_values is None:
                raise ValueError(f"{where}: outside {bounds} ({int(bad.sum())} bad rows)")
            raise ValueError(
                f"{where}: obs + it is {nxt_values[j].tolist()}, outside {bounds} "
                f"({int(bad.sum())} bad rows)"
            )
        estimate = self.estimate(window, mask)
        if not np.isfinite(estimate).all():
            raise ValueError(
                f"{what}: {HISTORY_GRAPH} estimates non-finite extrinsics {estimate.tolist()} "
                f"from {prefix}{WINDOW} and {prefix}{MASK}"
            )
        scale = np.maximum(1.0, np.abs(estimate.astype(np.float64)))
        diff = np.abs(context.astype(np.float64) - estimate) / scale
        if (diff > STATE_CONTEXT_TOLERANCE).any():
            raise ValueError(
                f"{what}: {prefix}{CONTEXT} is {context.tolist()}, but {HISTORY_GRAPH} "
                f"estimates {estimate.tolist()} from {prefix}{WINDOW} and {prefix}{MASK}: "
                f"the context must be that estimate (within {STATE_CONTEXT_TOLERANCE} relative "
                f"to max(1, |estimate|); the largest difference is {float(diff.max()):.3g})"
            )

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current window and extrinsics
        (``ValueError`` naming the key and what is allowed for an unknown or missing key, one
        that is not a finite float32 array of its shape, or a state the runtime cannot
        reach: see :meth:`_checked_state`)."""
        self._checked_state(params, "restore_params")
        self._restore(params)

    def _restore(self, params: Mapping[str, np.ndarray]) -> None:
        self._window = np.array(params[WINDOW], np.float32)
        self._mask = np.array(params[MASK], np.float32)
        self._context = frozen(np.array(params[CONTEXT], np.float32))
        self._bind_context()

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write the window, mask, extrinsics and the buffer to ``path`` (``.npz``) atomically
        (the state file of :mod:`robometa.deploy.state`)."""
        path = Path(path)
        arrays = state_arrays(
            self.bundle.identity, self.params, self.buffer.ordered(), self._rejected
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle; everything is
        checked before anything changes (``StateError`` naming the file, the key and what is
        allowed; the adapted parameters as :meth:`restore_params` checks them)."""
        path = Path(path)
        remove_stale_temp_files(path)
        arrays = read_state(path)
        # this kind's own rejection reason, which the shared state reader does not know
        extra = arrays.pop(REJECTED_PREFIX + NON_FINITE_CONTEXT, None)
        if extra is not None and (extra.shape != () or extra.dtype.kind not in "iu" or extra < 0):
            raise StateError(
                f"{path}: {REJECTED_PREFIX}{NON_FINITE_CONTEXT} is {extra!r}, expected a "
                "non-negative integer count"
            )
        params, data, rejected = parse_state(
            path,
            arrays,
            identity=self.bundle.identity,
            meta=self.meta_params,
            adapted=(CONTEXT, WINDOW, MASK),
            obs_dim=self.obs_dim,
            obs_low=self.obs_low,
            obs_high=self.obs_high,
            n_actions=self.n_actions,
        )
        try:
            self._checked_state(params, str(path), PARAM_PREFIX)
        except ValueError as err:
            raise StateError(str(err)) from None
        if extra is not None:
            rejected[NON_FINITE_CONTEXT] = int(extra)
        self._restore(params)
        self.buffer.clear()
        keep = max(0, len(data.reward) - self.buffer.capacity)
        for row in zip(*(a[keep:] for a in data), strict=True):
            self.buffer.add(*row)
        self._rejected = Counter(rejected)
