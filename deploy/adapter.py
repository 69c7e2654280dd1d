"""The one ``Adapter`` API every bundle kind's runtime serves, and what all kinds share.

``Adapter.load(path)`` (or ``Adapter(bundle)``) reads the manifest's ``kind`` and builds that
kind's runtime (:mod:`robometa.deploy.kinds`), an ``Adapter`` subclass; today's only kind is
``gradient`` (:class:`robometa.deploy.gradient.GradientAdapter`). Shared here: checking
observations, ``observe``, which stores accepted transitions in the ring buffer and counts
the rejected ones by reason, and what the adaptation loop (:mod:`robometa.deploy.loop`) and
the command line ask every runtime, with defaults for a kind that does not adapt from
meta-parameters: ``from_meta`` (False), ``support_epsilon`` (the manifest's
``config.adaptation.support_epsilon``), ``support_size`` (``DEFAULT_CAPACITY``),
``guard_options`` (none) and ``describe`` (no rows).

A new kind's runtime subclasses :class:`Adapter`, sets ``layout`` (its
:class:`~robometa.deploy.bundle.BundleLayout`), calls ``_set_bundle`` and sets ``buffer`` in
its ``__init__``, and implements the abstract methods; ``register_kind`` names it. A runtime
whose ``policy.onnx`` acts bound to preallocated buffers subclasses
:class:`BoundPolicyAdapter` for its ``act`` (the gradient kinds and, through
:class:`robometa.deploy.conditioned.ConditionedAdapter`, the kinds whose policy is conditioned
on one vector the adapter holds).
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from robometa.deploy import kinds
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    MANIFEST_FILE,
    POLICY_GRAPH,
    Bundle,
    BundleError,
    BundleLayout,
)
from robometa.deploy.checks import FLOAT32, check_count, check_real, is_number
from robometa.deploy.guard import AdaptReport
from robometa.deploy.sessions import MAX_THREADS
from robometa.deploy.state import parse_state
from robometa.deploy.transitions import (
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    TransitionBuffer,
    Transitions,
    rejection,
)

# robometa's config default for adaptation.support_epsilon (the runtime cannot import it).
DEFAULT_SUPPORT_EPSILON = 0.3


class Adapter(abc.ABC):
    """Acts with, and adapts, the policy of one bundle.

    ``Adapter(bundle, **kwargs)`` and ``Adapter.load(bundle_dir, **kwargs)`` return the
    runtime of the bundle's kind (an instance of a subclass; the keyword arguments are that
    runtime's, see :class:`robometa.deploy.gradient.GradientAdapter`). A kind's runtime class
    called directly serves bundles of its own kind and of kinds whose runtime subclasses it.

    One adapter serves one control loop: it is not safe to call from several threads at once.
    """

    #: the graphs and files a bundle of this runtime's kind holds (read by ``Bundle.load``).
    layout: ClassVar[BundleLayout]
    #: the keyword arguments of the adaptation guard this runtime takes; the command line
    #: passes ``--holdout-fraction``, ``--tolerance``, ``--max-update-norm`` only to a runtime
    #: listing them (and refuses them for any other).
    guard_options: ClassVar[tuple[str, ...]] = ()

    #: collecting for ``adapt`` acts with the meta-parameters (``run_rounds``'
    #: ``support_from="auto"``): true for bundles whose adaptation starts from them.
    from_meta: bool = False
    #: the exploration rate support data was collected with in training and evaluation
    #: (``run_rounds``' default ``epsilon``; set by ``_set_bundle`` from the manifest).
    support_epsilon: float = DEFAULT_SUPPORT_EPSILON
    #: the transitions one round of collection gathers by default (the command line's
    #: ``--support`` default).
    support_size: int = DEFAULT_CAPACITY

    bundle: Bundle
    obs_dim: int
    n_actions: int
    obs_low: np.ndarray
    obs_high: np.ndarray
    obs_names: tuple[str, ...]
    buffer: TransitionBuffer

    def __new__(cls, *args: Any, **kwargs: Any) -> Adapter:
        bundle = args[0] if args else kwargs.get("bundle")
        if isinstance(bundle, Bundle):
            runtime = kinds.runtime_class(bundle.kind)
            if cls is Adapter:
                cls = runtime
            elif not issubclass(runtime, cls):
                raise BundleError(
                    f"{bundle.path / MANIFEST_FILE}: a {bundle.kind!r} bundle, served by "
                    f"{runtime.__name__}, not {cls.__name__}"
                )
        return super().__new__(cls)

    @classmethod
    def load(cls, bundle_dir: str | Path, **kwargs: Any) -> Adapter:
        """Read and verify a bundle directory and build its kind's adapter (kwargs: see the
        kind's runtime)."""
        return cls(Bundle.load(bundle_dir), **kwargs)

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """What ``robometa-deploy info`` prints about how a bundle of this kind adapts, as
        ``(label, value)`` rows (gradient: the inner loop and the discount); none by default."""
        return []

    # ------------------------------------------------------------------ observations

    def _set_bundle(self, bundle: Bundle) -> None:
        """The bundle and its observation and action spaces, which ``observe`` checks, and
        its support epsilon."""
        self.bundle = bundle
        self.support_epsilon = support_epsilon_of(bundle)
        self.obs_dim = bundle.obs_dim
        self.n_actions = bundle.n_actions
        self.obs_low = bundle.obs_low
        self.obs_high = bundle.obs_high
        self.obs_names = tuple(bundle.manifest["observation"]["names"])
        self._obs_shape = (self.obs_dim,)
        self._rejected: Counter[str] = Counter()

    def _checked_counts(
        self, capacity: int | None, min_transitions: int, threads: int
    ) -> tuple[int | None, int]:
        """Check the constructor's shared counts (each in ``[1, MAX_CAPACITY]``, ``threads``
        in ``[1, MAX_THREADS]``; ``TypeError``/``ValueError`` naming the argument), set
        ``min_transitions``; return ``(capacity, threads)``."""
        self.min_transitions = check_count(
            "min_transitions", min_transitions, 1, MAX_CAPACITY, "MAX_CAPACITY"
        )
        threads = check_count("threads", threads, 1, MAX_THREADS, "MAX_THREADS")
        if capacity is not None:
            capacity = check_count("capacity", capacity, 1, MAX_CAPACITY, "MAX_CAPACITY")
        return capacity, threads

    def _checked_obs(self, obs: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
        """``obs`` as float32 of ``shape`` (``None``: any ``(B, obs_dim)`` with ``B >= 1``)."""
        array = check_real(obs, what)
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

    def _checked_batch(self, obs: Any) -> tuple[np.ndarray, bool]:
        """``q_values``' argument, one observation ``(obs_dim,)`` or a batch ``(B,
        obs_dim)``, as a float32 batch, and whether it was one (``ValueError`` naming the
        problem for a wrong shape or a non-finite entry)."""
        array = check_real(obs, "obs")
        single = array.ndim == 1
        batch = self._checked_obs(array[None] if single else array, None, "obs")
        bad = ~np.isfinite(batch).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(self._non_finite_message(batch[row], f"obs[{row}]"))
        return batch, single

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
        reason = rejection(
            o, action, reward, o2, terminated, self.obs_low, self.obs_high, self.n_actions
        )
        if reason:
            self._rejected[reason] += 1
            return False
        self.buffer.add(o, int(action), float(reward), o2, float(terminated))
        return True

    def _parse_saved(
        self,
        path: Path,
        arrays: dict[str, np.ndarray],
        meta: Mapping[str, np.ndarray],
        adapted: tuple[str, ...],
    ) -> tuple[dict[str, np.ndarray], Transitions, dict[str, int]]:
        """:func:`~robometa.deploy.state.parse_state` of a state file's ``arrays`` for this
        bundle, its observation and action spaces (``StateError`` naming the file and key)."""
        return parse_state(
            path,
            arrays,
            identity=self.bundle.identity,
            meta=meta,
            adapted=adapted,
            obs_dim=self.obs_dim,
            obs_low=self.obs_low,
            obs_high=self.obs_high,
            n_actions=self.n_actions,
        )

    def _restore_buffer(self, data: Transitions, rejected: Mapping[str, int]) -> None:
        """A loaded state's buffer (its newest ``capacity`` transitions, as ``observe`` would
        keep them) and rejection counts replace the current ones."""
        self.buffer.clear()
        keep = max(0, len(data.reward) - self.buffer.capacity)
        for row in zip(*(a[keep:] for a in data), strict=True):
            self.buffer.add(*row)
        self._rejected = Counter(rejected)

    @property
    def rejected(self) -> dict[str, int]:
        """Transitions refused by ``observe`` since the last ``reset``, by reason."""
        return dict(self._rejected)

    # ------------------------------------------------------------------ each kind's own

    @abc.abstractmethod
    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)``."""

    @abc.abstractmethod
    def q_values(self, obs: Any) -> np.ndarray:
        """Q-values for one observation ``(obs_dim,)`` or a batch ``(B, obs_dim)``."""

    @abc.abstractmethod
    def adapt(self, steps: int | None = None, from_meta: bool | None = None) -> AdaptReport:
        """Adapt to the buffered transitions; the report says what was done and kept."""

    @property
    @abc.abstractmethod
    def params(self) -> dict[str, np.ndarray]:
        """The current parameters (read-only arrays)."""

    @property
    @abc.abstractmethod
    def meta_params(self) -> dict[str, np.ndarray]:
        """The bundle's meta-parameters (read-only arrays)."""

    @abc.abstractmethod
    def acting_with_meta(self) -> contextlib.AbstractContextManager[Adapter]:
        """A block within which ``act`` and ``q_values`` use the meta-parameters."""

    @abc.abstractmethod
    def restore_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Make an earlier snapshot of :attr:`params` the current parameters."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Back to the meta-parameters, with an empty buffer and no rejection counts."""

    @abc.abstractmethod
    def save_state(self, path: str | Path) -> Path:
        """Write the adapted state to ``path`` atomically."""

    @abc.abstractmethod
    def load_state(self, path: str | Path) -> None:
        """Restore a state written by ``save_state`` for this same bundle."""


