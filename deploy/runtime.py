"""The on-device adaptation runtime: act, collect transitions, take guarded gradient steps.

Only numpy, onnxruntime and the standard library. One ``InferenceSession`` per graph, one
thread each (batch-1 inference gains nothing from a thread pool, and the robot's control loop
keeps its cores).

``act`` is the hot path: the observation is copied into a preallocated ``(1, obs_dim)`` array
that is bound to ``policy.onnx`` once with an IOBinding, the outputs are bound to preallocated
arrays, and the parameters are bound as ``OrtValue``s once (again only after an accepted
adaptation). A call validates the observation, copies 4 bytes per entry and runs the session.

``adapt`` runs ``adapt.onnx`` (the exported training ``adapt_step``) on the buffered
transitions under a guard:

* hold-out: a fraction of the buffer (``holdout_fraction``, default 20%, spread evenly over
  time) is not trained on; the inner loss on it is measured before and after;
* bounded steps: the global L2 norm of each step's parameter change is clipped to
  ``max_update_norm`` (default 1.0; ``None`` disables), so one bad gradient cannot throw the
  parameters far;
* rollback: if any parameter becomes NaN/inf, or the held-out loss rises by more than
  ``tolerance`` (relative, default 10%), the step sequence is discarded and the parameters
  stay what they were before the call. Parameters are only replaced at the end of an accepted
  call, so nothing can leave them half-updated.

Every count an argument gives is an ``int`` (a numpy integer too; never a bool, float or str)
within a documented maximum, else ``TypeError``/``ValueError`` naming the argument, the value,
the range and the constant:

| constant | bounds |
|---|---|
| :data:`MAX_CAPACITY` (1,000,000) | ``capacity``, ``min_transitions``; the manifest's ``inner.support_size`` when it sets the capacity |
| :data:`MAX_ADAPT_STEPS` (10,000) | ``adapt(steps)`` and the manifest's ``inner.steps`` (training configs allow 1,000) |
| :data:`MAX_THREADS` (256) | ``threads`` |

Files are written atomically (:func:`atomic_write`): a temporary file named
``.<name>.robometa-tmp-<pid>-<random>`` next to the target, renamed over it. One left by a
killed process is removed by the next ``save_state``/``load_state`` of that target; files
robometa did not name are never touched. A failed write raises :class:`WriteError` (one line
naming the path) and leaves any previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import secrets
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import onnxruntime as ort
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    ADAPT_GRAPH,
    BATCH_INPUTS,
    GAMMA_INPUT,
    LOSS_OUTPUT,
    LR_PREFIX,
    MANIFEST_FILE,
    NEW_PREFIX,
    OBS_INPUT,
    PARAM_PREFIX,
    POLICY_GRAPH,
    Q_OUTPUT,
    Bundle,
    BundleError,
)

#: version of the ``save_state`` file layout.
STATE_FORMAT = 1
#: buffer size when neither ``capacity`` nor the bundle's support size says.
DEFAULT_CAPACITY = 1000
#: the most transitions a buffer holds (``capacity``, ``min_transitions``, and the manifest's
#: ``inner.support_size`` where it sets the capacity): the training config's own cap.
MAX_CAPACITY = 1_000_000
#: the most gradient steps one ``adapt`` takes (``steps``, and the manifest's ``inner.steps``);
#: ten times the training config's cap, so a fine-tuning run can take more than training did.
MAX_ADAPT_STEPS = 10_000
#: the most intra-op threads per ONNX Runtime session (``threads``).
MAX_THREADS = 256
#: why ``observe`` refused a transition (the keys of ``Adapter.rejected``).
REJECTION_REASONS: tuple[str, ...] = (
    "non_finite_obs",
    "obs_out_of_range",
    "action_not_integer",
    "action_out_of_range",
    "reward_not_number",
    "non_finite_reward",
    "bad_terminated",
)
#: marks robometa's temporary files: ``.<target name>.robometa-tmp-<pid>-<random>``.
TEMP_MARKER = ".robometa-tmp-"
#: key prefixes of a ``save_state`` file (besides ``param:``, the bundle's).
BUFFER_PREFIX = "buffer:"
REJECTED_PREFIX = "rejected:"
_STALE_AFTER_S = 3600.0  # where a writer's process cannot be asked about (not POSIX)
_ABS_TOLERANCE = 1e-6  # loss noise floor for the rollback test
_FLOAT32 = np.dtype(np.float32)
# The smallest magnitude that rounds to inf as float32 (halfway between the largest float32,
# 2**128 - 2**104, and 2**128; the tie rounds to the even mantissa, which is inf).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


class StateError(ValueError):
    """A saved adapter state cannot be loaded (the message names the file and key)."""


class WriteError(OSError):
    """A file could not be written; the one-line message names the path. Any previous file
    at that path is unchanged and no partial file is left behind."""


def check_count(name: str, value: Any, low: int, high: int, maximum: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high]``, else an error naming ``name``, the value,
    the range and ``maximum`` (the constant behind ``high``).

    ``int`` and numpy integers pass; a bool, float (even ``3.0``) or str is a ``TypeError``,
    not coerced; out of range is a ``ValueError``.
    """
    bound = f" ({maximum})" if maximum else ""
    expected = f"{name} must be an integer in [{low}, {high}]{bound}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{expected}, got {value}")
    return int(value)


