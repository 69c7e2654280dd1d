"""The headline comparison: meta-learners vs domain randomization on held-out robots.

For each robot family, trains every method that has a config ``configs/<family>_<method>.yaml``
for every training seed (``--jobs`` runs at a time, each in its own process with its output in
``<run>.log``, the costliest first; finished runs are reused), evaluates them with the
adaptation harness (``robometa eval``) on held-out in-distribution (``id``) and
out-of-distribution (``ood``) tasks, pooling (task, seed) pairs, and checks the claim: the best
meta-learner reaches a normalized score >= 0.9 after <= 5 steps on <= 200 transitions, domain
randomization without adaptation stays below 0.6, and DR + fine-tuning stays below the best
meta-learner.

    python benchmarks/adaptation.py --out bench-results/adaptation.json

Each row of the table is reproduced by ``robometa train configs/<family>_<method>.yaml --seed S``
for the seeds, then ``robometa eval`` over the run directories.

``--backend ray`` (``pip install "robometa[ray]"``) runs each training run and each family's
evaluation as a Ray task instead, all submitted at once: a training run asks for its config's
``threads`` CPUs, an evaluation for one. Without ``--address`` it starts a local Ray with
``--jobs`` CPUs (stopped at the end); ``--address auto`` or ``--address HOST:PORT`` joins a
running cluster, whose nodes must see this checkout and ``--runs-dir`` at the same paths (a
shared filesystem). The same runs are reused, each job writes the same log, and the JSON is the
same. A job whose worker process dies (killed for memory, a crash in native code, a lost node)
is re-run up to ``RAY_MAX_RETRIES`` times, a training run resuming from its last checkpoint; an
exception raised by a job is not retried.

    python benchmarks/adaptation.py --out bench-results/adaptation.json --backend ray
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

from robometa import algorithms
from robometa.distributed import CONNECT_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
#: the claim's baseline: DQN over the training robots (how evaluation labels the dqn runs)
DR = "dr"
#: methods the default sweep runs first (the headline comparison), then every other one
HEADLINE = (DR, "oracle", "cavia")
TARGET_META = 0.9
TARGET_DR_BELOW = 0.6
# The pool starts the costliest runs first, and the plans state their cost from these.
COST = {  # seconds per run on CartPole at the shipped budgets (measured, one core each)
    "maml": 215,
    "metasgd": 205,
    "fomaml": 150,
    "anil": 148,
    "reptile": 125,
    "cavia": 105,
    "oracle": 72,
    "dr": 30,
    "context": 18,
    # measured while other runs shared the cores (2026-12, the runs of the support table)
    "recurrent": 115,
    "taskrate": 55,
    "cavia-encoder": 55,
    "rma": 50,
    "hyper": 15,
    "dr-history": 35,
    "oracle-history": 90,
}
#: a family's wall time per env step relative to CartPole's, for the (family, method) pairs
#: :data:`MEASURED_S_PER_KSTEP` lacks (DQN, ``*_dr.yaml`` 20k steps each, one
#: after another on this 2-core machine with two other runs busy: CartPole 35.6 s, Reacher
#: 36.9 s, ArmReach 62.1 s; DiffDrive: its protocol DR runs, 2.15 s per 1k steps against
#: CartPole's 0.75)
FAMILY_COST = {"cartpole": 1.0, "diffdrive": 2.9, "reacher": 1.05, "armreach": 1.75}
#: measured seconds per 1,000 env steps of (family, method) at its shipped config, two runs
#: sharing the two cores (the ``[trained] RUN in N s`` lines of benchmarks/protocol.py, or
#: a smoke run where said); they override the scaled CartPole cost
MEASURED_S_PER_KSTEP: dict[tuple[str, str], float] = {
    # the DiffDrive protocol's 5 seeds each (median run; 2026-12)
    ("diffdrive", "dr"): 2.15,
    ("diffdrive", "dr-history"): 2.65,
    ("diffdrive", "oracle"): 1.87,
    ("diffdrive", "cavia"): 13.7,
    ("diffdrive", "context"): 3.5,
    ("diffdrive", "hyper"): 3.6,
    ("diffdrive", "recurrent"): 12.9,
    # the Reacher protocol's 5 seeds each (median run of those trained start to end; 2026-12)
    ("reacher", "dr"): 0.93,
    ("reacher", "dr-history"): 1.37,
    ("reacher", "oracle"): 0.99,
    ("reacher", "oracle-history"): 1.50,
    ("reacher", "cavia"): 9.3,
    ("reacher", "context"): 2.1,
    ("reacher", "recurrent"): 15.8,  # its first 49k of 200k steps, two seeds at once
    ("armreach", "cavia"): 20.3,  # 6k-step smoke run beside two protocol runs
}
#: --backend ray: how many times a job whose worker process died is run again
RAY_MAX_RETRIES = 2


def method_spec(method: str) -> algorithms.AlgorithmSpec | None:
    """The registered algorithm a method name means: a ``configs/<family>_<method>.yaml``
    suffix and a row label are the algorithm's name or its label when trained on the train
    tasks (``dr``: ``dqn``); None for a name no algorithm has."""
    for name in algorithms.names():
        spec = algorithms.get(name)
        if method in (name, spec.label("train")):
            return spec
    return None


def default_methods() -> tuple[str, ...]:
    """Every registered algorithm as it trains over the train tasks (``dr`` for ``dqn``), the
    headline methods first."""
    labels = [algorithms.get(name).label("train") for name in algorithms.builtin_names()]
    return tuple(dict.fromkeys([*(m for m in HEADLINE if m in labels), *labels]))


def is_meta_learner(method: str) -> bool:
    """A method that adapts (a row label; ``dr+finetune`` is DR fine-tuned, not meta-learned)."""
    spec = method_spec(method)
    return spec is not None and spec.adapts


def is_oracle(method: str) -> bool:
    """The privileged method the normalized score divides by."""
    spec = method_spec(method)
    return spec is not None and spec.privileged


DEFAULT_METHODS = default_methods()


@functools.cache
def _cartpole_budget(method: str) -> int:
    """The env-step budget :data:`COST` was measured at: the shipped CartPole config's."""
    from robometa.config import load_config

    config = ROOT / "configs" / f"cartpole_{method}.yaml"
    return load_config(config).dqn.total_steps if config.exists() else 40_000