class BoundPolicyAdapter(Adapter):
    """An :class:`Adapter` whose ``policy.onnx`` session (``_policy``) acts bound to
    preallocated buffers (:class:`robometa.deploy.sessions.BoundPolicy`: the input row
    ``_obs1``, the action ``_a1``, the binding ``_binding``), which its ``act`` runs: the
    gradient kinds' and the conditioned kinds' runtimes."""

    _policy: Any
    _obs1: np.ndarray
    _a1: np.ndarray
    _binding: Any

    def act(self, obs: Any) -> int:
        """The greedy action for one observation of shape ``(obs_dim,)``.

        Raises ``ValueError`` naming the problem for a wrong shape, a non-numeric dtype or a
        NaN/inf entry, and ``BundleError`` if ``policy.onnx`` answers an action outside
        ``[0, n_actions)`` (a broken graph must not drive the robot).
        """
        buf = self._obs1[0]
        if type(obs) is np.ndarray and obs.dtype is FLOAT32 and obs.shape == self._obs_shape:
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


def support_epsilon_of(bundle: Bundle) -> float:
    """The exploration rate of support collection the bundle was trained and evaluated with
    (the manifest's ``config.adaptation.support_epsilon``; meta-learners collect their
    support this way in training, and ``robometa eval`` does for every method), or
    ``DEFAULT_SUPPORT_EPSILON`` for a manifest without it."""
    config = bundle.manifest.get("config")
    adaptation = config.get("adaptation") if isinstance(config, dict) else None
    if not isinstance(adaptation, dict) or "support_epsilon" not in adaptation:
        return DEFAULT_SUPPORT_EPSILON
    value = adaptation["support_epsilon"]
    if not is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise BundleError(
            f"{bundle.path / MANIFEST_FILE}: config.adaptation.support_epsilon is {value!r}, "
            "expected a number in [0, 1]"
        )
    return float(value)
