"""Typed experiment configuration, validated before anything runs.

One YAML file per experiment maps onto :class:`Config`. Every field carries its documentation
and allowed range in ``metadata``, so error messages and the README's config reference are
generated from the same source; every number has an upper bound too, so a value that could
only exhaust memory or time (``dqn.buffer_size: 10000000000000``) is refused before anything
runs. Files and ``--set`` values are read by :mod:`robometa.envs.safe_load` (no aliases,
duplicate keys or oversized files). Loading never mutates what the caller passed in.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import itertools
import math
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import robometa.algorithms
from robometa.envs import FAMILIES
from robometa.envs.safe_load import InputError, dump_yaml, parse_yaml, read_text

#: the most torch threads a training process may ask for (``threads``)
MAX_THREADS = 64
#: the largest seed: numpy and gymnasium seeds are unsigned 32-bit numbers
MAX_SEED = 2**32 - 1
#: the longest training (environment steps); also bounds every interval counted in env steps
MAX_ENV_STEPS = 10**10
#: the most gradient steps of adaptation (adaptation.steps, robometa eval --curve)
MAX_ADAPT_STEPS = 1000
#: network.hidden: at most this many layers, each at most HIDDEN_MAX_SIZE wide, and at most
#: HIDDEN_MAX_WEIGHTS weights between consecutive hidden layers (the body's size in memory)
HIDDEN_MAX_LAYERS = 8
HIDDEN_MAX_SIZE = 4096
HIDDEN_MAX_WEIGHTS = 10_000_000


def _f(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    documented: Callable[[], Sequence[Any]] | None = None,
) -> Any:
    """A field with its documentation and allowed values; ``choices`` may be a function, read
    each time a value is checked (``algorithm``: whatever is registered then), and
    ``documented`` the values the README's reference lists (``algorithm``: robometa's own,
    whatever plug-ins are installed where the docs are generated)."""
    if choices is not None and not callable(choices):
        choices = tuple(choices) or None
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "documented": documented}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EnvConfig:
    """The robot family and which robot configurations training sees."""

    id: str = _f("robometa/CartPole-v0", "the robot family", choices=tuple(FAMILIES))
    tasks: str = _f(
        "train",
        "`train`: a new task from the train split for every episode (domain randomization); `nominal`: the nominal robot only",
        choices=("train", "nominal"),
    )
    dynamics: dict = _f(
        {},
        "overrides of the dynamics ranges, `{param: {train: [lo, hi], test: [lo, hi]}}`, checked "
        "against the family's parameters and physical limits",
    )
    num_envs: int = _f(4, "environments stepped together while collecting", lo=1, hi=256)
    max_episode_steps: int = _f(0, "episode length; 0 keeps the family's default", lo=0, hi=100000)


@dataclass(frozen=True)
class NetworkConfig:
    """The Q-network (a shared MLP body with a Q head and a dynamics-model head)."""

    hidden: list = _f(
        [64, 64],
        f"hidden layer sizes of the body: 1 to {HIDDEN_MAX_LAYERS} layers, each in "
        f"[1, {HIDDEN_MAX_SIZE}], at most {HIDDEN_MAX_WEIGHTS:_} weights between consecutive "
        "layers",
    )
    activation: str = _f("relu", "activation of the hidden layers", choices=("relu", "tanh", "elu"))
    context_dim: int = _f(
        0, "size of the context vector fed to the network (CAVIA adapts only this)", lo=0, hi=1024
    )


@dataclass(frozen=True)
class DQNConfig:
    """Deep Q-learning (also the outer data collection of the meta-learners)."""

    total_steps: int = _f(
        50000, "environment steps of training (all envs together)", lo=1, hi=MAX_ENV_STEPS
    )
    learning_rate: float = _f(1e-3, "Adam learning rate", lo=0.0, hi=1.0)
    lr_end_fraction: float = _f(
        1.0,
        "learning rate at the end of training as a fraction of learning_rate, reached by linear "
        "decay over total_steps (1: constant); a decayed rate settles the final greedy policy",
        lo=0.0,
        hi=1.0,
    )
    batch_size: int = _f(64, "transitions per gradient step", lo=1, hi=65536)
    buffer_size: int = _f(50000, "replay buffer capacity (transitions)", lo=1, hi=10_000_000)
    gamma: float = _f(0.99, "discount factor", lo=0.0, hi=1.0)
    n_step: int = _f(
        1,
        "steps of reward summed into one replayed transition (its target bootstraps with "
        "gamma^n_step): values travel n_step steps back per target-network update",
        lo=1,
        hi=100,
    )
    learning_starts: int = _f(
        1000, "environment steps before the first gradient step", lo=0, hi=MAX_ENV_STEPS
    )
    train_freq: int = _f(1, "vector steps between gradient updates", lo=1, hi=1_000_000)
    gradient_steps: int = _f(1, "gradient steps per update", lo=1, hi=1000)
    target_update_interval: int = _f(
        500,
        "gradient steps between hard target-network updates (when tau = 1)",
        lo=1,
        hi=1_000_000_000,
    )
    tau: float = _f(
        1.0, "Polyak coefficient of the target update (1: hard copy every interval)", lo=0.0, hi=1.0
    )
    exploration_fraction: float = _f(
        0.2, "fraction of training over which epsilon decays linearly", lo=0.0, hi=1.0
    )
    epsilon_start: float = _f(1.0, "initial exploration rate", lo=0.0, hi=1.0)
    epsilon_end: float = _f(0.05, "final exploration rate", lo=0.0, hi=1.0)
    max_grad_norm: float = _f(10.0, "gradient-norm clipping threshold", lo=0.0)
    huber_delta: float = _f(1.0, "Huber loss threshold", lo=0.0)


@dataclass(frozen=True)
class AdaptationConfig:
    """The inner loop: what adaptation on a new robot does (same in training, eval and deploy)."""

    loss: str = _f(
        "td",
        "inner loss: `td`, `model` (predict the next-state change; needs no reward) or `td+model`",
        choices=("td", "model", "td+model"),
    )
    steps: int = _f(5, "gradient steps of adaptation", lo=0, hi=MAX_ADAPT_STEPS)
    lr: float = _f(0.1, "inner learning rate (initial value for Meta-SGD)", lo=0.0, hi=1000.0)
    support_size: int = _f(
        200, "transitions collected on the new robot before adapting", lo=1, hi=1000000
    )
    support_epsilon: float = _f(
        0.3, "exploration rate while collecting support transitions", lo=0.0, hi=1.0
    )
    model_weight: float = _f(
        1.0, "weight of the model term in `td+model` (and in the outer loss)", lo=0.0
    )
    fine_tune_lr: float = _f(
        1e-3,
        "learning rate for fine-tuning methods that were not meta-trained (dqn)",
        lo=0.0,
        hi=1000.0,
    )


@dataclass(frozen=True)
class MetaConfig:
    """Outer loop of the gradient-based meta-learners."""

    meta_batch: int = _f(8, "tasks per outer step", lo=1, hi=1024)
    task_pool: int = _f(
        64,
        "size of the fixed pool of training tasks, one simulator each (0: a fresh task every time)",
        lo=0,
        hi=1024,
    )
    outer_lr: float = _f(1e-3, "Adam learning rate of the meta-parameters", lo=0.0, hi=1.0)
    outer_lr_end_fraction: float = _f(
        1.0,
        "outer learning rate (Reptile: its step) at the end of meta-training as a fraction of "
        "the configured one, reached by linear decay over dqn.total_steps (1: constant)",
        lo=0.0,
        hi=1.0,
    )
    collect_steps: int = _f(
        100, "environment steps collected per sampled task per outer step", lo=0, hi=100_000
    )
    query_batch: int = _f(128, "query transitions per task in the outer loss", lo=1, hi=65536)
    target_update_interval: int = _f(
        100, "outer steps between target-network copies", lo=1, hi=1_000_000_000
    )
    updates_per_collect: int = _f(
        10,
        "outer steps per round of collection (replay makes the data reusable)",
        lo=1,
        hi=10_000,
    )
    reptile_step: float = _f(
        0.5, "Reptile: fraction of the way to move toward the adapted parameters", lo=0.0, hi=1.0
    )
    learn_lrs: bool = _f(
        False, "learn the inner learning rates (Meta-SGD always does, per parameter)"
    )
    first_order: bool = _f(False, "drop the second-order terms (fomaml always does)")


@dataclass(frozen=True)
class MemoryConfig:
    """History and recurrent state of the families that act on their past (``rma``,
    ``recurrent``, ``dr-history``, ``oracle-history``)."""

    history: int = _f(
        16,
        "steps of (s, a, s' - s) history the rma adaptation module reads to estimate the "
        "extrinsics; for dr-history and oracle-history, the transitions of the episode Q reads",
        lo=1,
        hi=1000,
    )
    hidden_size: int = _f(64, "size of the recurrent family's GRU state", lo=1, hi=4096)
    sequence_length: int = _f(
        32, "steps of each stored sequence the recurrent family trains on", lo=1, hi=10_000
    )
    burn_in: int = _f(
        8,
        "steps at the start of each training sequence that only warm the recurrent state up "
        "(no loss on them; R2D2)",
        lo=0,
        hi=10_000,
    )
    teacher_fraction: float = _f(
        0.6,
        "share of dqn.total_steps rma trains its privileged teacher before it trains the "
        "adaptation module (the rest)",
        lo=0.0,
        hi=1.0,
    )


@dataclass(frozen=True)
class LoggingConfig:
    """Progress, metrics and checkpoints."""

    log_every: int = _f(1000, "environment steps between metric rows", lo=1, hi=MAX_ENV_STEPS)
    checkpoint_every: int = _f(
        10000,
        "environment steps between checkpoints (each one is an episode boundary for every env)",
        lo=1,
        hi=MAX_ENV_STEPS,
    )
    eval_every: int = _f(
        0,
        "environment steps between model-selection evaluations on training tasks; policy.pt "
        "keeps the best (0: keep the final policy; rma selects among its student-phase "
        "policies only)",
        lo=0,
        hi=MAX_ENV_STEPS,
    )
    eval_tasks: int = _f(
        8, "training-split tasks of each model-selection evaluation", lo=1, hi=1000
    )
    progress: bool = _f(True, "show a progress bar")
    tensorboard: bool = _f(True, "also write TensorBoard events when tensorboard is installed")


@dataclass(frozen=True)
class Config:
    """A whole experiment, read top to bottom."""

    algorithm: str = _f(
        "dqn",
        "what to train",
        choices=robometa.algorithms.names,
        documented=robometa.algorithms.builtin_names,
    )
    seed: int = _f(0, "seed of everything (tasks, envs, networks, exploration)", lo=0, hi=MAX_SEED)
    threads: int = _f(
        1,
        "torch threads of the training process; 2 lets a meta-learner's matrix products use a "
        "second core (measured 1.2-1.4x faster per outer step on the CartPole meta-learner "
        "configs); a seeded run repeats exactly at the same thread count, and 1 and 2 threads "
        "may differ by float rounding (a kernel may split a sum across the threads)",
        lo=1,
        hi=MAX_THREADS,
    )
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"doc": "robot family"})
    network: NetworkConfig = field(default_factory=NetworkConfig, metadata={"doc": "Q-network"})
    dqn: DQNConfig = field(default_factory=DQNConfig, metadata={"doc": "deep Q-learning"})
    adaptation: AdaptationConfig = field(
        default_factory=AdaptationConfig, metadata={"doc": "inner loop"}
    )
    meta: MetaConfig = field(default_factory=MetaConfig, metadata={"doc": "outer loop"})
    memory: MemoryConfig = field(
        default_factory=MemoryConfig, metadata={"doc": "online memory (rma, recurrent)"}
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"doc": "logging"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML that :func:`load_config` reads back to an equal config."""
        return dump_yaml(self.to_dict())

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


