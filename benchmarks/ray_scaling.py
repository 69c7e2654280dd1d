"""Meta-batch throughput of the gradient meta-learners on the local backend and on Ray workers.

For the shipped CartPole config of each method (``--methods``, default fomaml,maml,cavia),
side by side in one run on one machine: the learner built on the local backend (every task in
this process), then on Ray with 1 task worker, then with 2 (``--workers``); each learner is
built, runs one warm-up round (not timed: actor start-up, first-call costs; the bytes are
measured in it), then ``--rounds`` timed rounds of ``learner.iterate()`` (one round:
collection on ``meta.meta_batch`` tasks, then ``meta.updates_per_collect`` outer steps), and
is closed before the next one starts (the measurements never share the cores with each
other; other processes on the machine may: the load average before and after each is in the
report). Ray is started once for the whole benchmark (``ray.init(num_cpus=--num-cpus)``, or
the cluster at ``--address``); a Ray this process had already started is used as it is.

Measured, per (method, backend):

* **outer tasks/s**: meta_batch x outer steps / wall seconds of the outer steps alone (the
  learner's ``_outer_step`` calls inside the timed ``iterate()`` calls: task sampling, the
  broadcast of the meta-parameters, the workers' inner loops and outer gradients, the
  learner's sum, clipping and Adam step);
* **round tasks/s**: the same task count / wall seconds of the whole ``iterate()`` calls
  (collection on every task of the round included), and the collection's share (round -
  outer steps);
* **per-task cost**: wall per outer step x workers / meta_batch (seconds of one task's share
  of an outer step on one worker; local: workers = 1);
* **bytes moved** (Ray; pickled sizes, in the warm-up round): per outer step the broadcast
  (meta-parameters, target, inner rates: one object in Ray's store) and what each worker
  returns (the gradient share, as ``TaskPool.last_bytes`` counts it, and the whole reply:
  share + task losses + random-stream states); per round the collection's broadcast (the
  meta-parameters) and the replies (each task's new transitions, returns and stream state).

Reported: tasks/s per backend, the ratio of 2 workers to 1 (target >= 1.6x, PASS/MISS),
ray vs local, and a simple model of how throughput should scale with N machines (in the
markdown; its assumptions are stated there).

    python benchmarks/ray_scaling.py --out bench-results/ray_scaling.json
    python benchmarks/ray_scaling.py --out x.json --methods fomaml --rounds 5 --workers 1,2,4
    python benchmarks/ray_scaling.py --out x.json --address auto    # an existing cluster
    python benchmarks/ray_scaling.py --out x.json --quick           # one method, 2 rounds

Writes the JSON report and a markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ("fomaml", "maml", "cavia")
#: timed rounds per (method, backend): the whole default benchmark takes about 4 minutes on
#: the 2-core machine it was written on (3 methods x 3 backends)
DEFAULT_ROUNDS = 30
QUICK_ROUNDS = 2
DEFAULT_WORKERS = (1, 2)
TARGET_TWO_VS_ONE = 1.6
#: link bandwidths the scaling model is evaluated at (bytes/s): 1 and 10 Gbit/s
BANDWIDTHS = {"1 Gbit/s": 125e6, "10 Gbit/s": 1.25e9}
#: network round trip added per call between machines in the model (seconds)
RTT_S = 0.2e-3
MODEL_N = (1, 2, 4, 8, 16)
#: outer steps of a several-worker row rerun with its workers called one at a time
ALONE_STEPS = 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on this platform
        return []


def _size(value: Any) -> int:
    return len(pickle.dumps(value))


def _without_refs(value: Any, ray: Any) -> Any:
    """``value`` with Ray object refs replaced by None (their objects are counted apart)."""
    if isinstance(value, ray.ObjectRef):
        return None
    if isinstance(value, tuple | list):
        return type(value)(_without_refs(v, ray) for v in value)
    if isinstance(value, dict):
        return {k: _without_refs(v, ray) for k, v in value.items()}
    return value


class Traffic:
    """Counts, on a learner's Ray pool, its calls by method and (``sizes``) the pickled bytes
    of what they send and get back (instance attributes wrap the pool's ``_share`` and
    ``_run``; the library is not edited). Without ``sizes`` it only counts calls: nothing is
    pickled, so it can stay on while rounds are timed."""

    def __init__(self, pool: Any, ray: Any, sizes: bool = True) -> None:
        self.pool, self.ray, self.sizes = pool, ray, sizes
        self.calls: dict[str, dict[str, int]] = {}
        self.shared: list[int] = []
        #: per outer call, each worker's seconds on its share (``compute_s`` of its reply)
        self.shares: list[list[float]] = []
        self.mark = 0
        self._orig = {name: getattr(pool, name) for name in ("_share", "_run")}
        pool._share = self._share
        pool._run = self._run

    def _share(self, value: Any) -> Any:
        if self.sizes:
            self.shared.append(_size(value))
        return self._orig["_share"](value)

    def _run(self, calls: dict[int, tuple], again: Any = None) -> dict[int, Any]:
        shared, self.mark = self.mark, len(self.shared)  # what was shared since the last call
        results = self._orig["_run"](calls, again)
        method = next(iter(calls.values()))[0] if calls else "none"
        if method == "outer":
            self.shares.append([float(r["compute_s"]) for r in results.values()])
        entry = self.calls.setdefault(
            method, {"calls": 0, "broadcast": 0, "args": 0, "replies": 0, "workers": 0}
        )
        entry["calls"] += 1
        entry["workers"] += len(results)
        if self.sizes:
            entry["broadcast"] += sum(self.shared[shared:])
            entry["args"] += sum(_size(_without_refs(c[1:], self.ray)) for c in calls.values())
            entry["replies"] += sum(_size(r) for r in results.values())
        return results

    def total(self, method: str) -> dict[str, int]:
        return dict(self.calls.get(method, {"calls": 0, "broadcast": 0, "args": 0, "replies": 0}))

    def remove(self) -> None:
        for name in self._orig:
            delattr(self.pool, name)  # the class's methods again


def measure(
    method: str, overrides: list[str], backend: str, workers: int, rounds: int, ray: Any
) -> dict[str, Any]:
    """One (method, backend): build, one warm-up round, ``rounds`` timed rounds, close."""
    import torch

    import robometa.algorithms
    from robometa.config import load_config
    from robometa.distributed import Backend

    config = ROOT / "configs" / f"cartpole_{method}.yaml"
    cfg = load_config(config, ["logging.progress=false", *overrides])
    torch.set_num_threads(cfg.threads)
    cls = robometa.algorithms.load(cfg.algorithm)
    label = "local" if backend == "local" else f"ray-{workers}"
    row: dict[str, Any] = {
        "method": method,
        "config": str(config.relative_to(ROOT)),
        "backend": backend,
        "workers": workers,
        "label": label,
        "threads": cfg.threads,
        "meta_batch": cfg.meta.meta_batch,
        "task_pool": cfg.meta.task_pool,
        "updates_per_collect": cfg.meta.updates_per_collect,
        "collect_steps": cfg.meta.collect_steps,
        "loadavg_before": loadavg(),
    }
    t = time.perf_counter()
    if backend == "local":
        learner = cls(cfg)
    else:
        learner = cls(cfg, backend=Backend("ray", address=None, num_workers=workers))
    row["build_s"] = time.perf_counter() - t
    try:
        outer_walls: list[float] = []
        tasks: list[int] = []
        sample, step = learner._sample_slots, learner._outer_step

        def counted_sample() -> list:
            slots = sample()
            tasks.append(len(slots))
            return slots

        def timed_step() -> float:
            t0 = time.perf_counter()
            try:
                return step()
            finally:
                outer_walls.append(time.perf_counter() - t0)

        # instance attributes: iterate() calls self._outer_step(), self._sample_slots()
        learner._sample_slots = counted_sample
        learner._outer_step = timed_step

        traffic = None
        if learner.pool is not None:
            traffic = Traffic(learner.pool, ray)
            learner.pool.measure_bytes = True
        t = time.perf_counter()
        learner.iterate()  # warm-up: not timed
        row["warmup_s"] = time.perf_counter() - t
        if traffic is not None:
            learner.pool.measure_bytes = False
            traffic.remove()
            u = cfg.meta.updates_per_collect
            out, col = traffic.total("outer"), traffic.total("collect")
            steps = max(out["calls"], 1)
            last = dict(learner.pool.last_bytes)  # the warm-up round's last outer step
            row["bytes"] = {
                "outer_step": {  # per outer step
                    "broadcast": last.get("broadcast", 0),
                    "indices": last.get("indices", 0),
                    "shares": last.get("shares", 0),
                    "workers": last.get("workers", 0),
                    "replies": out["replies"] / steps,
                    "args": out["args"] / steps,
                    "total": (out["broadcast"] + out["args"] + out["replies"]) / steps,
                },
                "collection": {  # the whole warm-up round's collection
                    "calls": col["calls"],
                    "broadcast": col["broadcast"],
                    "replies": col["replies"],
                    "args": col["args"],
                    "total": col["broadcast"] + col["args"] + col["replies"],
                },
            }
            row["bytes"]["round"] = (
                row["bytes"]["collection"]["total"] + u * row["bytes"]["outer_step"]["total"]
            )
            traffic = Traffic(learner.pool, ray, sizes=False)  # counts calls while timed
        outer_walls.clear()
        tasks.clear()
        round_walls = []
        try:
            for r in range(rounds):
                t = time.perf_counter()
                learner.iterate()
                round_walls.append(time.perf_counter() - t)
                if (r + 1) % max(1, rounds // 4) == 0 or r + 1 == rounds:
                    log(f"  [{method} {label}] round {r + 1}/{rounds}: {round_walls[-1]:.2f} s")
        finally:
            if traffic is not None:
                traffic.remove()
        if traffic is not None:
            row["collect_calls_per_round"] = traffic.total("collect")["calls"] / rounds
            row["outer_calls_per_round"] = traffic.total("outer")["calls"] / rounds
            row["worker_share_s"] = _mean([max(x) for x in traffic.shares])
            if workers > 1:
                timed = len(tasks)
                together, alone = shares_at_once_and_in_turn(learner, step, ray)
                row["worker_share_together_s"], row["worker_share_alone_s"] = together, alone
                del tasks[timed:]  # its outer steps are not the timed rounds' tasks
    finally:
        learner.close()
    n_tasks = sum(tasks)
    outer_s, round_s = sum(outer_walls), sum(round_walls)
    steps = len(outer_walls)
    wall_per_step = outer_s / steps
    row.update(
        {
            "rounds": rounds,
            "outer_steps": steps,
            "tasks": n_tasks,
            "tasks_per_outer_step": n_tasks / steps,
            "outer_wall_s": outer_s,
            "round_wall_s": round_s,
            "collection_wall_s": round_s - outer_s,
            "collection_s_per_round": (round_s - outer_s) / rounds,
            "outer_tasks_per_s": n_tasks / outer_s,
            "round_tasks_per_s": n_tasks / round_s,
            "wall_per_outer_step_s": wall_per_step,
            "per_task_s": wall_per_step * workers / (n_tasks / steps),
            "round_s_min": min(round_walls),
            "round_s_median": sorted(round_walls)[len(round_walls) // 2],
            "round_s_max": max(round_walls),
            "round_walls_s": round_walls,
            "loadavg_after": loadavg(),
        }
    )
    return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def shares_at_once_and_in_turn(
    learner: Any, step: Any, ray: Any, steps: int = ALONE_STEPS
) -> tuple[float, float]:
    """The slowest worker's mean seconds on its share of an outer step over ``steps``
    back-to-back outer steps (``step``: the learner's own ``_outer_step``, no collection in
    between) with the workers called at once, then over as many with them called one after
    another (each waits for the one before): the same processes and share sizes under the
    same conditions, so the ratio of the two is what running together costs a worker on this
    machine's cores."""
    pool = learner.pool
    run = pool._run

    def in_turn(calls: dict[int, tuple], again: Any = None) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for w, call in calls.items():
            out.update(run({w: call}, again))
        return out

    means = []
    for turn in (False, True):
        if turn:
            pool._run = in_turn
        traffic = Traffic(pool, ray, sizes=False)
        try:
            for _ in range(steps):
                step()
        finally:
            traffic.remove()  # takes in_turn away with it: the class's method again
        means.append(_mean([max(x) for x in traffic.shares]))
    return means[0], means[1]


