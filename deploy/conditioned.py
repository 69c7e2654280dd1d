"""What the kinds whose ``policy.onnx`` is conditioned on one vector the adapter holds share.

The ``context`` (:mod:`robometa.deploy.context`), ``history``
(:mod:`robometa.deploy.history`) and ``recurrent`` (:mod:`robometa.deploy.recurrent`) kinds
act with a policy graph that takes ``obs`` (B, obs_dim) and one conditioning vector (a
context, extrinsics, a GRU state: :func:`policy_io`) besides its ``param:`` inputs; a second
graph of the bundle updates that vector from transitions, and the network's parameters never
change. :class:`ConditionedAdapter` is their runtime's shared part: the constructor's
arguments and checks, the two sessions and their parameter feeds, ``act`` (the bound hot
path of :class:`~robometa.deploy.adapter.BoundPolicyAdapter`), ``q_values``, ``acting_with_meta``, ``params``/``meta_params``, ``reset``, the
``adapt`` report, and the ``restore_params``/``save_state``/``load_state`` skeleton. Each kind
contributes its manifest section, its second graph, how the vector is recomputed
(:meth:`ConditionedAdapter._rederive`, ``observe``/``follow`` where they update it), its own
state arrays and the checks of a restored state (:meth:`ConditionedAdapter._checked_state`).
"""

from __future__ import annotations

import abc
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from robometa.deploy.adapter import BoundPolicyAdapter
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    MANIFEST_FILE,
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
    tensor_spec,
)
from robometa.deploy.checks import check_count, frozen, param_problem
from robometa.deploy.files import atomic_write, remove_stale_temp_files
from robometa.deploy.gradient import POLICY_GRAPH_SPEC
from robometa.deploy.guard import MAX_ADAPT_STEPS, AdaptReport
from robometa.deploy.sessions import (
    PROVIDERS,
    BoundPolicy,
    open_session,
    param_inputs,
    session_options,
)
from robometa.deploy.state import StateError, read_state, state_arrays
from robometa.deploy.transitions import MAX_CAPACITY, TransitionBuffer, Transitions


def policy_io(graph: GraphContext, name: str, dim: int) -> GraphIO:
    """A conditioned ``policy.onnx``: ``obs`` (B, obs_dim) and the vector ``name`` (dim,) ->
    ``q_values`` (B, n_actions), ``action`` (B,)."""
    obs_dim, n = graph.manifest["observation"]["shape"][0], graph.manifest["action"]["n"]
    return GraphIO(
        inputs={
            OBS_INPUT: tensor_spec("float", (obs_dim,), batch=True),
            name: tensor_spec("float", (dim,)),
        },
        feeds={OBS_INPUT: np.zeros((2, obs_dim), np.float32), name: np.zeros(dim, np.float32)},
        outputs={
            Q_OUTPUT: tensor_spec("float", (n,), batch=True),
            ACTION_OUTPUT: tensor_spec("int64", (), batch=True),
        },
    )


def conditioned_layout(
    section: str,
    policy: Callable[[GraphContext], GraphIO],
    graph: tuple[str, GraphSpec],
    check_manifest: Callable[[Mapping[str, Any], Path, int], None],
) -> BundleLayout:
    """A conditioned kind's bundle: ``policy.onnx`` (``policy``: :func:`policy_io` of its
    vector, with the gradient kind's probe check), the kind's second graph (``(key,
    spec)``), ``params.npz``, and the manifest sections ``section`` and ``parameters``."""
    key, spec = graph
    return BundleLayout(
        graphs={
            "policy": GraphSpec(POLICY_GRAPH, policy, POLICY_GRAPH_SPEC.check_probe),
            key: spec,
        },
        arrays=(PARAMS_ARRAY,),
        sections=(section, "parameters"),
        check_manifest=check_manifest,
    )