def run_cost(family: str, method: str, budget: int) -> float:
    """Estimated seconds of one training run of ``budget`` env steps: measured per env step
    where :data:`MEASURED_S_PER_KSTEP` has the pair, else CartPole's :data:`COST` per env step
    times the family's :data:`FAMILY_COST` (a family whose configs train five times longer
    costs five times more)."""
    per_kstep = MEASURED_S_PER_KSTEP.get((family, method))
    if per_kstep is None:
        per_step = COST.get(method, 100.0) / _cartpole_budget(method)
        per_kstep = 1000 * per_step * FAMILY_COST.get(family, 1.0)
    return per_kstep * budget / 1000


def plan_runs(
    families: list[str],
    methods: list[str],
    seeds: list[int],
    steps: int | None,
    runs_dir: Path,
    oracle_steps: int | None = None,
) -> tuple[dict[str, list[Path]], list[tuple]]:
    """Each family's run directories, and the training jobs still to do.

    A run directory is reused only if it finished with exactly the config this call would
    train (config file, budget and seed); one that stopped early with that config resumes
    from its checkpoint; anything else there is removed and trained again.
    """
    import shutil

    from robometa.config import load_config
    from robometa.train import run_status

    runs: dict[str, list[Path]] = {}
    todo = []
    for family in families:
        runs[family] = []
        for method in dict.fromkeys(methods):
            config = ROOT / "configs" / f"{family}_{method}.yaml"
            if not config.exists():
                print(f"[skip] no config {config.relative_to(ROOT)}", flush=True)
                continue
            for seed in dict.fromkeys(seeds):
                run = runs_dir / family / f"{method}-seed{seed}"
                runs[family].append(run)
                budget = oracle_steps if is_oracle(method) else steps
                cfg = load_config(config, steps=budget, seed=seed)
                status = run_status(run, cfg)
                if status == "finished":
                    print(f"[reuse] {run}", flush=True)
                    continue
                if status == "stale":
                    print(f"[stale] {run}: another config or unfinished; training anew", flush=True)
                    shutil.rmtree(run)
                elif status == "resumable":
                    print(f"[resume] {run}", flush=True)
                run.parent.mkdir(parents=True, exist_ok=True)
                cost = run_cost(family, method, cfg.dqn.total_steps)
                todo.append((cost, str(config), budget, seed, run, status == "resumable"))
    todo.sort(key=lambda job: -job[0])  # the costliest first: the pool drains evenly
    return runs, todo