def ratios(results: dict[str, dict[str, dict]], workers: list[int]) -> dict[str, dict]:
    out = {}
    for method, by in results.items():
        r: dict[str, Any] = {}
        one = by.get("ray-1")
        for n in workers:
            row = by.get(f"ray-{n}")
            if row is None:
                continue
            if "local" in by:
                for kind in ("outer", "round"):
                    r[f"ray{n}_vs_local_{kind}"] = (
                        row[f"{kind}_tasks_per_s"] / by["local"][f"{kind}_tasks_per_s"]
                    )
            if one is not None and n != 1:
                for kind in ("outer", "round"):
                    r[f"ray{n}_vs_ray1_{kind}"] = (
                        row[f"{kind}_tasks_per_s"] / one[f"{kind}_tasks_per_s"]
                    )
        if "ray2_vs_ray1_outer" in r:
            r["target"] = TARGET_TWO_VS_ONE
            r["outer_verdict"] = "PASS" if r["ray2_vs_ray1_outer"] >= TARGET_TWO_VS_ONE else "MISS"
            r["round_verdict"] = "PASS" if r["ray2_vs_ray1_round"] >= TARGET_TWO_VS_ONE else "MISS"
        out[method] = r
    return out


def model(by: dict[str, dict]) -> dict[str, Any] | None:
    """The scaling model's inputs (from the local and 1-worker rows) and its predictions."""
    local, one = by.get("local"), by.get("ray-1")
    if local is None or one is None or "bytes" not in one:
        return None
    b = local["tasks_per_outer_step"]
    u = local["updates_per_collect"]
    c = local["wall_per_outer_step_s"] / b  # compute per task per outer step
    o = max(0.0, one["wall_per_outer_step_s"] - local["wall_per_outer_step_s"])
    k = local["collection_s_per_round"] / b  # collection per task per round
    # Ray's extra collection time per round: a fixed part (the broadcast, the learner
    # replaying the transitions into its copies) and a part per collect call, told apart by
    # a row that made more calls per round than the 1-worker row (else all of it per call).
    extra = max(0.0, one["collection_s_per_round"] - local["collection_s_per_round"])
    calls_one = one.get("collect_calls_per_round", 1.0)
    rays = [r for label, r in by.items() if label != "local" and "collect_calls_per_round" in r]
    more = [r for r in rays if r["collect_calls_per_round"] > calls_one + 0.5]
    if more:
        r = max(more, key=lambda r: r["collect_calls_per_round"])
        slope = (r["collection_s_per_round"] - one["collection_s_per_round"]) / (
            r["collect_calls_per_round"] - calls_one
        )
        o_call = min(max(0.0, slope), extra / max(calls_one, 1.0))
    else:
        o_call = extra / max(calls_one, 1.0)
    o_fixed = max(0.0, extra - o_call * calls_one)
    # Collection in turn (one worker after another, the run's stream passed along) when a
    # round made more collect calls than there are workers; else all at once.
    in_turn = any(r["collect_calls_per_round"] > r["workers"] + 1e-9 for r in rays)
    ob, cb = one["bytes"]["outer_step"], one["bytes"]["collection"]
    s_out = ob["broadcast"] + ob["replies"]  # per machine, per outer step
    s_idx = ob["args"]  # the batch indices of all B tasks, split among the workers
    s_col_bcast = cb["broadcast"]  # the meta-parameters: once per machine per round
    s_col_rest = cb["args"] + cb["replies"]  # all tasks' transitions: the same whatever N
    preds = []
    for name, bw in BANDWIDTHS.items():
        for n in MODEL_N:
            per = math.ceil(b / n)
            t_outer = c * per + o + RTT_S + (n * s_out + s_idx) / bw
            if in_turn:  # expected runs of consecutive tasks on one worker
                calls = 1 + (b - 1) * (1 - 1 / n)
                t_col = k * b + o_fixed + calls * (o_call + RTT_S)
            else:
                calls = min(n, b)
                t_col = k * per + o_fixed + o_call + RTT_S
            t_col += (n * s_col_bcast + s_col_rest) / bw
            preds.append(
                {
                    "bandwidth": name,
                    "machines": n,
                    "tasks_per_worker": per,
                    "collect_calls": calls,
                    "outer_step_s": t_outer,
                    "outer_tasks_per_s": b / t_outer,
                    "collection_s": t_col,
                    "round_s": t_col + u * t_outer,
                    "round_tasks_per_s": b * u / (t_col + u * t_outer),
                }
            )
    knee = c * b / (o + RTT_S) if o + RTT_S > 0 else math.inf
    return {
        "meta_batch": b,
        "updates_per_collect": u,
        "compute_per_task_s": c,
        "overhead_per_outer_step_s": o,
        "collection_per_task_s": k,
        "collection_overhead_fixed_s": o_fixed,
        "collection_overhead_per_call_s": o_call,
        "collection_in_turn": in_turn,
        "outer_bytes_per_worker": s_out,
        "outer_index_bytes": s_idx,
        "collection_broadcast_bytes": s_col_bcast,
        "collection_bytes_back": s_col_rest,
        "rtt_s": RTT_S,
        "overhead_equals_compute_at_n": knee,
        "predictions": preds,
    }


