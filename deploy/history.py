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
``context_dim``, ``support_size`` (the buffer's default capacity) and, optionally,
``episodic`` (a boolean, default ``false``).

The ``rma`` family's bundles are not episodic: the window follows the robot across episodes
(``terminated`` is stored, nothing more). The ``dr-history`` family
(:mod:`robometa.bundle_dr_history`) writes ``"episodic": true``: its policy was trained
and is evaluated with the window of the *current episode* only, empty at every episode
start. For such a bundle the window never spans episodes: ``begin_episode()`` (which
:func:`robometa.deploy.loop.greedy_return` and :func:`robometa.deploy.loop.collect` call
after every ``robot.reset``; a hand-written control loop calls it when an episode starts)
empties the window and sets the context back to the empty window's, keeping the buffer and
the rejection counts; an accepted transition with ``terminated`` true (observed or
followed) is pushed and then ends the episode the same way; and ``adapt`` rebuilds the
window from the buffered transitions after the last terminal one only (a time limit is not
stored as terminal, so only ``begin_episode`` marks that boundary). For a non-episodic
bundle ``begin_episode()`` does nothing.

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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import (
    Bundle,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_bool,
    check_int,
    check_object,
    check_parameters,
    check_support_size,
    manifest_key,
    tensor_spec,
)
from robometa.deploy.checks import frozen
from robometa.deploy.conditioned import ConditionedAdapter, conditioned_layout, policy_io
from robometa.deploy.state import REJECTED_PREFIX, StateError
from robometa.deploy.transitions import Transitions, rejection

#: the kind's name (the manifest's ``kind``) and its manifest section
KIND = "history"
SECTION = "history"
HISTORY_GRAPH = "history.onnx"
#: the policy graph's extrinsics input, the history graph's output, an adapter parameter
CONTEXT = "context"
#: the history graph's inputs (and adapter parameters)
WINDOW = "window"
MASK = "mask"
#: the manifest key (in the ``history`` section) of a bundle whose window is per episode
EPISODIC = "episodic"
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
    return policy_io(graph, CONTEXT, int(_section(graph.manifest)["context_dim"]))


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
    buffer fits in ``MAX_BUFFER_BYTES``, ``episodic`` optional, ``true`` or ``false``)."""
    check_parameters(manifest, where)
    section = check_object(where, SECTION, manifest[SECTION])

    def key(name: str) -> Any:
        return manifest_key(section, name, where, f"{SECTION}.")

    check_int(where, "history.length", key("length"), 1, MAX_HISTORY)
    check_int(where, "history.context_dim", key("context_dim"), 1, MAX_CONTEXT_DIM)
    width = 2 * obs_dim + int(manifest["action"]["n"])
    check_int(where, "history.width", key("width"), width, width)
    check_support_size(where, "history.support_size", key("support_size"), obs_dim)
    if EPISODIC in section:
        check_bool(where, f"{SECTION}.{EPISODIC}", section[EPISODIC])


#: a history bundle: ``policy.onnx``, ``history.onnx``, ``params.npz``, and the manifest
#: sections ``history`` and ``parameters``.
HISTORY_LAYOUT = conditioned_layout(
    SECTION,
    _policy_io,
    ("history", GraphSpec(HISTORY_GRAPH, _history_io)),
    check_history_manifest,
)


# ---------------------------------------------------------------------- the runtime


class HistoryAdapter(ConditionedAdapter):
    """Acts with the extrinsics ``history.onnx`` estimates from the last transitions.

    Arguments as :class:`~robometa.deploy.conditioned.ConditionedAdapter` (``bundle`` of kind
    ``history``; ``capacity=None``: the manifest's ``history.support_size``).

    ``adapt`` rebuilds the window from the last ``length`` buffered transitions and
    recomputes the extrinsics (any ``steps >= 1`` is that one update; ``from_meta`` changes
    nothing); ``acting_with_meta`` acts with the empty window's extrinsics (the window still
    follows ``observe``); ``reset`` goes back to the empty window and its extrinsics.
    ``episodic`` (the manifest's ``history.episodic``): whether the window is per episode
    (:meth:`begin_episode`, a terminal transition and ``adapt`` end it: module docstring).
    ``restore_params`` and ``load_state`` check the state as :meth:`_checked_state` says.
    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    layout = HISTORY_LAYOUT
    #: support is collected by the online policy itself, as in training
    from_meta = False
    section = SECTION
    condition = CONTEXT
    graph = HISTORY_GRAPH
    graph_inputs = (WINDOW, MASK)
    kept = "window"

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """How it adapts: the extrinsics' size and the window it reads."""
        section = _section(bundle.manifest)
        within = ", within each episode" if section.get(EPISODIC, False) else ""
        return [
            (
                "adapts",
                f"a {section['context_dim']}-d extrinsics vector {HISTORY_GRAPH} estimates "
                f"from the last {section['length']} transitions, after every observed step"
                f"{within}",
            )
        ]

    def _read_section(self, section: Mapping[str, Any]) -> None:
        self.length, self.width = int(section["length"]), int(section["width"])
        self.context_dim = int(section["context_dim"])
        #: whether the window is per episode (the manifest's ``history.episodic``)
        self.episodic = bool(section.get(EPISODIC, False))
        self._empty_window = frozen(np.zeros((self.length, self.width), np.float32))
        self._empty_mask = frozen(np.zeros(self.length, np.float32))
        self._window = np.zeros((self.length, self.width), np.float32)
        self._mask = np.zeros(self.length, np.float32)
        # the next window is built here and swapped in once its estimate is finite
        self._next_window = np.zeros((self.length, self.width), np.float32)
        self._next_mask = np.zeros(self.length, np.float32)

    def _initial_vector(self) -> np.ndarray:
        """The empty window's extrinsics (the learned prior)."""
        return self.estimate(self._empty_window, self._empty_mask)

    @property
    def _history(self) -> Any:
        """The ``history.onnx`` session."""
        return self._graph

    # ------------------------------------------------------------------ the history

    @property
    def context(self) -> np.ndarray:
        """The current extrinsics (read-only)."""
        return self._vector

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
        feeds = dict(self._graph_feeds)
        feeds[WINDOW], feeds[MASK] = window, mask
        return self._graph.run([CONTEXT], feeds)[0]

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
        self._set_vector(z)
        return True

    def begin_episode(self) -> None:
        """An episode starts: for an episodic bundle, empty the window and go back to the
        empty window's extrinsics (as after loading or ``reset``, but the buffer and the
        rejection counts are kept); for a non-episodic one, nothing (its window follows the
        robot across episodes)."""
        if self.episodic:
            self._empty()

    def _empty(self) -> None:
        self._window[...] = 0.0
        self._mask[...] = 0.0
        self._vector = self._meta_vector
        self._bind_vector()

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """Store one transition, push it into the window and recompute the extrinsics (one
        history update); return whether it was accepted. Refused and counted, not stored:
        what :meth:`Adapter.observe` rejects, and a transition that makes ``history.onnx``
        estimate non-finite extrinsics (:data:`NON_FINITE_CONTEXT`; the window and
        extrinsics stay as they were). For an episodic bundle an accepted transition with
        ``terminated`` true then ends the episode (:meth:`begin_episode`'s empty window)."""
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        reason = rejection(
            o, action, reward, o2, terminated, self.obs_low, self.obs_high, self.n_actions
        ) or self._push(o, action, o2)
        if reason:
            self._rejected[reason] += 1
            return False
        self.buffer.add(o, int(action), float(reward), o2, float(terminated))
        if terminated and self.episodic:
            self._empty()
        return True

    def follow(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """One history update without storing the transition (greedy evaluation episodes);
        a transition ``observe`` would reject is skipped (False), not counted, and one whose
        estimate is not finite is skipped and counted (:data:`NON_FINITE_CONTEXT`). For an
        episodic bundle a followed transition with ``terminated`` true ends the episode, as
        in :meth:`observe`."""
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
        if terminated and self.episodic:
            self._empty()
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
        return {CONTEXT: self._vector, WINDOW: self.window, MASK: self.mask}

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        """The empty window and its extrinsics: the unadapted policy."""
        return {CONTEXT: self._meta_vector, WINDOW: self._empty_window, MASK: self._empty_mask}

    def _rederive(self, data: Transitions) -> tuple[bool, str, int]:
        """The window rebuilt from the last ``length`` buffered transitions (for an episodic
        bundle, of those after the last terminal one: the current episode's) and its
        extrinsics; a non-finite estimate is discarded."""
        n = len(data.reward)
        window = np.zeros((self.length, self.width), np.float32)
        mask = np.zeros(self.length, np.float32)
        first = 0  # the first transition the window may hold
        if self.episodic:
            ends = np.flatnonzero(data.terminated != 0.0)
            first = int(ends[-1]) + 1 if ends.size else 0
        k = min(n - first, self.length)
        for j in range(k):
            i = n - k + j
            window[self.length - k + j] = self._row(
                data.obs[i], int(data.action[i]), data.next_obs[i]
            )
        mask[self.length - k :] = 1.0
        z = self.estimate(window, mask)
        if not np.isfinite(z).all():
            return False, "the estimated extrinsics are not finite; the previous ones are kept", k
        self._window, self._mask = window, mask
        self._set_context(z)
        episode = f", this episode's (the {n - first} after the last terminal one)" if first else ""
        return True, f"extrinsics estimated from the last {k} of {n} transitions{episode}", k

    def reset(self) -> None:
        """Back to the empty window and its extrinsics, with an empty buffer and no rejection
        counts."""
        self._window[...] = 0.0
        self._mask[...] = 0.0
        super().reset()

    def _checked_state(self, params: Mapping[str, np.ndarray], what: str, prefix: str = "") -> None:
        """``params`` (a window, a mask and a context of the right shapes, finite float32:
        checked before) are a state the runtime can reach (``ValueError`` naming ``what``, the
        key as ``prefix + key`` and what is allowed): a mask of 0/1 entries whose ones are one block at the
        end (the window is front-padded, oldest row first); masked-out rows all 0; every
        valid row ``[obs, one_hot(action), next_obs - obs]`` with exactly one action slot
        set and ``obs`` and ``obs + (next_obs - obs)`` inside the observation bounds; and a
        context equal to ``history.onnx``'s estimate of the window and mask (within
        :data:`STATE_CONTEXT_TOLERANCE` relative to ``max(1, |estimate|)``)."""
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

    def _restore(self, params: Mapping[str, np.ndarray]) -> None:
        self._window = np.array(params[WINDOW], np.float32)
        self._mask = np.array(params[MASK], np.float32)
        self._set_vector(np.array(params[CONTEXT], np.float32))

    def _own_rejections(self, path: Path, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        """The count of :data:`NON_FINITE_CONTEXT`, which the shared state reader does not
        know (``StateError`` unless a non-negative integer)."""
        extra = arrays.pop(REJECTED_PREFIX + NON_FINITE_CONTEXT, None)
        if extra is None:
            return {}
        if extra.shape != () or extra.dtype.kind not in "iu" or extra < 0:
            raise StateError(
                f"{path}: {REJECTED_PREFIX}{NON_FINITE_CONTEXT} is {extra!r}, expected a "
                "non-negative integer count"
            )
        return {NON_FINITE_CONTEXT: int(extra)}