def _pool(jobs: int):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))


def train_runs(todo: list[tuple], jobs: int) -> None:
    """Train the planned runs ``jobs`` at a time, each in a worker process with its output in
    ``<run>.log``; this process shows one progress bar over the runs."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    from robometa.train import train_to_log

    if not todo:
        return
    bar = tqdm(total=len(todo), unit="run", desc="train", mininterval=0)
    pool = _pool(jobs)
    futures = {
        pool.submit(train_to_log, c, str(run), f"{run}.log", b, seed, resume): run
        for _, c, b, seed, run, resume in todo
    }
    try:
        for future in as_completed(futures):
            run = futures[future]
            try:
                seconds = future.result()
            except BrokenProcessPool as err:
                running = [str(r) for f, r in futures.items() if not f.done() or f is future]
                raise RuntimeError(
                    "a training worker process died (killed for memory, or a crash in native "
                    f"code); runs not finished: {', '.join(running)}; see their .log files"
                ) from err
            except Exception as err:
                raise RuntimeError(f"training {run} failed; see {run}.log") from err
            bar.write(f"[trained] {run} in {seconds:.0f} s")
            bar.update()
    except BaseException:
        # Stop now rather than after the other runs in flight: they keep their last
        # checkpoint and resume on the next call.
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        bar.close()
    pool.shutdown()


def evaluate_families(
    runs: dict[str, list[Path]],
    runs_dir: Path,
    n_tasks: int,
    episodes: int,
    jobs: int,
    supports: list[int] | None = None,
    tasks: str = "test",
    by_motor_sign: bool = False,
) -> dict[str, dict]:
    """``robometa eval`` of each family's runs on its held-out tasks, families side by side
    (output in ``<runs_dir>/<family>/eval.log``)."""
    from concurrent.futures import as_completed

    from robometa.evaluate import run_evaluation
    from robometa.train import run_logged

    results = {}
    with _pool(jobs) as pool:
        futures = {}
        for family, family_runs, out_dir, log, kwargs in _eval_jobs(
            runs, runs_dir, n_tasks, episodes, supports, tasks, by_motor_sign
        ):
            future = pool.submit(run_logged, log, run_evaluation, family_runs, **kwargs)
            futures[future] = (family, out_dir, log)
        for future in as_completed(futures):
            family, out_dir, log = futures[future]
            try:
                results[family] = future.result() | {"report_dir": str(out_dir)}
            except Exception as err:
                pool.shutdown(cancel_futures=True)
                raise RuntimeError(f"evaluating {family} failed; see {log}") from err
    return {f: results[f] for f in runs if f in results}


def _eval_jobs(
    runs: dict[str, list[Path]],
    runs_dir: Path,
    n_tasks: int,
    episodes: int,
    supports: list[int] | None = None,
    tasks: str = "test",
    by_motor_sign: bool = False,
):
    """Each family's evaluation, announced: (family, its runs, report dir, log, the keyword
    arguments of :func:`robometa.evaluate.run_evaluation`; ``supports``: its support
    sizes, ``robometa eval --support``; ``tasks``: ``robometa eval --tasks``, a task file or
    directory named for every family; ``by_motor_sign``: ``robometa eval --by-motor-sign``)."""
    for family, family_runs in runs.items():
        if not family_runs:
            continue
        out_dir = runs_dir / family / "eval"
        log = runs_dir / family / "eval.log"
        print(f"[eval] {family}: {len(family_runs)} runs (progress in {log})", flush=True)
        kwargs = {"tasks": tasks, "n_tasks": n_tasks, "episodes": episodes, "out": out_dir}
        if supports:
            kwargs["supports"] = list(supports)
        if by_motor_sign:
            kwargs["by_motor_sign"] = True
        yield family, family_runs, out_dir, log, kwargs


def connect_ray(address: str | None, jobs: int):
    """``ray``, connected, and whether this call connected it (the caller then ends with
    ``ray.shutdown()``; a Ray this process already initialized is used as it is).

    ``address`` None starts a local Ray with ``jobs`` CPUs; ``auto`` or ``HOST:PORT`` joins a
    running cluster (:func:`robometa.distributed.connect`: a ``HOST:PORT`` must accept a TCP
    connection within a few seconds first). No Ray, an address that does not parse, and a
    cluster not reached each end the program with one line.
    """
    from robometa.distributed import BackendError, connect, import_ray

    try:
        ray = import_ray()
        return ray, connect(ray, address, jobs)
    except BackendError as err:
        raise SystemExit(str(err)) from None


def _ray_tasks():
    """The two jobs as plain functions for ``ray.remote``. They are defined in here so that
    Ray ships them by value: a worker needs robometa, not this script. ``cwd``: the driver's
    working directory, which relative paths (``--runs-dir``) are relative to."""

    def train_job(cwd: str, config: str, run: Path, log: str, steps: int | None, seed: int):
        import os
        import shutil

        from robometa.config import load_config
        from robometa.train import run_logged, run_status, train_to_log

        before = os.getcwd()
        os.chdir(cwd)
        try:
            # Decided here rather than by the planner: a retry (the first worker died) finds
            # the run where that worker left it, as the next call of this script would.
            def prepare() -> str:
                status = run_status(run, load_config(config, steps=steps, seed=seed))
                if status == "stale":
                    shutil.rmtree(run)
                return status

            status = run_logged(log, prepare, append=True)  # a failure's traceback: the log
            if status == "finished":
                return 0.0
            return train_to_log(config, str(run), log, steps, seed, status == "resumable")
        finally:
            os.chdir(before)

    def evaluate_job(cwd: str, log: Path, runs: list[Path], kwargs: dict):
        import os
        import time

        from robometa.evaluate import run_evaluation
        from robometa.train import run_logged

        before = os.getcwd()
        os.chdir(cwd)
        try:
            t = time.perf_counter()
            result = run_logged(log, run_evaluation, runs, **kwargs)
            return result, time.perf_counter() - t
        finally:
            os.chdir(before)

    return train_job, evaluate_job


def _ray_failure(ray, err: BaseException, what: str, log: Path | str) -> RuntimeError:
    """The error that ends the sweep when a Ray job failed: one that raised, or one whose
    worker died on every try."""
    if isinstance(err, ray.exceptions.RayTaskError):
        return RuntimeError(f"{what} failed; see {log}")
    return RuntimeError(
        f"{what} failed: its Ray worker died ({type(err).__name__}: killed for memory, a crash "
        f"in native code, or its node lost) on each of {RAY_MAX_RETRIES + 1} tries; see {log}"
    )


def _ray_gather(ray, refs: dict, on_done) -> None:
    """``on_done(ref, value, jobs left)`` for each of ``refs`` as it finishes (``ray.wait``);
    a job that failed raises :func:`_ray_failure` (``refs[ref]``: what, log). On any error the
    jobs still pending are cancelled, their workers stopped: training runs keep their last
    checkpoint and resume on the next call."""
    pending = list(refs)
    try:
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as err:
                raise _ray_failure(ray, err, *refs[ref]) from err
            on_done(ref, value, len(pending))
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):  # already finished, or Ray is going down
                ray.cancel(ref, force=True)
        raise


def _node_cpus(ray) -> float:
    """The CPUs of the largest live node (0 where none is known: an autoscaling cluster)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)


