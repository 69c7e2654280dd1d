"""Dynamics spaces and tasks: the single home of every randomizable physical parameter.

A *task* is one draw of a robot family's dynamics: an immutable mapping from parameter name to
value. A :class:`DynamicsSpace` lists every parameter of a family with its unit, nominal value,
train range, test range (wider, out of distribution), distribution and physical limits, and it
is the only code that samples, validates and (de)serializes tasks.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from robometa.envs.safe_load import dump_yaml, load_file

Distribution = Literal["uniform", "loguniform", "choice"]
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "loguniform", "choice")


def _where(source: str | Path | None) -> str:
    return f" (in {source})" if source is not None else ""


@dataclass(frozen=True)
class Param:
    """One randomizable dynamics parameter.

    For ``uniform`` and ``loguniform`` parameters ``train`` and ``test`` are ``(low, high)``;
    for ``choice`` parameters they are the tuples of allowed values. ``limits`` is the physical
    range any value must lie in (e.g. a mass must be positive), whatever the split.
    """

    name: str
    unit: str
    nominal: float
    train: tuple[float, ...]
    test: tuple[float, ...]
    distribution: Distribution = "uniform"
    limits: tuple[float, float] = (-math.inf, math.inf)
    integer: bool = False
    doc: str = ""
    #: the only physically meaningful values, when they are a discrete set (e.g. a sign).
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"parameter {self.name!r}: distribution {self.distribution!r} is not one of "
                f"{_DISTRIBUTIONS}"
            )
        for split in SPLITS:
            values = getattr(self, split)
            if self.distribution != "choice":
                if len(values) != 2 or not values[0] <= values[1]:
                    raise ValueError(
                        f"parameter {self.name!r}: {split} range {list(values)} must be "
                        "[low, high] with low <= high"
                    )
                if self.distribution == "loguniform" and values[0] <= 0:
                    raise ValueError(
                        f"parameter {self.name!r}: log-uniform {split} range {list(values)} "
                        "must be positive"
                    )
            elif len(values) == 0:
                raise ValueError(f"parameter {self.name!r}: {split} choices must not be empty")
            for v in values:
                self.check(v, what=f"{split} range bound")
        self.check(self.nominal, what="nominal value")

    def check(self, value: Any, source: str | Path | None = None, what: str = "value") -> float:
        """Return ``value`` as this parameter's type or raise a ``ValueError`` naming it."""
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"parameter {self.name!r}: {what} {value!r} has type {type(value).__name__}, "
                f"expected a number in [{self.limits[0]}, {self.limits[1]}] ({self.unit})"
                f"{_where(source)}"
            )
        v = float(value)
        lo, hi = self.limits
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(
                f"parameter {self.name!r}: {what} {value!r} is outside the physical range "
                f"[{lo}, {hi}] ({self.unit}){_where(source)}"
            )
        if self.values and v not in self.values:
            raise ValueError(
                f"parameter {self.name!r}: {what} {value!r} is not one of "
                f"{[int(x) if self.integer else x for x in self.values]} ({self.unit})"
                f"{_where(source)}"
            )
        if self.integer:
            if v != round(v):
                raise ValueError(
                    f"parameter {self.name!r}: {what} {value!r} must be a whole number "
                    f"in [{lo}, {hi}]{_where(source)}"
                )
            return int(round(v))
        return v

    def sample(self, rng: np.random.Generator, split: Split) -> float:
        values = getattr(self, split)
        if self.distribution == "choice":
            v = values[int(rng.integers(len(values)))]
        elif self.distribution == "loguniform":
            v = math.exp(rng.uniform(math.log(values[0]), math.log(values[1])))
        else:
            v = rng.uniform(values[0], values[1])
        return int(round(v)) if self.integer else float(v)

    def normalize(self, value: float) -> float:
        """Map a value to roughly [-1, 1] over the train range (the oracle's input)."""
        lo, hi = min(self.train), max(self.train)
        if self.distribution == "loguniform":
            lo, hi, value = math.log(lo), math.log(hi), math.log(max(value, 1e-12))
        if hi == lo:
            return 0.0
        return 2.0 * (value - lo) / (hi - lo) - 1.0

    def describe_range(self, split: Split) -> str:
        values = getattr(self, split)
        if self.distribution == "choice":
            return "{" + ", ".join(f"{v:g}" for v in values) + "}"
        return f"[{values[0]:g}, {values[1]:g}]" + (
            " log" if self.distribution == "loguniform" else ""
        )


def actuator_gain_param(doc: str) -> Param:
    """Motor strength relative to nominal, every family (Peng et al. 2018: gains x[0.5, 2])."""
    return Param(
        "actuator_gain", "-", 1.0, (0.5, 2.0), (0.25, 4.0), "loguniform", (0.0, 100.0), doc=doc
    )


def motor_sign_param(doc: str) -> Param:
    """The reversed-motor parameter every family has: -1 mounts one motor backwards."""
    return Param(
        "motor_sign",
        "-",
        1.0,
        (1.0, -1.0),
        (1.0, -1.0),
        "choice",
        (-1.0, 1.0),
        integer=True,
        doc=doc,
        values=(-1.0, 1.0),
    )


