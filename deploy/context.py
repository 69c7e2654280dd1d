"""The ``context`` bundle kind: ``adapt`` infers a context vector with ``encoder.onnx``.

The ``context`` method family (:mod:`robometa.methods.context`, PEARL/MQL-style) exports this
kind. Its bundles hold :data:`CONTEXT_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | ``obs`` (B, obs_dim), ``context`` (context_dim,) and the ``param:`` inputs Q uses -> ``q_values``, ``action`` (the first maximum) |
| ``encoder`` (``encoder.onnx``) | the encoder's ``param:`` inputs and a transition batch of any size >= 1 (``obs``, ``action`` int64, ``reward``, ``next_obs``) -> ``context`` (context_dim,): the mean of the transitions' embeddings |

and ``params.npz`` (every network parameter), plus the manifest section ``context``
(``dim``, ``support_size``: the largest support encoded in training, the buffer's default
capacity).

:class:`ContextAdapter` acts with the current context (zeros after loading and ``reset``:
the policy that collects the support, as in training) and ``adapt`` recomputes the context
from the buffered transitions, one forward pass: there is no loss to guard, so an inferred
context is kept unless it is not finite. Its ``params`` are ``{"context": z}`` (what
``save_state``, ``load_state`` and ``restore_params`` carry); the network's parameters never
change.
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
from robometa.deploy.state import parse_state, read_state, state_arrays
from robometa.deploy.transitions import MAX_CAPACITY, TransitionBuffer

#: the kind's name (the manifest's ``kind``)
KIND = "context"
ENCODER_GRAPH = "encoder.onnx"
#: the policy graph's context input, the encoder graph's output, and the adapter's parameter
CONTEXT = "context"
#: the encoder graph's transition inputs (no ``terminated``: the encoder does not read it)
ENCODER_INPUTS: tuple[str, ...] = ("obs", "action", "reward", "next_obs")
MAX_CONTEXT_DIM = 1024  # the config's network.context_dim range

# ---------------------------------------------------------------------- the bundle layout


def _context_dim(manifest: Mapping[str, Any]) -> int:
    return int(manifest[CONTEXT]["dim"])


def _policy_io(graph: GraphContext) -> GraphIO:
    obs_dim, n = graph.manifest["observation"]["shape"][0], graph.manifest["action"]["n"]
    dim = _context_dim(graph.manifest)
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


def _encoder_io(graph: GraphContext) -> GraphIO:
    obs_dim = graph.manifest["observation"]["shape"][0]
    inputs, feeds = {}, {}
    for name, shape in zip(ENCODER_INPUTS, [(obs_dim,), (), (), (obs_dim,)], strict=True):
        dtype = "int64" if name == "action" else "float"
        inputs[name] = tensor_spec(dtype, shape, batch=True)
        feeds[name] = np.zeros((2, *shape), np.int64 if dtype == "int64" else np.float32)
    outputs = {CONTEXT: tensor_spec("float", (_context_dim(graph.manifest),))}
    return GraphIO(inputs, feeds, outputs)


def check_context_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The context kind's sections: ``parameters`` (shapes) and ``context`` (``dim`` in
    ``[1, MAX_CONTEXT_DIM]``, ``support_size`` in ``[1, MAX_SUPPORT_SIZE]`` whose transition
    buffer fits in ``MAX_BUFFER_BYTES``)."""
    check_parameters(manifest, where)
    section = check_object(where, CONTEXT, manifest[CONTEXT])
    check_int(
        where, "context.dim", manifest_key(section, "dim", where, "context."), 1, MAX_CONTEXT_DIM
    )
    support = manifest_key(section, "support_size", where, "context.")
    check_int(where, "context.support_size", support, 1, MAX_SUPPORT_SIZE)
    buffer = support * (2 * obs_dim + 3) * 4
    if buffer > MAX_BUFFER_BYTES:
        raise BundleError(
            f"{where}: context.support_size {support} transitions of obs_dim {obs_dim} need a "
            f"{buffer}-byte buffer, more than the {MAX_BUFFER_BYTES} allowed"
        )


#: a context bundle: ``policy.onnx``, ``encoder.onnx``, ``params.npz``, and the manifest
#: sections ``context`` and ``parameters``.
CONTEXT_LAYOUT = BundleLayout(
    graphs={
        "policy": GraphSpec(POLICY_GRAPH, _policy_io, POLICY_GRAPH_SPEC.check_probe),
        "encoder": GraphSpec(ENCODER_GRAPH, _encoder_io),
    },
    arrays=(PARAMS_ARRAY,),
    sections=(CONTEXT, "parameters"),
    check_manifest=check_context_manifest,
)


# ---------------------------------------------------------------------- the runtime