def train_runs_ray(todo: list[tuple], ray) -> None:
    """:func:`train_runs` as Ray tasks, all submitted at once (the costliest first), each
    asking for its config's ``threads`` CPUs (at most a node's), output in ``<run>.log``."""
    from tqdm import tqdm

    from robometa.config import load_config

    if not todo:
        return
    train_job, _ = _ray_tasks()
    task = ray.remote(train_job)
    largest, cwd = _node_cpus(ray), os.getcwd()
    refs, runs = {}, {}
    for _, c, b, seed, run, _resume in todo:
        threads = load_config(c, steps=b, seed=seed).threads
        cpus = min(threads, largest) if largest else threads
        job = task.options(num_cpus=cpus, max_retries=RAY_MAX_RETRIES)
        ref = job.remote(cwd, c, run, f"{run}.log", b, seed)
        refs[ref], runs[ref] = (f"training {run}", f"{run}.log"), run
    bar = tqdm(total=len(todo), unit="run", desc="train", mininterval=0)

    def done(ref, seconds: float, _left: int) -> None:
        run = runs[ref]
        if not (run / "policy.pt").exists():
            raise RuntimeError(
                f"training {run} finished on a Ray worker, but {run / 'policy.pt'} is not "
                "here: --runs-dir (and this checkout) must be at the same path on every node "
                "of the cluster, on a filesystem they share"
            )
        bar.write(f"[trained] {run} in {seconds:.0f} s")
        bar.update()

    try:
        _ray_gather(ray, refs, done)
    finally:
        bar.close()