#: actuation latency, shared by every family (applied by ``RobotEnv`` itself).
LATENCY_STEPS = Param(
    "latency_steps",
    "steps",
    0,
    (0, 1),
    (0, 1, 2, 3),
    "choice",
    (0, 20),
    integer=True,
    doc="control steps between choosing an action and applying it",
)

#: observation noise, shared by every family (applied by ``RobotEnv`` via ``obs_scale``).
OBS_NOISE = Param(
    "obs_noise",
    "x obs scale",
    0.0,
    (0.0, 0.02),
    (0.0, 0.05),
    "uniform",
    (0.0, 1.0),
    doc="Gaussian observation noise std, relative to each entry's typical scale",
)


class Task(Mapping[str, float]):
    """An immutable, hashable mapping of dynamics parameter -> value (one robot configuration)."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping[str, float] | Iterable[tuple[str, float]] = ()):
        items = dict(values)
        object.__setattr__(self, "_items", tuple(sorted(items.items())))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Task is immutable; build a new one with Task({**task, key: value})")

    def __reduce__(self) -> tuple[type[Task], tuple[dict[str, float]]]:
        # pickled as its items (to a worker process), rebuilt through __init__
        return (Task, (dict(self._items),))

    def __getitem__(self, key: str) -> float:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Task):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "Task(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def to_dict(self) -> dict[str, float]:
        return dict(self._items)


@dataclass(frozen=True)
class DynamicsSpace:
    """Every randomizable parameter of one robot family, in a fixed order."""

    family: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.family}: duplicate parameter names in {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.params)

    def nominal(self) -> Task:
        return Task({p.name: p.check(p.nominal) for p in self.params})

    def sample(self, n: int, seed: int | None = None, split: Split = "train") -> list[Task]:
        """Draw ``n`` tasks; the same ``(seed, split)`` always gives the same tasks."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        if n < 0:
            raise ValueError(f"number of tasks must be >= 0, got {n}")
        entropy = [SPLITS.index(split)] if seed is None else [int(seed), SPLITS.index(split)]
        rng = np.random.default_rng(entropy if seed is not None else None)
        return [Task({p.name: p.sample(rng, split) for p in self.params}) for _ in range(n)]

    def make_task(self, values: Mapping[str, Any], source: str | Path | None = None) -> Task:
        """Validate a (possibly partial) mapping; missing parameters take their nominal value."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{self.family}: a task must be a mapping of parameter -> value, got "
                f"{type(values).__name__}{_where(source)}"
            )
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise ValueError(
                f"{self.family}: unknown dynamics parameter {unknown[0]!r}{_where(source)}; "
                f"known parameters: {', '.join(self.names)}"
            )
        return Task({p.name: p.check(values.get(p.name, p.nominal), source) for p in self.params})

    def normalized(self, task: Task) -> np.ndarray:
        """The task as a float32 vector in about [-1, 1], ordered as ``names``."""
        return np.asarray([p.normalize(float(task[p.name])) for p in self.params], np.float32)

    def with_overrides(
        self, overrides: Mapping[str, Mapping[str, Any]], source: str | Path | None = None
    ) -> DynamicsSpace:
        """A copy with some ranges replaced, e.g. from YAML ``{pole_length: {train: [..]}}``."""
        allowed = {"nominal", "train", "test", "distribution"}
        params = {p.name: p for p in self.params}
        for name, change in overrides.items():
            if name not in params:
                raise ValueError(
                    f"dynamics override: unknown parameter {name!r}{_where(source)}; "
                    f"known parameters: {', '.join(self.names)}"
                )
            if not isinstance(change, Mapping):
                raise ValueError(
                    f"dynamics override {name!r}: expected a mapping with keys "
                    f"{sorted(allowed)}, got {change!r}{_where(source)}"
                )
            bad = sorted(set(change) - allowed)
            if bad:
                raise ValueError(
                    f"dynamics override {name}.{bad[0]}: unknown key{_where(source)}; "
                    f"allowed keys: {sorted(allowed)}"
                )
            kwargs: dict[str, Any] = {}
            for key, value in change.items():
                if key in ("train", "test"):
                    if not isinstance(value, (list, tuple)):
                        raise ValueError(
                            f"dynamics override {name}.{key}: {value!r} must be a list"
                            f"{_where(source)}"
                        )
                    value = tuple(value)
                kwargs[key] = value
            try:
                params[name] = replace(params[name], **kwargs)
            except ValueError as err:
                raise ValueError(f"dynamics override {name}: {err}{_where(source)}") from None
        return replace(self, params=tuple(params[n] for n in self.names))

    def table(self) -> str:
        """Markdown table of the space, used in docstrings and the README."""
        rows = [
            "| parameter | unit | nominal | train | test | distribution |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.params:
            rows.append(
                f"| `{p.name}` | {p.unit} | {p.nominal:g} | {p.describe_range('train')} | "
                f"{p.describe_range('test')} | {p.distribution} |"
            )
        return "\n".join(rows)

    def to_json(self) -> list[dict[str, Any]]:
        """Plain description for manifests (JSON-safe)."""
        return [
            {
                "name": p.name,
                "unit": p.unit,
                "nominal": p.nominal,
                "train": list(p.train),
                "test": list(p.test),
                "distribution": p.distribution,
                "limits": [
                    p.limits[0] if math.isfinite(p.limits[0]) else None,
                    p.limits[1] if math.isfinite(p.limits[1]) else None,
                ],
                "integer": p.integer,
            }
            for p in self.params
        ]


# --------------------------------------------------------------------------- task files


#: the keys a task file may have at its top level
TASK_FILE_KEYS = ("env", "tasks")


def dump_tasks(
    tasks: Iterable[Mapping[str, float]], path: str | Path, env_id: str | None = None
) -> None:
    """Write a task file (``.json`` or YAML) that :func:`load_tasks` reads back exactly.

    All at once or not at all: a failed write (disk full, read-only, a missing directory) is a
    ``ValueError`` naming the file, leaves any previous file unchanged and no temporary file.
    """
    path = Path(path)
    doc: dict[str, Any] = {}
    if env_id is not None:
        doc["env"] = env_id
    doc["tasks"] = [dict(t) for t in tasks]
    if path.suffix.lower() == ".json":
        try:
            text = json.dumps(doc, indent=2, allow_nan=False)
        except ValueError:
            raise ValueError(
                f"cannot write task file {path}: a task value is not a finite number"
            ) from None
    else:
        text = dump_yaml(doc)
    tmp = path.with_name(path.name + ".tmp")
    pending = False  # a temporary file exists that is not yet renamed over ``path``
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            pending = True
            f.write(text)
        tmp.replace(path)
        pending = False
    except OSError as err:
        raise ValueError(f"cannot write task file {path}: {err.strerror or err}") from None
    finally:  # after a failed write or rename (Ctrl-C too) leave nothing behind
        if pending:
            tmp.unlink(missing_ok=True)


def load_tasks(path: str | Path, space: DynamicsSpace) -> list[Task]:
    """Read a task file ``{tasks: [{param: value, ...}, ...]}`` (JSON for ``.json``, else YAML;
    read by :mod:`robometa.envs.safe_load`: at most 1 MiB, UTF-8, no aliases or duplicate
    keys), optionally with the ``env`` it was written for.

    Missing parameters take their nominal value; any problem raises ``ValueError`` naming the
    file, the task index, the parameter, the value and the allowed range.
    """
    path = Path(path)
    doc = load_file(path, "task file")
    if not isinstance(doc, Mapping) or "tasks" not in doc:
        raise ValueError(f"task file {path}: expected a mapping with a 'tasks' list at the top")
    extra = [k for k in doc if k not in TASK_FILE_KEYS]
    if extra:
        raise ValueError(
            f"task file {path}: unknown top-level key {_short(extra[0])}; allowed keys: "
            f"{', '.join(TASK_FILE_KEYS)}"
        )
    if "env" in doc and not isinstance(doc["env"], str):
        raise ValueError(f"task file {path}: 'env' must be an env id, got {_short(doc['env'])}")
    tasks = doc["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(f"task file {path}: 'tasks' must be a non-empty list of mappings")
    out = []
    for i, values in enumerate(tasks):
        where = f"{path}, tasks[{i}]"
        _check_file_task(values, space, where)
        out.append(space.make_task(values, source=where))
    return out


def _check_file_task(values: Any, space: DynamicsSpace, where: str) -> None:
    """What :meth:`DynamicsSpace.make_task` takes for granted of a mapping from a file: keys
    that are strings, and numbers that fit in a float64 (a 400-digit integer does not)."""
    if not isinstance(values, Mapping):
        return  # make_task says a task must be a mapping
    for key in values:
        if not isinstance(key, str):
            raise ValueError(
                f"{space.family}: task key {_short(key)} ({type(key).__name__}) is not a "
                f"parameter name{_where(where)}; known parameters: {', '.join(space.names)}"
            )
    for key, value in values.items():
        if key not in space.names:
            continue  # make_task names the unknown parameter
        p = space[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and abs(value) > sys.float_info.max:
            raise ValueError(
                f"parameter {key!r}: value {_short(value)} is outside the physical range "
                f"[{p.limits[0]}, {p.limits[1]}] ({p.unit}){_where(where)}"
            )
        if not number and len(repr(value)) > 60:  # make_task would quote all of it
            raise ValueError(
                f"parameter {key!r}: value {_short(value)} has type {type(value).__name__}, "
                f"expected a number in [{p.limits[0]}, {p.limits[1]}] ({p.unit}){_where(where)}"
            )


def _short(value: Any) -> str:
    """``repr`` cut to a line (an error must not quote a 400-digit number)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]} ({len(text)} characters)"