def _load(values: list[float]) -> str:
    return f"{values[0]:.2f}" if values else "?"


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Ray scaling: meta-batch throughput, local vs Ray workers",
        "",
        f"Machine: {m['cpu_count']} cores ({m['platform']}), Python {m['python']}, torch "
        f"{m['torch']}, Ray {m['ray']}; Ray {report['ray']['how']} "
        f"({report['ray']['cluster_cpus']:g} CPUs). Load average (1, 5, 15 min) before: "
        f"{report['loadavg_before']}, after: {report['loadavg_after']}. "
        f"{report['rounds']} timed rounds per row after 1 warm-up round; "
        f"{report['wall_s']:.0f} s in all. Command: `{report['command']}`"
        + (f"; overrides: `{' '.join(report['overrides'])}`" if report["overrides"] else ""),
        "",
        "Shipped CartPole configs; each row is one learner, built, warmed up (1 round, not "
        "timed) and timed alone, one after another. *outer tasks/s*: meta_batch x outer "
        "steps / wall seconds of the outer steps (broadcast, workers' inner loops and outer "
        "gradients, the learner's sum and Adam step); *round tasks/s*: the same tasks / "
        "wall seconds of whole `iterate()` calls (collection on every task of the round "
        "included); *collection*: round minus outer steps, per round; *per-task cost*: wall "
        "per outer step x workers / meta_batch. Bytes: pickled sizes, measured in the "
        "warm-up round; per outer step the broadcast (meta-parameters, target, inner rates: "
        "one object in Ray's store, read by every worker) + the gradient shares sent back "
        "(all workers); per round the collection's traffic (meta-parameter broadcast + every "
        "task's new transitions, returns and stream state sent back) + updates_per_collect "
        "outer steps (whole replies: shares, losses, stream states).",
        "",
        "| method | backend | outer tasks/s | round tasks/s | ms / outer step | per-task cost "
        "(ms) | collection (s / round; calls) | round s (min / median / max) | KB / outer step "
        "(broadcast + shares) | KB / round | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['label']} | error: {r['error']} |")
            continue
        if "bytes" in r:
            ob = r["bytes"]["outer_step"]
            step_kb = f"{_kb(ob['broadcast'])} + {_kb(ob['shares'])}"
            round_kb = _kb(r["bytes"]["round"])
        else:
            step_kb = round_kb = "0 (in process)"
        lines.append(
            f"| {r['method']} | {r['label']} | {r['outer_tasks_per_s']:.0f} | "
            f"{r['round_tasks_per_s']:.0f} | {1e3 * r['wall_per_outer_step_s']:.1f} | "
            f"{1e3 * r['per_task_s']:.2f} | {r['collection_s_per_round']:.3f}"
            + (f"; {r['collect_calls_per_round']:.1f}" if "collect_calls_per_round" in r else "")
            + " | "
            f"{r['round_s_min']:.2f} / {r['round_s_median']:.2f} / {r['round_s_max']:.2f} | "
            f"{step_kb} | {round_kb} | {_load(r['loadavg_before'])} -> "
            f"{_load(r['loadavg_after'])} |"
        )
    lines += [
        "",
        "Where a Ray outer step's time goes: the slowest worker's seconds on its share of an "
        "outer step (from the call's start on the worker to its reply: batches, inner loops, "
        "outer gradient), averaged over the timed rounds' outer steps; the rest of the step is "
        "the learner's (drawing the batch indices, the broadcast, summing the shares, Adam) "
        "and Ray's (submitting, waking the workers, returning the replies). For several "
        f"workers, {ALONE_STEPS} more back-to-back outer steps with the workers called at once, "
        f"then {ALONE_STEPS} with them called one at a time: what running together costs.",
        "",
        "| method | backend | ms / outer step | slowest worker's share (ms) | rest of the step "
        f"(ms) | {ALONE_STEPS} steps at once / one at a time (ms) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r or "worker_share_s" not in r:
            continue
        step_ms, share_ms = 1e3 * r["wall_per_outer_step_s"], 1e3 * r["worker_share_s"]
        together, alone = r.get("worker_share_together_s"), r.get("worker_share_alone_s")
        paired = (
            f"{1e3 * together:.1f} / {1e3 * alone:.1f} | {together / alone:.2f}x"
            if together is not None and alone and math.isfinite(together / alone)
            else "- | -"
        )
        lines.append(
            f"| {r['method']} | {r['label']} | {step_ms:.1f} | {share_ms:.1f} | "
            f"{step_ms - share_ms:.1f} | {paired} |"
        )
    lines += [
        "",
        f"Ratios (target: 2 workers >= {TARGET_TWO_VS_ONE:g}x 1 worker):",
        "",
        "| method | 2 vs 1 worker, outer | 2 vs 1 worker, round | ray-1 vs local, outer | "
        "ray-1 vs local, round | ray-2 vs local, outer | ray-2 vs local, round |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(r: dict, key: str, verdict: str | None = None) -> str:
        if key not in r:
            return "-"
        text = f"{r[key]:.2f}x"
        return f"{text} {r[verdict]}" if verdict and verdict in r else text

    for method, r in report["ratios"].items():
        lines.append(
            f"| {method} | {fmt(r, 'ray2_vs_ray1_outer', 'outer_verdict')} | "
            f"{fmt(r, 'ray2_vs_ray1_round', 'round_verdict')} | "
            f"{fmt(r, 'ray1_vs_local_outer')} | {fmt(r, 'ray1_vs_local_round')} | "
            f"{fmt(r, 'ray2_vs_local_outer')} | {fmt(r, 'ray2_vs_local_round')} |"
        )
    lines += ["", report["reading"], "", "## How it should scale with N machines", ""]
    lines.append(MODEL_TEXT.format(rtt=1e3 * RTT_S))
    for method, md in report["model"].items():
        if md is None:
            continue
        two = next(
            p for p in md["predictions"] if p["machines"] == 2 and p["bandwidth"] == "1 Gbit/s"
        )
        measured = report["results"].get(method, {}).get("ray-2")
        lines += [
            "",
            f"**{method}**: c = {1e3 * md['compute_per_task_s']:.2f} ms per task per outer "
            f"step, o = {1e3 * md['overhead_per_outer_step_s']:.1f} ms per outer step, "
            f"S = {_kb(md['outer_bytes_per_worker'])} KB per machine + "
            f"{_kb(md['outer_index_bytes'])} KB of batch indices per outer step; "
            f"collection k = {1e3 * md['collection_per_task_s']:.1f} ms per task per round "
            + ("(in turn" if md["collection_in_turn"] else "(all workers at once")
            + f", o_fixed = {1e3 * md['collection_overhead_fixed_s']:.1f} ms per round + "
            f"o_call = {1e3 * md['collection_overhead_per_call_s']:.1f} ms per call), "
            f"{_kb(md['collection_bytes_back'])} KB of transitions back per round; overhead "
            f"equals compute at N = c B / (o + RTT) = "
            f"{md['overhead_equals_compute_at_n']:.2f}. The model at N = 2 (1 Gbit/s): "
            f"{two['outer_tasks_per_s']:.0f} outer / {two['round_tasks_per_s']:.0f} round "
            "tasks/s"
            + (
                "; measured here with 2 workers on one machine: "
                f"{measured['outer_tasks_per_s']:.0f} / {measured['round_tasks_per_s']:.0f}."
                if measured
                else "."
            ),
            "",
            "| machines N | tasks per worker | outer tasks/s (1 Gbit/s) | round tasks/s (1 "
            "Gbit/s) | outer tasks/s (10 Gbit/s) | round tasks/s (10 Gbit/s) |",
            "|---|---|---|---|---|---|",
        ]
        preds = md["predictions"]
        for n in MODEL_N:
            a = next(p for p in preds if p["machines"] == n and p["bandwidth"] == "1 Gbit/s")
            z = next(p for p in preds if p["machines"] == n and p["bandwidth"] == "10 Gbit/s")
            lines.append(
                f"| {n} | {a['tasks_per_worker']} | {a['outer_tasks_per_s']:.0f} | "
                f"{a['round_tasks_per_s']:.0f} | {z['outer_tasks_per_s']:.0f} | "
                f"{z['round_tasks_per_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


MODEL_TEXT = (
    "A simple model, one task worker per machine, the learner on the head node: per outer "
    "step T(N) = c x ceil(B/N) + o + RTT + (N x S + indices) / bandwidth, where B = "
    "meta_batch, c = compute per task (the local backend's wall per outer step / B: one batched product over "
    "the tasks, the learner's Adam step included), o = the per-call overhead of Ray (the "
    "1-worker wall per outer step minus the local one: submitting the call, putting and "
    "reading the broadcast, copying the meta-parameters in, returning the share, summing), "
    "RTT = {rtt:.1f} ms of network round trip per call, and the bytes crossing the learner's "
    "link: N x S (S = the broadcast + one worker's reply: Ray copies the broadcast to each "
    "node, a node's workers share it) + the batch indices the learner draws for all B tasks "
    "(split among the workers). A round adds the collection: "
    "k x B per round (k = the local backend's collection per task) when the workers collect "
    "in turn (one after another, the run's random stream passed along, as the counted "
    "calls show: more collect calls per round than workers), plus Ray's extra time per "
    "round (the 1-worker collection minus the local one), split into o_fixed per round (the "
    "broadcast, the learner replaying the transitions into its copies) and o_call per call "
    "(from the 2-worker row's extra calls), o_call + RTT per run of consecutive tasks on one "
    "worker (1 + (B-1)(1-1/N) runs expected); or, when they collect at once, k x ceil(B/N) + "
    "o_fixed + o_call + RTT; plus (N x meta-parameters + all transitions back) / bandwidth. "
    "Assumptions: compute splits evenly by tasks and a worker's "
    "batched product over fewer tasks costs proportionally less (on a CPU it costs somewhat "
    "more per task: smaller products), transfers do not overlap compute (conservative), the "
    "overhead o is what one machine measured (a cluster's RPC may cost more), and the "
    "machines are otherwise idle. It stops scaling where ceil(B/N) stops falling: N >= B "
    "gives each worker one task and further machines nothing to do (only more transfer and "
    "more shares to sum), and well before that where c x B/N falls to the overhead o + RTT "
    "(the N quoted per method below): from there the overhead is at least half of an outer "
    "step, and doubling N gains at most 1.33x. The bandwidth term grows with N (each machine "
    "adds S, about 100 KB here, to the learner's link per outer step: 0.8 ms at 1 Gbit/s), "
    "which is why at 1 Gbit/s the model's throughput falls again past a few machines; at 10 "
    "Gbit/s it costs a tenth of that. Measured on one machine, 2 workers also share its "
    "cores with the learner process, Ray's own processes and whatever else runs (the "
    "at-once / one-at-a-time columns above measure what that costs them)."
)


def reading(report: dict[str, Any]) -> str:
    """A plain reading of the ratios."""
    parts = []
    for method, r in report["ratios"].items():
        if "ray2_vs_ray1_outer" not in r:
            continue
        parts.append(
            f"{method}: 2 workers give {r['ray2_vs_ray1_outer']:.2f}x the outer-step "
            f"throughput of 1 ({r['outer_verdict']} against {TARGET_TWO_VS_ONE:g}x) and "
            f"{r['ray2_vs_ray1_round']:.2f}x per whole round ({r['round_verdict']})"
            + (
                f"; 1 worker runs at {r['ray1_vs_local_outer']:.2f}x the local backend's "
                "outer-step throughput"
                if "ray1_vs_local_outer" in r
                else ""
            )
        )
    if not parts:
        return "No 2-vs-1-worker ratio was measured."
    slowed = [
        f"{r['method']} {1e3 * r['worker_share_together_s']:.1f} ms at once against "
        f"{1e3 * r['worker_share_alone_s']:.1f} one at a time"
        for r in report["rows"]
        if r.get("workers") == 2
        and math.isfinite(r.get("worker_share_together_s", math.nan))
        and math.isfinite(r.get("worker_share_alone_s", math.nan))
    ]
    if slowed:
        parts.append(
            f"over {ALONE_STEPS} back-to-back outer steps the slower of 2 workers took "
            + ", ".join(slowed)
            + " per share: what running together on these cores costs a worker"
        )
    cores = report["machine"]["cpu_count"]
    return (
        "; ".join(parts)
        + f". On this {cores}-core machine the learner process, Ray's processes and the "
        "workers share the cores (and other processes may run: see the load average); "
        "the table above separates the workers' shares from the rest of an outer step, "
        "and the model below estimates what separate machines would give."
    )


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="JSON file to write (and .md beside)")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma list of gradient meta-learners (configs/cartpole_<method>.yaml)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help=f"timed rounds per (method, backend) (default {DEFAULT_ROUNDS}; --quick: "
        f"{QUICK_ROUNDS})",
    )
    p.add_argument(
        "--workers",
        default=",".join(map(str, DEFAULT_WORKERS)),
        help="comma list of Ray worker counts (default 1,2; the ratio is 2 vs 1)",
    )
    p.add_argument(
        "--address",
        help="an existing Ray cluster (auto or HOST:PORT); default: start Ray here",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=2,
        help="CPUs of the Ray started here (default 2; at least max workers x threads)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set meta.updates_per_collect=5",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"first method only, {QUICK_ROUNDS} rounds (tests)"
    )
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if args.quick:
        methods = methods[:1]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    if rounds < 1:
        p.error("--rounds must be >= 1")
    try:
        workers = sorted({int(w) for w in args.workers.split(",") if w})
    except ValueError:
        p.error(f"--workers {args.workers!r} is not a comma list of integers")
    if not workers or min(workers) < 1:
        p.error("--workers must list counts >= 1")
    for m in methods:
        if not (ROOT / "configs" / f"cartpole_{m}.yaml").exists():
            p.error(f"no configs/cartpole_{m}.yaml for method {m!r}")

    try:
        import ray
    except ImportError:
        raise SystemExit('ray_scaling needs Ray: pip install -e ".[ray]"') from None
    import torch

    t0 = time.perf_counter()
    before = loadavg()
    started = False
    if ray.is_initialized():
        how = "already running in this process"
    elif args.address:
        ray.init(address=args.address, logging_level="WARNING")
        started, how = True, f"cluster at {args.address}"
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
        started, how = True, f"started here (ray.init(num_cpus={args.num_cpus}))"
    rows: list[dict[str, Any]] = []
    try:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        log(
            f"ray_scaling: {os.cpu_count()} cores, Ray {how} with {cpus:g} CPUs; methods "
            f"{','.join(methods)}; backends local + ray x {workers}; {rounds} timed rounds "
            f"each after 1 warm-up; load average {before}"
        )
        plan = [("local", 1)] + [("ray", n) for n in workers]
        for method in methods:
            for backend, n in plan:
                label = "local" if backend == "local" else f"ray-{n}"
                log(f"[{method} {label}] building, 1 warm-up round, {rounds} timed rounds")
                try:
                    row = measure(method, args.set, backend, n, rounds, ray)
                except Exception as err:  # reported, the others still run
                    first = (str(err).strip().splitlines() or [""])[0]
                    row = {
                        "method": method,
                        "backend": backend,
                        "workers": n,
                        "label": label,
                        "error": f"{type(err).__name__}: {first:.300}",
                    }
                    log(f"[{method} {label}] FAILED: {row['error']}")
                else:
                    log(
                        f"[{method} {label}] outer {row['outer_tasks_per_s']:.0f} tasks/s, "
                        f"round {row['round_tasks_per_s']:.0f} tasks/s (build "
                        f"{row['build_s']:.1f} s, warm-up {row['warmup_s']:.1f} s, load "
                        f"{row['loadavg_after']})"
                    )
                rows.append(row)
    finally:
        if started:
            ray.shutdown()
    after = loadavg()
    results: dict[str, dict[str, dict]] = {}
    for r in rows:
        if "error" not in r:
            results.setdefault(r["method"], {})[r["label"]] = r
    report: dict[str, Any] = {
        "benchmark": "ray_scaling",
        "command": " ".join(["python", "benchmarks/ray_scaling.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "threads_env": {
                k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
            },
        },
        "ray": {"how": how, "address": args.address, "cluster_cpus": cpus},
        "methods": methods,
        "workers": workers,
        "rounds": rounds,
        "warmup_rounds": 1,
        "quick": args.quick,
        "overrides": args.set,
        "loadavg_before": before,
        "loadavg_after": after,
        "definitions": {
            "outer_tasks_per_s": "meta_batch x outer steps / wall seconds of the outer steps "
            "(the learner's _outer_step calls inside the timed iterate() calls)",
            "round_tasks_per_s": "meta_batch x outer steps / wall seconds of the whole timed "
            "iterate() calls (collection included)",
            "per_task_s": "wall per outer step x workers / meta_batch",
            "bytes": "pickled sizes in the warm-up round; outer_step: broadcast (meta-params, "
            "target, inner lrs) + shares (gradients; TaskPool.last_bytes) and whole replies "
            "(shares + losses + stream states) and call arguments; collection: meta-param "
            "broadcast + replies (new transitions, returns, stream states); round: collection "
            "+ updates_per_collect x outer_step totals",
        },
        "target_two_vs_one": TARGET_TWO_VS_ONE,
        "rows": rows,
        "results": results,
        "ratios": ratios(results, workers),
        "model": {m: model(by) for m, by in results.items()},
        "failed": [f"{r['method']} {r['label']}" for r in rows if "error" in r],
        "wall_s": time.perf_counter() - t0,
    }
    report["reading"] = reading(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    write(args.out, json.dumps(report, indent=1) + "\n")
    write(args.out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['wall_s']:.0f} s")
    if report["failed"]:
        print(f"FAILED: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