class ConditionedAdapter(BoundPolicyAdapter):
    """Acts with a policy conditioned on one vector the adapter holds (module docstring).

    Args:
        bundle: a verified :class:`Bundle` of the kind.
        capacity: ring-buffer size in ``[1, MAX_CAPACITY]``; ``None``: the manifest's
            ``<section>.support_size``.
        min_transitions: fewer buffered transitions than this (in ``[1, MAX_CAPACITY]``) and
            ``adapt`` keeps the current vector (reported as not accepted).
        threads: intra-op threads per session, in ``[1, MAX_THREADS]``.

    A kind sets the class attributes below and implements :meth:`_read_section`,
    :meth:`_initial_vector` and :meth:`_rederive`. One adapter serves one control loop: it is
    not safe to call from several threads at once.
    """

    #: the manifest section holding ``support_size`` (and the kind's sizes)
    section: ClassVar[str]
    #: the policy graph's conditioning input, and the adapter's parameter holding it
    condition: ClassVar[str]
    #: the graph that computes the vector, and its inputs besides ``param:`` ones
    graph: ClassVar[str]
    graph_inputs: ClassVar[tuple[str, ...]]
    #: what ``adapt(0)`` keeps, as its report says (``the current <kept> is kept``)
    kept: ClassVar[str]

    def __init__(
        self,
        bundle: Bundle,
        *,
        capacity: int | None = None,
        min_transitions: int = 1,
        threads: int = 1,
    ) -> None:
        capacity, threads = self._checked_counts(capacity, min_transitions, threads)
        self._set_bundle(bundle)
        section = bundle.manifest[self.section]
        self._read_section(section)
        support = int(section["support_size"])
        if capacity is None and support > MAX_CAPACITY:
            raise BundleError(
                f"{bundle.path / MANIFEST_FILE}: {self.section}.support_size is {support}, "
                f"more than MAX_CAPACITY ({MAX_CAPACITY}) of robometa.deploy.transitions"
            )
        self.support_size = support
        self._weights = {k: frozen(v) for k, v in bundle.params.items()}
        options = session_options(threads)
        self._policy = open_session(bundle, POLICY_GRAPH, options, PROVIDERS)
        self._graph = open_session(bundle, self.graph, options, PROVIDERS)
        self._policy_params = param_inputs(
            [i.name for i in self._policy.get_inputs()],
            {OBS_INPUT, self.condition},
            self._weights,
            bundle.file(POLICY_GRAPH),
        )
        graph_params = param_inputs(
            [i.name for i in self._graph.get_inputs()],
            set(self.graph_inputs),
            self._weights,
            bundle.file(self.graph),
        )
        #: the second graph's ``param:`` feeds (its other inputs are added per run)
        self._graph_feeds: dict[str, Any] = {
            PARAM_PREFIX + k: self._weights[k] for k in graph_params
        }
        # act(): preallocated input and outputs, bound once.
        self._bound = BoundPolicy(self._policy, self.obs_dim, self.n_actions)
        self._obs1, self._a1 = self._bound.obs, self._bound.action
        self._binding = self._bound.binding
        self._bound.bind_params(self._policy_params, self._weights)
        self._meta_vector = frozen(self._initial_vector())
        self._vector = self._meta_vector
        self._acting_meta = False
        self._bind_vector()
        self.buffer = TransitionBuffer(capacity or support, self.obs_dim)

    # ------------------------------------------------------------------ each kind's own

    @abc.abstractmethod
    def _read_section(self, section: Mapping[str, Any]) -> None:
        """Read the kind's sizes from its manifest section (before the sessions open)."""

    @abc.abstractmethod
    def _initial_vector(self) -> np.ndarray:
        """The vector after loading and ``reset`` (the sessions are open)."""

    @abc.abstractmethod
    def _rederive(self, data: Transitions) -> tuple[bool, str, int]:
        """``adapt``'s one pass over the buffered ``data`` (at least ``min_transitions``):
        (whether the new vector was kept, the report's reason, transitions it read)."""

    def _adapt_note(self) -> str:
        """Appended to every ``adapt`` reason ('' by default)."""
        return ""

    def _checked_state(self, params: Mapping[str, np.ndarray], what: str, prefix: str = "") -> None:
        """The kind's checks of a restored or loaded state whose keys, dtypes and shapes are
        right (``ValueError`` naming ``what`` and the key as ``prefix + key``); none here."""

    def _restore(self, params: Mapping[str, np.ndarray]) -> None:
        """Make checked ``params`` the current state."""
        self._set_vector(params[self.condition])

    # ------------------------------------------------------------------ acting

    def _acting_vector(self) -> np.ndarray:
        return self._meta_vector if self._acting_meta else self._vector

    def _bind_vector(self) -> None:
        self._bound.bind_input(self.condition, self._acting_vector())

    def _set_vector(self, value: np.ndarray) -> None:
        self._vector = frozen(value)
        self._bind_vector()

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)`` under the
        current vector."""
        batch, single = self._checked_batch(obs)
        feeds = {PARAM_PREFIX + k: self._weights[k] for k in self._policy_params}
        feeds[OBS_INPUT] = batch
        feeds[self.condition] = self._acting_vector()
        q = self._policy.run([Q_OUTPUT], feeds)[0]
        return q[0] if single else q

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[ConditionedAdapter]:
        """Within the block ``act`` and ``q_values`` use the vector of :attr:`meta_params`
        (the unadapted policy; ``observe`` still updates the current one); afterwards the
        current vector again."""
        outer = self._acting_meta
        self._acting_meta = True
        self._bind_vector()
        try:
            yield self
        finally:
            self._acting_meta = outer
            self._bind_vector()

    # ------------------------------------------------------------------ adapting

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{condition: vector}``: what adapting changes."""
        return {self.condition: self._vector}

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        """``{condition: vector}`` of the unadapted policy."""
        return {self.condition: self._meta_vector}

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """Recompute the vector from the buffered transitions, one pass (``steps`` in ``[0,
        MAX_ADAPT_STEPS]``, default 1: any ``steps >= 1`` is that one pass, ``0`` keeps the
        current state). ``from_meta`` (a bool or None) changes nothing. A non-finite result
        is discarded (``rolled_back``)."""
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
        accepted, rolled_back, n_train = False, False, 0
        if steps == 0:
            reason = f"0 steps: the current {self.kept} is kept"
        elif n < self.min_transitions:
            reason = f"only {n} transitions buffered, need at least {self.min_transitions}"
        else:
            accepted, reason, n_train = self._rederive(data)
            rolled_back = not accepted
        nan = math.nan
        return AdaptReport(
            steps=min(steps, 1),
            accepted=accepted,
            rolled_back=rolled_back,
            reason=reason + self._adapt_note(),
            loss_before=nan,
            loss_after=nan,
            train_loss_before=nan,
            train_loss_after=nan,
            n_transitions=n,
            n_train=n_train,
            n_holdout=0,
            n_rejected=sum(self._rejected.values()),
            rejected=dict(self._rejected),
            seconds=time.perf_counter() - start,
        )

    def reset(self) -> None:
        """Back to the vector of :attr:`meta_params`, with an empty buffer and no rejection
        counts."""
        self._vector = self._meta_vector
        self._bind_vector()
        self.buffer.clear()
        self._rejected.clear()

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current state (``ValueError``
        naming the key for an unknown key, a missing one, one that is not a finite float32
        array of its shape, or a state the kind's :meth:`_checked_state` refuses)."""
        expected = self.meta_params
        unknown = sorted(set(params) - set(expected))
        if unknown:
            # one key is named alone, several as their sorted list
            only = repr(self.condition) if len(expected) == 1 else sorted(expected)
            raise ValueError(f"restore_params: unknown parameters {unknown} (only {only})")
        for key, meta in expected.items():
            if key not in params:
                raise ValueError(f"restore_params: {key!r} is missing")
            problem = param_problem(params[key], meta)
            if problem:
                raise ValueError(f"restore_params: {key} {problem}")
        self._checked_state(params, "restore_params")
        self._restore(params)

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write :attr:`params` and the buffer to ``path`` (``.npz``) atomically (the state
        file of :mod:`robometa.deploy.state`, ``param:<key>`` per key of :attr:`params`)."""
        path = Path(path)
        arrays = state_arrays(
            self.bundle.identity, self.params, self.buffer.ordered(), self._rejected
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def _own_rejections(self, path: Path, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        """Take the counts of the kind's own rejection reasons (which the shared state reader
        does not know) out of a state file's ``arrays``; none here."""
        return {}

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle; everything is
        checked before anything changes (``StateError`` naming the file and key; the
        parameters also as :meth:`_checked_state` checks them)."""
        path = Path(path)
        remove_stale_temp_files(path)
        arrays = read_state(path)
        own = self._own_rejections(path, arrays)
        meta = self.meta_params
        params, data, rejected = self._parse_saved(path, arrays, meta, tuple(meta))
        try:
            self._checked_state(params, str(path), PARAM_PREFIX)
        except ValueError as err:
            raise StateError(str(err)) from None
        rejected.update(own)
        self._restore(params)
        self._restore_buffer(data, rejected)
