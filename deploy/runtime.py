"""The on-device adaptation runtime: act, collect transitions, take guarded gradient steps.

Only numpy, onnxruntime and the standard library. This module gathers the runtime's public
names; each lives in the module of its concern:

| module | what it holds |
|---|---|
| :mod:`~robometa.deploy.adapter` | :class:`Adapter`, the one API of every bundle kind: ``Adapter.load(path)`` builds the runtime the manifest's ``kind`` names; ``observe`` and the observation checks all kinds share |
| :mod:`~robometa.deploy.kinds` | the bundle kinds: ``kind`` -> lazy ``"module:Class"`` runtime, :func:`register_kind` for plug-ins |
| :mod:`~robometa.deploy.gradient` | the ``gradient`` kind (every bundle robometa exports): its bundle layout and :class:`GradientAdapter` (``act``, ``adapt``, ``save_state``...) |
| :mod:`~robometa.deploy.guard` | the guard of ``adapt`` (hold-out, bounded steps, rollback) and :class:`AdaptReport` |
| :mod:`~robometa.deploy.sessions` | ONNX Runtime sessions, and ``policy.onnx`` bound once for ``act`` |
| :mod:`~robometa.deploy.transitions` | :class:`Transitions`, :class:`TransitionBuffer`, what ``observe`` rejects |
| :mod:`~robometa.deploy.state` | the ``save_state`` file and its checks (:class:`StateError`) |
| :mod:`~robometa.deploy.files` | :func:`atomic_write`, :class:`WriteError` and stale temporary files |
| :mod:`~robometa.deploy.checks` | :func:`check_count`, :func:`check_number` and the number predicates |

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

from robometa.deploy.adapter import DEFAULT_SUPPORT_EPSILON, Adapter
from robometa.deploy.bundle import Bundle, BundleError
from robometa.deploy.checks import check_count, check_number
from robometa.deploy.files import (
    TEMP_MARKER,
    WriteError,
    atomic_write,
    check_writable,
    remove_stale_temp_files,
)
from robometa.deploy.gradient import GradientAdapter
from robometa.deploy.guard import MAX_ADAPT_STEPS, AdaptReport
from robometa.deploy.kinds import register_kind
from robometa.deploy.sessions import MAX_THREADS, session_options
from robometa.deploy.state import BUFFER_PREFIX, REJECTED_PREFIX, STATE_FORMAT, StateError
from robometa.deploy.transitions import (
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    REJECTION_REASONS,
    TransitionBuffer,
    Transitions,
)

__all__ = [
    "BUFFER_PREFIX",
    "DEFAULT_CAPACITY",
    "DEFAULT_SUPPORT_EPSILON",
    "MAX_ADAPT_STEPS",
    "MAX_CAPACITY",
    "MAX_THREADS",
    "REJECTED_PREFIX",
    "REJECTION_REASONS",
    "STATE_FORMAT",
    "TEMP_MARKER",
    "AdaptReport",
    "Adapter",
    "Bundle",
    "BundleError",
    "GradientAdapter",
    "StateError",
    "TransitionBuffer",
    "Transitions",
    "WriteError",
    "atomic_write",
    "check_count",
    "check_number",
    "check_writable",
    "register_kind",
    "remove_stale_temp_files",
    "session_options",
]