def evaluate_families_ray(
    runs: dict[str, list[Path]],
    runs_dir: Path,
    n_tasks: int,
    episodes: int,
    ray,
    supports: list[int] | None = None,
    tasks: str = "test",
    by_motor_sign: bool = False,
) -> dict[str, dict]:
    """:func:`evaluate_families` as Ray tasks (one CPU each), families side by side."""
    _, evaluate_job = _ray_tasks()
    job = ray.remote(evaluate_job).options(num_cpus=1, max_retries=RAY_MAX_RETRIES)
    cwd = os.getcwd()
    refs, families = {}, {}
    for family, family_runs, out_dir, log, kwargs in _eval_jobs(
        runs, runs_dir, n_tasks, episodes, supports, tasks, by_motor_sign
    ):
        ref = job.remote(cwd, log, family_runs, kwargs)
        refs[ref], families[ref] = (f"evaluating {family}", log), (family, out_dir)
    results = {}

    def done(ref, value: tuple[dict, float], left: int) -> None:
        (family, out_dir), (result, seconds) = families[ref], value
        results[family] = result | {"report_dir": str(out_dir)}
        print(f"[evaluated] {family} in {seconds:.0f} s ({left} left)", flush=True)

    _ray_gather(ray, refs, done)
    return {f: results[f] for f in runs if f in results}


def at_support(summary: list[dict], largest: int) -> list[dict]:
    """The rows of the largest support size <= ``largest`` when the evaluation ran at several
    (``--support``; rows without a ``support`` field pass as they are)."""
    sizes = {r["support"] for r in summary if "support" in r}
    if not sizes:
        return summary
    picked = max((k for k in sizes if k <= largest), default=min(sizes))
    return [r for r in summary if r.get("support", picked) == picked]


def final_scores(summary: list[dict], group: str, max_steps: int) -> dict[str, tuple]:
    """Each method's (steps, score, score_lo, score_hi, return) at its last adaptation step
    <= ``max_steps`` in ``group``."""
    final: dict[str, tuple] = {}
    for r in summary:
        if r["group"] == group and r["steps"] <= max_steps:
            if r["method"] not in final or r["steps"] >= final[r["method"]][0]:
                final[r["method"]] = (
                    r["steps"],
                    r["score"],
                    r["score_lo"],
                    r["score_hi"],
                    r.get("return", math.nan),
                )
    return final


def is_inference_method(method: str) -> bool:
    """A meta-learner that adapts without the gradient family's inner loop (context, hyper,
    rma, recurrent: a forward pass or a state updated online)."""
    spec = method_spec(method)
    return spec is not None and spec.adapts and spec.family not in ("gradient", "dqn")


def check_inference(summary: list[dict], max_steps: int) -> dict:
    """The inference methods' targets, from an evaluation at support sizes that include 50
    and 200 (``--support``): one of them >= 0.9 normalized with 200 transitions, and above
    every gradient meta-learner with 50. ``{}`` when those sizes were not evaluated."""
    sizes = {r.get("support") for r in summary}
    if not {50, 200} <= sizes:
        return {}
    out = {}
    for group in sorted({r["group"] for r in summary}):
        at = {
            k: final_scores([r for r in summary if r.get("support") == k], group, max_steps)
            for k in (50, 200)
        }
        inference = {k: {m: v[1] for m, v in at[k].items() if is_inference_method(m)} for k in at}
        gradient = {
            m: v[1] for m, v in at[50].items() if is_meta_learner(m) and not is_inference_method(m)
        }
        best200 = max(inference[200], key=inference[200].get, default=None)
        best50 = max(inference[50], key=inference[50].get, default=None)
        best_gradient = max(gradient, key=gradient.get, default=None)
        out[group] = {
            "best_inference_200": best200,
            "best_inference_200_score": inference[200].get(best200, math.nan),
            "best_inference_50": best50,
            "best_inference_50_score": inference[50].get(best50, math.nan),
            "best_gradient_50": best_gradient,
            "best_gradient_50_score": gradient.get(best_gradient, math.nan),
            "targets": {
                "best_inference_200_score": f">= {TARGET_META}",
                "best_inference_50_score": "> best_gradient_50_score",
            },
            "pass": {
                "best_inference_200_score": bool(
                    inference[200].get(best200, math.nan) >= TARGET_META
                ),
                "best_inference_50_above_gradient": bool(
                    best50 is not None
                    and inference[50][best50] > gradient.get(best_gradient, -math.inf)
                ),
            },
        }
    return out