class ContextAdapter(Adapter):
    """Acts with the context a forward pass of ``encoder.onnx`` infers from the buffer.

    Args:
        bundle: a verified :class:`Bundle` of kind ``context``.
        capacity: ring-buffer size in ``[1, MAX_CAPACITY]``; ``None``: the manifest's
            ``context.support_size`` (the largest support encoded in training).
        min_transitions: fewer buffered transitions than this (in ``[1, MAX_CAPACITY]``) and
            ``adapt`` keeps the current context (reported as not accepted).
        threads: intra-op threads per session, in ``[1, MAX_THREADS]``.

    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    layout = CONTEXT_LAYOUT
    #: support is collected acting with the zero context, as in meta-training
    from_meta = True

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
        self.context_dim = _context_dim(bundle.manifest)
        support = int(bundle.manifest[CONTEXT]["support_size"])
        if capacity is None and support > MAX_CAPACITY:
            raise BundleError(
                f"{bundle.path / MANIFEST_FILE}: context.support_size is {support}, more than "
                f"MAX_CAPACITY ({MAX_CAPACITY}) of robometa.deploy.transitions"
            )
        self.support_size = support
        self._weights = {k: frozen(v) for k, v in bundle.params.items()}
        self._zero = frozen(np.zeros(self.context_dim, np.float32))
        options = session_options(threads)
        self._policy = open_session(bundle, POLICY_GRAPH, options, PROVIDERS)
        self._encoder = open_session(bundle, ENCODER_GRAPH, options, PROVIDERS)
        self._policy_params = param_inputs(
            [i.name for i in self._policy.get_inputs()],
            {OBS_INPUT, CONTEXT},
            self._weights,
            bundle.file(POLICY_GRAPH),
        )
        self._encoder_params = param_inputs(
            [i.name for i in self._encoder.get_inputs()],
            set(ENCODER_INPUTS),
            self._weights,
            bundle.file(ENCODER_GRAPH),
        )
        self._bound = BoundPolicy(self._policy, self.obs_dim, self.n_actions)
        self._bound.bind_params(self._policy_params, self._weights)
        self._context = self._zero
        self._acting_meta = False
        self._bind_context()
        self.buffer = TransitionBuffer(capacity or support, self.obs_dim)

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """How it adapts: the context's size and the support it was trained on."""
        section = bundle.manifest[CONTEXT]
        return [
            (
                "adapts",
                f"a {section['dim']}-d context inferred by {ENCODER_GRAPH} from up to "
                f"{section['support_size']} transitions (one forward pass)",
            )
        ]

    # ------------------------------------------------------------------ acting

    def _acting_context(self) -> np.ndarray:
        return self._zero if self._acting_meta else self._context

    def _bind_context(self) -> None:
        self._bound.bind_input(CONTEXT, self._acting_context())

    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)`` under the current
        context (``ValueError`` for a wrong shape or a non-finite entry; ``BundleError`` for
        an action outside ``[0, n_actions)``)."""
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

    # ------------------------------------------------------------------ adapting

    @property
    def context(self) -> np.ndarray:
        """The current context (read-only)."""
        return self._context

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"context": z}``: what adapting changes."""
        return {CONTEXT: self._context}

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        """``{"context": zeros}``: the unadapted policy."""
        return {CONTEXT: self._zero}

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[ContextAdapter]:
        """Within the block ``act`` and ``q_values`` use the zero context (the policy support
        was collected with in training); afterwards the current one again."""
        outer = self._acting_meta
        self._acting_meta = True
        self._bind_context()
        try:
            yield self
        finally:
            self._acting_meta = outer
            self._bind_context()

    def encode(self, data: Any) -> np.ndarray:
        """The context of a transition batch (``Transitions`` of at least one row)."""
        feeds: dict[str, Any] = {PARAM_PREFIX + k: self._weights[k] for k in self._encoder_params}
        feeds.update(zip(ENCODER_INPUTS, data[:4], strict=True))
        return self._encoder.run([CONTEXT], feeds)[0]

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """Recompute the context from the buffered transitions: one forward pass of the
        encoder (``steps`` in ``[0, MAX_ADAPT_STEPS]``, default 1: any ``steps >= 1`` is that
        one pass, ``0`` keeps the current context). ``from_meta`` (a bool or None) changes
        nothing: the context depends on the transitions only. A non-finite context is
        discarded (``rolled_back``)."""
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
            reason = "0 steps: the current context is kept"
        elif n < self.min_transitions:
            reason = f"only {n} transitions buffered, need at least {self.min_transitions}"
        else:
            z = self.encode(data)
            if np.isfinite(z).all():
                self._context = frozen(z)
                self._bind_context()
                accepted = True
                reason = f"context inferred from {n} transitions"
            else:
                rolled_back = True
                reason = "the inferred context is not finite; the previous one is kept"
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
        """Back to the zero context, with an empty buffer and no rejection counts."""
        self._context = self._zero
        self._bind_context()
        self.buffer.clear()
        self._rejected.clear()

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current context (``ValueError``
        naming the key for an unknown key, a missing context, or one that is not a finite
        float32 array of its shape)."""
        unknown = sorted(set(params) - {CONTEXT})
        if unknown:
            raise ValueError(f"restore_params: unknown parameters {unknown} (only {CONTEXT!r})")
        if CONTEXT not in params:
            raise ValueError(f"restore_params: {CONTEXT!r} is missing")
        problem = param_problem(params[CONTEXT], self._zero)
        if problem:
            raise ValueError(f"restore_params: {CONTEXT} {problem}")
        self._context = frozen(params[CONTEXT])
        self._bind_context()

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write the context and the buffer to ``path`` (``.npz``) atomically (the state file
        of :mod:`robometa.deploy.state`, ``param:context`` its parameter)."""
        path = Path(path)
        arrays = state_arrays(
            self.bundle.identity, {CONTEXT: self._context}, self.buffer.ordered(), self._rejected
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle; everything is
        checked before anything changes (``StateError`` naming the file and key)."""
        path = Path(path)
        remove_stale_temp_files(path)
        params, data, rejected = parse_state(
            path,
            read_state(path),
            identity=self.bundle.identity,
            meta={CONTEXT: self._zero},
            adapted=(CONTEXT,),
            obs_dim=self.obs_dim,
            obs_low=self.obs_low,
            obs_high=self.obs_high,
            n_actions=self.n_actions,
        )
        self._context = frozen(params[CONTEXT])
        self._bind_context()
        self.buffer.clear()
        keep = max(0, len(data.reward) - self.buffer.capacity)
        for row in zip(*(a[keep:] for a in data), strict=True):
            self.buffer.add(*row)
        self._rejected = Counter(rejected)