# ---------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return {
        int: "integer",
        float: "number",
        bool: "boolean",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(tp, getattr(tp, "__name__", str(tp)))


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8


def _show(value: Any) -> str:
    """``repr`` cut to a line: an error must not quote a 400-digit number or a whole file."""
    return _REPR.repr(value)


def _number_text(x: float | None, infinity: str) -> str:
    if x is None:
        return infinity
    if isinstance(x, int) and abs(x) >= 100_000:
        return f"{x:_}"  # 10_000_000_000: readable, and valid YAML and Python
    return str(x)


def range_text(meta: Mapping[str, Any]) -> str:
    """A field's allowed range as the errors and the README show it, e.g. ``[1, 10_000]``."""
    return f"[{_number_text(meta.get('lo'), '-inf')}, {_number_text(meta.get('hi'), 'inf')}]"


def allowed_values(meta: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A field's allowed values now (``None``: any value of its type)."""
    choices = meta.get("choices")
    if callable(choices):
        choices = tuple(choices())
    return choices or None


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any], source: str) -> Any:
    where = f" in {source}" if source else ""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > sys.float_info.max:
            raise ValueError(
                f"config key '{key}': {_show(value)} is outside the allowed range "
                f"{range_text(meta)}{where}"
            )
        value = float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if not ok:
        name = _type_name(tp)
        article = "an" if name[0] in "aeiou" else "a"
        raise ValueError(f"config key '{key}': {_show(value)} is not {article} {name}{where}")
    choices = allowed_values(meta)
    if choices and value not in choices:
        raise ValueError(f"config key '{key}': {_show(value)} is not one of {list(choices)}{where}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if tp in (int, float) and (
        (lo is not None and value < lo)
        or (hi is not None and value > hi)
        or (tp is float and not math.isfinite(value))
    ):
        raise ValueError(
            f"config key '{key}': {_show(value)} is outside the allowed range "
            f"{range_text(meta)}{where}"
        )
    if tp is list and key.endswith("hidden"):
        _check_hidden(value, key, where)
    if tp is dict and key.endswith("dynamics"):
        _check_dynamics(value, key, where)
    return value


