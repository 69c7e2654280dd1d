"""Argument and value checks of the runtime: nothing is coerced, every refusal names the value.

Counts are ``int`` (a numpy integer too; never a bool, float or str) within a documented
maximum (:func:`check_count`); fractions and bounds are real numbers in a range
(:func:`check_number`). The predicates below judge a value as the runtime stores it: a reward
is finite only if it stays finite as float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOAT32 = np.dtype(np.float32)
# The smallest magnitude that rounds to inf as float32 (halfway between the largest float32,
# 2**128 - 2**104, and 2**128; the tie rounds to the even mantissa, which is inf).
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


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
    if not is_number(value):
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


def check_real(value: Any, what: str) -> np.ndarray:
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


def scalar(value: Any) -> Any:
    """Unwrap a 0-d numpy array into its Python scalar (other values pass through)."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def is_number(value: Any) -> bool:
    """A real int or float (numpy included), not a bool."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (int, float, np.integer, np.floating)
    )


def is_whole_number(value: Any) -> bool:
    if not is_number(value):
        return False
    return isinstance(value, (int, np.integer)) or float(value).is_integer()


def finite_as_float32(value: Any) -> bool:
    """Whether a real number stays finite when stored as float32 (ints of any size too)."""
    try:
        x = float(value)
    except OverflowError:
        return False
    return abs(x) < FLOAT32_OVERFLOW  # False for NaN and inf as well


def within(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    return bool(np.all(x >= low) and np.all(x <= high))


def frozen(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy that cannot be modified in place (it may be bound to ORT)."""
    out = np.array(array, dtype=np.float32, order="C", copy=True)
    out.setflags(write=False)
    return out


def param_problem(value: np.ndarray, meta: np.ndarray) -> str:
    """What is wrong with ``value`` as a replacement for the parameter ``meta`` ('' if
    nothing): it must be a finite float32 array of the same shape."""
    value = np.asarray(value)
    if value.dtype != np.float32 or value.shape != meta.shape:
        return f"is {value.dtype}{list(value.shape)}, expected float32{list(meta.shape)}"
    if not np.isfinite(value).all():
        return "contains NaN or inf"
    return ""
