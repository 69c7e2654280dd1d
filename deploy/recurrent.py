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

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import (
    BATCH_INPUTS,
    NEW_PREFIX,
    Bundle,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_int,
    check_object,
    check_parameters,
    check_support_size,
    manifest_key,
    tensor_spec,
    transition_io,
)
from robometa.deploy.conditioned import ConditionedAdapter, conditioned_layout, policy_io
from robometa.deploy.transitions import Transitions, rejection

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
    return policy_io(graph, HIDDEN, _hidden_size(graph.manifest))


def _memory_io(graph: GraphContext) -> GraphIO:
    size = _hidden_size(graph.manifest)
    batch_inputs, batch_feeds = transition_io(
        graph.manifest["observation"]["shape"][0], MEMORY_INPUTS
    )
    inputs = {HIDDEN: tensor_spec("float", (size,), batch=True), **batch_inputs}
    feeds = {HIDDEN: np.zeros((2, size), np.float32), **batch_feeds}
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
    check_support_size(where, f"{KIND}.support_size", support, obs_dim)


#: a recurrent bundle: ``policy.onnx``, ``memory.onnx``, ``params.npz``, and the manifest
#: sections ``recurrent`` and ``parameters``.
RECURRENT_LAYOUT = conditioned_layout(
    KIND,
    _policy_io,
    ("memory", GraphSpec(MEMORY_GRAPH, _memory_io)),
    check_recurrent_manifest,
)


# ---------------------------------------------------------------------- the runtime


class RecurrentAdapter(ConditionedAdapter):
    """Acts with a GRU state that every observed transition advances (module docstring).

    Arguments as :class:`~robometa.deploy.conditioned.ConditionedAdapter` (``bundle`` of kind
    ``recurrent``; ``capacity=None``: the manifest's ``recurrent.support_size``).

    ``act`` and ``q_values`` read the state and never change it. ``adapt`` re-derives the
    state from the buffered transitions, oldest first from zeros (any ``steps >= 1`` is that
    one pass; ``from_meta`` changes nothing: the pass always starts from zeros).
    ``restore_params`` and ``load_state`` also refuse a state with an entry outside
    ``[-HIDDEN_BOUND, HIDDEN_BOUND]``. One adapter serves one control loop: it is not safe
    to call from several threads at once.
    """

    layout = RECURRENT_LAYOUT
    #: support is collected acting with the current state, which follows the robot online
    #: (as a training life's support phase does), not with the zero state
    from_meta = False
    section = KIND
    condition = HIDDEN
    graph = MEMORY_GRAPH
    graph_inputs = (HIDDEN, *MEMORY_INPUTS)
    kept = "state"

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

    def _read_section(self, section: Mapping[str, Any]) -> None:
        self.hidden_size = int(section["hidden_size"])
        self._non_finite = 0

    def _initial_vector(self) -> np.ndarray:
        """The zero state: the policy before it has seen a transition."""
        return np.zeros(self.hidden_size, np.float32)

    # ------------------------------------------------------------------ the state

    @property
    def hidden(self) -> np.ndarray:
        """The current state (read-only)."""
        return self._vector

    @property
    def non_finite_states(self) -> int:
        """Transitions (observed or followed) since the last ``reset`` whose GRU step gave a
        non-finite state, so the state was left as it was."""
        return self._non_finite

    def memory_step(self, hidden: np.ndarray, data: Transitions) -> np.ndarray:
        """One raw run of ``memory.onnx``: the states ``(B, hidden_size)`` after one
        transition per row of ``data`` from the states ``hidden`` ``(B, hidden_size)``."""
        feeds = dict(self._graph_feeds)
        feeds[HIDDEN] = np.asarray(hidden, np.float32)
        feeds.update(zip(MEMORY_INPUTS, data, strict=True))
        return self._graph.run([NEW_HIDDEN], feeds)[0]

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
        new = self.memory_step(self._vector[None], data)[0]
        if not np.isfinite(new).all():
            self._non_finite += 1
            warnings.warn(
                f"{self.bundle.file(MEMORY_GRAPH)}: a transition gave a non-finite GRU state; "
                "the previous state is kept (counted in non_finite_states and reported by adapt)",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._set_vector(new)
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

    def derive(self, data: Transitions) -> np.ndarray:
        """The state after ``data``'s transitions in their order, from zeros."""
        h = np.zeros((1, self.hidden_size), np.float32)
        for i in range(len(data.reward)):
            h = self.memory_step(h, data.take(np.array([i])))
        return h[0]

    def _rederive(self, data: Transitions) -> tuple[bool, str, int]:
        """The state re-derived from the buffer, oldest first from zeros; a non-finite one
        is discarded."""
        n = len(data.reward)
        h = self.derive(data)
        if not np.isfinite(h).all():
            return False, "the re-derived state is not finite; the previous one is kept", n
        self._set_vector(h)
        return True, f"state re-derived from {n} transitions", n

    def _adapt_note(self) -> str:
        """The transitions since the last ``reset`` whose step gave a non-finite state."""
        if not self._non_finite:
            return ""
        return (
            f"; {self._non_finite} transition(s) since the last reset gave a non-finite "
            "state and were not followed (non_finite_states)"
        )

    def reset(self) -> None:
        """Back to the zero state, with an empty buffer, no rejection counts and no
        non-finite state count."""
        super().reset()
        self._non_finite = 0

    def _checked_state(self, params: Mapping[str, np.ndarray], what: str, prefix: str = "") -> None:
        """A restored or loaded state must be within ``[-HIDDEN_BOUND, HIDDEN_BOUND]``
        (:func:`hidden_problem`)."""
        problem = hidden_problem(np.asarray(params[HIDDEN]))
        if problem:
            raise ValueError(f"{what}: {prefix}{HIDDEN} {problem}")
