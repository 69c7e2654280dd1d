"""Training throughput: wall-clock and CPU time per 10k env steps of every algorithm.

Each algorithm trains at its shipped config (``configs/<family>_<method>.yaml``: CartPole
for every method, DiffDrive for the ones that have a config) for a fixed budget
(``dqn.total_steps`` = ``--steps``, default 40,000: the shipped budget of every DR and
gradient meta-learner config; progress bar off, model selection and checkpoints as shipped:
that is what a user runs; a smaller ``--steps`` weighs the fixed costs, setup and the final
selection, more, and DQN's cheaper steps before ``dqn.learning_starts`` too), through
:func:`robometa.train.train`, each measurement in a fresh Python process and one at a time
(two at once would share the cores). Beside them, in the same run: the bare env stepping
with random actions (the physics bound) and DQN (the ``dr`` config, the reference every ratio
divides by).

Per measurement: wall-clock and CPU time (user + sys of the whole process, every thread) of
the ``train()`` call, the env steps it trained (a meta-learner ends at a whole round), both
per 10k env steps, CPU utilization (CPU / wall: 1.0 = one core busy, 2.0 = two) and the
ratio to DQN's wall time per env step (same family, same ref, same run). For the current
tree a breakdown of where the time goes, from timing wrappers the child process puts around
the trainer's methods before training starts (no library code is edited; the wrappers read
only clocks, never an RNG, so the run is the same): collection, inner steps, the rest of the
outer step, target updates, model selection, checkpointing, setup, the plot, other. Also the
CPU time of each thread of the child and the machine's per-core busy share while it trained
(from ``/proc``; on a shared machine that includes other processes).

``--baseline-ref GITREF`` checks that commit out into a temporary ``git worktree`` (removed
afterwards, also on failure or Ctrl-C; the working tree is never touched), lays it out as an
importable ``robometa`` package (pyproject's ``package-dir`` mapping, as symlinks in a
temporary site directory first on ``PYTHONPATH``; each child verifies it imported robometa
from the tree it measures) and measures it side by side with the current tree, interleaved
config by config, so a speed-up is a ratio from one run. The driver uses only
``robometa.config.load_config(path, overrides, steps=)`` and ``robometa.train.train(cfg,
run_dir)``, present in every version; each tree reads its own config files.

Targets (reported, PASS/MISS): every gradient meta-learner's wall-clock per env step at its
shipped config at most 2x DQN's (``dr``), second-order MAML at most 4x.

The arithmetic beside the times (``--no-flops`` skips it): after the timed runs, a separate
counting pass per config of the current tree (a fresh child each, same config and ``train()``
call, the timing wrappers counting too) under ``torch.utils.flop_counter.FlopCounterMode``:
the matrix-product FLOPs (forward, backward, second-order backward) of the trainer's
``iterate()`` calls per env step, from the end of the warm-up (a meta-learner's first round,
DQN's ``dqn.learning_starts``) over ``--flops-steps`` env steps (:data:`FLOPS_NOTE`); reported
as MFLOP per env step, its ratio to DQN's, and wall time per MFLOP (the timed wall per env step
over it) and that ratio to DQN's, with a plain reading of the numbers.

    python benchmarks/train_throughput.py --out bench-results/train_throughput.json
    python benchmarks/train_throughput.py --out x.json --steps 4000 --methods dr,cavia,maml
    python benchmarks/train_throughput.py --out x.json --baseline-ref 0964d52
    python benchmarks/train_throughput.py --out x.json --steps 2000 --no-flops

Writes the JSON report, a markdown table beside it (``.md``) and a plot (``.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "--_child"
#: the shipped dqn.total_steps of every CartPole and DiffDrive DR and gradient meta-learner
#: config: the targets are per env step at the shipped config, budget included
DEFAULT_STEPS = 40_000
PER = 10_000  # the per-env-steps unit of every "per 10k" number
REFERENCE = "dr"  # DQN over the training robots: the ratio's denominator
DEFAULT_FAMILIES = ("cartpole", "diffdrive")
TARGET_X_DQN = 2.0
TARGET_X_DQN_MAML = 4.0  # second-order MAML
DEFAULT_FLOPS_STEPS = 2_000  # env steps the counting pass counts, past the warm-up
#: pyproject's package-dir mapping of the trees before robometa.configs existed
DEFAULT_PACKAGE_DIR = {
    "robometa": "robometa",
    "robometa.envs": "envs",
    "robometa.deploy": "deploy",
    "robometa.configs": "configs",
}

# --------------------------------------------------------------------------- the breakdown

#: the timing wrappers the child installs (current tree): label -> "module:attribute path";
#: a target this tree lacks is skipped (and listed as absent in the report)
WRAPPERS = {
    "setup": "robometa.train:make_algorithm",
    "selection": "robometa.train:_Run.select",
    "selection_return": "robometa.train:selection_return",
    "checkpoint": "robometa.train:_Run.checkpoint",
    "plot": "robometa.train:plot_learning_curve",
    "collection": "robometa.methods.gradient:MetaLearner._support_and_query",
    "collect": "robometa.methods.gradient:MetaLearner._collect",
    "adapt": "robometa.methods.gradient:MetaLearner._adapt",
    "outer_step": "robometa.methods.gradient:MetaLearner._outer_step",
    "meta_batch": "robometa.methods.gradient:MetaLearner._meta_batch",
    "task_losses": "robometa.methods.gradient:MetaLearner._task_losses",
    "gradient_update": "robometa.methods.gradient:MetaLearner._gradient_update",
    "reptile_update": "robometa.methods.gradient:MetaLearner._reptile_update",
    "target_update": "robometa.methods.gradient:MetaLearner._after_update",
    "dqn_collection": "robometa.methods.dqn:DQN._step_every_env",
    "dqn_gradient_step": "robometa.methods.dqn:DQN._gradient_step",
    "dqn_target_update": "robometa.methods.dqn:DQN._update_target",
}

#: the breakdown's exclusive parts (they and ``other`` sum to the train() wall time), and
#: what measures each: the wrapped function, and what is subtracted
PARTS = {
    "collection": "MetaLearner._support_and_query (support + no-grad adaptation + query) or "
    "DQN._step_every_env: env steps, acting, storing",
    "inner_steps": "MetaLearner._adapt inside _outer_step: the differentiable inner steps "
    "(forward, graph built; over the meta-batch at once: batched or vmapped)",
    "updates": "MetaLearner._outer_step minus its inner steps and _after_update: batch "
    "sampling, outer loss forward, backward, clipping, Adam (Reptile: its update); DQN: "
    "DQN._gradient_step minus DQN._update_target",
    "target_updates": "MetaLearner._after_update (target copy every target_update_interval "
    "outer steps, CAVIA's context reset) or DQN._update_target",
    "selection": "robometa.train._Run.select (policy snapshot, selection_return, "
    "selection.csv, policy.pt of the best), periodic and final",
    "checkpointing": "robometa.train._Run.checkpoint (state_dict, fsynced checkpoint.pt, the "
    "env restarts of the boundary), step 0, periodic and final",
    "setup": "robometa.train.make_algorithm: envs built, input normalization fitted",
    "plot": "robometa.train.plot_learning_curve: learning_curve.png at the end",
    "other": "the rest of train(): metrics rows, iterate()'s own bookkeeping, config.yaml, "
    "reading policy.pt back, closing",
}
#: sub-parts shown beside their part (inclusive times of a path inside another)
SUBPARTS = {
    "collect": "collection: MetaLearner._collect (env steps + acting), support and query",
    "collection_adapt": "collection: MetaLearner._adapt under no_grad (adapted params for "
    "the query)",
    "meta_batch": "updates: MetaLearner._meta_batch (sampling the support and query batches)",
    "outer_forward": "updates: _task_losses minus its inner steps (outer TD/model loss forward)",
    "backward_and_adam": "updates: _gradient_update / _reptile_update minus _task_losses",
    "selection_return": "selection: robometa.train.selection_return (adapt + greedy episode "
    "per selection task)",
}

#: what the counting pass counts, and how (the report says it)
FLOPS_NOTE = (
    "Counted by torch.utils.flop_counter.FlopCounterMode in a separate pass (its own child "
    "process after the timed runs, so their times do not include it): the same config and "
    "train() call, at the timed runs' dqn.total_steps (raised only where the counting window "
    "would not fit in it). Counted: the matrix products FlopCounterMode has formulas for "
    "(mm, addmm, bmm, baddbmm, convolutions, attention; 2 FLOPs per multiply-add), forward "
    "and backward, second-order backward included (the backward ops are counted as they "
    "run). Not counted: matrix-vector products, elementwise ops, reductions, the optimizer, "
    "the physics, and arithmetic outside torch (the meta-learners' single-observation numpy "
    "actor; DQN acts through torch, batched over its envs, and that is counted). What is "
    "divided: the FLOPs of the trainer's iterate() calls (collection "
    "and acting, the no-grad adaptation for the query, inner steps, outer/TD updates, target "
    "updates) over the env steps they trained, from the end of the warm-up (a meta-learner's "
    "first round; DQN's dqn.learning_starts, after which every train_freq vector steps make "
    "a gradient step) to {window} env steps later (whole iterations): the same as FLOPs(run "
    "stopped at the window's end) - FLOPs(run stopped at its start), over the env steps "
    "between, since a stopped run is a prefix of the longer one. So setup (the input "
    "normalization fit), the step-0 checkpoint and DQN's update-free first steps are "
    "excluded, and so are model selection (every logging.eval_every env steps) and "
    "checkpointing, which the timed wall time includes. The window's length is "
    "--flops-steps; it starts right after the warm-up because the arithmetic per env step is "
    "steady from there (each run's per-iteration range is in the JSON), except a "
    "meta-learner's no-grad adaptation for the query, which runs "
    "on the task's support ring and grows while the ring fills over the task's first visits "
    "(adaptation.support_size / meta.collect_steps of them): the collection FLOP share below "
    "bounds what that leaves out."
)


class Timers:
    """Timing wrappers that record, per call path of wrapped labels, calls, wall and CPU; and,
    given ``flops`` (a running FLOP total, e.g. ``FlopCounterMode.get_total_flops``), the
    FLOPs counted inside each call too."""

    def __init__(self, flops: Any = None) -> None:
        self.stack: list[str] = []
        self.totals: dict[tuple[str, ...], list[float]] = {}
        self.flops = flops

    def wrap(self, label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(label)
            path = tuple(self.stack)
            flops0 = self.flops() if self.flops is not None else 0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = self.totals.setdefault(path, [0, 0.0, 0.0, 0])
                entry[0] += 1
                entry[1] += time.perf_counter() - wall0
                entry[2] += time.process_time() - cpu0
                if self.flops is not None:
                    entry[3] += self.flops() - flops0
                self.stack.pop()

        return timed

    def install(self) -> dict[str, str]:
        """Wrap every :data:`WRAPPERS` target that exists; returns label -> absent reason."""
        absent = {}
        for label, target in WRAPPERS.items():
            module_name, attr_path = target.split(":")
            try:
                owner: Any = importlib.import_module(module_name)
                *owners, attr = attr_path.split(".")
                for name in owners:
                    owner = getattr(owner, name)
                original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            except (ImportError, AttributeError, KeyError) as err:
                absent[label] = f"{target}: {type(err).__name__}"
                continue
            setattr(owner, attr, self.wrap(label, original))
        return absent

    def snapshot(self) -> dict[tuple[str, ...], list[float]]:
        """The totals so far (:meth:`rows` ``since`` one gives what came after it)."""
        return {path: list(entry) for path, entry in self.totals.items()}

    def rows(self, since: dict[tuple[str, ...], list[float]] | None = None) -> list[dict[str, Any]]:
        rows = []
        for path, entry in sorted(self.totals.items()):
            before = (since or {}).get(path, [0, 0.0, 0.0, 0])
            c, w, u, f = (now - then for now, then in zip(entry, before, strict=True))
            if since is not None and c == 0:
                continue
            row = {"path": "/".join(path), "calls": int(c), "wall_s": w, "cpu_s": u}
            if self.flops is not None:
                row["flops"] = int(f)
            rows.append(row)
        return rows


def breakdown(
    paths: list[dict[str, Any]], wall: float, cpu: float, flops: float | None = None
) -> dict[str, Any]:
    """The exclusive parts (:data:`PARTS`) and sub-parts of a run from its timer paths; with
    ``flops`` (the whole's FLOPs; the paths then carry ``flops``) their FLOPs too."""

    def total(pred: Any, key: str) -> float:
        return sum(r[key] for r in paths if pred(r["path"].split("/")))

    out: dict[str, Any] = {"parts": {}, "subparts": {}}
    wholes = [("wall_s", wall), ("cpu_s", cpu)] + ([("flops", flops)] if flops is not None else [])
    for key, whole in wholes:

        def last(name: str, k: str = key) -> float:
            return total(lambda p: p[-1] == name, k)

        def inside(outer: str, name: str, k: str = key) -> float:
            return total(lambda p: p[-1] == name and outer in p[:-1], k)

        inner = inside("outer_step", "adapt")
        target = inside("outer_step", "target_update") + inside(
            "dqn_gradient_step", "dqn_target_update"
        )
        parts = {
            "collection": last("collection") + last("dqn_collection"),
            "inner_steps": inner,
            "updates": last("outer_step")
            - inner
            - inside("outer_step", "target_update")
            + last("dqn_gradient_step")
            - inside("dqn_gradient_step", "dqn_target_update"),
            "target_updates": target,
            "selection": last("selection"),
            "checkpointing": last("checkpoint"),
            "setup": last("setup"),
            "plot": last("plot"),
        }
        parts = {k: max(0.0, v) for k, v in parts.items()}
        parts["other"] = max(0.0, whole - sum(parts.values()))
        task_losses = last("task_losses")
        subparts = {
            "collect": inside("collection", "collect"),
            "collection_adapt": inside("collection", "adapt"),
            "meta_batch": last("meta_batch"),
            "outer_forward": max(0.0, task_losses - inside("task_losses", "adapt")),
            "backward_and_adam": max(
                0.0, last("gradient_update") + last("reptile_update") - task_losses
            ),
            "selection_return": inside("selection", "selection_return"),
        }
        for k, v in parts.items():
            out["parts"].setdefault(k, {})[key] = v
        for k, v in subparts.items():
            out["subparts"].setdefault(k, {})[key] = v
    for part in out["parts"].values():
        part["wall_fraction"] = part["wall_s"] / wall if wall > 0 else math.nan
        if flops is not None:
            part["flops_fraction"] = part["flops"] / flops if flops > 0 else math.nan
    return out


# --------------------------------------------------------------------------- the child


def _proc_cpu_ticks() -> dict[str, list[int]]:
    """Per-core jiffies from /proc/stat: {"cpu0": [busy, total], ...} ({} elsewhere)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(x) for x in fields[:8]]
                idle = values[3] + values[4]  # idle + iowait
                out[name] = [sum(values) - idle, sum(values)]
    return out


def _thread_cpu() -> dict[str, tuple[str, float]]:
    """This process's threads: tid -> (name, user + sys CPU seconds) from /proc/self/task."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (task / "stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2 :].split()
                out[task.name] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cores(before: dict, after: dict, wall: float) -> dict[str, Any]:
    """Machine-wide busy share of each core between two /proc/stat readings."""
    cores = {}
    for name, (busy1, total1) in after.items():
        busy0, total0 = before.get(name, (busy1, total1))
        cores[name] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else math.nan
    return cores


def _threads(before: dict, after: dict) -> list[dict[str, Any]]:
    rows = []
    for tid, (name, cpu) in after.items():
        delta = cpu - before.get(tid, (name, 0.0))[1]
        rows.append({"tid": int(tid), "name": name, "cpu_s": delta})
    return sorted(rows, key=lambda r: -r["cpu_s"])


def _drop_editable_finders() -> list[str]:
    """Remove the editable install's import hooks: a module the measured tree lacks must not
    be found in the current tree instead."""
    dropped = []
    for finder in list(sys.meta_path):
        module = getattr(finder, "__module__", "") or ""
        if module.startswith("__editable__") and "robometa" in module:
            sys.meta_path.remove(finder)
            dropped.append(module)
    return dropped


def _outside(tree: Path) -> list[str]:
    """Loaded robometa modules whose file is not under ``tree``."""
    bad = []
    for name, module in list(sys.modules.items()):
        if name == "robometa" or name.startswith("robometa."):
            file = getattr(module, "__file__", None)
            if file and not Path(os.path.realpath(file)).is_relative_to(tree):
                bad.append(f"{name}: {os.path.realpath(file)}")
    return bad


def child(spec_path: str) -> int:
    """One measurement in this (fresh) process: ``spec_path`` names a JSON spec; the result
    is written where it says. Exit code 3: robometa was imported from the wrong tree."""
    spec = json.loads(Path(spec_path).read_text())
    tree = Path(spec["tree"]).resolve()
    result: dict[str, Any] = {"pid": os.getpid()}
    if spec["isolate"]:
        result["dropped_import_hooks"] = _drop_editable_finders()
    import robometa

    result["robometa_file"] = os.path.realpath(robometa.__file__)
    if spec["kind"] == "physics":
        result |= _physics(spec)
    elif spec["kind"] == "flops":
        result |= _flops(spec)
    else:
        result |= _train(spec)
    result["modules_outside_tree"] = _outside(tree)
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    if not Path(result["robometa_file"]).is_relative_to(tree) or result["modules_outside_tree"]:
        print(
            f"robometa was imported from {result['robometa_file']}, not from the measured "
            f"tree {tree}: {result['modules_outside_tree']}",
            file=sys.stderr,
        )
        return 3
    return 0


def _physics(spec: dict[str, Any]) -> dict[str, Any]:
    """The env alone, random actions, resets counted: the physics bound of training."""
    import gymnasium as gym
    import numpy as np
    import robometa.envs  # noqa: F401  (registers the families)

    env = gym.make(spec["env_id"])
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n = int(env.action_space.n)
    actions = rng.integers(n, size=spec["steps"]).tolist()
    for a in actions[:100]:  # warm-up
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    env.reset()
    resets = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
            resets += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    env.close()
    return {"env_steps": len(actions), "resets": resets, "wall_s": wall, "cpu_s": cpu}


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from robometa.config import load_config
    from robometa.train import train

    overrides = ["logging.progress=false", *spec.get("overrides", [])]
    cfg = load_config(spec["config"], overrides, steps=spec["steps"])
    timers = Timers()
    absent = timers.install() if spec["breakdown"] else {}
    run_dir = Path(spec["run_dir"])
    cores0, threads0 = _proc_cpu_ticks(), _thread_cpu()
    usage0, times0 = resource.getrusage(resource.RUSAGE_SELF), os.times()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    train(cfg, run_dir)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    usage1, times1 = resource.getrusage(resource.RUSAGE_SELF), os.times()
    cores1, threads1 = _proc_cpu_ticks(), _thread_cpu()

    import torch

    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    result: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "env_id": cfg.env.id,
        "total_steps": cfg.dqn.total_steps,
        "env_steps": int(state["algorithm"]["env_steps"]),
        "wall_s": wall,
        "cpu_s": cpu,
        "user_s": times1.user - times0.user,
        "sys_s": times1.system - times0.system,
        "involuntary_context_switches": usage1.ru_nivcsw - usage0.ru_nivcsw,
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine_core_busy": _cores(cores0, cores1, wall),
        "threads": _threads(threads0, threads1),
    }
    if spec["breakdown"]:
        paths = timers.rows()
        result["breakdown"] = breakdown(paths, wall, cpu) | {
            "paths": paths,
            "absent_wrappers": absent,
        }
    return result


