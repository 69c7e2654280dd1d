"""The adaptation evaluation harness: held-out robots, adaptation curves, normalized scores.

Protocol, for every method and held-out task: collect ``support_size`` transitions with the
method's initial policy (epsilon-greedy at ``support_epsilon``), adapt for ``k`` steps for each
``k`` in the curve, and measure the greedy return. Methods that do not adapt are evaluated the
same way with ``k = 0``. Scores are normalized,
``(R - R_random) / (R_oracle - R_random)`` with the returns pooled over (task, training seed)
pairs before dividing, with 95% hierarchical bootstrap intervals (resample training seeds,
then robots within each seed, so seed variance shows; :func:`robometa.stats.hierarchical_ci`)
and each seed's own mean in the row, separately for in-distribution held-out tasks (``id``:
train ranges, unseen seeds) and out-of-distribution ones (``ood``: the wider test ranges), or for
each file of a versioned task suite (:mod:`robometa.task_suites`: ``--tasks heldout``,
``--tasks fresh``, a directory of task files), and optionally split by motor sign.

Any method that maps support transitions to a policy plugs in through :class:`Method`:
gradient steps (:class:`PolicyMethod`) or inference. For trained runs the algorithm registry
(:mod:`robometa.algorithms`) decides: whether a run adapts, whether it is also evaluated
fine-tuned (``<label>+finetune``: domain randomization plus fine-tuning), the label it is
reported under (``dqn`` over the train tasks is ``dr``) and which runs are the oracle.
The statistics live in :mod:`robometa.stats` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from robometa import algorithms, task_suites
from robometa.adaptation import Batch
from robometa.deploy import collection
from robometa.deploy.collection import Episode
from robometa.envs import Task
from robometa.policy import Policy
from robometa.replay import ReplayBuffer
from robometa.rollout import (
    ActFn,
    collect,
    episode_return,
    greedy_act_fn,
    make_env,
    seed_from,
    store_into,
)
from robometa.stats import bootstrap_ci as bootstrap_ci  # re-exported: the one bootstrap
from robometa.stats import hierarchical_ci, hierarchical_normalized_ci
from robometa.stats import normalized as normalized
from robometa.stats import normalized_ci as normalized_ci

EVAL_SEED = 10_000  # task and episode seeds of held-out evaluation (training never uses these)
#: fine-tuning rates the DR + fine-tuning baseline chooses from: on a trained CartPole DR
#: policy, 20 steps at 1e-3 move the weights 0.4% (relative L2), at 0.3 about 60%
FINE_TUNE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
TUNE_TASKS = 20  # training robots the fine-tuning rates are chosen on


class Method(Protocol):
    """What the harness evaluates: an initial policy and a support-set -> policy map."""

    name: str
    env_id: str
    privileged: bool
    support_size: int
    support_epsilon: float

    def initial_actor(self) -> ActFn: ...

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        """One greedy actor per entry of ``steps`` (adaptation steps taken on ``support``)."""
        ...


@dataclass
class TrainedMethod:
    """What the evaluation objects of a trained :class:`Policy` share (:class:`PolicyMethod`
    and the families' own, e.g. :class:`robometa.methods.context.ContextMethod`): the
    policy's env, privilege and network, and its support size unless
    ``support_transitions`` overrides it (keyword only, so a subclass's own fields follow
    ``support_epsilon`` positionally; :func:`with_support` sets it)."""

    name: str
    policy: Policy
    support_epsilon: float = 0.3
    _: dataclasses.KW_ONLY
    support_transitions: int | None = None

    @property
    def env_id(self) -> str:
        return self.policy.env_id

    @property
    def privileged(self) -> bool:
        return self.policy.privileged

    @property
    def support_size(self) -> int:
        if self.support_transitions is not None:
            return self.support_transitions
        return self.policy.support_size

    @property
    def net(self) -> Any:
        return self.policy.net


@dataclass
class PolicyMethod(TrainedMethod):
    """A trained :class:`Policy` adapted with ``adapt_step`` (``lrs`` may be overridden;
    ``support_transitions`` overrides the policy's support size)."""

    lrs: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        import robometa.algorithms

        spec = robometa.algorithms.get(self.policy.algorithm)
        if self.lrs is None and spec.adapts and not self.policy.lrs:
            raise ValueError(
                f"algorithm {spec.name!r} adapts, but its policy has no inner learning rates: "
                "gradient steps would leave it unchanged. A family that adapts without "
                "gradient steps gives its own Method.evaluation_method"
            )

    def initial_actor(self) -> ActFn:
        return greedy_act_fn(self.policy.net, self.policy.params)

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        from robometa.adaptation import adapt_step

        lrs = self.policy.lrs if self.lrs is None else self.lrs

        def step(params: dict[str, torch.Tensor], _: int) -> dict[str, torch.Tensor]:
            return adapt_step(self.policy.net, params, lrs, support, self.policy.inner)[0]

        with torch.no_grad():
            return self.stepped_actors(self.policy.params, steps, step if lrs else None)

    def stepped_actors(
        self,
        params: dict[str, torch.Tensor],
        steps: Sequence[int],
        step: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]] | None,
    ) -> list[ActFn]:
        """One greedy actor per entry ``k`` of ``steps``: under ``params`` after ``k`` calls
        of ``step`` (``step(params, i)`` takes step ``i``; ``None``: never stepped), the
        steps shared along the curve. Call it under ``torch.no_grad()``."""
        done, actors = 0, []
        for k in steps:
            while done < k and step is not None:
                params = step(params, done)
                done += 1
            actors.append(greedy_act_fn(self.policy.net, params))
        return actors


@dataclass
class TaskSet:
    name: str
    tasks: list[Task]
    source: Path | None = None  # the task file the tasks were read from, if any


@dataclass
class MethodResult:
    name: str
    steps: list[int]
    # returns[group][task_index][seed_index][k_index]
    returns: dict[str, list[list[list[float]]]] = field(default_factory=dict)


#: what ``--tasks`` takes besides a path: ``test`` and the named suites
TASK_SPECS = ("test", *task_suites.SUITES)


