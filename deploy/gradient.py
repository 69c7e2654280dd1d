"""The ``gradient`` bundle kind: ``adapt`` takes guarded gradient steps of ``adapt.onnx``.

Every method robometa trains exports this kind (MAML, ANIL, CAVIA, Meta-SGD, and fine-tuning
for policies without learning rates). Its bundles hold :data:`GRADIENT_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | ``obs`` and the ``param:`` inputs Q uses -> ``q_values``, ``action`` (the first maximum) |
| ``adapt`` (``adapt.onnx``) | every ``param:``, ``lr:`` per adapted parameter, the transition batch, ``gamma`` -> ``new:`` per adapted parameter, ``loss`` |

and ``params.npz`` and ``lrs.npz`` (see :mod:`robometa.deploy.bundle`).

:class:`GradientAdapter` runs ``adapt.onnx`` (the exported training ``adapt_step``) on the
buffered transitions under the guard of :mod:`robometa.deploy.guard` (hold-out, bounded
steps, rollback). Parameters are only replaced at the end of an accepted call, so nothing can
leave them half-updated. ``act`` is the bound hot path of :class:`BoundPolicy`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.adapter import BoundPolicyAdapter
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    ADAPT_GRAPH,
    BATCH_INPUTS,
    GAMMA_INPUT,
    GRAPH_KEYS,
    INNER_KINDS,
    LOSS_OUTPUT,
    LR_PREFIX,
    LRS_FILE,
    MANIFEST_FILE,
    MAX_INNER_STEPS,
    NEW_PREFIX,
    OBS_INPUT,
    PARAM_PREFIX,
    PARAMS_ARRAY,
    POLICY_GRAPH,
    Q_OUTPUT,
    ArrayShapes,
    ArraySpec,
    Bundle,
    BundleError,
    BundleLayout,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_bool,
    check_int,
    check_object,
    check_parameters,
    check_support_size,
    fail,
    is_number,
    manifest_key,
    tensor_spec,
    transition_io,
)
from robometa.deploy.checks import (
    check_count,
    check_number,
    frozen,
    param_problem,
)
from robometa.deploy.files import atomic_write, remove_stale_temp_files
from robometa.deploy.guard import MAX_ADAPT_STEPS, AdaptReport, bounded, split, worse
from robometa.deploy.sessions import (
    PROVIDERS,
    BoundPolicy,
    open_session,
    param_inputs,
    session_options,
)
from robometa.deploy.state import read_state, state_arrays
from robometa.deploy.transitions import (
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    TransitionBuffer,
    Transitions,
)

# ---------------------------------------------------------------------- the bundle layout


def _policy_io(graph: GraphContext) -> GraphIO:
    obs_dim, n = graph.manifest["observation"]["shape"][0], graph.manifest["action"]["n"]
    return GraphIO(
        inputs={OBS_INPUT: tensor_spec("float", (obs_dim,), batch=True)},
        feeds={OBS_INPUT: np.zeros((2, obs_dim), np.float32)},
        outputs={
            Q_OUTPUT: tensor_spec("float", (n,), batch=True),
            ACTION_OUTPUT: tensor_spec("int64", (), batch=True),
        },
    )


def _policy_probe(where: Path, values: Mapping[str, np.ndarray], manifest: Mapping) -> None:
    """The policy's action is in ``[0, n)`` and the first maximum of its Q-values."""
    n = manifest["action"]["n"]
    action, q = values[ACTION_OUTPUT], values[Q_OUTPUT]
    if np.any(action < 0) or np.any(action >= n):
        raise BundleError(
            f"{where}: output {ACTION_OUTPUT!r} is {action.tolist()} on a probe batch, "
            f"outside [0, {n})"
        )
    if np.isfinite(q).all() and not np.array_equal(action, q.argmax(axis=1)):
        raise BundleError(
            f"{where}: output {ACTION_OUTPUT!r} is {action.tolist()} on a probe batch, not "
            f"the first maximum of {Q_OUTPUT!r} ({q.argmax(axis=1).tolist()})"
        )


