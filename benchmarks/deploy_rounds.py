"""Several adaptation rounds on one robot through the deploy runtime: which policy should
collect each round's support?

Exports a trained run to a bundle, then, on held-out robots of its family (``id``: unseen draws
from the train ranges, ``ood``: the test ranges), runs
:func:`robometa.deploy.loop.run_rounds` (round 0: the meta-parameters; rounds 1..R: collect
``support`` transitions, ``adapt``, greedy return on the same evaluation episodes) twice:

* ``meta``: every round's support collected with the meta-parameters, as in meta-training (the
  loop's default for bundles that adapt from the meta-parameters), and
* ``current``: collected with the previous round's adapted parameters.

Reports the mean greedy return per round with a 95% bootstrap CI over the robots, and a plot.

    python benchmarks/deploy_rounds.py --run bench-results/runs/cartpole/cavia-seed0 \\
        --out bench-results/deploy_rounds.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("meta", "current")


def _mean_ci(values: list[float]) -> tuple[float, tuple[float, float]]:
    from robometa.stats import bootstrap_ci  # 95% percentile bootstrap, fixed seed

    mean, lo, hi = bootstrap_ci(values)
    return mean, (lo, hi)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained (meta-learned) run directory")
    p.add_argument("--out", required=True, help="JSON file to write (and a .png beside it)")
    p.add_argument("--tasks", type=int, default=10, help="robots per group (default 10)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--task-seed", type=int, default=123)
    args = p.parse_args(argv)

    from robometa.deploy import Adapter
    from robometa.deploy.loop import run_rounds
    from tqdm import tqdm

    from robometa.bundle import export_bundle
    from robometa.policy import Policy
    from robometa.rollout import make_env

    t0 = time.perf_counter()
    policy = Policy.load(args.run)
    tmp = tempfile.TemporaryDirectory(prefix="robometa-rounds-")
    bundle = Path(tmp.name) / "bundle"
    export_bundle(policy, bundle)
    env = make_env(policy.env_id, policy.dynamics)
    space = env.unwrapped.dynamics_space
    groups = {
        g: space.sample(args.tasks, seed=args.task_seed, split=split)
        for g, split in (("id", "train"), ("ood", "test"))
    }
    returns: dict[str, dict[str, list[list[float]]]] = {g: {m: [] for m in MODES} for g in groups}
    bar = tqdm(total=len(groups) * len(MODES) * args.tasks, unit="robot", desc="rounds")
    epsilon = None
    for g, tasks in groups.items():
        for mode in MODES:
            for i, task in enumerate(tasks):
                env.unwrapped.set_task(task)
                adapter = Adapter.load(bundle)
                epsilon = adapter.support_epsilon
                results = run_rounds(
                    adapter,
                    env,
                    rounds=args.rounds,
                    support=policy.support_size,
                    eval_episodes=args.eval_episodes,
                    seed=i,
                    support_from=mode,
                )
                returns[g][mode].append([r.greedy_return for r in results])
                bar.update()
    bar.close()
    env.close()
    tmp.cleanup()

    summary = {
        g: {
            m: [
                dict(
                    zip(
                        ("round", "mean", "ci95"), (r, *_mean_ci([x[r] for x in rows])), strict=True
                    )
                )
                for r in range(args.rounds + 1)
            ]
            for m, rows in per_mode.items()
        }
        for g, per_mode in returns.items()
    }
    report = {
        "run": str(args.run),
        "env_id": policy.env_id,
        "algorithm": policy.algorithm,
        "support": policy.support_size,
        "steps": policy.adapt_steps,
        "epsilon": epsilon,
        "tasks": args.tasks,
        "task_seed": args.task_seed,
        "eval_episodes": args.eval_episodes,
        "returns": returns,
        "summary": summary,
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 3.6), sharey=True)
    for ax, (g, per_mode) in zip(np.atleast_1d(axes), summary.items(), strict=True):
        for m, rows in per_mode.items():
            x = [r["round"] for r in rows]
            ax.plot(x, [r["mean"] for r in rows], marker="o", label=f"support from {m}")
            ax.fill_between(
                x, [r["ci95"][0] for r in rows], [r["ci95"][1] for r in rows], alpha=0.2
            )
        ax.set_title(f"{policy.env_id} {g} robots (n={args.tasks})")
        ax.set_xlabel("round (0: meta-parameters)")
        ax.set_xticks(range(args.rounds + 1))
    np.atleast_1d(axes)[0].set_ylabel("greedy return")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)

    print(
        f"{'group':5} {'support from':12} "
        + " ".join(f"round {r:<3}" for r in range(args.rounds + 1))
    )
    for g, per_mode in summary.items():
        for m, rows in per_mode.items():
            print(f"{g:5} {m:12} " + " ".join(f"{r['mean']:9.1f}" for r in rows))
    print(f"wrote {out} and {out.with_suffix('.png')} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