def task_sets(spec: str, env_id: str, n: int, dynamics: dict | None = None) -> list[TaskSet]:
    """The groups of held-out tasks ``spec`` names (``robometa eval --tasks``):

    * ``test``: ``n`` in-distribution (``id``: train ranges) and ``n`` out-of-distribution
      (``ood``: test ranges) tasks drawn with :data:`EVAL_SEED`;
    * ``heldout`` or ``fresh``: the family's versioned suite shipped under
      ``configs/tasks/<family>/`` (:mod:`robometa.task_suites`), one group per file;
    * a directory: one group per task file directly in it (``.yaml``, ``.yml``, ``.json``),
      named by the file stem, in the order of the stems;
    * a task file: one group named by its stem.

    ``n`` applies to ``test`` only. A task file written for another family (its ``env``) is
    an error naming the file. The names win over a file or directory of the same name
    (``./heldout`` is the directory).
    """
    env = make_env(env_id, dynamics)
    space = env.unwrapped.dynamics_space
    env.close()
    if spec == "test":
        return [
            TaskSet("id", space.sample(n, seed=EVAL_SEED, split="train")),
            TaskSet("ood", space.sample(n, seed=EVAL_SEED, split="test")),
        ]
    if spec in task_suites.SUITES:
        files = task_suites.task_files(task_suites.suite_dir(spec, env_id))
    elif Path(spec).is_dir():
        files = task_suites.task_files(spec)
    elif not Path(spec).exists():
        path = Path(spec)
        looks_like_a_name = not path.suffix and len(path.parts) == 1
        hint = task_suites.close_name(spec, TASK_SPECS) if looks_like_a_name else ""
        raise ValueError(
            f"cannot read task file {spec}: no such file or directory{hint}; --tasks takes "
            f"{', '.join(TASK_SPECS)}, a task file ({', '.join(task_suites.TASK_FILE_SUFFIXES)}) "
            "or a directory of task files"
        )
    else:
        files = [Path(spec)]
    return [TaskSet(f.stem, task_suites.load_task_file(f, space, env_id), source=f) for f in files]


def motor_signs(sets: list[TaskSet], env_id: str) -> dict[str, list[int]]:
    """Each group's motor sign per task (``robometa eval --by-motor-sign``); a family without
    a ``motor_sign`` parameter is an error naming it."""
    missing = [s.name for s in sets if any("motor_sign" not in t for t in s.tasks)]
    if missing:
        raise ValueError(
            f"--by-motor-sign: the tasks of {env_id} have no 'motor_sign' parameter "
            f"(group {missing[0]!r}); split by motor sign only a family that has one"
        )
    return {s.name: [int(t["motor_sign"]) for t in s.tasks] for s in sets}


def _returns(env: Any, act: ActFn, task: Task, episodes: int, seed: int) -> float:
    return float(np.mean([episode_return(env, act, task, seed + e) for e in range(episodes)]))


def random_returns(
    env_id: str, sets: list[TaskSet], episodes: int, dynamics: dict | None = None
) -> dict[str, list[float]]:
    env = make_env(env_id, dynamics)
    rng = np.random.default_rng(EVAL_SEED)
    n = env.action_space.n
    out = {
        s.name: [
            _returns(env, lambda _o: int(rng.integers(n)), t, episodes, EVAL_SEED + i)
            for i, t in enumerate(s.tasks)
        ]
        for s in sets
    }
    env.close()
    return out


def evaluate_method(
    method: Method,
    sets: list[TaskSet],
    steps: Sequence[int],
    episodes: int,
    dynamics: dict | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, list[list[float]]]:
    """Greedy return per task and adaptation step count: ``{group: [[R_k for k], ...]}``."""
    env = make_env(method.env_id, dynamics, privileged=method.privileged)
    out: dict[str, list[list[float]]] = {}
    for s in sets:
        rows = []
        for i, task in enumerate(s.tasks):
            seed = EVAL_SEED + i
            rng = np.random.default_rng(seed)
            support = collect(
                env, method.initial_actor(), task, method.support_size, method.support_epsilon, rng
            ).all()
            actors = method.adapted_actors(support, steps)
            rows.append([_returns(env, act, task, episodes, seed) for act in actors])
            if progress is not None:
                progress()
        out[s.name] = rows
    env.close()
    return out


def with_support(method: Method, size: int) -> Method:
    """``method`` collecting ``size`` support transitions: a copy with its
    ``support_transitions`` set (:class:`PolicyMethod`, the ``context`` family's method).
    An evaluation object without that field takes only its own ``support_size``; another
    size is an error naming the method and the allowed value."""
    names = {f.name for f in dataclasses.fields(method)} if dataclasses.is_dataclass(method) else ()
    if "support_transitions" in names:
        return dataclasses.replace(method, support_transitions=size)  # type: ignore[type-var]
    if size == method.support_size:
        return method
    raise ValueError(
        f"method {method.name!r} ({type(method).__name__}) cannot be evaluated with "
        f"{size} support transitions: its evaluation object takes no support size; "
        f"allowed --support values for it: {method.support_size}"
    )


def collect_prefixes(
    env: Any, act: ActFn, task: Task, sizes: Sequence[int], epsilon: float, rng: Any
) -> dict[int, Batch]:
    """Support sets of every size in ``sizes`` from one collection of the largest: the
    batch of size ``k`` holds what the first ``k`` steps stored, exactly what
    :func:`robometa.rollout.collect` of ``k`` steps with the same ``rng`` returns (a robot's
    support after ``k`` steps; a step the physics rejected is not stored, as there)."""
    order = sorted(set(sizes))
    buf = ReplayBuffer(order[-1], env.observation_space.shape[0])
    env.unwrapped.set_task(task)

    def restart() -> np.ndarray:
        return env.reset(seed=seed_from(rng))[0]

    episode, done, out = Episode(restart()), 0, {}
    n_actions = int(env.action_space.n)
    for k in order:  # one collection, taken in segments: the same steps as one call
        collection.collect(
            env, episode, act, k - done, epsilon, rng, n_actions, store_into(buf), restart
        )
        done = k
        out[k] = buf.all()  # never wraps: the capacity is the largest size
    return out