def _adapt_io(graph: GraphContext) -> GraphIO:
    missing = [k for k in graph.lrs if k not in graph.used]
    if missing:
        raise BundleError(
            f"{graph.where}: no {PARAM_PREFIX} input for adapted parameters {missing}"
        )
    obs_dim = graph.manifest["observation"]["shape"][0]
    inputs, feeds = {}, {}
    for k, lr in graph.lrs.items():
        inputs[LR_PREFIX + k] = tensor_spec("float", lr.shape)
        feeds[LR_PREFIX + k] = lr
    batch_inputs, batch_feeds = transition_io(obs_dim)
    inputs.update(batch_inputs)
    feeds.update(batch_feeds)
    inputs[GAMMA_INPUT] = tensor_spec("float", ())
    feeds[GAMMA_INPUT] = np.asarray(graph.manifest["discount"], np.float32)
    outputs = {NEW_PREFIX + k: tensor_spec("float", graph.params[k].shape) for k in graph.lrs}
    outputs[LOSS_OUTPUT] = tensor_spec("float", ())
    return GraphIO(inputs, feeds, outputs)


def check_gradient_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The gradient kind's manifest sections: ``discount``, ``parameters`` (with their
    ``adapted`` flags) and ``inner`` (the rules are in :mod:`robometa.deploy.bundle`)."""
    gamma = manifest["discount"]
    if not is_number(gamma) or not 0.0 <= gamma <= 1.0:
        fail(where, "discount", gamma, "a number in [0, 1]")
    check_parameters(manifest, where, adapted=True)
    _check_inner(manifest, obs_dim, where)


def _check_inner(manifest: Mapping[str, Any], obs_dim: int, where: Path) -> None:
    inner = check_object(where, "inner", manifest["inner"])
    kind = manifest_key(manifest, "inner.kind", where)
    if kind not in INNER_KINDS:
        fail(where, "inner.kind", kind, f"one of {', '.join(INNER_KINDS)}")
    check_int(
        where, "inner.steps", manifest_key(inner, "steps", where, "inner."), 0, MAX_INNER_STEPS
    )
    support = manifest_key(manifest, "inner.support_size", where)
    check_support_size(where, "inner.support_size", support, obs_dim)
    for key in ("from_meta", "fine_tune"):
        if key in inner:
            check_bool(where, f"inner.{key}", inner[key])
    for key in ("huber_delta", "model_weight"):
        if key in inner and (not is_number(inner[key]) or inner[key] < 0):
            fail(where, f"inner.{key}", inner[key], "a number >= 0")
    adapted = manifest_key(inner, "adapted", where, "inner.")
    declared = manifest["parameters"]
    names_ok = isinstance(adapted, list) and all(isinstance(a, str) for a in adapted)
    if not names_ok or not adapted or len(set(adapted)) != len(adapted):
        fail(where, "inner.adapted", adapted, "a list of distinct parameter names, at least one")
    for name in adapted:
        if name not in declared:
            fail(where, "inner.adapted", name, f"a parameter name ({', '.join(declared)})")
    for name, entry in declared.items():
        if entry["adapted"] != (name in adapted):
            raise BundleError(
                f"{where}: parameters.{name}.adapted is {entry['adapted']}, but inner.adapted "
                f"{'lists' if name in adapted else 'does not list'} {name!r}"
            )


def _lr_shapes(manifest: Mapping[str, Any]) -> ArrayShapes:
    """``lrs.npz``: a scalar or the parameter's shape per adapted parameter."""
    declared = manifest["parameters"]
    return {k: [(), tuple(declared[k]["shape"])] for k in manifest["inner"]["adapted"]}


def _non_negative(where: Path, name: str, lr: np.ndarray) -> None:
    if np.any(lr < 0):
        raise BundleError(
            f"{where}: {name} has a negative learning rate ({float(lr.min())!r}); "
            "learning rates must be >= 0"
        )


#: the ``policy`` graph: ``obs`` and the ``param:`` inputs Q uses -> ``q_values``, ``action``
#: (the first maximum); a kind whose policy graph is the same may reuse it.
POLICY_GRAPH_SPEC = GraphSpec(POLICY_GRAPH, _policy_io, _policy_probe)