def check_claim(summary: list[dict], max_steps: int) -> dict:
    """Compare the final-step scores on held-out tasks with the targets (at the largest
    support size <= 200 when several were evaluated)."""
    summary = at_support(summary, 200)
    out = {}
    for group in sorted({r["group"] for r in summary}):
        final = final_scores(summary, group, max_steps)
        metas = {m: v for m, v in final.items() if is_meta_learner(m) and not math.isnan(v[1])}
        best = max(metas, key=lambda m: metas[m][1]) if metas else None
        dr = final.get(DR, (0, math.nan))[1]
        drft = final.get(f"{DR}+finetune", (0, math.nan))[1]
        best_score = metas[best][1] if best else math.nan
        # The normalized score assumes the oracle is an upper bound; say where it is not.
        oracle = next((m for m in final if is_oracle(m)), None)
        oracle_return = final[oracle][4] if oracle is not None else math.nan
        above_oracle = sorted(m for m, v in final.items() if m != oracle and v[4] > oracle_return)
        out[group] = {
            "oracle_return": oracle_return,
            "methods_above_oracle": above_oracle,
            "best_meta_learner": best,
            "best_meta_score": best_score,
            "dr_score": dr,
            "dr_finetune_score": drft,
            "targets": {
                "best_meta_score": f">= {TARGET_META}",
                "dr_score": f"< {TARGET_DR_BELOW}",
                "dr_finetune_score": "< best_meta_score",
            },
            "pass": {
                "best_meta_score": bool(best_score >= TARGET_META),
                "dr_score": bool(dr < TARGET_DR_BELOW),
                "dr_finetune_below_meta": bool(drft < best_score),
            },
        }
    return out


def _max_support() -> int:
    """The largest support size a config allows (``adaptation.support_size``'s range)."""
    import dataclasses

    from robometa.config import AdaptationConfig

    fields = {f.name: f for f in dataclasses.fields(AdaptationConfig)}
    return int(fields["support_size"].metadata["hi"])