def check_number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``low_open``), else an
    error naming ``name``, the value and the range: a bool or str is a ``TypeError``, NaN and
    out of range a ``ValueError``."""
    interval = f"{'(' if low_open else '['}{low}, {high}]"
    if not _is_number(value):
        raise TypeError(
            f"{name} must be a number in {interval}, got {type(value).__name__} {value!r}"
        )
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        x = math.inf if value > 0 else -math.inf
    if not ((low < x) if low_open else (low <= x)) or not x <= high:
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return x


class Transitions(NamedTuple):
    """A batch of transitions as numpy arrays, in ``adapt.onnx`` input order."""

    obs: np.ndarray  # (B, obs_dim) float32
    action: np.ndarray  # (B,) int64
    reward: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, obs_dim) float32
    terminated: np.ndarray  # (B,) float32, 1.0 where the episode really ended

    def take(self, index: np.ndarray) -> Transitions:
        return Transitions(*(a[index] for a in self))


class TransitionBuffer:
    """Fixed-capacity ring buffer; arrays are allocated once, the oldest entry is overwritten.

    ``capacity`` is an int in ``[1, MAX_CAPACITY]``.
    """

    def __init__(self, capacity: int, obs_dim: int) -> None:
        capacity = check_count("capacity", capacity, 1, MAX_CAPACITY, "MAX_CAPACITY")
        self.capacity = capacity
        self._data = Transitions(
            np.zeros((capacity, obs_dim), np.float32),
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.float32),
            np.zeros((capacity, obs_dim), np.float32),
            np.zeros(capacity, np.float32),
        )
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: float
    ) -> None:
        i = self._next
        d = self._data
        d.obs[i], d.action[i], d.reward[i] = obs, action, reward
        d.next_obs[i], d.terminated[i] = next_obs, terminated
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def ordered(self) -> Transitions:
        """Copies of the stored transitions, oldest first."""
        start = (self._next - self._size) % self.capacity
        index = (start + np.arange(self._size)) % self.capacity
        return self._data.take(index)

    def clear(self) -> None:
        self._next = 0
        self._size = 0


@dataclass(frozen=True)
class AdaptReport:
    """What one ``Adapter.adapt`` call did.

    ``loss_before``/``loss_after`` are the inner loss on the held-out transitions (the guard's
    criterion; on the training transitions when nothing is held out), ``train_loss_*`` the
    loss on the transitions stepped on. ``n_rejected``/``rejected`` count the transitions
    ``observe`` refused since the last ``reset`` (by reason).
    """

    steps: int
    accepted: bool
    rolled_back: bool
    reason: str
    loss_before: float
    loss_after: float
    train_loss_before: float
    train_loss_after: float
    n_transitions: int
    n_train: int
    n_holdout: int
    n_rejected: int
    rejected: dict[str, int] = field(default_factory=dict)
    clipped_steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for small graphs on a robot: sequential, ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")  # no ORT format
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _check_real(value: Any, what: str) -> np.ndarray:
    """``value`` as an ndarray of real numbers (ints or floats), else a ``ValueError``."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not an array of numbers: {err}") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(
            f"{what} has dtype {array.dtype}, expected real numbers (float32 preferred)"
        )
    return array


