"""Is DQN trained enough? DQN on the nominal robot against a scripted reference controller.

For each robot family (issue 14's evaluation protocol):

* the family's scripted reference controller (:mod:`robometa.reference`: LQR for the
  cart-pole, model lookahead over inverse-kinematics PD for the reacher, Cartesian P control
  for the Kuka arm, pursuit for the differential-drive base; each written for the nominal
  robot and reading only the observation),
* a uniformly random policy, and
* DQN trained **on the nominal robot**: the family's ``configs/<family>_dr.yaml`` with
  ``--set env.tasks=nominal`` (``robometa train configs/<family>_dr.yaml --set
  env.tasks=nominal --seed S`` for each of ``--seeds``, default 0, 1, 2; every other setting,
  the budget included, the config's own unless ``--steps`` says otherwise); its final
  policy (with the config's ``logging.eval_every``, the best one on the nominal robot by
  model selection), acting greedily,

each run for ``--episodes`` episodes on the nominal robot, with the start states of episode
seeds ``20000 + i`` (all three see the same starts; model selection uses seeds 10000 + i,
training draws its own). Returns: mean and 95% percentile bootstrap interval over the
episodes (``robometa.stats.bootstrap_ci``; DQN's over the (seed, episode) pairs, the seeds
pooled, each paired with the same episode of the reference and of random).

The target: DQN reaches at least 90% of the reference's return *above random*, i.e. the
normalized score ``(R_DQN - R_random) / (R_reference - R_random) >= 0.9`` (point estimate;
its interval from ``robometa.stats.normalized_ci`` over the episode pairs is reported
beside it). Normalizing by random rather than taking ``R_DQN / R_reference`` is what makes
"90% of the reference" mean the same on every family: the reacher's returns are negative
distances (a DQN *worse* than the reference has a plain ratio above 1 there), the arm's
returns are negative for a random policy, and the cart-pole's random policy already scores
about 20 of 200. The plain ratio is reported too where both returns are positive. A family
that misses the target has an undertrained DQN: no claim is made on that family until the
learner or its budget is fixed.

Run directories live in ``--runs-dir/<family>/dqn-nominal-seed<S>``; a run that finished with
exactly the config this call would train is reused (as ``benchmarks/adaptation.py`` does), a
resumable one resumes, anything else there is trained anew.

    python benchmarks/reference_controllers.py --out bench-results/reference.json
    python benchmarks/reference_controllers.py --out x.json --families reacher --steps 100000
    python benchmarks/reference_controllers.py --out x.json --families cartpole --steps 300 \\
        --episodes 1 --seeds 0    # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("cartpole", "diffdrive", "reacher", "armreach")
TARGET = 0.9
EPISODE_SEED = 20_000
#: the override that trains the DR config on the nominal robot only
NOMINAL = "env.tasks=nominal"
BOOTSTRAP = {"n_boot": 10_000, "seed": 0}


def config_path(family: str) -> Path:
    return ROOT / "configs" / f"{family}_dr.yaml"


def returns_of(env: Any, act: Any, task: Any, episodes: int) -> list[float]:
    from robometa.rollout import episode_return

    return [float(episode_return(env, act, task, EPISODE_SEED + i)) for i in range(episodes)]


def summary(values: list[float]) -> dict[str, Any]:
    from robometa.stats import bootstrap_ci

    mean, lo, hi = bootstrap_ci(values, **BOOTSTRAP)
    return {"mean": mean, "ci95": [lo, hi], "returns": values}


def train_dqn(family: str, steps: int | None, seed: int, runs_dir: Path) -> tuple[Any, dict]:
    """The nominal-robot DQN run of ``family`` for ``seed``: reused if finished with this
    config, resumed if it stopped short of it, else trained. Returns the policy and a record
    of the run."""
    from robometa.config import load_config
    from robometa.policy import Policy
    from robometa.train import run_status, train

    cfg = load_config(config_path(family), [NOMINAL], steps=steps, seed=seed)
    run = runs_dir / family / f"dqn-nominal-seed{seed}"
    status = run_status(run, cfg)
    t0 = time.perf_counter()
    if status == "finished":
        print(f"[{family}] reuse {run}", flush=True)
        policy = Policy.load(run)
    else:
        if status == "stale":
            print(f"[{family}] {run}: another config or unreadable; training anew", flush=True)
            shutil.rmtree(run)
        what = "resume" if status == "resumable" else "train"
        print(
            f"[{family}] {what} DQN on the nominal robot: {cfg.dqn.total_steps} env steps, "
            f"seed {seed} -> {run}",
            flush=True,
        )
        run.parent.mkdir(parents=True, exist_ok=True)
        if status == "resumable":
            policy = train(None, run, resume=True)  # type: ignore[arg-type]
        else:
            policy = train(cfg, run)
    record = {
        "run": str(run),
        "seed": seed,
        "status": status,
        "env_steps": cfg.dqn.total_steps,
        "train_s": None if status == "finished" else time.perf_counter() - t0,
    }
    return policy, record


def measure_family(
    family: str, episodes: int, steps: int | None, seeds: list[int], runs_dir: Path
) -> dict[str, Any]:
    from robometa.reference import FAMILY_IDS, reference_controller
    from robometa.rollout import greedy_act_fn, make_env
    from robometa.stats import normalized_ci

    env_id = FAMILY_IDS[family]
    env = make_env(env_id)
    task = env.unwrapped.dynamics_space.nominal()
    try:
        t0 = time.perf_counter()
        ref = returns_of(env, reference_controller(env_id, env), task, episodes)
        print(
            f"[{family}] reference {np.mean(ref):.2f} over {episodes} episodes "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        rng = np.random.default_rng(0)
        n = int(env.action_space.n)
        rand = returns_of(env, lambda obs: int(rng.integers(n)), task, episodes)
        print(f"[{family}] random {np.mean(rand):.2f}", flush=True)
        dqn: list[float] = []
        runs = []
        for seed in seeds:
            policy, record = train_dqn(family, steps, seed, runs_dir)
            values = returns_of(env, greedy_act_fn(policy.net, policy.params), task, episodes)
            record["mean"] = float(np.mean(values))
            runs.append(record)
            dqn.extend(values)
            print(f"[{family}] DQN seed {seed}: {record['mean']:.2f}", flush=True)
    finally:
        env.close()
    k = len(seeds)
    score, lo, hi = normalized_ci(dqn, rand * k, ref * k, **BOOTSTRAP)
    r_ref, r_rand, r_dqn = float(np.mean(ref)), float(np.mean(rand)), float(np.mean(dqn))
    plain = r_dqn / r_ref if r_dqn > 0 and r_ref > 0 else None
    return {
        "env_id": env_id,
        "config": str(config_path(family).relative_to(ROOT)),
        "overrides": [NOMINAL],
        "train_steps": runs[0]["env_steps"],
        "reference": summary(ref),
        "random": summary(rand),
        "dqn": {**summary(dqn), "runs": runs},
        "normalized": {"score": score, "ci95": [lo, hi]},
        "ratio_plain": plain,
        "pass": bool(score >= TARGET),
        "dqn_minus_reference": r_dqn - r_ref,
        "random_mean": r_rand,
    }


def _cell(s: dict[str, Any]) -> str:
    return f"{s['mean']:.1f} [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]"


def markdown(results: dict[str, dict[str, Any]], episodes: int, seeds: list[int]) -> str:
    lines = [
        f"Nominal robot, {episodes} episodes (start seeds {EPISODE_SEED} + i), DQN training "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; mean return "
        "[95% bootstrap CI]. Score = (DQN - random) / (reference - random), target "
        f">= {TARGET}.",
        "",
        "| family | env steps | reference | random | DQN on nominal | score [95% CI] "
        "| DQN / reference | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for family, r in results.items():
        norm = r["normalized"]
        plain = "n/a" if r["ratio_plain"] is None else f"{r['ratio_plain']:.2f}"
        score = (
            "n/a"
            if math.isnan(norm["score"])
            else f"{norm['score']:.2f} [{norm['ci95'][0]:.2f}, {norm['ci95'][1]:.2f}]"
        )
        lines.append(
            f"| {family} | {r['train_steps']:,} | {_cell(r['reference'])} | {_cell(r['random'])} "
            f"| {_cell(r['dqn'])} | {score} | {plain} | {'met' if r['pass'] else 'MISSED'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of families")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per policy")
    p.add_argument(
        "--steps", type=int, help="DQN env-step budget of every family (default: each config's)"
    )
    p.add_argument("--seeds", default="0,1,2", help="DQN training seeds, comma list")
    p.add_argument("--runs-dir", type=Path, default=Path("bench-results/reference-runs"))
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    torch.set_num_threads(1)  # as train() does
    t0 = time.perf_counter()
    results = {}
    for family in families:
        print(f"[{family}] ...", flush=True)
        results[family] = measure_family(family, args.episodes, args.steps, seeds, args.runs_dir)
    table = markdown(results, args.episodes, seeds)
    report = {
        "benchmark": "reference_controllers",
        "command": " ".join(
            ["python", "benchmarks/reference_controllers.py", *(argv or sys.argv[1:])]
        ),
        "episodes": args.episodes,
        "episode_seeds": f"{EPISODE_SEED} + i",
        "seeds": seeds,
        "target": {
            "score": TARGET,
            "definition": "(R_DQN - R_random) / (R_reference - R_random) >= 0.9 on the nominal "
            "robot (normalized by random: returns are negative on the reacher and for a "
            "random arm, and a random cart-pole already scores ~20 of 200)",
        },
        "ci": "95% percentile bootstrap over the episodes (normalized: over episode pairs), "
        "10000 resamples, seed 0",
        "families": results,
        "table": table,
        "wall_s": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(table)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