def _flops(spec: dict[str, Any]) -> dict[str, Any]:
    """The counting pass (:data:`FLOPS_NOTE`): ``train()`` of the config under one
    ``FlopCounterMode``, the timing wrappers counting FLOPs as well; the FLOPs of the trainer's
    ``iterate()`` calls from the end of the warm-up (a meta-learner's first round, DQN's
    ``dqn.learning_starts``) to ``flops_steps`` env steps (whole iterations) later, where the
    run stops (``train``'s ``stop_after``: no final selection, no plot)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import robometa.algorithms
    import robometa.train as train_module
    from robometa.config import load_config

    overrides = ["logging.progress=false", *spec.get("overrides", [])]
    window = int(spec["flops_steps"])
    cfg = load_config(spec["config"], overrides, steps=spec["steps"])
    # the timed runs' budget (their schedules: epsilon, learning rates), unless the window
    # would not fit in it (a quick run's small --steps)
    total = max(spec["steps"], 2 * (cfg.dqn.learning_starts + window))
    if total != spec["steps"]:
        cfg = load_config(spec["config"], overrides, steps=total)
    family = robometa.algorithms.get(cfg.algorithm).family
    counter = FlopCounterMode(display=False)
    timers = Timers(flops=counter.get_total_flops)
    absent = timers.install()
    iterations: list[tuple[int, int, int]] = []  # env steps before, after; FLOPs of iterate()
    marks: dict[str, Any] = {}
    run_class = train_module._Run
    original = run_class.__dict__["iterate_until_done"]

    def mark() -> dict[str, Any]:
        return {
            "timers": timers.snapshot(),
            "ops": counter.get_flop_counts().get("Global", {}),
            "flops": counter.get_total_flops(),
            "wall": time.perf_counter(),
            "cpu": time.process_time(),
        }

    def iterate_until_done(run: Any, stop: Any, stop_after: int | None) -> bool:
        alg = run.alg
        per = int(alg.steps_per_iteration)
        start = per if family == "gradient" else cfg.dqn.learning_starts
        start = math.ceil(max(start, 0) / per) * per
        end = start + max(1, math.ceil(window / per)) * per
        if end >= cfg.dqn.total_steps:
            raise RuntimeError(
                f"the counting window ends at env step {end}, past dqn.total_steps "
                f"{cfg.dqn.total_steps}: pass a larger --steps"
            )
        marks.update(start=start, end=end, per_iteration=per)
        iterate = alg.iterate

        def counted() -> dict[str, Any]:
            if alg.env_steps >= start and "at_start" not in marks:
                marks["at_start"] = mark()
            steps0, flops0 = alg.env_steps, counter.get_total_flops()
            out = iterate()
            iterations.append((steps0, alg.env_steps, counter.get_total_flops() - flops0))
            return out

        alg.iterate = counted  # this run's trainer only
        return original(run, stop, end)

    run_class.iterate_until_done = iterate_until_done
    run_dir = Path(spec["run_dir"])
    wall0 = time.perf_counter()
    with counter:
        train_module.train(cfg, run_dir)
        at_end = mark()
    wall = time.perf_counter() - wall0
    at_start = marks["at_start"]
    counted_its = [it for it in iterations if it[0] >= marks["start"]]
    warmup_its = [it for it in iterations if it[0] < marks["start"]]
    steps = counted_its[-1][1] - counted_its[0][0]
    train_flops = sum(f for *_, f in counted_its)
    window_flops = at_end["flops"] - at_start["flops"]
    per_iteration = [f for *_, f in counted_its]
    parts = breakdown(
        timers.rows(since=at_start["timers"]),
        wall=at_end["wall"] - at_start["wall"],
        cpu=at_end["cpu"] - at_start["cpu"],
        flops=window_flops,
    )
    warmup_steps = marks["start"]
    return {
        "algorithm": cfg.algorithm,
        "family": family,
        "total_steps": cfg.dqn.total_steps,
        "warmup_env_steps": warmup_steps,
        "window": [counted_its[0][0], counted_its[-1][1]],
        "env_steps": steps,
        "iterations": len(counted_its),
        "env_steps_per_iteration": marks["per_iteration"],
        "flops": train_flops,
        "flops_per_env_step": train_flops / steps,
        "flops_per_iteration_min": min(per_iteration),
        "flops_per_iteration_max": max(per_iteration),
        # everything counted in the window (iterate() and whatever train() did between)
        "window_flops": window_flops,
        "ops": {
            str(op): int(n - at_start["ops"].get(op, 0))
            for op, n in at_end["ops"].items()
            if n - at_start["ops"].get(op, 0)
        },
        "warmup_flops_per_env_step": (
            sum(f for *_, f in warmup_its) / warmup_steps if warmup_steps else None
        ),
        # the naive figure: every FLOP of the run (setup, step-0 checkpoint, warm-up too)
        "run_flops": counter.get_total_flops(),
        "run_env_steps": iterations[-1][1] if iterations else 0,
        "breakdown": parts | {"absent_wrappers": absent},
        "counting_wall_s": wall,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- trees


class Tree:
    """A source tree to measure: the current one, or a baseline commit's worktree."""

    def __init__(self, name: str, root: Path, site: Path | None, commit: str, subject: str):
        self.name, self.root, self.site = name, root, site
        self.commit, self.subject = commit, subject

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.site is not None:
            env["PYTHONPATH"] = str(self.site)
            env["PYTHONNOUSERSITE"] = "1"
        return env

    def config(self, family: str, method: str) -> Path:
        return self.root / "configs" / f"{family}_{method}.yaml"

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "site": str(self.site) if self.site else None,
            "commit": self.commit,
            "subject": self.subject,
        }


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def current_tree() -> Tree:
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except SystemExit:
        commit, dirty = "unknown", False
    subject = "working tree" + (" (uncommitted changes)" if dirty else "")
    return Tree("current", ROOT, None, commit, subject)