def evaluate_method_supports(
    methods: dict[int, Method],
    sets: list[TaskSet],
    steps: Sequence[int],
    episodes: int,
    dynamics: dict | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[int, dict[str, list[list[float]]]]:
    """:func:`evaluate_method` for one trained policy at several support sizes
    (``methods[size]``): on each task the largest support is collected once, with the
    initial policy and the task's seed as there, and size ``k`` adapts on its first ``k``
    steps' transitions. ``{size: {group: [[R_k for k], ...]}}``."""
    largest = methods[max(methods)]
    env = make_env(largest.env_id, dynamics, privileged=largest.privileged)
    out: dict[int, dict[str, list[list[float]]]] = {size: {} for size in methods}
    for s in sets:
        rows: dict[int, list[list[float]]] = {size: [] for size in methods}
        for i, task in enumerate(s.tasks):
            seed = EVAL_SEED + i
            rng = np.random.default_rng(seed)
            supports = collect_prefixes(
                env, largest.initial_actor(), task, list(methods), largest.support_epsilon, rng
            )
            for size, m in methods.items():
                actors = m.adapted_actors(supports[size], steps)
                rows[size].append([_returns(env, act, task, episodes, seed) for act in actors])
            if progress is not None:
                progress()
        for size in methods:
            out[size][s.name] = rows[size]
    env.close()
    return out


def _relative_displacement(
    method: Method, support: Batch, steps: Sequence[int]
) -> list[float] | None:
    """How far ``steps[i]`` fine-tuning steps on ``support`` move the parameters, as
    ``||theta_k - theta_0|| / ||theta_0||`` (infinite or NaN where the steps diverged: see
    :func:`tune_fine_tune`); None for a method without a parameter dict and rates (a plug-in
    family's own fine-tuning is measured by its returns only)."""
    from robometa.adaptation import adapt_step

    lrs = getattr(method, "lrs", None)
    policy = getattr(method, "policy", None)
    if not lrs or policy is None:
        return None
    theta0 = policy.params
    norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in theta0.values())))
    params, done, out = theta0, 0, []
    with torch.no_grad():
        for k in steps:
            while done < k:
                params = adapt_step(policy.net, params, lrs, support, policy.inner)[0]
                done += 1
            moved = sum(((params[n] - theta0[n]).double() ** 2).sum() for n in theta0)
            out.append(float(torch.sqrt(torch.as_tensor(moved))) / norm if norm > 0 else math.nan)
    return out


def tune_fine_tune(
    make_method: Callable[[float], Method],
    policy: Policy,
    steps: Sequence[int],
    episodes: int = 2,
    n_tasks: int = TUNE_TASKS,
    grid: Sequence[float] = FINE_TUNE_GRID,
    progress: Callable[[], None] | None = None,
) -> tuple[dict[int, float], dict[str, Any]]:
    """The fine-tuning rate for each step count of ``steps`` (k > 0), chosen on *training*
    robots (never on held-out ones), robust to noise.

    Every rate of ``grid`` fine-tunes ``make_method(rate)`` on ``n_tasks`` training robots
    (support collected as the evaluation does); per rate and ``k`` the paired gain over the
    same robot unadapted, ``R_k - R_0``, is averaged over the robots. The rate picked for
    ``k`` maximizes the gain's mean minus one standard error: a rate that collapses some
    robots while helping others loses to a steadier one. Returns ``({k: rate}, record)``;
    ``record["grid"][rate][k]``: mean gain, its standard error, the mean return and the
    relative parameter displacement ``||theta_k - theta_0|| / ||theta_0||`` on the first
    robot's support (what shows that the grid moves the weights; None where it is not
    measured, a plug-in family's own fine-tuning, or not finite). ``record["diverged"]``:
    the rates whose fine-tuning left non-finite parameters (on the first robot's support) or
    overflowed in the numpy greedy actor's forward pass (in any tuning episode; a method
    acting through torch is checked on its parameters only); they are not picked unless every
    rate diverged, and :func:`plan_methods` says so in one line instead of numpy's warnings.
    ``progress`` is called once per (rate, task)."""
    ks = sorted({k for k in steps if k > 0})
    first = make_method(grid[0])
    env = make_env(policy.env_id, policy.dynamics)
    tasks = env.unwrapped.sample_tasks(n_tasks, seed=EVAL_SEED + 1, split="train")
    support = collect(  # the first robot's support, as evaluate_method collects it
        env,
        first.initial_actor(),
        tasks[0],
        first.support_size,
        first.support_epsilon,
        np.random.default_rng(EVAL_SEED),
    ).all()
    env.close()
    record: dict[str, Any] = {"n_tasks": n_tasks, "episodes": episodes, "grid": {}}
    scores: dict[int, list[tuple[float, float]]] = {}  # k -> (gain - se, rate), grid order
    diverged: list[float] = []
    for lr in grid:
        m = make_method(lr)
        moved = _relative_displacement(m, support, ks)
        res, overflowed = _numeric_overflows(
            lambda m=m: evaluate_method(
                m, [TaskSet("tune", tasks)], [0, *ks], episodes, policy.dynamics, progress
            )
        )
        r = np.asarray(res["tune"], dtype=np.float64)  # (tasks, 1 + len(ks))
        entry = {}
        for i, k in enumerate(ks):
            gain = r[:, i + 1] - r[:, 0]
            se = float(gain.std(ddof=1) / math.sqrt(gain.size)) if gain.size > 1 else 0.0
            lcb = float(gain.mean()) - se
            entry[str(k)] = {
                "gain": float(gain.mean()),
                "gain_se": se,
                "return": float(r[:, i + 1].mean()),
                "displacement": moved[i] if moved and math.isfinite(moved[i]) else None,
            }
            scores.setdefault(k, []).append((lcb, float(lr)))
        if overflowed or (moved and not all(math.isfinite(x) for x in moved)):
            diverged.append(float(lr))
        record["grid"][str(lr)] = entry
    picked = _pick_rates(scores, diverged)
    record["picked"] = {str(k): v for k, v in picked.items()}
    record["diverged"] = diverged
    return picked, record


def _pick_rates(
    scores: dict[int, list[tuple[float, float]]], diverged: list[float]
) -> dict[int, float]:
    """Per step count, the rate of the highest score (``(gain - se, rate)`` in grid order:
    the first of equal ones). A diverged rate is a broken network whatever its returns: it
    is picked only where every rate diverged."""
    picked = {}
    for k, options in scores.items():
        usable = [o for o in options if o[1] not in diverged] or options
        picked[k] = max(usable, key=lambda o: o[0])[1]
    return picked