def _check_hidden(value: list, key: str, where: str) -> None:
    """Layer sizes that build a network this machine can hold (see ``HIDDEN_MAX_*``)."""
    if not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ValueError(
            f"config key '{key}': {_show(value)} must be a non-empty list of positive "
            f"integers{where}"
        )
    if len(value) > HIDDEN_MAX_LAYERS:
        raise ValueError(
            f"config key '{key}': {len(value)} layers, more than the {HIDDEN_MAX_LAYERS} "
            f"allowed{where}"
        )
    for size in value:
        if size > HIDDEN_MAX_SIZE:
            raise ValueError(
                f"config key '{key}': layer size {_show(size)} is outside the allowed range "
                f"[1, {HIDDEN_MAX_SIZE}]{where}"
            )
    weights = sum(a * b for a, b in itertools.pairwise(value))
    if weights > HIDDEN_MAX_WEIGHTS:
        raise ValueError(
            f"config key '{key}': {_show(value)} has {weights:_} weights between hidden layers, "
            f"more than the {HIDDEN_MAX_WEIGHTS:_} allowed{where}"
        )


def _check_dynamics(value: dict, key: str, where: str) -> None:
    """The shape of ``env.dynamics``: parameter names to mappings of numbers. Which names and
    ranges a family accepts is its dynamics space's to say (:func:`_check_env`)."""
    for name, change in value.items():
        if not isinstance(name, str):
            raise ValueError(
                f"config key '{key}': parameter name {_show(name)} is not a string{where}"
            )
        if not isinstance(change, Mapping):
            raise ValueError(
                f"config key '{key}.{name}': {_show(change)} is not a mapping like "
                f"{{train: [lo, hi], test: [lo, hi]}}{where}"
            )
        for part, setting in change.items():
            sub = f"{key}.{name}.{part}"
            if not isinstance(part, str):
                raise ValueError(f"config key '{key}.{name}': {_show(part)} is not a string{where}")
            if part in ("train", "test"):
                if not isinstance(setting, list):
                    raise ValueError(
                        f"config key '{sub}': {_show(setting)} is not a list of numbers{where}"
                    )
                for bound in setting:
                    _check_real(bound, sub, where)
            elif part == "nominal":
                _check_real(setting, sub, where)
            elif part == "distribution" and not isinstance(setting, str):
                raise ValueError(f"config key '{sub}': {_show(setting)} is not a string{where}")