class Adapter:
    """Acts with, and adapts, the policy of one bundle (see the module docstring).

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
        self.min_transitions = check_count(
            "min_transitions", min_transitions, 1, MAX_CAPACITY, "MAX_CAPACITY"
        )
        threads = check_count("threads", threads, 1, MAX_THREADS, "MAX_THREADS")
        if capacity is not None:
            capacity = check_count("capacity", capacity, 1, MAX_CAPACITY, "MAX_CAPACITY")
        self.bundle = bundle
        self.obs_dim = bundle.obs_dim
        self.n_actions = bundle.n_actions
        self.obs_low = bundle.obs_low
        self.obs_high = bundle.obs_high
        self.obs_names = tuple(bundle.manifest["observation"]["names"])
        self.adapted = bundle.adapted
        self.default_steps = _manifest_count(bundle, "steps", MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS")
        self.from_meta = bool(bundle.manifest["inner"].get("from_meta", False))
        self.support_epsilon = _support_epsilon(bundle)
        self._obs_shape = (self.obs_dim,)
        self._meta = {k: _frozen(v) for k, v in bundle.params.items()}
        self._lrs = {k: _frozen(v) for k, v in bundle.lrs.items()}
        self._gamma = np.asarray(bundle.discount, np.float32)
        options = session_options(threads)
        providers = ["CPUExecutionProvider"]
        self._policy = _session(bundle, POLICY_GRAPH, options, providers)
        self._adapt = _session(bundle, ADAPT_GRAPH, options, providers)
        self._policy_params, self._adapt_params = self._check_graphs()
        self._adapt_outputs = [NEW_PREFIX + k for k in self.adapted] + [LOSS_OUTPUT]
        # act(): preallocated input and outputs, bound once.
        self._obs1 = np.zeros((1, self.obs_dim), np.float32)
        self._q1 = np.zeros((1, self.n_actions), np.float32)
        self._a1 = np.zeros(1, np.int64)
        self._binding = self._policy.io_binding()
        self._bound: dict[str, ort.OrtValue] = {}  # keeps every bound OrtValue alive
        self._bind_input(OBS_INPUT, self._obs1)
        for name, array in ((Q_OUTPUT, self._q1), (ACTION_OUTPUT, self._a1)):
            self._bound[name] = ort.OrtValue.ortvalue_from_numpy(array)
            self._binding.bind_ortvalue_output(name, self._bound[name])
        self._params: dict[str, np.ndarray] = dict(self._meta)
        self._acting_meta = False  # inside acting_with_meta(): the meta-parameters act
        self._bind_params()
        if capacity is None:
            support = _manifest_count(bundle, "support_size", MAX_CAPACITY, "MAX_CAPACITY")
            capacity = support or DEFAULT_CAPACITY
        self.buffer = TransitionBuffer(capacity, self.obs_dim)
        self._rejected: Counter[str] = Counter()

    @classmethod
    def load(cls, bundle_dir: str | Path, **kwargs: Any) -> Adapter:
        """Read and verify a bundle directory and build an adapter (kwargs: see the class)."""
        return cls(Bundle.load(bundle_dir), **kwargs)

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
        policy_params = self._param_inputs(pol_in, {OBS_INPUT}, where)
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
        adapt_params = self._param_inputs(ad_in, plain, where)
        return policy_params, adapt_params

    def _param_inputs(self, inputs: list[str], plain: set[str], where: Path) -> list[str]:
        names = []
        for name in inputs:
            if name in plain:
                continue
            key = name.removeprefix(PARAM_PREFIX)
            if not name.startswith(PARAM_PREFIX) or key not in self._meta:
                raise BundleError(f"{where}: unexpected graph input {name!r}")
            names.append(key)
        return names

    def _bind_input(self, name: str, array: np.ndarray) -> None:
        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._bound[name] = value  # keep the OrtValue (and its array) alive
        self._binding.bind_ortvalue_input(name, value)

    def _acting_params(self) -> dict[str, np.ndarray]:
        return self._meta if self._acting_meta else self._params

    def _bind_params(self) -> None:
        acting = self._acting_params()
        for k in self._policy_params:
            self._bind_input(PARAM_PREFIX + k, acting[k])

    # ------------------------------------------------------------------ acting

    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)``.

        Raises ``ValueError`` naming the problem for a wrong shape, a non-numeric dtype or a
        NaN/inf entry, and ``BundleError`` if ``policy.onnx`` answers an action outside
        ``[0, n_actions)`` (a broken graph must not drive the robot).
        """
        buf = self._obs1[0]
        if type(obs) is np.ndarray and obs.dtype is _FLOAT32 and obs.shape == self._obs_shape:
            buf[...] = obs
        else:
            buf[...] = self._checked_obs(obs, self._obs_shape, "obs")
        # A Python-level check: right after an ORT run a numpy ufunc costs ~5 us (cold caches),
        # a few math.isfinite calls well under 1 us.
        if not all(map(math.isfinite, buf.tolist())):
            raise ValueError(self._non_finite_message(buf, "obs"))
        self._policy.run_with_iobinding(self._binding)
        action = self._a1.item()
        if not 0 <= action < self.n_actions:
            raise BundleError(
                f"{self.bundle.file(POLICY_GRAPH)}: output {ACTION_OUTPUT!r} is {action}, "
                f"outside [0, {self.n_actions}) (action.n of the manifest)"
            )
        return action

    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values for one observation ``(obs_dim,)`` -> ``(n_actions,)`` or a batch
        ``(B, obs_dim)`` -> ``(B, n_actions)``."""
        array = _check_real(obs, "obs")
        single = array.ndim == 1
        batch = self._checked_obs(array[None] if single else array, None, "obs")
        bad = ~np.isfinite(batch).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(self._non_finite_message(batch[row], f"obs[{row}]"))
        acting = self._acting_params()
        feeds = {PARAM_PREFIX + k: acting[k] for k in self._policy_params}
        feeds[OBS_INPUT] = batch
        q = self._policy.run([Q_OUTPUT], feeds)[0]
        return q[0] if single else q

    def _checked_obs(self, obs: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
        """``obs`` as float32 of ``shape`` (``None``: any ``(B, obs_dim)`` with ``B >= 1``)."""
        array = _check_real(obs, what)
        ok = (
            array.shape == shape
            if shape is not None
            else array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] == self.obs_dim
        )
        if not ok:
            expected = f"{shape}" if shape is not None else f"(batch, {self.obs_dim})"
            raise ValueError(
                f"{what} has shape {array.shape}, expected {expected} ({', '.join(self.obs_names)})"
            )
        with np.errstate(over="ignore"):  # beyond float32 range becomes inf, reported below
            return array.astype(np.float32, copy=False)

    def _non_finite_message(self, row: np.ndarray, what: str) -> str:
        i = int(np.argmin(np.isfinite(row)))
        return (
            f"{what}[{i}] ({self.obs_names[i]}) is {row[i]} as float32; observations must be "
            "finite float32 values"
        )

    # ------------------------------------------------------------------ collecting

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any) -> bool:
        """Store one transition; return False (and count why) if it is rejected.

        Rejected, not stored: a NaN/inf entry in ``obs``/``next_obs``/``reward`` *as float32*
        (the dtype stored and trained on, so ``1e39`` or ``10**400`` counts as inf), an
        observation outside the bundle's observation bounds, an action that is not an integer
        in ``[0, n_actions)``, a ``terminated`` that is not a bool or 0/1. The reasons are
        :data:`REJECTION_REASONS`. An observation of the wrong shape or a non-numeric type is a
        wiring error and raises ``ValueError``.
        """
        o = self._checked_obs(obs, self._obs_shape, "obs")
        o2 = self._checked_obs(next_obs, self._obs_shape, "next_obs")
        reason = self._rejection(o, action, reward, o2, terminated)
        if reason:
            self._rejected[reason] += 1
            return False
        self.buffer.add(o, int(action), float(reward), o2, float(terminated))
        return True

    def _rejection(
        self, obs: np.ndarray, action: Any, reward: Any, next_obs: np.ndarray, terminated: Any
    ) -> str:
        if not (np.isfinite(obs).all() and np.isfinite(next_obs).all()):
            return "non_finite_obs"
        low, high = self.obs_low, self.obs_high
        if not (_within(obs, low, high) and _within(next_obs, low, high)):
            return "obs_out_of_range"
        action, reward, terminated = _scalar(action), _scalar(reward), _scalar(terminated)
        if not _is_whole_number(action):
            return "action_not_integer"
        if not 0 <= int(action) < self.n_actions:
            return "action_out_of_range"
        if not _is_number(reward):
            return "reward_not_number"
        if not _finite_as_float32(reward):
            return "non_finite_reward"
        if not (isinstance(terminated, (bool, np.bool_)) or _is_whole_number(terminated)):
            return "bad_terminated"
        if terminated not in (0, 1):  # compared as is: float() of 10**400 would overflow
            return "bad_terminated"
        return ""

    @property
    def rejected(self) -> dict[str, int]:
        """Transitions refused by ``observe`` since the last ``reset``, by reason."""
        return dict(self._rejected)

    # ------------------------------------------------------------------ adapting

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (read-only arrays)."""
        return dict(self._params)

    @property
    def meta_params(self) -> dict[str, np.ndarray]:
        return dict(self._meta)

    @contextlib.contextmanager
    def acting_with_meta(self) -> Iterator[Adapter]:
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
        n = len(data.reward)
        i = np.arange(n)
        f = self.holdout_fraction
        held = np.floor((i + 1) * f) > np.floor(i * f)
        return data.take(~held), data.take(held)

    def step(
        self, params: dict[str, np.ndarray], batch: Transitions
    ) -> tuple[dict[str, np.ndarray], float]:
        """One raw ``adapt.onnx`` step: the adapted parameters' new values and the loss before."""
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
        current = dict(self._meta if from_meta else before)
        train_before = nan
        clipped = 0
        failure = ""
        for s in range(steps):
            new, train_loss = self.step(current, train)
            if s == 0:
                train_before = train_loss
            new, was_clipped, failure = self._bounded(current, new, s + 1)
            if failure:
                break
            clipped += was_clipped
            current.update(new)
        train_after = self.loss(current, train) if not failure else nan
        held_after = self.loss(current, held) if not failure else nan
        if steps == 0:
            train_before = train_after
        if not failure:
            failure = self._worse(held_before, held_after)
        accepted = not failure
        if accepted:
            self._params = {k: _frozen(v) for k, v in current.items()}
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

    def _bounded(
        self, current: dict[str, np.ndarray], new: dict[str, np.ndarray], step: int
    ) -> tuple[dict[str, np.ndarray], bool, str]:
        """Clip the step's update norm; report non-finite parameters as a failure."""
        sq = 0.0
        for k, v in new.items():
            sq += float(np.sum(np.square(v.astype(np.float64) - current[k])))
        norm = math.sqrt(sq) if math.isfinite(sq) else math.inf
        if not math.isfinite(norm) or not all(np.isfinite(v).all() for v in new.values()):
            return new, False, f"parameters became non-finite at step {step}"
        if self.max_update_norm is None or norm <= self.max_update_norm:
            return new, False, ""
        scale = self.max_update_norm / norm
        clipped = {
            k: (current[k] + scale * (v - current[k])).astype(np.float32) for k, v in new.items()
        }
        return clipped, True, ""

    def _worse(self, before: float, after: float) -> str:
        if not math.isfinite(after):
            return f"held-out loss became {after}"
        limit = before + self.tolerance * abs(before) + _ABS_TOLERANCE
        if after > limit:
            return (
                f"held-out loss rose from {before:.6g} to {after:.6g} "
                f"(tolerance {self.tolerance:.0%})"
            )
        return ""

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
            problem = _param_problem(params[k], self._meta[k])
            if problem:
                raise ValueError(f"restore_params: {k} {problem}")
            checked[k] = params[k]
        for k in set(params) - set(self.adapted):
            if not np.array_equal(params[k], self._meta[k]):
                raise ValueError(
                    f"restore_params: {k} is not adapted, so it must equal the meta-parameter"
                )
        self._params = {**self._meta, **{k: _frozen(v) for k, v in checked.items()}}
        self._bind_params()

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str | Path) -> Path:
        """Write the adapted parameters and the buffer to ``path`` (``.npz``) atomically.

        Written by :func:`atomic_write`: an interrupted or failed write leaves any previous
        state file intact, a failure raises :class:`WriteError` naming ``path``, and temporary
        files that killed processes left next to ``path`` are removed.
        """
        path = Path(path)
        data = self.buffer.ordered()
        arrays: dict[str, np.ndarray] = {
            "state_format": np.asarray(STATE_FORMAT, np.int64),
            "bundle_identity": np.asarray(self.bundle.identity),
        }
        for k in self.adapted:
            arrays[PARAM_PREFIX + k] = self._params[k]
        for name, value in zip(BATCH_INPUTS, data, strict=True):
            arrays[BUFFER_PREFIX + name] = value
        for reason, count in self._rejected.items():
            arrays[REJECTED_PREFIX + reason] = np.asarray(count, np.int64)
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
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
        except FileNotFoundError:
            raise StateError(f"{path}: no such state file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise StateError(f"{path}: not a readable .npz state file ({err})") from None
        params, data, rejected = self._parse_state(path, arrays)
        self._params = {**self._meta, **{k: _frozen(v) for k, v in params.items()}}
        self._bind_params()
        self.buffer.clear()
        keep = max(0, len(data.reward) - self.buffer.capacity)
        for row in zip(*(a[keep:] for a in data), strict=True):
            self.buffer.add(*row)
        self._rejected = Counter(rejected)

    def _parse_state(
        self, path: Path, arrays: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], Transitions, dict[str, int]]:
        def need(key: str) -> np.ndarray:
            if key not in arrays:
                raise StateError(f"{path}: missing key {key!r}")
            return arrays[key]

        version = need("state_format")
        if version.shape != () or version.dtype.kind not in "iu" or version != STATE_FORMAT:
            raise StateError(
                f"{path}: state_format {version!r} is not supported (expected {STATE_FORMAT})"
            )
        identity = need("bundle_identity")
        if identity.shape != () or identity.dtype.kind != "U":
            raise StateError(f"{path}: bundle_identity must be a string, got {identity!r}")
        if str(identity) != self.bundle.identity:
            raise StateError(
                f"{path}: saved for a different bundle (identity {str(identity)[:12]}..., "
                f"this bundle {self.bundle.identity[:12]}...)"
            )
        expected = {"state_format", "bundle_identity"}
        expected |= {PARAM_PREFIX + k for k in self.adapted}
        expected |= {BUFFER_PREFIX + name for name in BATCH_INPUTS}
        expected |= {REJECTED_PREFIX + reason for reason in REJECTION_REASONS}
        unknown = sorted(set(arrays) - expected)
        if unknown:
            raise StateError(f"{path}: unexpected keys {unknown} (not written by save_state)")
        params = {}
        for k in self.adapted:
            problem = _param_problem(need(PARAM_PREFIX + k), self._meta[k])
            if problem:
                raise StateError(f"{path}: {PARAM_PREFIX + k} {problem}")
            params[k] = arrays[PARAM_PREFIX + k]
        data = self._parse_buffer(path, need)
        rejected = {}
        for reason in REJECTION_REASONS:
            key = REJECTED_PREFIX + reason
            if key in arrays:
                value = arrays[key]
                if value.shape != () or value.dtype.kind not in "iu" or value < 0:
                    raise StateError(
                        f"{path}: {key} is {value!r}, expected a non-negative integer count"
                    )
                rejected[reason] = int(value)
        return params, data, rejected

    def _parse_buffer(self, path: Path, need: Callable[[str], np.ndarray]) -> Transitions:
        """The saved buffer, every entry checked with ``observe``'s rules."""
        dtypes = (np.float32, np.int64, np.float32, np.float32, np.float32)
        columns = []
        for name, dtype in zip(BATCH_INPUTS, dtypes, strict=True):
            value = need(BUFFER_PREFIX + name)
            if value.dtype != dtype:
                raise StateError(
                    f"{path}: {BUFFER_PREFIX}{name} has dtype {value.dtype}, expected "
                    f"{dtype.__name__}"
                )
            columns.append(value)
        data = Transitions(*columns)
        n = len(data.reward) if data.reward.ndim == 1 else -1
        shapes_ok = (
            n >= 0
            and data.obs.shape == (n, self.obs_dim)
            and data.next_obs.shape == (n, self.obs_dim)
            and all(a.shape == (n,) for a in (data.action, data.reward, data.terminated))
        )
        if not shapes_ok:
            raise StateError(
                f"{path}: buffer arrays have inconsistent shapes "
                f"{[list(a.shape) for a in data]} for obs_dim {self.obs_dim}"
            )
        low, high = self.obs_low, self.obs_high
        checks = [
            ("obs", ~np.isfinite(data.obs).all(axis=1), "NaN or inf"),
            ("next_obs", ~np.isfinite(data.next_obs).all(axis=1), "NaN or inf"),
            ("obs", ((data.obs < low) | (data.obs > high)).any(axis=1), "outside the bounds"),
            (
                "next_obs",
                ((data.next_obs < low) | (data.next_obs > high)).any(axis=1),
                "outside the bounds",
            ),
            (
                "action",
                (data.action < 0) | (data.action >= self.n_actions),
                f"outside [0, {self.n_actions})",
            ),
            ("reward", ~np.isfinite(data.reward), "NaN or inf"),
            ("terminated", (data.terminated != 0) & (data.terminated != 1), "not 0 or 1"),
        ]
        for name, bad, what in checks:
            if bad.any():
                i = int(np.argmax(bad))
                value = getattr(data, name)[i]
                raise StateError(
                    f"{path}: {BUFFER_PREFIX}{name}[{i}] is {value.tolist()}: {what} "
                    f"({int(bad.sum())} bad entries; observe() would have rejected them)"
                )
        return data