def _numeric_overflows(run: Callable[[], Any]) -> tuple[Any, bool]:
    """``run()``'s result, and whether a numpy floating-point overflow or invalid operation
    happened during it (a diverged network's forward passes in the numpy greedy actor): those
    set the flag instead of warning (the caller records them as ``diverged``); nothing else
    is touched, other warnings included."""
    seen: list[str] = []
    with np.errstate(over="call", invalid="call", call=lambda kind, _flag: seen.append(kind)):
        out = run()
    return out, bool(seen)


@dataclass
class PerStepMethod:
    """A method evaluated at each step count ``k`` by its own method ``by_steps[k]`` (the DR +
    fine-tuning baseline: each ``k`` at the rate tuned for it, :func:`tune_fine_tune`); ``k =
    0`` is the shared initial actor. ``support_transitions`` overrides the support size
    (:func:`with_support`)."""

    name: str
    by_steps: dict[int, Method]
    _: dataclasses.KW_ONLY
    support_transitions: int | None = None

    @property
    def _first(self) -> Method:
        return self.by_steps[min(self.by_steps)]

    @property
    def env_id(self) -> str:
        return self._first.env_id

    @property
    def privileged(self) -> bool:
        return self._first.privileged

    @property
    def support_epsilon(self) -> float:
        return self._first.support_epsilon

    @property
    def support_size(self) -> int:
        if self.support_transitions is not None:
            return self.support_transitions
        return self._first.support_size

    def initial_actor(self) -> ActFn:
        return self._first.initial_actor()

    def adapted_actors(self, support: Batch, steps: Sequence[int]) -> list[ActFn]:
        missing = [k for k in steps if k > 0 and k not in self.by_steps]
        if missing:
            raise ValueError(
                f"method {self.name!r} has no fine-tuning rate for {missing} steps; tuned for "
                f"{sorted(self.by_steps)}"
            )
        return [
            self.by_steps[k].adapted_actors(support, [k])[0] if k > 0 else self.initial_actor()
            for k in steps
        ]