def package_dir(tree: Path) -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]`` of ``tree`` (the default layout if none)."""
    import tomllib

    try:
        data = tomllib.loads((tree / "pyproject.toml").read_text())
        mapping = data["tool"]["setuptools"]["package-dir"]
    except (OSError, KeyError, ValueError):
        mapping = DEFAULT_PACKAGE_DIR
    return {k: v for k, v in mapping.items() if (tree / v).is_dir()}


def build_site(tree: Path, site: Path) -> Path:
    """A site directory whose ``robometa`` package is ``tree``'s, laid out as installed: the
    files of ``tree/robometa`` as symlinks, and each mapped subpackage (``robometa.envs`` =
    ``envs/``, ...) as a symlink to its directory."""
    mapping = package_dir(tree)
    package = site / "robometa"
    package.mkdir(parents=True)
    for entry in sorted((tree / mapping.get("robometa", "robometa")).iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, directory in mapping.items():
        parts = name.split(".")
        if parts[0] != "robometa" or len(parts) != 2:
            continue
        link = package / parts[1]
        if link.is_symlink():
            link.unlink()
        link.symlink_to(tree / directory, target_is_directory=True)
    return site


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM stops the benchmark the way Ctrl-C does, so the clean-up (the temporary
    worktree) runs; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def baseline_tree(ref: str):
    """``ref`` checked out into a temporary worktree with its site directory; both removed
    on the way out (failure and Ctrl-C included)."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    subject = git("log", "-1", "--format=%s", commit)
    tmp = Path(tempfile.mkdtemp(prefix="robometa-baseline-"))
    worktree = tmp / "tree"
    added = False
    try:
        git("worktree", "add", "--detach", str(worktree), commit)
        added = True
        site = build_site(worktree, tmp / "site")
        yield Tree(f"baseline {ref}", worktree.resolve(), site, commit, subject)
    finally:
        if added:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)],
                cwd=ROOT,
                capture_output=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