def _check_real(value: Any, key: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config key '{key}': {_show(value)} is not a number{where}")
    if abs(value) > sys.float_info.max or not math.isfinite(value):
        raise ValueError(
            f"config key '{key}': {_show(value)} is not a finite number in the float64 range "
            f"[-{sys.float_info.max:.4g}, {sys.float_info.max:.4g}]{where}"
        )


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    where = f" in {source}" if source else ""
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got "
            f"{_show(data)}{where}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            full = f"{prefix}{key if isinstance(key, str) else _show(key)}"
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown config key '{full}'{where}{hint}; allowed keys"
                f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(known)}"
            )
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], f"{prefix}{name}.", source)
        else:
            base = typing.get_origin(tp) or tp
            if base is types.UnionType or base is typing.Union:
                base = typing.get_args(tp)[0]
            kwargs[name] = _coerce(data[name], base, f"{prefix}{name}", f.metadata, source)
    return cls(**kwargs)


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema below ``cls`` (what ``--set`` can name)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _check_override(key: str, value: Any, label: str) -> None:
    """Validate one command-line override against the schema on its own, so that a mistake in
    it is blamed on ``label`` (``--set dqn.gamma=2``, ``--steps 0``), not on the YAML file."""
    cls: type = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        if part not in known:
            close = difflib.get_close_matches(key, _leaf_keys(Config), n=1)
            hint = (
                f" (did you mean {close[0]}?)"
                if close
                else f"; allowed keys{' in ' + prefix if prefix else ''}: {', '.join(known)}"
            )
            raise ValueError(f"{label}: unknown key '{key}'{hint}")
        tp, last = hints[part], i == len(parts) - 1
        try:
            if dataclasses.is_dataclass(tp):
                if last:  # a whole section, e.g. --set 'network={hidden: [8]}'
                    _build(tp, value, f"{key}.", "")
                    return
                cls = tp
                continue
            base = typing.get_origin(tp) or tp
            if base is types.UnionType or base is typing.Union:
                base = typing.get_args(tp)[0]
            if not last:
                if base is dict:  # into a free-form mapping (env.dynamics.pole_length.train)
                    for inner in reversed(parts[i + 1 :]):
                        value = {inner: value}
                    _coerce(value, base, ".".join(parts[: i + 1]), known[part].metadata, "")
                    return
                raise ValueError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section")
            _coerce(value, base, key, known[part].metadata, "")
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None