def summarize(
    methods: dict[str, list[dict[str, list[list[float]]]]],
    steps: Sequence[int],
    rand: dict[str, list[float]],
    oracle: dict[str, list[float]] | None,
    support: int | None = None,
    signs: dict[str, list[int]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (method, group, k): mean return and normalized score with 95% CI.

    ``methods[name]`` holds one result per training seed; the pairs (task, seed) are pooled.
    ``support``: the support size the results were adapted on, recorded in every row
    (``robometa eval --support``; absent otherwise).

    ``signs``: each group's motor sign per task (``robometa eval --by-motor-sign``). A group
    whose tasks have both signs gains, after its own rows, the rows of groups
    ``<group>/motor+`` and ``<group>/motor-`` (with a ``motor_sign`` field): the same pooled
    statistics over its tasks of that sign only; the group's own rows stay as they are.
    """
    rows = []
    for name, per_seed in methods.items():
        for group in rand:
            for label, sign, index in _motor_sign_groups(group, len(rand[group]), signs):
                rows.extend(
                    _summary_rows(
                        name, per_seed, steps, rand, oracle, support, group, index, label, sign
                    )
                )
    return rows


def _motor_sign_groups(
    group: str, n_tasks: int, signs: dict[str, list[int]] | None
) -> list[tuple[str, int | None, list[int]]]:
    """(label, motor sign or None, task indices) of a group's rows: the group itself, then
    one per motor sign when ``signs`` gives the group tasks of both."""
    out: list[tuple[str, int | None, list[int]]] = [(group, None, list(range(n_tasks)))]
    mine = (signs or {}).get(group)
    if mine is not None and {1, -1} <= set(mine):
        for sign, suffix in ((1, "+"), (-1, "-")):
            index = [ti for ti, s in enumerate(mine) if s == sign]
            out.append((f"{group}/motor{suffix}", sign, index))
    return out


def _summary_rows(
    name: str,
    per_seed: list[dict[str, list[list[float]]]],
    steps: Sequence[int],
    rand: dict[str, list[float]],
    oracle: dict[str, list[float]] | None,
    support: int | None,
    group: str,
    index: list[int],
    label: str,
    sign: int | None,
) -> list[dict[str, Any]]:
    """:func:`summarize`'s rows of one method in ``group`` over its tasks ``index``,
    reported as group ``label`` (with a ``motor_sign`` field when ``sign`` is given)."""
    rows: list[dict[str, Any]] = []
    before: list[list[float]] = []  # the k = 0 grid, which every later step is compared with
    for ki, k in enumerate(steps):
        grid = []  # (seeds, tasks): the seeds that have this step
        for res in per_seed:
            per_task = [res[group][ti] for ti in index]
            if per_task and all(ki < len(t) for t in per_task):
                grid.append([t[ki] for t in per_task])
        if not grid:
            continue
        r_rand = [rand[group][ti] for ti in index]
        r_oracle = [oracle[group][ti] for ti in index] if oracle is not None else None
        if r_oracle is not None:
            mean, lo, hi = hierarchical_normalized_ci(grid, r_rand, r_oracle)
            per_seed_score = [
                normalized(np.mean(g), np.mean(r_rand), np.mean(r_oracle)) for g in grid
            ]
        else:
            mean = lo = hi = math.nan
            per_seed_score = [math.nan] * len(grid)
        rmean, rlo, rhi = hierarchical_ci(grid)
        row: dict[str, Any] = {"method": name, "group": label}
        if sign is not None:
            row["motor_sign"] = sign
        row["steps"] = k
        if support is not None:
            row["support"] = support
        rows.append(
            row
            | {
                "n": len(grid) * len(index),
                "n_seeds": len(grid),
                "score": mean,
                "score_lo": lo,
                "score_hi": hi,
                "return": rmean,
                "return_lo": rlo,
                "return_hi": rhi,
                "per_seed_return": [float(np.mean(g)) for g in grid],
                "per_seed_score": [float(x) for x in per_seed_score],
                **(_harm(grid, before[: len(grid)]) if ki > 0 and before else {}),
            }
        )
        if ki == 0:
            before = grid
    return rows


def _harm(after: list[list[float]], before: list[list[float]]) -> dict[str, float]:
    """What adapting did to each (seed, robot) pair against the same pair before adapting
    (``k = 0``): the fraction of pairs whose return fell, the mean change, the worst one."""
    change = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    return {
        "harmed_fraction": float((change < -1e-9).mean()),
        "change_mean": float(change.mean()),
        "change_worst": float(change.min()),
    }


def markdown_table(rows: list[dict[str, Any]], final_only: bool = True) -> str:
    """Results table: the last adaptation step of every method (or every step).

    Without an oracle run there is no normalized score: the column is left out rather than
    filled with n/a.
    """
    scored = any(not math.isnan(r["score"]) for r in rows)
    sized = any("support" in r for r in rows)  # robometa eval --support: a support column
    head = "| method | tasks |" + (" support |" if sized else "") + " steps |"
    head += " normalized score [95% CI] |" if scored else ""
    lines = [head + " return [95% CI] | n |", "|---" * (5 + scored + sized) + "|"]

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["method"], r["group"], r.get("support"))

    last: dict[tuple[Any, ...], int] = {}
    for r in rows:
        last[key(r)] = max(last.get(key(r), 0), r["steps"])
    for r in rows:
        if final_only and r["steps"] != last[key(r)]:
            continue
        support = f" {r['support']} |" if sized else ""
        score = ""
        if scored:
            score = (
                " n/a |"
                if math.isnan(r["score"])
                else f" {r['score']:.2f} [{r['score_lo']:.2f}, {r['score_hi']:.2f}] |"
            )
        lines.append(
            f"| {r['method']} | {r['group']} |{support} {r['steps']} |{score} "
            f"{r['return']:.1f} [{r['return_lo']:.1f}, {r['return_hi']:.1f}] | {r['n']} |"
        )
    return "\n".join(lines)


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_adaptation(rows: list[dict[str, Any]], path: Path, use_score: bool = True) -> Path:
    """Score (or return) against adaptation steps, one line per method; with rows of several
    support sizes (``robometa eval --support``) one line per method and size: the colour is
    the method, the line style and marker the size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    key = "score" if use_score and any(not math.isnan(r["score"]) for r in rows) else "return"
    sizes = sorted({r["support"] for r in rows if "support" in r})
    for ax, group in zip(axes[0], groups, strict=True):
        for ci, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            for si, size in enumerate(sizes or [None]):
                color = f"C{ci % 10}"
                style = LINE_STYLES[si % len(LINE_STYLES)] if sizes else "-"
                marker = MARKERS[si % len(MARKERS)] if sizes else "o"
                label = method if size is None else f"{method}, support {size}"
                rs = sorted(
                    (
                        r
                        for r in rows
                        if r["method"] == method
                        and r["group"] == group
                        and r.get("support") == size
                    ),
                    key=lambda r: r["steps"],
                )
                if not rs:
                    continue
                x = [r["steps"] for r in rs]
                y = [r[key] for r in rs]
                if len(rs) == 1:  # a method that does not adapt: a level line across the curve
                    level = "--" if size is None else style
                    ax.axhline(y[0], linestyle=level, linewidth=1.2, color=color, label=label)
                    ax.plot(x, y, marker=marker, color=color)
                    continue
                ax.plot(x, y, marker=marker, linestyle=style, color=color, label=label)
                ax.fill_between(
                    x,
                    [r[f"{key}_lo"] for r in rs],
                    [r[f"{key}_hi"] for r in rs],
                    alpha=0.15 if size is None else 0.08,
                    color=color,
                )
        ax.set(
            title=f"{group} tasks",
            xlabel="adaptation steps",
            ylabel="normalized score" if key == "score" else "greedy return",
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_support(rows: list[dict[str, Any]], path: Path) -> Path:
    """``support.png`` of ``robometa eval --support``: greedy return against the support size
    (log scale), one line per method at its final adaptation step count, 95% CI shaded; one
    panel per task group. A method that does not adapt is the same at every size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for ci, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            mine = [r for r in rows if r["method"] == method and r["group"] == group]
            if not mine:
                continue
            final = max(r["steps"] for r in mine)
            rs = sorted((r for r in mine if r["steps"] == final), key=lambda r: r["support"])
            x = [r["support"] for r in rs]
            color = f"C{ci % 10}"
            label = f"{method} ({final} step{'s' if final != 1 else ''})"
            ax.plot(x, [r["return"] for r in rs], marker="o", color=color, label=label)
            ax.fill_between(
                x,
                [r["return_lo"] for r in rs],
                [r["return_hi"] for r in rs],
                alpha=0.15,
                color=color,
            )
        ax.set_xscale("log")
        ax.set(
            title=f"{group} tasks: return vs support size",
            xlabel="support transitions (log scale)",
            ylabel="greedy return",
        )
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(eq=False)
class Run:
    """One run directory to evaluate: its policy, its algorithm's spec and its label."""

    run_dir: Path
    policy: Policy
    spec: algorithms.AlgorithmSpec

    @property
    def label(self) -> str:
        """The method the run reports under (``dqn`` on train tasks is ``dr``)."""
        return self.spec.label(str(self.policy.config.get("env", {}).get("tasks", "train")))

    @property
    def support_epsilon(self) -> float:
        return float(self.policy.config.get("adaptation", {}).get("support_epsilon", 0.3))


@dataclass
class MethodRuns:
    """One row group of the report: a method's runs over training seeds.

    ``adapts``: evaluated along the curve (else at ``k = 0`` only); ``reference``: the runs
    of a privileged method, the oracle the normalized score divides by.
    """

    name: str
    adapts: bool
    reference: bool = False
    methods: list[PolicyMethod] = field(default_factory=list)


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """The runs' policies, checked: at least one, one robot family, registered algorithms."""
    runs = []
    for d in run_dirs:
        policy = Policy.load(d)  # an algorithm not registered here is an error naming the file
        runs.append(Run(Path(d), policy, algorithms.get(policy.algorithm)))
    if not runs:
        raise ValueError("give at least one run directory to evaluate")
    env_ids = {r.policy.env_id for r in runs}
    if len(env_ids) != 1:
        raise ValueError(
            f"runs of different robot families cannot share a table: {sorted(env_ids)}"
        )
    first: dict[str, Run] = {}
    for r in runs:  # one label, one treatment (e.g. a plugin algorithm named "dr")
        other = first.setdefault(r.label, r)
        if (other.spec.adapts, other.spec.privileged) != (r.spec.adapts, r.spec.privileged):
            raise ValueError(
                f"{r.run_dir}: algorithm {r.spec.name!r} reports as {r.label!r}, as "
                f"{other.spec.name!r} ({other.run_dir}) does, but the two are evaluated "
                "differently (adapts, privileged)"
            )
    return runs


def adaptation_curve(steps: Sequence[int] | None, max_k: int) -> list[int]:
    """The step counts evaluated: sorted, always from 0 (the unadapted methods' single
    return is the ``k = 0`` entry). Default: 0, 1, 2, 3 and the runs' ``max_k`` (their
    largest ``adaptation.steps``), none above it; counts given explicitly are all taken, past
    the runs' configured steps too (``robometa eval --curve 0,1,5,20``: a gradient method
    keeps stepping, a method that adapts by inference gives the same policy at every
    ``k > 0``), up to ``adaptation.steps``' maximum."""
    from robometa.config import MAX_ADAPT_STEPS

    if steps is None:
        return sorted({0, *(k for k in (1, 2, 3, max_k) if 0 <= k <= max_k)})
    bad = [k for k in steps if isinstance(k, bool) or not isinstance(k, int)]
    bad += [k for k in steps if k not in bad and not 0 <= k <= MAX_ADAPT_STEPS]
    if bad:
        raise ValueError(
            f"adaptation steps must be integers in [0, {MAX_ADAPT_STEPS}] (adaptation.steps' "
            f"range), got {list(steps)}"
        )
    return sorted({0, *steps})


def _progress_bar(show: bool, total: int, desc: str) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc=desc, mininterval=1.0)


def _say(bar: Any, line: str) -> None:
    """``line`` on stderr, above a live progress bar when there is one."""
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _fine_tuned(family: Any, policy: Policy, name: str, eps: float, lr: float) -> Method:
    """``policy`` evaluated by its family with every parameter fine-tuned at rate ``lr``."""
    lrs = {k: torch.tensor(lr) for k in policy.params}
    return family.evaluation_method(policy, name, eps, lrs=lrs)


def plan_methods(
    runs: Sequence[Run], curve: Sequence[int], fine_tune: bool, show_progress: bool
) -> tuple[dict[str, MethodRuns], dict[str, Any]]:
    """The methods to evaluate, by report label, and the fine-tuning rates chosen.

    A run of a method that adapts is evaluated adapting with its own learning rates; one that
    does not is evaluated as trained and, if its algorithm ``fine_tunes`` (and the curve
    ``curve`` goes past 0), also as ``<label>+finetune``: every parameter fine-tuned, each
    step count of the curve at the rate chosen for it on training robots
    (:func:`tune_fine_tune`).
    """
    ks = [k for k in curve if k > 0]

    def tunes(run: Run) -> bool:
        return fine_tune and bool(ks) and run.spec.fine_tunes and not run.spec.adapts

    tuning = [r.label for r in runs if tunes(r)]
    tune_bar = _progress_bar(
        show_progress and bool(tuning),
        len(tuning) * len(FINE_TUNE_GRID) * TUNE_TASKS,
        f"tune {', '.join(dict.fromkeys(tuning))} fine-tuning rates",
    )
    methods: dict[str, MethodRuns] = {}
    tuned: dict[str, Any] = {}

    def add(name: str, adapts: bool, reference: bool, method: Method) -> None:
        methods.setdefault(name, MethodRuns(name, adapts, reference)).methods.append(method)

    for run in runs:
        pol, eps, label = run.policy, run.support_epsilon, run.label
        family = run.spec.load()  # the trainer class: how its policies adapt
        if run.spec.adapts:
            add(label, True, run.spec.privileged, family.evaluation_method(pol, label, eps))
            continue
        add(label, False, run.spec.privileged, family.evaluation_method(pol, label, eps, lrs={}))
        if tunes(run):
            name = f"{label}+finetune"

            at = functools.partial(_fine_tuned, family, pol, name, eps)
            rates, record = tune_fine_tune(
                at,
                pol,
                ks,
                n_tasks=TUNE_TASKS,
                progress=tune_bar.update if tune_bar is not None else None,
            )
            tuned[str(run.run_dir)] = record
            if record["diverged"]:
                rates_text = ", ".join(f"{x:g}" for x in record["diverged"])
                chosen = sorted({v for v in rates.values() if v in record["diverged"]})
                _say(
                    tune_bar,
                    f"robometa eval: {run.run_dir}: fine-tuning at rate(s) {rates_text} diverged "
                    "on training robots (non-finite weights or Q-values; `diverged` under "
                    "fine_tune in results.json): "
                    + (
                        f"every rate diverged, so {', '.join(f'{x:g}' for x in chosen)} is "
                        "still used"
                        if chosen
                        else "not picked"
                    ),
                )
            add(name, True, False, PerStepMethod(name, {k: at(rates[k]) for k in ks}))
    if tune_bar is not None:
        tune_bar.close()
    return methods, tuned


def evaluate_methods(
    methods: dict[str, MethodRuns],
    sets: list[TaskSet],
    steps: Sequence[int],
    episodes: int,
    dynamics: dict | None,
    show_progress: bool,
    jobs: int = 1,
) -> dict[str, list[dict[str, list[list[float]]]]]:
    """Every method's returns, one result per run: ``{name: [{group: [[R_k], ...]}]}``;
    ``jobs`` runs at a time (:func:`_evaluate_runs`)."""
    per_run = _evaluate_runs(methods, sets, steps, episodes, dynamics, None, show_progress, jobs)
    results: dict[str, list[dict[str, list[list[float]]]]] = {}
    for name, res in per_run:
        results.setdefault(name, []).append(res)
    return results


def evaluate_methods_supports(
    methods: dict[str, MethodRuns],
    sets: list[TaskSet],
    steps: Sequence[int],
    episodes: int,
    dynamics: dict | None,
    supports: Sequence[int],
    show_progress: bool,
    jobs: int = 1,
) -> dict[int, dict[str, list[dict[str, list[list[float]]]]]]:
    """:func:`evaluate_methods` at every support size of ``supports`` (one collection of the
    largest per run and task, :func:`evaluate_method_supports`): ``{size: {name: [...]}}``."""
    per_run = _evaluate_runs(
        methods, sets, steps, episodes, dynamics, list(supports), show_progress, jobs
    )
    results: dict[int, dict[str, list[dict[str, list[list[float]]]]]] = {k: {} for k in supports}
    for name, by_size in per_run:
        for k, res in by_size.items():
            results[k].setdefault(name, []).append(res)
    return results


def _evaluate_run(
    method: Method,
    sets: list[TaskSet],
    steps: list[int],
    episodes: int,
    dynamics: dict | None,
    supports: list[int] | None,
    progress: Callable[[], None] | None = None,
) -> Any:
    """One run's evaluation: :func:`evaluate_method`, or with ``supports``
    :func:`evaluate_method_supports` at those sizes."""
    if supports is None:
        return evaluate_method(method, sets, steps, episodes, dynamics, progress)
    sized = {k: with_support(method, k) for k in supports}
    return evaluate_method_supports(sized, sets, steps, episodes, dynamics, progress)


def _evaluate_runs(
    methods: dict[str, MethodRuns],
    sets: list[TaskSet],
    steps: Sequence[int],
    episodes: int,
    dynamics: dict | None,
    supports: list[int] | None,
    show_progress: bool,
    jobs: int,
) -> list[tuple[str, Any]]:
    """``(name, result)`` of every run of every method, in the methods' and runs' order.

    ``jobs`` > 1 evaluates that many runs at a time, each in a worker process (spawned, with
    ``torch.get_num_threads() // jobs`` threads, at least one); the returns are the same as
    one at a time, because every task's episodes are seeded by the task's index alone
    (:data:`EVAL_SEED`), never by what was evaluated before. The evaluation objects travel to
    the workers pickled; one that cannot be pickled is an error naming its method, before any
    worker starts. The progress bar then advances a run's tasks when the run finishes."""
    todo = [
        (name, m, list(steps) if entry.adapts else [0])
        for name, entry in methods.items()
        for m in entry.methods
    ]
    n_tasks = sum(len(s.tasks) for s in sets)
    bar = _progress_bar(show_progress, len(todo) * n_tasks, "eval")
    try:
        if jobs <= 1 or len(todo) <= 1:
            tick = bar.update if bar is not None else None
            return [
                (name, _evaluate_run(m, sets, ks, episodes, dynamics, supports, tick))
                for name, m, ks in todo
            ]
        return _evaluate_runs_in_workers(todo, sets, episodes, dynamics, supports, jobs, bar)
    finally:
        if bar is not None:
            bar.close()


def _evaluate_runs_in_workers(
    todo: list[tuple[str, Method, list[int]]],
    sets: list[TaskSet],
    episodes: int,
    dynamics: dict | None,
    supports: list[int] | None,
    jobs: int,
    bar: Any,
) -> list[tuple[str, Any]]:
    import pickle
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    for name, m, _ in todo:
        try:
            pickle.dumps(m)
        except Exception as err:
            raise ValueError(
                f"method {name!r}: its evaluation object ({type(m).__name__}) cannot be sent "
                f"to a worker process ({type(err).__name__}: {err}); evaluate with jobs=1 "
                "(robometa eval --jobs 1)"
            ) from err
    n_tasks = sum(len(s.tasks) for s in sets)
    threads = max(1, torch.get_num_threads() // jobs)
    out: list[Any] = [None] * len(todo)
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)),
        mp_context=get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(threads,),
    ) as pool:
        futures = {
            pool.submit(_evaluate_run, m, sets, ks, episodes, dynamics, supports): i
            for i, (_, m, ks) in enumerate(todo)
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                out[i] = future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
            if bar is not None:
                bar.update(n_tasks)
    return [(name, res) for (name, _, _), res in zip(todo, out, strict=True)]


def check_supports(runs: Sequence[Run], supports: Sequence[int]) -> list[int]:
    """The support sizes of ``robometa eval --support``, sorted, each checked to be an integer
    in ``[1, adaptation.support_size's maximum]`` and one every run's evaluation object can
    take (:func:`with_support`)."""
    from robometa.config import AdaptationConfig

    hi = {f.name: f for f in dataclasses.fields(AdaptationConfig)}["support_size"].metadata["hi"]
    sizes = sorted(set(supports))
    bad = [k for k in sizes if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= hi]
    if not sizes or bad:
        raise ValueError(
            f"support sizes must be integers in [1, {int(hi)}] (adaptation.support_size's "
            f"range), got {list(supports)}"
        )
    for run in runs:
        family = run.spec.load()
        m = family.evaluation_method(run.policy, run.label, run.support_epsilon)
        for k in sizes:
            with_support(m, k)
    return sizes


def oracle_returns(
    methods: dict[str, MethodRuns],
    results: dict[str, list[dict[str, list[list[float]]]]],
    groups: Sequence[str],
) -> dict[str, list[float]] | None:
    """Per group and task, the unadapted return of the privileged runs (mean over their
    training seeds); None without a privileged run (then there is no normalized score). With
    several privileged methods (``oracle``, ``oracle-history``) the first one given is the
    reference: their runs are not averaged together."""
    first = next((name for name, m in methods.items() if m.reference), None)
    per_seed = list(results[first]) if first is not None else []
    if not per_seed:
        return None
    return {
        g: [
            float(np.mean([res[g][ti][0] for res in per_seed])) for ti in range(len(per_seed[0][g]))
        ]
        for g in groups
    }


def write_reports(out: Path, report: dict[str, Any], table: str) -> None:
    """``results.json``, ``results.md`` and ``adaptation.png`` in ``out`` (and ``support.png``
    when the report holds several support sizes: ``robometa eval --support``)."""
    env_id = report["env_id"]
    sized = "support" in report
    note = (
        " Support column: transitions collected on each robot before adapting (--support; "
        "the largest collected once, a smaller size k adapts on the first k steps' "
        "transitions)."
        if sized
        else ""
    )
    if report.get("by_motor_sign"):
        note += (
            " Tasks `<group>/motor+` and `<group>/motor-` (--by-motor-sign): the same group's "
            "robots with the motor mounted normally (motor_sign +1) and reversed (-1), "
            "pooled and normalized the same way."
        )
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(
        f"# Adaptation results on {env_id}\n\n{table}\n\n"
        f"Normalized score: (R - R_random) / (R_oracle - R_random), returns pooled over "
        f"(task, training seed) pairs; 95% hierarchical bootstrap CI (training seeds resampled, "
        f"then robots within each seed; no score column "
        f"without an oracle run). Support: transitions collected with each method's initial policy; "
        f"steps: gradient steps on them.{note}\n"
    )
    plotted = [r for r in report["summary"] if "motor_sign" not in r]  # one panel a group
    plot_adaptation(plotted, out / "adaptation.png")
    if sized:
        plot_support(plotted, out / "support.png")


def run_evaluation(
    run_dirs: Sequence[str | Path],
    tasks: str = "test",
    n_tasks: int = 10,
    episodes: int = 2,
    steps: Sequence[int] | None = None,
    out: str | Path = "eval",
    fine_tune: bool = True,
    show_progress: bool = True,
    supports: Sequence[int] | None = None,
    by_motor_sign: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Evaluate trained runs (grouped by method over training seeds); write the reports.

    ``tasks``: ``test``, a named suite (``heldout``, ``fresh``), a directory of task files or
    one task file (:func:`task_sets`); the report then records each file and its sha256
    (``task_files``).

    ``by_motor_sign``: the summary (JSON and table) also gives, for every group whose robots
    have both motor signs, the rows of ``<group>/motor+`` and ``<group>/motor-``
    (:func:`summarize`); the group's own rows are unchanged, the plots show the groups only.

    ``supports``: evaluate every method at each of these support sizes instead of each run's
    ``adaptation.support_size`` (the summary rows and the returns gain a ``support`` field,
    the table a column, and ``support.png`` is written); the fine-tuning rate is still tuned
    once, at the run's configured size.

    ``jobs``: how many runs are evaluated at a time, each in a worker process; the returns
    are the same as with one (:func:`_evaluate_runs`). The fine-tuning rate search runs
    here, before them.

    Every input (the runs, the task file, the curve) is checked before ``out`` is created, so
    a mistake leaves no empty report directory behind. ``show_progress``: a header line at
    once, then progress bars for the fine-tuning rate search and for the evaluation.
    """
    out = Path(out)
    if episodes < 1 or n_tasks < 1:
        raise ValueError(f"episodes and n_tasks must be >= 1, got {episodes} and {n_tasks}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (runs evaluated at a time), got {jobs!r}")
    if steps is not None and any(k < 0 for k in steps):
        raise ValueError(f"adaptation steps must be >= 0, got {list(steps)}")
    runs = load_runs(run_dirs)
    env_id, dynamics = runs[0].policy.env_id, runs[0].policy.dynamics
    max_k = max(r.policy.adapt_steps for r in runs)
    steps = adaptation_curve(steps, max_k)
    sizes = check_supports(runs, supports) if supports is not None else None
    sets = task_sets(tasks, env_id, n_tasks, dynamics)
    signs = motor_signs(sets, env_id) if by_motor_sign else None
    out.mkdir(parents=True, exist_ok=True)
    if show_progress:
        groups = ", ".join(f"{s.name} ({len(s.tasks)} tasks)" for s in sets)
        sized = f", support sizes {','.join(map(str, sizes))}" if sizes else ""
        split = ", split by motor sign" if by_motor_sign else ""
        print(
            f"evaluating {len(runs)} run(s) on {env_id}: {groups}, {episodes} episode(s) "
            f"per task, adaptation steps {','.join(map(str, steps))}{sized}{split}",
            flush=True,
        )

    methods, tuned = plan_methods(runs, steps, fine_tune, show_progress)
    results: dict[str, Any]
    if sizes is None:
        results = evaluate_methods(methods, sets, steps, episodes, dynamics, show_progress, jobs)
        rand = random_returns(env_id, sets, episodes, dynamics)
        oracle = oracle_returns(methods, results, list(rand))
        rows = summarize(results, steps, rand, oracle, signs=signs)
    else:
        by_size = evaluate_methods_supports(
            methods, sets, steps, episodes, dynamics, sizes, show_progress, jobs
        )
        rand = random_returns(env_id, sets, episodes, dynamics)
        # the oracle is unadapted (k = 0): the same at every size; taken at the largest
        oracle = oracle_returns(methods, by_size[sizes[-1]], list(rand))
        per_size = [
            summarize(by_size[k], steps, rand, oracle, support=k, signs=signs) for k in sizes
        ]
        order = {name: i for i, name in enumerate(methods)}
        # the groups in summarize's order (a group's motor-sign rows right after its own)
        group_order = {
            g: i for i, g in enumerate(dict.fromkeys(r["group"] for rs in per_size for r in rs))
        }
        rows = sorted(  # method, group, support, steps
            (r for rs in per_size for r in rs),
            key=lambda r: (order[r["method"]], group_order[r["group"]], r["support"], r["steps"]),
        )
        results = {
            name: [
                {"support": k, "returns": res} for k in sizes for res in by_size[k].get(name, [])
            ]
            for name in methods
        }
    table = markdown_table(rows)
    files = {  # what the groups were read from (none with --tasks test)
        s.name: {"path": str(s.source), "sha256": task_suites.sha256(s.source)}
        for s in sets
        if s.source is not None
    }
    report = {
        "env_id": env_id,
        "tasks": tasks,
        "n_tasks": {s.name: len(s.tasks) for s in sets},
        "episodes": episodes,
        "steps": steps,
        **({"support": sizes} if sizes is not None else {}),
        "runs": [str(r.run_dir) for r in runs],
        **({"task_files": files} if files else {}),
        **({"by_motor_sign": True} if by_motor_sign else {}),
        "task_values": {s.name: [dict(t) for t in s.tasks] for s in sets},
        "random_returns": rand,
        "oracle_returns": oracle,
        "fine_tune": tuned,
        "returns": results,
        "summary": rows,
    }
    write_reports(out, report, table)
    print(table)
    return report