# --------------------------------------------------------------------------- the plan


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def order_key(method: str) -> tuple[int, str]:
    order = table_order()
    return (order.index(method) if method in order else len(order), method)


def plan(families: list[str], methods: list[str] | None) -> list[tuple[str, str]]:
    """(family, method) of every shipped config to measure, DQN (``dr``) first in each
    family (every ratio needs it)."""
    pairs = []
    for family in families:
        found = sorted(
            (p.stem.split("_", 1)[1] for p in (ROOT / "configs").glob(f"{family}_*.yaml")),
            key=order_key,
        )
        if not found:
            raise SystemExit(f"--families: no configs/{family}_*.yaml")
        chosen = found if methods is None else [m for m in found if m in methods]
        if REFERENCE in found and REFERENCE not in chosen:
            chosen.insert(0, REFERENCE)
        pairs += [(family, m) for m in sorted(chosen, key=order_key)]
    if methods is not None:
        known = {m for _, m in pairs}
        missing = [m for m in methods if m not in known]
        if missing:
            print(
                f"[skip] no config for {', '.join(missing)} in {', '.join(families)}",
                file=sys.stderr,
            )
    return pairs


def table_order() -> list[str]:
    """The order rows are measured and shown in: DR first, then robometa's algorithms in
    registry order (config suffixes no algorithm has come after, sorted)."""
    from robometa import algorithms

    return [REFERENCE, *(n for n in algorithms.builtin_names() if n != REFERENCE)]


def gradient_algorithms() -> set[str]:
    """The gradient meta-learners, from the current tree's registry."""
    from robometa import algorithms

    return {n for n in algorithms.builtin_names() if algorithms.get(n).family == "gradient"}


# --------------------------------------------------------------------------- measuring


def run_child(tree: Tree, spec: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; its result (or ``error``) and the whole
    process's wall and CPU time (interpreter start and imports included)."""
    spec_path, result_path, log = work / "spec.json", work / "result.json", work / "child.log"
    spec = spec | {"tree": str(tree.root), "result": str(result_path)}
    spec["isolate"] = tree.site is not None
    spec_path.write_text(json.dumps(spec))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(spec_path)],
                env=tree.env(),
                cwd=work,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result |= {"process_wall_s": wall, "process_cpu_s": cpu, "returncode": rc}
    if rc == 3:
        raise SystemExit(
            f"{tree.name}: the child did not import robometa from {tree.root}:\n"
            + log.read_text()[-3000:]
        )
    if rc != 0:
        tail = log.read_text()[-2000:]
        result["error"] = (
            f"timed out after {timeout:.0f} s" if rc is None else f"exit code {rc}: {tail}"
        )
    return result


