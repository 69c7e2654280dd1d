"""Domain-randomized DQN against the privileged oracle on held-out cart-pole robots.

Trains ``configs/cartpole_dr.yaml`` (one DQN over the train split, no adaptation) and
``configs/cartpole_oracle.yaml`` (the same DQN given the true dynamics parameters) for the same
budget and seed, then measures the greedy return of the policy each run hands back
(``policy.pt``: with the configs' ``logging.eval_every``, the best one on training tasks) on

* ``test``: 20 tasks from ``sample_tasks(20, seed=1000, split="test")`` (wider,
  out-of-distribution ranges), and
* ``train``: 20 held-out tasks from ``sample_tasks(20, seed=1000, split="train")`` (the
  training distribution; neither training nor model selection draws with seed 1000),

one episode per task with start seed ``2000 + i``, plus a uniformly random policy on the same
episodes for scale. Reported: mean return and a 95% bootstrap confidence interval (10,000
resamples of the tasks, fixed seed). The oracle is the upper bound the evaluation normalizes
against, so the target is ``oracle >= DR`` on both splits; their ratio measures how much
knowing the robot is worth.

    python benchmarks/dr_vs_oracle.py --out /tmp/dr_vs_oracle.json --steps 100000
    python benchmarks/dr_vs_oracle.py --out x.json --steps 100000 --set dqn.n_step=5
    python benchmarks/dr_vs_oracle.py --out x.json --steps 2000 --tasks 3    # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robometa.config import load_config
from robometa.policy import Policy
from robometa.rollout import episode_return, greedy_act_fn, make_env
from robometa.stats import bootstrap_ci
from robometa.train import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "dr": REPO / "configs" / "cartpole_dr.yaml",
    "oracle": REPO / "configs" / "cartpole_oracle.yaml",
}
TASK_SEED = 1000
EPISODE_SEED = 2000
BOOTSTRAP = {"n_boot": 10_000, "seed": 0, "level": 0.95}  # resamples of the tasks, fixed seed


def evaluate(policy: Policy | None, tasks: list, env_id: str) -> list[float]:
    """Greedy return per task (``policy=None``: uniformly random actions)."""
    env = make_env(
        env_id, policy.dynamics if policy else None, 0, bool(policy and policy.privileged)
    )
    if policy is None:
        rng = np.random.default_rng(0)
        n = env.action_space.n

        def act(obs: np.ndarray) -> int:
            return int(rng.integers(n))
    else:
        act = greedy_act_fn(policy.net, policy.params)
    try:
        return [episode_return(env, act, t, EPISODE_SEED + i) for i, t in enumerate(tasks)]
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps of training each")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--tasks", type=int, default=20, help="evaluation tasks per split")
    parser.add_argument("--runs", type=Path, help="keep the run directories here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to both runs, e.g. --set dqn.n_step=5",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as train() does
    runs_root = args.runs or Path(tempfile.mkdtemp(prefix="dr_vs_oracle-"))
    policies: dict[str, Policy] = {}
    train_s: dict[str, float] = {}
    for name, path in CONFIGS.items():
        cfg = load_config(
            path, ["logging.progress=false", *args.set], steps=args.steps, seed=args.seed
        )
        t0 = time.perf_counter()
        policies[name] = train(cfg, runs_root / f"{name}-seed{args.seed}")
        train_s[name] = time.perf_counter() - t0
        print(f"  trained {name}: {train_s[name]:.0f} s", flush=True)

    env_id = policies["dr"].env_id
    probe = make_env(env_id, policies["dr"].dynamics)
    space = probe.unwrapped.dynamics_space
    probe.close()
    splits = {s: space.sample(args.tasks, seed=TASK_SEED, split=s) for s in ("test", "train")}

    results: dict[str, Any] = {}
    for split, tasks in splits.items():
        results[split] = {}
        for name, policy in (("random", None), *policies.items()):
            returns = evaluate(policy, tasks, env_id)
            _, lo, hi = bootstrap_ci(returns, **BOOTSTRAP)
            results[split][name] = {
                "mean": statistics.fmean(returns),
                "ci95": [lo, hi],
                "returns": returns,
            }

    ratio = {s: results[s]["dr"]["mean"] / results[s]["oracle"]["mean"] for s in splits}
    report = {
        "benchmark": "dr_vs_oracle",
        "env": env_id,
        "train_steps": args.steps,
        "seed": args.seed,
        "configs": {k: str(v.relative_to(REPO)) for k, v in CONFIGS.items()},
        "overrides": args.set,
        "train_s": train_s,
        "evaluation": {
            "tasks_per_split": args.tasks,
            "task_seed": TASK_SEED,
            "episode_seed": f"{EPISODE_SEED} + task index",
            "episodes_per_task": 1,
            "ci": "95% percentile bootstrap over tasks, 10000 resamples",
            "tasks": {s: [t.to_dict() for t in ts] for s, ts in splits.items()},
        },
        "results": results,
        "baseline": "oracle (privileged DQN, measured in this run)",
        "ratio_dr_to_oracle": ratio,
        "target": "oracle mean >= DR mean on both splits (the oracle is the upper bound)",
        "pass": all(results[s]["oracle"]["mean"] >= results[s]["dr"]["mean"] for s in splits),
        "runs_dir": str(runs_root),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(
        f"\nCartPole, {args.steps} training steps, seed {args.seed}, {args.tasks} tasks per split"
    )
    print(f"| split | {'random':>22} | {'DR':>22} | {'oracle':>22} | DR / oracle |")
    print("|---|---:|---:|---:|---:|")
    for split in splits:
        cells = []
        for name in ("random", "dr", "oracle"):
            r = results[split][name]
            cells.append(f"{r['mean']:6.1f} [{r['ci95'][0]:6.1f}, {r['ci95'][1]:6.1f}]")
        print(f"| {split} | " + " | ".join(cells) + f" | {ratio[split]:.2f} |")
    print(f"wrote {args.out}; runs in {runs_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