def _set_path(tree: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            section = ".".join(parts[: i + 1])
            raise ValueError(
                f"config section '{section}' must be a mapping, got {_show(node)} in {path}"
            )
    node[parts[-1]] = value


def config_from_dict(data: Mapping[str, Any], source: str = "") -> Config:
    """Validate a plain mapping into a :class:`Config` (the mapping is not modified)."""
    # A private copy: the config must not share lists or dicts (network.hidden, env.dynamics)
    # with the caller's mapping, or editing one would silently change the other.
    cfg = _build(Config, _deep_copy(data), "", source)
    _check_combination(cfg, f" in {source}" if source else "")
    return cfg


def _check_combination(cfg: Config, where: str) -> None:
    """Rules across keys, after each key passed on its own."""
    _check_env(cfg, where)
    if cfg.dqn.epsilon_end > cfg.dqn.epsilon_start:
        raise ValueError(
            f"config key 'dqn.epsilon_end': {cfg.dqn.epsilon_end} must not exceed "
            f"dqn.epsilon_start = {cfg.dqn.epsilon_start}{where}"
        )
    # The algorithm's own rules (robometa.algorithms), checked here rather than when it is
    # built: train() writes the run directory first.
    check = robometa.algorithms.get(cfg.algorithm).check
    if check is not None:
        check(cfg, where)


def _check_env(cfg: Config, where: str) -> None:
    """``env.dynamics`` against the family's dynamics space (names, ranges, physical limits),
    now rather than when the first env is built, after the run directory exists."""
    if not cfg.env.dynamics:
        return
    module, name = FAMILIES[cfg.env.id].split(":")
    space = getattr(importlib.import_module(module), name).dynamics_space
    try:
        space.with_overrides(cfg.env.dynamics)
    except ValueError as err:
        raise ValueError(f"config key 'env.dynamics': {err}{where}") from None


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    seed: int | None = None,
) -> Config:
    """Read ``path`` (YAML), apply ``--set key=value`` overrides, validate.

    Each override (and ``steps``, ``seed``) is checked against the schema first, so an error
    in one names the override rather than the file.
    """
    path = Path(path)
    raw = parse_yaml(read_text(path, "config file"), f"config file {path}")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path}: the top level must be a mapping")
    data = _deep_copy(raw)
    changes: list[tuple[str, Any, str]] = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. dqn.learning_rate=3e-4")
        key, text = item.split("=", 1)
        label = f"--set {item if len(item) <= 100 else item[:80] + '...'}"
        try:
            value = parse_yaml(text, label)
        except InputError as err:
            if not err.syntax:  # refused (an alias, a duplicate key): say why
                raise ValueError(f"{label}: {err.reason}") from None
            raise ValueError(f"{label}: {_show(text)} is not a YAML value ({err.reason})") from None
        changes.append((key.strip(), value, label))
    if steps is not None:
        changes.append(("dqn.total_steps", steps, f"--steps {steps}"))
    if seed is not None:
        changes.append(("seed", seed, f"--seed {seed}"))
    for key, value, label in changes:
        _check_override(key, value, label)
        _set_path(data, key, value, path)
    cfg = _build(Config, data, "", str(path))
    labels = ", ".join(label for _, _, label in changes)
    _check_combination(cfg, f" in {path}" + (f" with {labels}" if labels else ""))
    return cfg


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def reference_table() -> str:
    """Markdown table of every config key: type, default and meaning (for the README)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata.get("doc", "")
            documented = f.metadata.get("documented")
            choices = tuple(documented()) if documented else allowed_values(f.metadata)
            if choices:
                doc += " (one of " + ", ".join(f"`{c}`" for c in choices) + ")"
            elif f.metadata.get("lo") is not None or f.metadata.get("hi") is not None:
                doc += f" (range {range_text(f.metadata)})"
            rows.append(
                f"| `{prefix}{f.name}` | {_type_name(typing.get_origin(tp) or tp)} | "
                f"`{default!r}` | {doc} |"
            )

    walk(Config, "")
    return "\n".join(rows)