#: a gradient bundle: ``policy.onnx``, ``adapt.onnx``, ``params.npz``, ``lrs.npz``, and the
#: manifest sections ``discount``, ``inner``, ``parameters``.
GRADIENT_LAYOUT = BundleLayout(
    graphs={
        GRAPH_KEYS[POLICY_GRAPH]: POLICY_GRAPH_SPEC,
        GRAPH_KEYS[ADAPT_GRAPH]: GraphSpec(ADAPT_GRAPH, _adapt_io),
    },
    arrays=(PARAMS_ARRAY, ArraySpec(LRS_FILE, _lr_shapes, _non_negative)),
    sections=("discount", "inner", "parameters"),
    check_manifest=check_gradient_manifest,
)


# ---------------------------------------------------------------------- the runtime


class GradientAdapter(BoundPolicyAdapter):
    """Acts with, and adapts by guarded gradient steps, the policy of one gradient bundle.

    Args:
        bundle: a verified :class:`Bundle` (``Adapter.load(path)`` reads and verifies one).
        capacity: ring-buffer size in ``[1, MAX_CAPACITY]``; ``None`` (the default): the
            bundle's ``inner.support_size``, or ``DEFAULT_CAPACITY`` where that is 0
            (adaptation uses the whole buffer, so this is the support set of the next
            ``adapt``).
        holdout_fraction: share of the buffer held out for the guard, in [0, 0.5].
        tolerance: relative rise of the held-out loss that still counts as "not worse", >= 0
            (``math.inf``: never roll back for the loss).
        max_update_norm: bound on each step's parameter change (global L2), > 0; ``None``:
            none.
        min_transitions: fewer buffered transitions than this (in ``[1, MAX_CAPACITY]``) and
            ``adapt`` does nothing (reported as not accepted).
        threads: intra-op threads per session, in ``[1, MAX_THREADS]``.

    Bad arguments raise ``TypeError`` (a bool, str or float where a count belongs) or
    ``ValueError`` (out of range) naming the argument; a manifest whose ``inner.steps`` exceeds
    ``MAX_ADAPT_STEPS``, or whose ``inner.support_size`` exceeds ``MAX_CAPACITY`` where it sets
    the capacity, raises ``BundleError``.

    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    layout = GRADIENT_LAYOUT
    guard_options = ("holdout_fraction", "tolerance", "max_update_norm")

    def __init__(
        self,
        bundle: Bundle,
        *,
        capacity: int | None = None,
        holdout_fraction: float = 0.2,
        tolerance: float = 0.1,
        max_update_norm: float | None = 1.0,
        min_transitions: int = 10,
        threads: int = 1,
    ) -> None:
        self.holdout_fraction = check_number("holdout_fraction", holdout_fraction, 0.0, 0.5)
        self.tolerance = check_number("tolerance", tolerance, 0.0, math.inf)
        self.max_update_norm = (
            None
            if max_update_norm is None
            else check_number("max_update_norm", max_update_norm, 0.0, math.inf, low_open=True)
        )
        capacity, threads = self._checked_counts(capacity, min_transitions, threads)
        self._set_bundle(bundle)
        self.adapted = bundle.adapted
        self.default_steps = _manifest_count(bundle, "steps", MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS")
        self.from_meta = bool(bundle.manifest["inner"].get("from_meta", False))
        self._meta = {k: frozen(v) for k, v in bundle.params.items()}
        self._lrs = {k: frozen(v) for k, v in bundle.lrs.items()}
        self._gamma = np.asarray(bundle.discount, np.float32)
        options = session_options(threads)
        self._policy = open_session(bundle, POLICY_GRAPH, options, PROVIDERS)
        self._adapt = open_session(bundle, ADAPT_GRAPH, options, PROVIDERS)
        self._policy_params, self._adapt_params = self._check_graphs()
        self._adapt_outputs = [NEW_PREFIX + k for k in self.adapted] + [LOSS_OUTPUT]
        # act(): preallocated input and outputs, bound once.
        self._bound = BoundPolicy(self._policy, self.obs_dim, self.n_actions)
        self._obs1, self._a1 = self._bound.obs, self._bound.action
        self._binding = self._bound.binding
        self._params: dict[str, np.ndarray] = dict(self._meta)
        self._acting_meta = False  # inside acting_with_meta(): the meta-parameters act
        self._bind_params()
        self.support_size = int(bundle.manifest["inner"]["support_size"]) or DEFAULT_CAPACITY
        if capacity is None:
            support = _manifest_count(bundle, "support_size", MAX_CAPACITY, "MAX_CAPACITY")
            capacity = support or DEFAULT_CAPACITY
        self.buffer = TransitionBuffer(capacity, self.obs_dim)

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """The inner loop (loss, steps, support size, adapted parameters) and the discount."""
        inner = bundle.manifest["inner"]
        loop = (
            f"{inner['kind']}, {inner['steps']} steps on {inner['support_size']} transitions, "
            f"adapts {', '.join(inner['adapted'])}{' (fine-tuning)' if inner.get('fine_tune') else ''}"
        )
        return [("inner loop", loop), ("discount", str(bundle.manifest["discount"]))]

    # ------------------------------------------------------------------ setup helpers

    def _check_graphs(self) -> tuple[list[str], list[str]]:
        """The graphs' parameter inputs, after checking they fit the manifest and arrays."""
        pol_in = [i.name for i in self._policy.get_inputs()]
        pol_out = {o.name for o in self._policy.get_outputs()}
        where = self.bundle.file(POLICY_GRAPH)
        if OBS_INPUT not in pol_in or not {Q_OUTPUT, ACTION_OUTPUT} <= pol_out:
            raise BundleError(
                f"{where}: expected input {OBS_INPUT!r} and outputs {Q_OUTPUT!r}, "
                f"{ACTION_OUTPUT!r}; found inputs {pol_in}, outputs {sorted(pol_out)}"
            )
        policy_params = param_inputs(pol_in, {OBS_INPUT}, self._meta, where)
        ad_in = [i.name for i in self._adapt.get_inputs()]
        ad_out = {o.name for o in self._adapt.get_outputs()}
        where = self.bundle.file(ADAPT_GRAPH)
        expected_lrs = {LR_PREFIX + k for k in self.adapted}
        expected_out = {NEW_PREFIX + k for k in self.adapted} | {LOSS_OUTPUT}
        if not expected_lrs <= set(ad_in) or not expected_out <= ad_out:
            raise BundleError(
                f"{where}: inputs {ad_in} / outputs {sorted(ad_out)} do not match the adapted "
                f"parameters {list(self.adapted)} of the manifest"
            )
        plain = {*BATCH_INPUTS, GAMMA_INPUT, *expected_lrs}
        adapt_params = param_inputs(ad_in, plain, self._meta, where)
        return policy_params, adapt_params

    def _acting_params(self) -> dict[str, np.ndarray]:
        return self._meta if self._acting_meta else self._params

    def _bind_params(self) -> None:
        self._bound.bind_params(self._policy_params, self._acting_params())

    # ------------------------------------------------------------------ acting

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values for one observation ``(obs_dim,)`` -> ``(n_actions,)`` or a batch
        ``(B, obs_dim)`` -> ``(B, n_actions)``."""
        batch, single = self._checked_batch(obs)
        acting = self._acting_params()
        feeds = {PARAM_PREFIX + k: acting[k] for k in self._policy_params}
        feeds[OBS_INPUT] = batch
        q = self._policy.run([Q_OUTPUT], feeds)[0]
        return q[0] if single else q

    # ------------------------------------------------------------------ adapting

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (read-only arrays)."""
        return dict(self._params)

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        return dict(self._meta)

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[GradientAdapter]:
        """Within the block ``act`` and ``q_values`` use the meta-parameters; afterwards the
        current (adapted) parameters act again, also if the block raises.

        Only acting changes: ``params``, ``adapt`` (its guard compares against the current
        parameters), ``save_state`` and ``load_state`` keep working on the current parameters,
        and an adaptation accepted inside the block acts once the block ends. Meta-learned
        bundles were meta-trained on support data collected this way, so a collection round
        run inside it gives ``adapt`` the data it expects.
        """
        outer = self._acting_meta
        self._acting_meta = True
        self._bind_params()
        try:
            yield self
        finally:
            self._acting_meta = outer
            self._bind_params()

    def split(self, data: Transitions) -> tuple[Transitions, Transitions]:
        """(train, held-out): every ``1/holdout_fraction``-th transition is held out."""
        return split(data, self.holdout_fraction)

    def step(
        self, params: dict[str, np.ndarray], batch: Transitions, index: int = 0
    ) -> tuple[dict[str, np.ndarray], float]:
        """One raw ``adapt.onnx`` step: the adapted parameters' new values and the loss before.
        ``index``: the step's place in an ``adapt`` call (unused here: every step of this kind
        is the same; a kind whose steps differ, :mod:`robometa.deploy.taskrate`, reads it)."""
        feeds: dict[str, Any] = {PARAM_PREFIX + k: params[k] for k in self._adapt_params}
        for k, lr in self._lrs.items():
            feeds[LR_PREFIX + k] = lr
        feeds.update(zip(BATCH_INPUTS, batch, strict=True))
        feeds[GAMMA_INPUT] = self._gamma
        *new, loss = self._adapt.run(self._adapt_outputs, feeds)
        return dict(zip(self.adapted, new, strict=True)), float(loss)

    def loss(self, params: dict[str, np.ndarray], batch: Transitions) -> float:
        """The inner loss of ``params`` on ``batch`` (the adapt graph's loss output)."""
        return self.step(params, batch)[1]

    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """``steps`` guarded gradient steps (default: the bundle's) on the buffered transitions.

        ``steps`` is an int in ``[0, MAX_ADAPT_STEPS]`` (a bool, float or str is a
        ``TypeError``, never rounded). ``from_meta`` (a bool; default: the manifest's
        ``inner.from_meta``, true for meta-learned bundles) starts the steps from the
        meta-parameters, exactly as the inner loop was meta-trained, instead of from the
        current parameters; either way the guard compares the held-out loss with that of the
        current parameters and keeps the better.
        """
        if steps is None:
            steps = self.default_steps
        else:
            steps = check_count("steps", steps, 0, MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS")
        if from_meta is None:
            from_meta = self.from_meta
        elif not isinstance(from_meta, (bool, np.bool_)):
            raise TypeError(
                f"from_meta must be True, False or None, got {type(from_meta).__name__} "
                f"{from_meta!r}"
            )
        start = time.perf_counter()
        data = self.buffer.ordered()
        n = len(data.reward)
        nan = math.nan
        common = {
            "steps": steps,
            "n_transitions": n,
            "n_rejected": sum(self._rejected.values()),
            "rejected": dict(self._rejected),
        }
        if n < self.min_transitions:
            return AdaptReport(
                accepted=False,
                rolled_back=False,
                reason=f"only {n} transitions buffered, need at least {self.min_transitions}",
                loss_before=nan,
                loss_after=nan,
                train_loss_before=nan,
                train_loss_after=nan,
                n_train=0,
                n_holdout=0,
                seconds=time.perf_counter() - start,
                **common,
            )
        train, held = self.split(data)
        if len(held.reward) == 0:
            held = train
        before = self._params
        held_before = self.loss(before, held)
        current = self._start(from_meta, before, train)
        train_before = nan
        clipped = 0
        failure = ""
        for s in range(steps):
            new, train_loss = self.step(current, train, index=s)
            if s == 0:
                train_before = train_loss
            new, was_clipped, failure = bounded(current, new, s + 1, self.max_update_norm)
            if failure:
                break
            clipped += was_clipped
            current.update(new)
        train_after = self.loss(current, train) if not failure else nan
        held_after = self.loss(current, held) if not failure else nan
        if steps == 0:
            train_before = train_after
        if not failure:
            failure = worse(held_before, held_after, self.tolerance)
        accepted = not failure
        if accepted:
            self._params = {k: frozen(v) for k, v in current.items()}
            self._bind_params()
        return AdaptReport(
            accepted=accepted,
            rolled_back=not accepted,
            reason=failure or "held-out loss did not get worse beyond the tolerance",
            loss_before=held_before,
            loss_after=held_after,
            train_loss_before=train_before,
            train_loss_after=train_after,
            n_train=len(train.reward),
            n_holdout=len(held.reward) if held is not train else 0,
            clipped_steps=clipped,
            seconds=time.perf_counter() - start,
            **common,
        )

    def _start(
        self, from_meta: bool, before: dict[str, np.ndarray], train: Transitions
    ) -> dict[str, np.ndarray]:
        """Where ``adapt``'s steps start: the meta-parameters or the current ones (a kind
        that starts elsewhere, :mod:`robometa.deploy.cavia_encoder`, overrides this)."""
        return dict(self._meta if from_meta else before)

    def reset(self) -> None:
        """Back to the meta-parameters, with an empty buffer and no rejection counts."""
        self._params = dict(self._meta)
        self._bind_params()
        self.buffer.clear()
        self._rejected.clear()

    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current parameters.

        ``run_rounds(keep="best")`` returns to its best round this way. Checked like a saved
        state before anything changes (``ValueError`` naming the key): every adapted parameter
        as a finite float32 array of its shape; the others, if given, must be the
        meta-parameters (only adapted parameters ever change).
        """
        unknown = sorted(set(params) - set(self._meta))
        if unknown:
            raise ValueError(f"restore_params: unknown parameters {unknown}")
        checked = {}
        for k in self.adapted:
            if k not in params:
                raise ValueError(f"restore_params: adapted parameter {k!r} is missing")
            problem = param_problem(params[k], self._meta[k])
            if problem:
                raise ValueError(f"restore_params: {k} {problem}")
            checked[k] = params[k]
        for k in set(params) - set(self.adapted):
            if not np.array_equal(params[k], self._meta[k]):
                raise ValueError(
                    f"restore_params: {k} is not adapted, so it must equal the meta-parameter"
                )
        self._params = {**self._meta, **{k: frozen(v) for k, v in checked.items()}}
        self._bind_params()

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write the adapted parameters and the buffer to ``path`` (``.npz``) atomically.

        Written by :func:`atomic_write`: an interrupted or failed write leaves any previous
        state file intact, a failure raises :class:`WriteError` naming ``path``, and temporary
        files that killed processes left next to ``path`` are removed.
        """
        path = Path(path)
        arrays = state_arrays(
            self.bundle.identity,
            {k: self._params[k] for k in self.adapted},
            self.buffer.ordered(),
            self._rejected,
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle.

        Everything is checked before anything changes, with the rules ``observe`` applies to
        each transition (finite float32 observations within the bounds, actions in
        ``[0, n_actions)``, finite rewards, ``terminated`` 0 or 1) and non-negative integer
        rejection counts of known reasons: on any error (``StateError`` naming the file, key and
        first bad entry) the adapter keeps its current parameters and buffer. A saved buffer
        longer than this adapter's capacity keeps its newest transitions, as ``observe`` would.
        Stale temporary files of ``save_state`` next to ``path`` are removed (best effort).
        """
        path = Path(path)
        remove_stale_temp_files(path)
        params, data, rejected = self._parse_saved(path, read_state(path), self._meta, self.adapted)
        self._params = {**self._meta, **{k: frozen(v) for k, v in params.items()}}
        self._bind_params()
        self._restore_buffer(data, rejected)


def _manifest_count(bundle: Bundle, key: str, high: int, maximum: str) -> int:
    """The manifest's ``inner.<key>`` (a non-negative int, checked when the bundle loaded),
    refused with a ``BundleError`` above this runtime's ``maximum``, so that a manifest cannot
    make ``adapt`` run for hours or the buffer take all memory."""
    value = bundle.manifest["inner"][key]
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not whole or not 0 <= value <= high:
        raise BundleError(
            f"{bundle.path / MANIFEST_FILE}: inner.{key} is {value!r}, expected an integer in "
            f"[0, {high}] ({maximum} of robometa.deploy.runtime)"
        )
    return int(value)
