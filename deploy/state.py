"""An adapter's saved state: the file ``save_state`` writes and ``load_state`` checks.

A ``.npz`` of plain arrays (never pickles): ``state_format`` (:data:`STATE_FORMAT`),
``bundle_identity`` (the bundle's digest), ``param:<name>`` for every adapted parameter,
``buffer:<column>`` for the buffered transitions (oldest first) and ``rejected:<reason>``
counts. Reading checks every key and entry before anything is used, with the rules
``observe`` applies, so a state can never give the adapter what ``observe`` would refuse.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from robometa.deploy.bundle import BATCH_INPUTS, PARAM_PREFIX
from robometa.deploy.checks import param_problem
from robometa.deploy.transitions import REJECTION_REASONS, Transitions

#: version of the ``save_state`` file layout.
STATE_FORMAT = 1
#: key prefixes of a ``save_state`` file (besides ``param:``, the bundle's).
BUFFER_PREFIX = "buffer:"
REJECTED_PREFIX = "rejected:"


class StateError(ValueError):
    """A saved adapter state cannot be loaded (the message names the file and key)."""


def state_arrays(
    identity: str,
    params: Mapping[str, np.ndarray],
    data: Transitions,
    rejected: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """The arrays of a state file: ``params`` are the adapted parameters, ``data`` the
    buffered transitions, ``rejected`` the rejection counts by reason."""
    arrays: dict[str, np.ndarray] = {
        "state_format": np.asarray(STATE_FORMAT, np.int64),
        "bundle_identity": np.asarray(identity),
    }
    for k, value in params.items():
        arrays[PARAM_PREFIX + k] = value
    for name, value in zip(BATCH_INPUTS, data, strict=True):
        arrays[BUFFER_PREFIX + name] = value
    for reason, count in rejected.items():
        arrays[REJECTED_PREFIX + reason] = np.asarray(count, np.int64)
    return arrays


def read_state(path: Path) -> dict[str, np.ndarray]:
    """Every array of a state file, without pickles; a ``StateError`` naming ``path`` if it
    is missing or not a readable ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except FileNotFoundError:
        raise StateError(f"{path}: no such state file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise StateError(f"{path}: not a readable .npz state file ({err})") from None


def parse_state(
    path: Path,
    arrays: dict[str, np.ndarray],
    *,
    identity: str,
    meta: Mapping[str, np.ndarray],
    adapted: tuple[str, ...],
    obs_dim: int,
    obs_low: np.ndarray,
    obs_high: np.ndarray,
    n_actions: int,
) -> tuple[dict[str, np.ndarray], Transitions, dict[str, int]]:
    """(adapted parameters, buffered transitions, rejection counts) of a state file saved for
    the bundle ``identity`` whose meta-parameters are ``meta``; a ``StateError`` naming the
    file, the key and the first bad entry otherwise."""

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise StateError(f"{path}: missing key {key!r}")
        return arrays[key]

    version = need("state_format")
    if version.shape != () or version.dtype.kind not in "iu" or version != STATE_FORMAT:
        raise StateError(
            f"{path}: state_format {version!r} is not supported (expected {STATE_FORMAT})"
        )
    saved = need("bundle_identity")
    if saved.shape != () or saved.dtype.kind != "U":
        raise StateError(f"{path}: bundle_identity must be a string, got {saved!r}")
    if str(saved) != identity:
        raise StateError(
            f"{path}: saved for a different bundle (identity {str(saved)[:12]}..., "
            f"this bundle {identity[:12]}...)"
        )
    expected = {"state_format", "bundle_identity"}
    expected |= {PARAM_PREFIX + k for k in adapted}
    expected |= {BUFFER_PREFIX + name for name in BATCH_INPUTS}
    expected |= {REJECTED_PREFIX + reason for reason in REJECTION_REASONS}
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise StateError(f"{path}: unexpected keys {unknown} (not written by save_state)")
    params = {}
    for k in adapted:
        problem = param_problem(need(PARAM_PREFIX + k), meta[k])
        if problem:
            raise StateError(f"{path}: {PARAM_PREFIX + k} {problem}")
        params[k] = arrays[PARAM_PREFIX + k]
    data = _parse_buffer(path, need, obs_dim, obs_low, obs_high, n_actions)
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


def _parse_buffer(
    path: Path,
    need: Callable[[str], np.ndarray],
    obs_dim: int,
    low: np.ndarray,
    high: np.ndarray,
    n_actions: int,
) -> Transitions:
    """The saved buffer, every entry checked with ``observe``'s rules."""
    dtypes = (np.float32, np.int64, np.float32, np.float32, np.float32)
    columns = []
    for name, dtype in zip(BATCH_INPUTS, dtypes, strict=True):
        value = need(BUFFER_PREFIX + name)
        if value.dtype != dtype:
            raise StateError(
                f"{path}: {BUFFER_PREFIX}{name} has dtype {value.dtype}, expected {dtype.__name__}"
            )
        columns.append(value)
    data = Transitions(*columns)
    n = len(data.reward) if data.reward.ndim == 1 else -1
    shapes_ok = (
        n >= 0
        and data.obs.shape == (n, obs_dim)
        and data.next_obs.shape == (n, obs_dim)
        and all(a.shape == (n,) for a in (data.action, data.reward, data.terminated))
    )
    if not shapes_ok:
        raise StateError(
            f"{path}: buffer arrays have inconsistent shapes "
            f"{[list(a.shape) for a in data]} for obs_dim {obs_dim}"
        )
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
            (data.action < 0) | (data.action >= n_actions),
            f"outside [0, {n_actions})",
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