def per_10k(result: dict[str, Any]) -> None:
    steps = result.get("env_steps") or 0
    if steps > 0 and "wall_s" in result:
        result["wall_s_per_10k"] = result["wall_s"] * PER / steps
        result["cpu_s_per_10k"] = result["cpu_s"] * PER / steps
        result["cpu_utilization"] = result["cpu_s"] / result["wall_s"]
        result["env_steps_per_s"] = steps / result["wall_s"]


def measure(
    trees: list[Tree],
    pairs: list[tuple[str, str]],
    steps: int,
    physics_steps: int,
    timeout: float,
    work_root: Path,
    overrides: list[str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """The physics bound of every family, then every config, each tree after the other per
    config (interleaved: slow drift of a shared machine hits both refs alike)."""
    families = list(dict.fromkeys(f for f, _ in pairs))
    env_ids: dict[str, str] = {}
    for family in families:
        cfg = next(ROOT / "configs" / f"{family}_{m}.yaml" for f, m in pairs if f == family)
        env_ids[family] = read_yaml(cfg)["env"]["id"]
    jobs: list[tuple[str, Tree, str, str | None]] = []
    for family in families:
        jobs += [("physics", tree, family, None) for tree in trees]
    for family, method in pairs:
        jobs += [("train", tree, family, method) for tree in trees]
    physics, rows = [], []
    for i, (kind, tree, family, method) in enumerate(jobs, 1):
        what = f"{tree.name} {family}/{method}" if method else f"{tree.name} {family} physics"
        work = Path(tempfile.mkdtemp(prefix="m-", dir=work_root))
        row: dict[str, Any] = {"ref": tree.name, "family": family}
        if kind == "physics":
            print(f"[{i}/{len(jobs)}] {what}: {physics_steps} random-action steps", file=sys.stderr)
            spec = {"kind": "physics", "env_id": env_ids[family], "steps": physics_steps}
            row |= {"env_id": env_ids[family]} | run_child(tree, spec, work, timeout)
            per_10k(row)
            physics.append(row)
            if "error" not in row:
                print(
                    f"    {row['env_steps_per_s']:,.0f} steps/s, {row['wall_s_per_10k']:.2f} s "
                    f"wall and {row['cpu_s_per_10k']:.2f} s CPU per 10k",
                    file=sys.stderr,
                )
        else:
            assert method is not None
            row["method"] = method
            config = tree.config(family, method)
            if not config.exists():
                print(f"[{i}/{len(jobs)}] {what}: absent in this ref", file=sys.stderr)
                rows.append(row | {"absent": True, "config": str(config)})
                shutil.rmtree(work, ignore_errors=True)
                continue
            print(f"[{i}/{len(jobs)}] {what}: training {steps} env steps", file=sys.stderr)
            spec = {
                "kind": "train",
                "config": str(config),
                "steps": steps,
                "run_dir": str(work / "run"),
                "breakdown": tree.site is None,
                # --set applies to this tree's configs only (an old ref may lack the key)
                "overrides": list(overrides or []) if tree.site is None else [],
            }
            row |= {"config": str(config.relative_to(tree.root)), "overrides": spec["overrides"]}
            row |= run_child(tree, spec, work, timeout)
            per_10k(row)
            rows.append(row)
            if "error" not in row:
                print(
                    f"    {row['env_steps']} env steps in {row['wall_s']:.1f} s wall, "
                    f"{row['cpu_s']:.1f} s CPU ({row['cpu_utilization']:.2f} cores): "
                    f"{row['wall_s_per_10k']:.1f} s per 10k (process {row['process_wall_s']:.1f}"
                    " s with start-up)",
                    file=sys.stderr,
                )
        if "error" in row:
            print(f"    FAILED: {row['error'][:500]}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    return physics, rows


def add_ratios(rows: list[dict], gradient: set[str]) -> None:
    """Ratio to DQN (``dr``, same family and ref), the targets, and the speed-up of the
    current tree over the baseline."""
    ref_rows = {
        (r["ref"], r["family"]): r
        for r in rows
        if r["method"] == REFERENCE and "wall_s_per_10k" in r
    }
    for r in rows:
        dqn = ref_rows.get((r["ref"], r["family"]))
        if dqn is not None and "wall_s_per_10k" in r:
            r["x_dqn_wall"] = r["wall_s_per_10k"] / dqn["wall_s_per_10k"]
            r["x_dqn_cpu"] = r["cpu_s_per_10k"] / dqn["cpu_s_per_10k"]
        algorithm = r.get("algorithm", r["method"])
        if algorithm in gradient:
            r["target_x_dqn"] = TARGET_X_DQN_MAML if algorithm == "maml" else TARGET_X_DQN
            if "x_dqn_wall" in r:
                r["target_met"] = bool(r["x_dqn_wall"] <= r["target_x_dqn"])
    current = {(r["family"], r["method"]): r for r in rows if r["ref"] == "current"}
    for r in rows:
        mine = current.get((r["family"], r["method"]))
        if r["ref"] != "current" and mine and "wall_s_per_10k" in r and "wall_s_per_10k" in mine:
            if mine.get("overrides"):  # not the same settings: no code speed-up to state
                continue
            mine["speedup_vs_baseline"] = r["wall_s_per_10k"] / mine["wall_s_per_10k"]
            mine["cpu_speedup_vs_baseline"] = r["cpu_s_per_10k"] / mine["cpu_s_per_10k"]


def measure_flops(
    tree: Tree,
    pairs: list[tuple[str, str]],
    steps: int,
    window: int,
    timeout: float,
    work_root: Path,
    overrides: list[str] | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """The counting pass (:data:`FLOPS_NOTE`) of every config of ``tree`` (the current one),
    one child process each, after the timed runs: (family, method) -> its result."""
    out = {}
    for i, (family, method) in enumerate(pairs, 1):
        config = tree.config(family, method)
        if not config.exists():
            continue
        what = f"{tree.name} {family}/{method}"
        print(
            f"[flops {i}/{len(pairs)}] {what}: counting FLOPs over {window} env steps",
            file=sys.stderr,
        )
        work = Path(tempfile.mkdtemp(prefix="f-", dir=work_root))
        spec = {
            "kind": "flops",
            "config": str(config),
            "steps": steps,
            "flops_steps": window,
            "run_dir": str(work / "run"),
            "overrides": list(overrides or []),
        }
        result = run_child(tree, spec, work, timeout)
        out[(family, method)] = result
        if "error" in result:
            print(f"    FAILED: {result['error'][:500]}", file=sys.stderr)
        else:
            print(
                f"    {result['flops_per_env_step'] / 1e6:.3f} MFLOP per env step over env "
                f"steps {result['window'][0]}-{result['window'][1]} "
                f"({result['counting_wall_s']:.1f} s)",
                file=sys.stderr,
            )
        shutil.rmtree(work, ignore_errors=True)
    return out


def add_flop_ratios(rows: list[dict], flops: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Per current row: the counting pass's result (``flops``), MFLOP per env step, its ratio
    to DQN's (``dr``, same family), wall time per MFLOP (the timed wall per env step over the
    counted MFLOP per env step) and that ratio to DQN's, the effective GFLOP/s, and CPU time
    per MFLOP and its ratio to DQN's."""
    for r in rows:
        result = flops.get((r["family"], r.get("method")))
        if r["ref"] != "current" or result is None:
            continue
        r["flops"] = result
        if "error" in result or not result.get("flops_per_env_step"):
            continue
        mflop = result["flops_per_env_step"] / 1e6
        r["mflop_per_env_step"] = mflop
        if "wall_s_per_10k" in r:
            wall_per_step = r["wall_s_per_10k"] / PER
            r["wall_ms_per_mflop"] = 1e3 * wall_per_step / mflop
            r["effective_gflop_per_s"] = mflop / wall_per_step / 1e3
        if "cpu_s_per_10k" in r:  # the same per CPU second (less sensitive to a busy machine)
            r["cpu_ms_per_mflop"] = 1e3 * r["cpu_s_per_10k"] / PER / mflop
    dqn = {
        r["family"]: r
        for r in rows
        if r["ref"] == "current" and r["method"] == REFERENCE and "mflop_per_env_step" in r
    }
    for r in rows:
        ref = dqn.get(r["family"])
        if ref is None or "mflop_per_env_step" not in r:
            continue
        r["flops_x_dqn"] = r["mflop_per_env_step"] / ref["mflop_per_env_step"]
        for kind in ("wall", "cpu"):
            if f"{kind}_ms_per_mflop" in r and f"{kind}_ms_per_mflop" in ref:
                r[f"{kind}_per_mflop_x_dqn"] = (
                    r[f"{kind}_ms_per_mflop"] / ref[f"{kind}_ms_per_mflop"]
                )


def cpu_summary(rows: list[dict]) -> list[dict[str, Any]]:
    """Per current measurement: how the child's CPU time split over its threads, and how busy
    each core of the machine was meanwhile."""
    out = []
    for r in rows:
        if r["ref"] != "current" or "threads" not in r:
            continue
        threads = r["threads"]
        main = threads[0]["cpu_s"] if threads else 0.0
        out.append(
            {
                "family": r["family"],
                "method": r["method"],
                "cpu_utilization": r["cpu_utilization"],
                "threads": len(threads),
                "busiest_thread_cpu_s": main,
                # the process's CPU less its busiest thread's (threads that ended count too)
                "other_threads_cpu_s": max(0.0, r["cpu_s"] - main),
                "machine_core_busy": r["machine_core_busy"],
                "involuntary_context_switches": r["involuntary_context_switches"],
            }
        )
    return out


# --------------------------------------------------------------------------- reporting


def _f(value: Any, fmt: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{fmt}}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput ({report['steps']:,} env steps per config)",
        "",
        "Wall and CPU time of the `train()` call (CPU: user + sys of every thread of the "
        "child process); per 10k env steps actually trained. CPU util: CPU / wall (1.0 = one "
        "core busy). x DQN: wall time per env step / that of `dr` (DQN over the training "
        "robots), same family, same ref, same run. Target: gradient meta-learners <= "
        f"{TARGET_X_DQN:g}x DQN, second-order MAML <= {TARGET_X_DQN_MAML:g}x.",
        "",
    ]
    for name, tree in report["trees"].items():
        lines.append(f"- **{name}**: {tree['commit'][:12]} {tree['subject']} ({tree['root']})")
    if report.get("overrides"):
        shown = ", ".join(f"`{o}`" for o in report["overrides"])
        lines.append(
            f"- config overrides of the current tree's runs: {shown} (so no speed-up vs the "
            "baseline is stated: the settings differ)"
        )
    absent = sorted(
        {
            w
            for r in report["rows"]
            if r["ref"] == "current"
            for w in (r.get("breakdown") or {}).get("absent_wrappers") or {}
        }
    )
    if absent:
        lines.append(
            f"- **timing wrappers that found nothing to wrap** (their time is in *other*): "
            f"{', '.join(absent)}"
        )
    counted = report.get("flops") is not None
    flop_head = " MFLOP/env step | arithmetic x DQN | wall/MFLOP x DQN |" if counted else ""
    flop_rule = "---:|---:|---:|" if counted else ""
    flop_blank = " | | |" if counted else ""
    lines += [
        "",
        "| family | method | ref | env steps | wall s | CPU s | wall s/10k | CPU s/10k | "
        "CPU util | x DQN | target | speed-up vs baseline |" + flop_head,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|" + flop_rule,
    ]
    for r in report["physics"]:
        lines.append(
            f"| {r['family']} | *physics bound* (random actions) | {r['ref']} | "
            f"{r.get('env_steps', '-')} | {_f(r.get('wall_s'), '.2f')} | "
            f"{_f(r.get('cpu_s'), '.2f')} | {_f(r.get('wall_s_per_10k'), '.2f')} | "
            f"{_f(r.get('cpu_s_per_10k'), '.2f')} | {_f(r.get('cpu_utilization'), '.2f')} | "
            "| | |" + flop_blank
        )
    for r in report["rows"]:
        if r.get("absent"):
            lines.append(
                f"| {r['family']} | {r['method']} | {r['ref']} | absent | | | | | | | | |"
                + flop_blank
            )
            continue
        if "error" in r:
            lines.append(
                f"| {r['family']} | {r['method']} | {r['ref']} | FAILED | | | | | | | | |"
                + flop_blank
            )
            continue
        target = ""
        if "target_x_dqn" in r:
            verdict = "PASS" if r.get("target_met") else "MISS"
            target = f"<= {r['target_x_dqn']:g}x: {verdict}" if "target_met" in r else "-"
        flop_cells = ""
        if counted:
            flop_cells = (
                f" {_mflop(r)} | {_f(r.get('flops_x_dqn'), '.1f', 'x')} | "
                f"{_f(r.get('wall_per_mflop_x_dqn'), '.3f', 'x')} |"
            )
        lines.append(
            f"| {r['family']} | {r['method']} | {r['ref']} | {r['env_steps']} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s_per_10k']:.1f} | "
            f"{r['cpu_s_per_10k']:.1f} | {r['cpu_utilization']:.2f} | "
            f"{_f(r.get('x_dqn_wall'), '.2f', 'x')} | {target} | "
            f"{_f(r.get('speedup_vs_baseline'), '.2f', 'x')} |" + flop_cells
        )
    if counted:
        lines += flops_section(report)
    parts = list(PARTS)
    broken = [r for r in report["rows"] if "breakdown" in r]
    if broken:
        lines += [
            "",
            "## Where the time goes (current tree; seconds of wall time, share of the "
            "train() wall time)",
            "",
            "| family | method | wall s | " + " | ".join(parts) + " |",
            "|---|---|---:|" + "---:|" * len(parts),
        ]
        for r in broken:
            cells = [
                f"{p['wall_s']:.1f} ({100 * p['wall_fraction']:.0f}%)"
                for p in (r["breakdown"]["parts"][k] for k in parts)
            ]
            lines.append(
                f"| {r['family']} | {r['method']} | {r['wall_s']:.1f} | " + " | ".join(cells) + " |"
            )
        subs = list(SUBPARTS)
        lines += [
            "",
            "Inside the parts (seconds of wall time):",
            "",
            "| family | method | " + " | ".join(subs) + " |",
            "|---|---|" + "---:|" * len(subs),
        ]
        for r in broken:
            cells = [f"{r['breakdown']['subparts'][k]['wall_s']:.1f}" for k in subs]
            lines.append(f"| {r['family']} | {r['method']} | " + " | ".join(cells) + " |")
        lines += ["", "What measures each part (timing wrappers installed in the child):", ""]
        lines += [f"- **{k}**: {v}" for k, v in PARTS.items()]
        lines += [f"- *{k}*: {v}" for k, v in SUBPARTS.items()]
    if report["cpu"]:
        cores = sorted({c for s in report["cpu"] for c in s["machine_core_busy"]})
        lines += [
            "",
            "## CPU use while training (current tree)",
            "",
            "The child's CPU time by thread, and each core's busy share machine-wide while it "
            "trained (that includes every other process on the machine).",
            "",
            "| family | method | CPU util | threads | busiest thread CPU s | other threads CPU s "
            "| " + " | ".join(f"{c} busy" for c in cores) + " |",
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(cores),
        ]
        for s in report["cpu"]:
            busy = [_f(100 * s["machine_core_busy"].get(c, math.nan), ".0f", "%") for c in cores]
            lines.append(
                f"| {s['family']} | {s['method']} | {s['cpu_utilization']:.2f} | "
                f"{s['threads']} | {s['busiest_thread_cpu_s']:.1f} | "
                f"{s['other_threads_cpu_s']:.2f} | " + " | ".join(busy) + " |"
            )
        lines += ["", report["cpu_note"]]
    t = report["targets"]
    lines += [
        "",
        f"Targets (current tree): {t['passed']}/{t['checked']} PASS"
        + (f"; MISS: {', '.join(t['missed'])}" if t["missed"] else ""),
    ]
    return "\n".join(lines) + "\n"


def _mflop(r: dict[str, Any]) -> str:
    """MFLOP per env step, about three significant digits (DQN's is below 1)."""
    if "mflop_per_env_step" in r:
        value = r["mflop_per_env_step"]
        return f"{value:.{1 if value >= 10 else 2 if value >= 1 else 3}f}"
    return "FAILED" if "error" in (r.get("flops") or {}) else "-"


def flops_section(report: dict[str, Any]) -> list[str]:
    """The markdown section of the counting pass: what it counts, the table, the reading."""
    info = report["flops"]
    rows = [r for r in report["rows"] if r["ref"] == "current" and "flops" in r]
    lines = [
        "",
        "## Arithmetic per env step (current tree): overhead or inherent work?",
        "",
        info["note"],
        "",
        "MFLOP/env step: counted matrix-product MFLOP of training per env step. Arithmetic x "
        "DQN: that over `dr`'s (same family). Wall ms/MFLOP: the timed run's wall time per env "
        "step (the table above) over the MFLOP per env step, and x DQN its ratio to `dr`'s (= "
        "wall x DQN / arithmetic x DQN; below 1: more counted arithmetic per second of wall "
        "time than DQN). GFLOP/s: the same as a rate. FLOP shares: of the counted window's "
        "FLOPs, by the breakdown's parts (the timing wrappers, counting FLOPs in this pass).",
        "",
        "| family | method | algorithm | warm-up env steps | counted env steps | MFLOP/env step "
        "| arithmetic x DQN | wall x DQN | wall ms/MFLOP | wall/MFLOP x DQN | GFLOP/s "
        "| FLOP shares: collection / inner steps / updates |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        f = r["flops"]
        if "error" in f:
            lines.append(f"| {r['family']} | {r['method']} | | FAILED | | | | | | | | |")
            continue
        parts = f["breakdown"]["parts"]
        shares = " / ".join(
            _f(100 * parts[k].get("flops_fraction", math.nan), ".1f", "%")
            for k in ("collection", "inner_steps", "updates")
        )
        lines.append(
            f"| {r['family']} | {r['method']} | {f['algorithm']} | {f['warmup_env_steps']} | "
            f"{f['window'][0]}-{f['window'][1]} ({f['iterations']} "
            f"iteration{'s' if f['iterations'] != 1 else ''}) | {_mflop(r)} "
            f"| {_f(r.get('flops_x_dqn'), '.1f', 'x')} | {_f(r.get('x_dqn_wall'), '.2f', 'x')} "
            f"| {_f(r.get('wall_ms_per_mflop'), '.4f')} "
            f"| {_f(r.get('wall_per_mflop_x_dqn'), '.3f', 'x')} "
            f"| {_f(r.get('effective_gflop_per_s'), '.2f')} | {shares} |"
        )
    reading = flops_reading(report["rows"])
    if reading:
        lines += ["", reading]
    return lines


def flops_reading(rows: list[dict]) -> str:
    """One paragraph read off the numbers: each method's arithmetic and wall time x DQN, and
    which side of its arithmetic ratio its wall ratio falls."""
    rows = [
        r
        for r in rows
        if r["ref"] == "current"
        and r["method"] != REFERENCE
        and "flops_x_dqn" in r
        and "x_dqn_wall" in r
    ]
    if not rows:
        return ""
    families = list(dict.fromkeys(r["family"] for r in rows))
    sentences = []
    for r in rows:
        where = f" ({r['family']})" if len(families) > 1 else ""
        sentences.append(
            f"{r['method']}{where} does {r['flops_x_dqn']:.1f}x DQN's arithmetic per env step "
            f"in {r['x_dqn_wall']:.1f}x its wall time ({r['wall_per_mflop_x_dqn']:.3f}x DQN's "
            "wall per MFLOP)"
        )
    text = "Reading (DQN: `dr`): " + "; ".join(sentences) + "."
    below = [r["method"] for r in rows if r["x_dqn_wall"] < r["flops_x_dqn"]]
    above = [r["method"] for r in rows if r["x_dqn_wall"] >= r["flops_x_dqn"]]
    if below:
        text += (
            f" For {', '.join(below)} the wall-time ratio is below the arithmetic ratio: each "
            "counted FLOP costs less wall time than in DQN, so their wall time beyond DQN's "
            "is less than their extra matrix arithmetic alone would predict at DQN's rate."
        )
    if above:
        text += (
            f" For {', '.join(above)} the wall-time ratio is at or above the arithmetic ratio: "
            "time beyond what their counted arithmetic explains at DQN's rate (overhead not "
            "in matrix products: env stepping, small ops, Python)."
        )
    text += (
        " Less wall per MFLOP means more counted arithmetic per second of wall time, not that "
        "either method is bound by arithmetic: the breakdown above shows where the time goes."
    )
    return text


def cpu_note(summary: list[dict]) -> str:
    """What the measurements say about the cores: how many the training process kept busy,
    and so what the rest of the machine's busy share was."""
    if not summary:
        return ""
    util = max(s["cpu_utilization"] for s in summary)
    other = max(s["other_threads_cpu_s"] for s in summary)
    share = max(
        s["other_threads_cpu_s"] / max(s["busiest_thread_cpu_s"] + s["other_threads_cpu_s"], 1e-9)
        for s in summary
    )
    head = (
        f"Highest CPU utilization of a training process: {util:.2f} cores; its threads "
        f"besides the busiest used at most {other:.2f} s CPU in one run ({100 * share:.1f}% of "
        "that run's CPU)."
    )
    if util <= 1.05 and share < 0.02:
        return (
            f"{head} Training ran single-threaded (train() sets torch.set_num_threads to the "
            "config's `threads`, 1 unless overridden): one core runs the process, the second "
            "does no work for it; the busy share the second "
            "core shows above is other processes on the machine (and the kernel's I/O for the "
            "fsynced checkpoint and policy writes)."
        )
    return (
        f"{head} The process kept more than one core busy at times: its extra threads "
        "(torch's or PyBullet's) did part of the work."
    )


def targets(rows: list[dict]) -> dict[str, Any]:
    checked = [r for r in rows if r["ref"] == "current" and "target_met" in r]
    missed = [
        f"{r['family']}/{r['method']} {r['x_dqn_wall']:.2f}x (<= {r['target_x_dqn']:g}x)"
        for r in checked
        if not r["target_met"]
    ]
    return {
        "meta_x_dqn_max": TARGET_X_DQN,
        "maml_x_dqn_max": TARGET_X_DQN_MAML,
        "checked": len(checked),
        "passed": sum(r["target_met"] for r in checked),
        "missed": missed,
        "pass": all(r["target_met"] for r in checked) if checked else None,
    }


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in report["rows"]))
    refs = list(report["trees"])
    counts = [len({r["method"] for r in report["rows"] if r["family"] == f}) for f in families]
    width_in = min(20.0, max(6.0, (0.45 + 0.35 * len(refs)) * sum(counts) + 2.5 * len(families)))
    fig, axes = plt.subplots(
        1, len(families), figsize=(width_in, 4.8), width_ratios=[c + 1 for c in counts]
    )
    axes = [axes] if len(families) == 1 else list(axes)
    width = 0.8 / len(refs)
    colors = ["tab:blue", "tab:gray", "tab:orange"]
    for ax, family in zip(axes, families, strict=True):
        methods = list(dict.fromkeys(r["method"] for r in report["rows"] if r["family"] == family))
        for j, ref in enumerate(refs):
            values = []
            for m in methods:
                r = next(
                    (
                        x
                        for x in report["rows"]
                        if (x["family"], x["method"], x["ref"]) == (family, m, ref)
                    ),
                    {},
                )
                values.append(r.get("wall_s_per_10k", math.nan))
            xs = [i + (j - (len(refs) - 1) / 2) * width for i in range(len(methods))]
            bars = ax.bar(xs, values, width, label=ref, color=colors[j % len(colors)])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        dqn = next(
            (
                r.get("wall_s_per_10k")
                for r in report["rows"]
                if (r["family"], r["method"], r["ref"]) == (family, REFERENCE, "current")
            ),
            None,
        )
        phys = next(
            (
                r.get("wall_s_per_10k")
                for r in report["physics"]
                if r["family"] == family and r["ref"] == "current"
            ),
            None,
        )
        of = " (current)" if len(refs) > 1 else ""
        if phys:
            ax.axhline(
                phys, color="black", ls=":", lw=1, label=f"physics bound (random actions){of}"
            )
        if dqn:
            ax.axhline(dqn, color="tab:green", ls="-", lw=1, label=f"DQN (dr){of}")
            ax.axhline(
                TARGET_X_DQN * dqn,
                color="tab:red",
                ls="--",
                lw=1,
                label=f"target: {TARGET_X_DQN:g}x DQN",
            )
            ax.axhline(
                TARGET_X_DQN_MAML * dqn,
                color="tab:red",
                ls=":",
                lw=1,
                label=f"MAML target: {TARGET_X_DQN_MAML:g}x DQN",
            )
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_yscale("log")
        ax.set(
            xlabel=f"algorithm ({family} config)",
            ylabel="wall-clock seconds per 10k env steps (log)",
            title=f"{family}",
        )
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Training throughput at the shipped configs ({report['steps']:,} env steps each)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def counted_ops() -> list[str]:
    """The ops FlopCounterMode has FLOP formulas for (this torch)."""
    from torch.utils.flop_counter import flop_registry

    return sorted(str(op) for op in flop_registry)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="env steps per run")
    parser.add_argument(
        "--physics-steps",
        type=int,
        help="random-action env steps for the physics bound (default: --steps)",
    )
    parser.add_argument(
        "--methods",
        help="comma list of config suffixes, e.g. dr,cavia,maml (default: every shipped "
        "config of the families); dr is always measured, every ratio divides by it",
    )
    parser.add_argument(
        "--families", default=",".join(DEFAULT_FAMILIES), help="comma list of config prefixes"
    )
    parser.add_argument(
        "--baseline-ref", help="also measure this git commit, side by side (temporary worktree)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds one measurement may take"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run of the current tree (not the baseline's), "
        "e.g. --set threads=2",
    )
    parser.add_argument(
        "--no-flops",
        action="store_true",
        help="skip the FLOP counting pass (quicker; the report then has no arithmetic columns)",
    )
    parser.add_argument(
        "--flops-steps",
        type=int,
        default=DEFAULT_FLOPS_STEPS,
        help="env steps the FLOP counting pass counts past each run's warm-up (whole "
        f"iterations, at least one; default {DEFAULT_FLOPS_STEPS})",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.flops_steps < 1:
        parser.error("--flops-steps must be >= 1")
    physics_steps = args.physics_steps or args.steps
    methods = args.methods.split(",") if args.methods else None
    families = [f for f in args.families.split(",") if f]
    pairs = plan(families, methods)
    gradient = gradient_algorithms()

    t0 = time.perf_counter()
    work_root = Path(tempfile.mkdtemp(prefix="robometa-train-throughput-"))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(terminate_as_interrupt())
            trees = [current_tree()]
            if args.baseline_ref:
                trees.append(stack.enter_context(baseline_tree(args.baseline_ref)))
                print(
                    f"baseline {args.baseline_ref} = {trees[1].commit[:12]} in {trees[1].root}",
                    file=sys.stderr,
                )
            physics, rows = measure(
                trees, pairs, args.steps, physics_steps, args.timeout, work_root, args.set
            )
            flops = None
            if not args.no_flops:  # after every timed run: their times stay clean
                flops = measure_flops(
                    trees[0], pairs, args.steps, args.flops_steps, args.timeout, work_root, args.set
                )
            tree_info = {t.name: t.describe() for t in trees}
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    add_ratios(rows, gradient)
    if flops is not None:
        add_flop_ratios(rows, flops)
    summary = cpu_summary(rows)
    report = {
        "benchmark": "train_throughput",
        "command": " ".join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "steps": args.steps,
        "overrides": args.set,
        "physics_steps": physics_steps,
        "per_env_steps": PER,
        "reference": REFERENCE,
        "trees": tree_info,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads_env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
        "physics": physics,
        "rows": rows,
        "breakdown_parts": PARTS,
        "breakdown_subparts": SUBPARTS,
        "cpu": summary,
        "cpu_note": cpu_note(summary),
        "targets": targets(rows),
        "flops": None
        if flops is None
        else {
            "flops_steps": args.flops_steps,
            "counted_ops": counted_ops(),
            "note": FLOPS_NOTE.format(window=args.flops_steps),
        },
        "wall_s": time.perf_counter() - t0,
    }
    failed = [f"{r['ref']} {r['family']}/{r['method']}" for r in rows if "error" in r]
    failed += [
        f"{r['ref']} {r['family']}/{r['method']} flops"
        for r in rows
        if "error" in (r.get("flops") or {})
    ]
    failed += [f"{r['ref']} {r['family']} physics" for r in physics if "error" in r]
    report["failed"] = failed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    write(args.out, json.dumps(report, indent=1) + "\n")
    write(args.out.with_suffix(".md"), table)
    plot(report, args.out.with_suffix(".png"))
    print(table)
    print(
        f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')} in "
        f"{report['wall_s']:.0f} s"
    )
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        sys.exit(child(sys.argv[2]))
    sys.exit(main())