def main(argv: list[str] | None = None) -> int:
    from robometa.cli import _support_sizes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument(
        "--families", default="cartpole,diffdrive", help="comma list, e.g. cartpole,reacher"
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", default="0,1", help="training seeds, e.g. 0,1,2")
    p.add_argument(
        "--steps",
        type=int,
        help="override every method's env-step budget (the oracle keeps its own)",
    )
    p.add_argument("--oracle-steps", type=int, help="override the oracle's env-step budget")
    p.add_argument("--n-tasks", type=int, default=10, help="held-out tasks per group")
    p.add_argument(
        "--support",
        type=_support_sizes(_max_support()),
        help="evaluate every method at each of these support sizes (comma list, e.g. "
        "10,50,200; robometa eval --support): the table gains a support column, the claim "
        "check uses the largest size <= 200, and with 50 and 200 the inference methods' "
        "targets are checked too. Default: each run's configured support size",
    )
    p.add_argument(
        "--tasks",
        default="test",
        help="held-out robots of every family's evaluation (robometa eval --tasks): test "
        "(default), heldout (the versioned suites in configs/tasks/<family>/heldout/), fresh "
        "(the never-tuned-on second set), or a task file or directory (then one family)",
    )
    p.add_argument(
        "--by-motor-sign",
        action="store_true",
        help="also split each group by motor sign (robometa eval --by-motor-sign): groups "
        "<group>/motor+ and <group>/motor- in the table, the JSON and the claim check",
    )
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--runs-dir", default="bench-results/runs")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="training runs at a time (each uses one core); with --backend ray and no "
        "--address, the CPUs of the local Ray it starts",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: --jobs worker processes on this machine; ray: each training run and each "
        "evaluation a Ray task, all submitted at once (a run asks for its config's `threads` "
        "CPUs, an evaluation for one); a job whose worker process dies (killed for memory, a "
        f"crash in native code, a lost node) is re-run up to {RAY_MAX_RETRIES} times, a "
        "training run resuming from its last checkpoint; an exception in a job is not "
        'retried (needs pip install "robometa[ray]")',
    )
    p.add_argument(
        "--address",
        help="with --backend ray: the Ray cluster to join, auto (the one `ray start` started "
        "on this machine) or HOST:PORT of its head node (which must answer within "
        f"{CONNECT_TIMEOUT_S:.0f} s); its nodes must see this checkout and --runs-dir at "
        "the same paths. Default: start a local Ray with --jobs CPUs, stopped at the end",
    )
    args = p.parse_args(argv)
    if args.address is not None and args.backend != "ray":
        p.error("--address needs --backend ray")

    from robometa.evaluate import markdown_table

    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    supports = args.support
    methods = args.methods.split(",")
    families = args.families.split(",")
    runs_dir = Path(args.runs_dir)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "jobs": args.jobs,
        "supports": supports,
        "families": {},
    }
    ray, disconnect = None, False
    if args.backend == "ray":  # before anything is trained: no Ray, or no cluster, fails fast
        ray, disconnect = connect_ray(args.address, args.jobs)
    try:
        runs, todo = plan_runs(families, methods, seeds, args.steps, runs_dir, args.oracle_steps)
        if ray is None:
            train_runs(todo, args.jobs)
        else:
            train_runs_ray(todo, ray)
        report["train_wall_s"] = time.perf_counter() - t0
        if ray is None:
            evaluated = evaluate_families(
                runs,
                runs_dir,
                args.n_tasks,
                args.episodes,
                args.jobs,
                supports,
                args.tasks,
                args.by_motor_sign,
            )
        else:
            evaluated = evaluate_families_ray(
                runs,
                runs_dir,
                args.n_tasks,
                args.episodes,
                ray,
                supports,
                args.tasks,
                args.by_motor_sign,
            )
    finally:
        if disconnect:
            ray.shutdown()
    for family, res in evaluated.items():
        print(f"\n{family} ({res['env_id']}), final adaptation step:\n")
        print(markdown_table(res["summary"]))
        report["families"][family] = {
            "env_id": res["env_id"],
            "runs": res["runs"],
            "summary": res["summary"],
            "fine_tune": res["fine_tune"],
            "claim": check_claim(res["summary"], max_steps=5),
            "inference_claim": check_inference(res["summary"], max_steps=5),
            "report_dir": res["report_dir"],
        }
    report["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for family, r in report["families"].items():
        print(f"\n{family}: claim check")
        for group, c in r["claim"].items():
            print(
                f"  {group}: best meta-learner {c['best_meta_learner']} "
                f"{c['best_meta_score']:.2f} (>= {TARGET_META}: {c['pass']['best_meta_score']}), "
                f"DR {c['dr_score']:.2f} (< {TARGET_DR_BELOW}: {c['pass']['dr_score']}), "
                f"DR+FT {c['dr_finetune_score']:.2f} (below best: "
                f"{c['pass']['dr_finetune_below_meta']})"
            )
            if c["methods_above_oracle"]:
                print(
                    f"    the oracle ({c['oracle_return']:.1f}) is no upper bound here: "
                    f"{', '.join(c['methods_above_oracle'])} return more, so scores above 1 "
                    "and this group's claim check are not reliable"
                )
        for group, c in r["inference_claim"].items():
            print(
                f"  {group}: best inference method with 200 transitions "
                f"{c['best_inference_200']} {c['best_inference_200_score']:.2f} (>= "
                f"{TARGET_META}: {c['pass']['best_inference_200_score']}); with 50 "
                f"{c['best_inference_50']} {c['best_inference_50_score']:.2f} vs the best "
                f"gradient learner {c['best_gradient_50']} {c['best_gradient_50_score']:.2f} "
                f"(above: {c['pass']['best_inference_50_above_gradient']})"
            )
    print(f"\nwrote {out} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