# robometa's config default for adaptation.support_epsilon (the runtime cannot import it).
DEFAULT_SUPPORT_EPSILON = 0.3


def _support_epsilon(bundle: Bundle) -> float:
    """The exploration rate of support collection the bundle was trained and evaluated with
    (the manifest's ``config.adaptation.support_epsilon``; meta-learners collect their
    support this way in training, and ``robometa eval`` does for every method), or
    ``DEFAULT_SUPPORT_EPSILON`` for a manifest without it."""
    config = bundle.manifest.get("config")
    adaptation = config.get("adaptation") if isinstance(config, dict) else None
    if not isinstance(adaptation, dict) or "support_epsilon" not in adaptation:
        return DEFAULT_SUPPORT_EPSILON
    value = adaptation["support_epsilon"]
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise BundleError(
            f"{bundle.path / MANIFEST_FILE}: config.adaptation.support_epsilon is {value!r}, "
            "expected a number in [0, 1]"
        )
    return float(value)


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


def _frozen(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy that cannot be modified in place (it may be bound to ORT)."""
    out = np.array(array, dtype=np.float32, order="C", copy=True)
    out.setflags(write=False)
    return out


def _scalar(value: Any) -> Any:
    """Unwrap a 0-d numpy array into its Python scalar (other values pass through)."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _is_number(value: Any) -> bool:
    """A real int or float (numpy included), not a bool."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, float, np.integer, np.floating)
    )


def _is_whole_number(value: Any) -> bool:
    if not _is_number(value):
        return False
    return isinstance(value, (int, np.integer)) or float(value).is_integer()


def _finite_as_float32(value: Any) -> bool:
    """Whether a real number stays finite when stored as float32 (ints of any size too)."""
    try:
        x = float(value)
    except OverflowError:
        return False
    return abs(x) < _FLOAT32_OVERFLOW  # False for NaN and inf as well


def _param_problem(value: np.ndarray, meta: np.ndarray) -> str:
    """What is wrong with ``value`` as a replacement for the parameter ``meta`` ('' if
    nothing): it must be a finite float32 array of the same shape."""
    value = np.asarray(value)
    if value.dtype != np.float32 or value.shape != meta.shape:
        return f"is {value.dtype}{list(value.shape)}, expected float32{list(meta.shape)}"
    if not np.isfinite(value).all():
        return "contains NaN or inf"
    return ""


def _within(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    return bool(np.all(x >= low) and np.all(x <= high))


def _session(
    bundle: Bundle, name: str, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    path = bundle.file(name)
    # The bytes Bundle.load verified, not the file again (it may have changed since).
    try:
        return ort.InferenceSession(bundle.graph(name), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: onnxruntime cannot load the graph ({err})") from err


# ---------------------------------------------------------------------- writing files


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` all at once or not at all, and say which path failed.

    ``write(f)`` fills a new temporary file next to ``path`` (``.<name>.robometa-tmp-<pid>-
    <random>.tmp``, permissions as for any new file), which is fsynced and renamed over
    ``path``; then the directory is fsynced. Any ``OSError`` (disk full, read-only medium, a
    parent that is missing or a regular file, ``path`` a directory) becomes a one-line
    :class:`WriteError` naming ``path``; the temporary file is removed and a previous file at
    ``path`` is unchanged. Temporary files that killed writers of ``path`` left behind are
    removed first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    remove_stale_temp_files(path)
    tmp: Path | None = None
    try:
        tmp, fd = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise WriteError(
            f"{path}: cannot write ({_os_reason(err)}); any previous file there is unchanged"
        ) from err
    finally:
        if tmp is not None:  # failed or interrupted (KeyboardInterrupt too): leave nothing
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    try:
        _fsync_dir(path.parent)
    except OSError as err:
        raise WriteError(
            f"{path}: written, but its directory could not be synced ({_os_reason(err)}); "
            "the file may not survive a power cut"
        ) from err
    return path


def check_writable(path: str | Path) -> Path:
    """Raise :class:`WriteError` now if :func:`atomic_write` could not write ``path`` (its
    directory is missing, a regular file or read-only, or ``path`` is a directory), so a long
    run fails before it starts instead of after. Creates and removes one empty temporary
    file; a disk with room for an empty file but not the data is only found when writing."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: cannot write (it is a directory)")
    try:
        tmp, fd = _create_temp(path)
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({_os_reason(err)})") from err
    os.close(fd)
    os.unlink(tmp)
    return path


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` killed mid-write left next to it.

    Only files named as robometa names them for ``path`` (see :func:`atomic_write`) whose
    process no longer runs (on POSIX; elsewhere: older than an hour); files robometa did not
    name are never touched. Best effort: a directory that cannot be listed or written (a
    read-only medium holding a state to load) is left as it is. Returns the removed paths.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{TEMP_MARKER}") + r"(\d+)-[0-9a-f]{16}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(path.parent) as entries:
            candidates = [e for e in entries if pattern.fullmatch(e.name)]
        for entry in candidates:
            pid = int(pattern.fullmatch(entry.name).group(1))
            if not entry.is_file(follow_symlinks=False) or not _writer_gone(pid, entry):
                continue
            with contextlib.suppress(FileNotFoundError):  # another process removed it
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file for ``path`` in its directory, opened for writing."""
    prefix = f".{path.name}{TEMP_MARKER}{os.getpid()}-"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{prefix}{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # 2**-64 per try
            continue


def _writer_gone(pid: int, entry: os.DirEntry) -> bool:
    """Whether the process that named a temporary file is gone (so the file is stale)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_AFTER_S
    if pid <= 0 or pid == os.getpid():  # robometa never writes pid 0; ours may be writing
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user / not a pid
        return False
    return False


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; elsewhere a rename is as good as it
    gets)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: this file system cannot sync directories
            raise
    finally:
        os.close(fd)


def _os_reason(err: OSError) -> str:
    """An ``OSError``'s reason without the temporary file's name."""
    return err.strerror or str(err)
