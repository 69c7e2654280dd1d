"""The guard around on-device adaptation: hold-out split, bounded steps, rollback test.

* hold-out: a fraction of the buffer (``holdout_fraction``, spread evenly over time) is not
  trained on; the inner loss on it is measured before and after (:func:`split`);
* bounded steps: the global L2 norm of each step's parameter change is clipped to
  ``max_update_norm`` (``None`` disables), so one bad gradient cannot throw the parameters far
  (:func:`bounded`);
* rollback: if any parameter becomes NaN/inf, or the held-out loss rises by more than
  ``tolerance`` (relative), the step sequence is discarded (:func:`worse`).

Functions of plain arrays and numbers: a kind's runtime supplies the step and keeps the
parameters (see :meth:`robometa.deploy.gradient.GradientAdapter.adapt`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from robometa.deploy.transitions import Transitions

#: the most gradient steps one ``adapt`` takes (``steps``, and the manifest's ``inner.steps``);
#: ten times the training config's cap, so a fine-tuning run can take more than training did.
MAX_ADAPT_STEPS = 10_000
_ABS_TOLERANCE = 1e-6  # loss noise floor for the rollback test


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


def split(data: Transitions, holdout_fraction: float) -> tuple[Transitions, Transitions]:
    """(train, held-out): every ``1/holdout_fraction``-th transition is held out."""
    n = len(data.reward)
    i = np.arange(n)
    f = holdout_fraction
    held = np.floor((i + 1) * f) > np.floor(i * f)
    return data.take(~held), data.take(held)


def bounded(
    current: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    step: int,
    max_update_norm: float | None,
) -> tuple[dict[str, np.ndarray], bool, str]:
    """Clip the step's update norm; report non-finite parameters as a failure."""
    sq = 0.0
    for k, v in new.items():
        sq += float(np.sum(np.square(v.astype(np.float64) - current[k])))
    norm = math.sqrt(sq) if math.isfinite(sq) else math.inf
    if not math.isfinite(norm) or not all(np.isfinite(v).all() for v in new.values()):
        return new, False, f"parameters became non-finite at step {step}"
    if max_update_norm is None or norm <= max_update_norm:
        return new, False, ""
    scale = max_update_norm / norm
    clipped = {
        k: (current[k] + scale * (v - current[k])).astype(np.float32) for k, v in new.items()
    }
    return clipped, True, ""


def worse(before: float, after: float, tolerance: float) -> str:
    """Why the held-out loss ``after`` the steps is worse than ``before`` ('' if it is not)."""
    if not math.isfinite(after):
        return f"held-out loss became {after}"
    limit = before + tolerance * abs(before) + _ABS_TOLERANCE
    if after > limit:
        return f"held-out loss rose from {before:.6g} to {after:.6g} (tolerance {tolerance:.0%})"
    return ""
